//! The custom resources bosun serves (`bosun.dev/v1alpha1`): what to deploy
//! ([`AppDeployment`]) and how to deploy it safely ([`Runbook`], [`ClusterRunbook`]).
//! Plain data: no I/O lives here.

mod appdeployment;
mod baseline;
mod conditions;
mod duration;
mod runbook;
mod validate;

pub use appdeployment::*;
pub use baseline::RestartBaseline;
pub use conditions::*;
pub use duration::*;
pub use runbook::*;
pub use validate::*;

/// API group of every bosun resource.
pub const GROUP: &str = "bosun.dev";
/// Field manager for every server-side apply bosun sends.
pub const FIELD_MANAGER: &str = "bosun";
/// Annotation that names the AppDeployment (`namespace/name`) owning an applied object.
pub const OWNER_ANNOTATION: &str = "bosun.dev/owner";
/// Label on applied objects and snapshot Secrets: which app they belong to (`namespace.name`).
pub const APP_LABEL: &str = "bosun.dev/app";
