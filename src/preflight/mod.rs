//! Preflight (README, "The runbook, step by step"): before anything of a revision is written, does it meet
//! the Runbook's env contract, and does every Secret it reads exist? Pure: the
//! rendered objects, the Runbook and a [`ClusterLookup`] (the controller's watch
//! caches) in, a verdict out. Also the two changes made to the objects before they are
//! applied ([`apply_transforms`]): defaults injected, and the digest of the Secrets a
//! workload reads written into its pod template so that a Secret change rolls it.
//!
//! What is checked:
//! - **Workloads**: Deployments, StatefulSets, DaemonSets, ReplicaSets,
//!   ReplicationControllers, Jobs, CronJobs and bare Pods, each at its pod template.
//! - **Secret references**, in every workload whatever the Runbook says: env
//!   `secretKeyRef`, `envFrom.secretRef`, `secret` volumes, `projected` volume
//!   sources, `imagePullSecrets`, in init containers too (ephemeral containers never
//!   start with a revision). Each Secret and key must exist in the object's namespace
//!   unless the revision renders that Secret itself; `optional: true` is respected.
//!   ConfigMaps read by env (`configMapKeyRef`, `envFrom.configMapRef`) are checked the
//!   same way: the kubelet refuses to start a container without them either.
//! - **The env contract** (`spec.env`), in the containers `spec.workloads` selects
//!   (default: every workload). An entry is a workload name (`api`: its app
//!   containers) or `workload/container` (`api/migrate`: exactly that container, init
//!   containers included). Rules that judge a value that is set (`secret`, `policy`)
//!   also apply to the init containers of a selected workload; `required`,
//!   `requiredWhen`, the defaults and their injection do not, since an init container
//!   (`wait-for-db`) rarely needs the app's variables.
//!
//! How a container's variable gets its value follows the kubelet: `envFrom` first (in
//! order, with `prefix`), then `env` in order, the later definition winning; a
//! literal may expand `$(OTHER)` references to variables defined before it. A
//! `fieldRef` or `resourceFieldRef` sets the variable with a value known only in the
//! pod: `required` is met, and policies and `requiredWhen` that would read it pass
//! with a note in [`Checked::notes`]. A value built with `$(SECRET_BACKED)` counts as
//! coming from that Secret.
//!
//! Secret values are compared and hashed, never written anywhere: a miss names the
//! Secret and key (`JWT_SECRET (Secret app/jwt, key secret) is shorter than 32
//! characters`), and a value is quoted only when it is a literal or comes from a
//! ConfigMap and the rule does not say `secret: true`.

mod cluster;
mod contract;
mod env;
mod references;
mod transform;
mod workloads;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

pub use cluster::{ClusterLookup, GuardedLookup, InMemoryLookup, LookupKind, RecordingLookup, StoreLookup};
pub use transform::{SECRETS_DIGEST_ANNOTATION, apply_transforms, secret_data_digest, secret_digests};

use crate::api::RunbookSpec;
use crate::render::Manifest;

/// A revision that passed preflight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// What could not be judged before the pod runs and was let pass, one sentence
    /// each (a policy on a `fieldRef` value). Never a Secret value.
    pub notes: Vec<String>,
    /// The Secrets the revision reads from the cluster (`namespace/name`, any kind of
    /// reference, `imagePullSecrets` and optional ones included), not counting those it
    /// renders itself: a change of one of them may change this verdict.
    pub secrets: BTreeSet<String>,
}

/// One reason a revision cannot be applied. [`fmt::Display`] gives
/// [`PreflightMiss::message`]; the other fields say what it is about, for whoever
/// needs to match on them (a Secret being created may clear the miss).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PreflightMiss {
    /// `Deployment app/api`, when the miss is in a workload.
    pub workload: Option<String>,
    /// `api` (init containers too), when the miss is in a container.
    pub container: Option<String>,
    /// The environment variable, when the miss is about one.
    pub variable: Option<String>,
    /// `namespace/name` of the Secret the miss is about.
    pub secret: Option<String>,
    /// `namespace/name` of the ConfigMap the miss is about.
    pub config_map: Option<String>,
    /// The key of that Secret or ConfigMap.
    pub key: Option<String>,
    /// The Runbook field at fault, when the Runbook itself is (`spec.workloads`,
    /// `spec.env[2].policy.pattern`).
    pub field: Option<String>,
    /// The whole sentence, for conditions and Events: names the workload, container,
    /// variable, Secret and key; never a Secret value.
    pub message: String,
}

impl fmt::Display for PreflightMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every miss on one line, for a condition message or an Event.
pub fn describe_misses(misses: &[PreflightMiss]) -> String {
    misses
        .iter()
        .map(|miss| miss.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Does the revision (`objects`, as rendered) meet `runbook`'s env contract, and does
/// every Secret and ConfigMap it reads exist? `namespace` is the target namespace of
/// objects that name none. `Err` holds every miss, Runbook misses first, then by
/// workload (its volumes and image pulls before its containers) and message: the
/// same whatever the order of the objects and containers.
pub fn check(
    objects: &[Manifest],
    runbook: &RunbookSpec,
    namespace: &str,
    cluster: &impl ClusterLookup,
) -> Result<Checked, Vec<PreflightMiss>> {
    let known = env::KnownObjects::new(objects, namespace, cluster);
    let found = workloads::find(objects, namespace);
    let mut misses = Vec::new();
    let mut notes = Vec::new();
    let mut secrets = BTreeSet::new();
    for workload in &found {
        references::check(workload, &known, &mut misses, &mut secrets);
    }
    let selection = workloads::Selection::new(&runbook.workloads);
    misses.extend(selection.unknown_entries(&found));
    let patterns = contract::Patterns::compile(&runbook.env);
    misses.extend(patterns.misses());
    if !runbook.env.is_empty() {
        for workload in &found {
            for container in workload.containers() {
                let Some(depth) = selection.depth(workload, &container) else {
                    continue;
                };
                let resolved = env::resolve(container.spec, &workload.namespace, &known);
                contract::check(
                    &contract::Target {
                        rules: &runbook.env,
                        patterns: &patterns,
                        workload,
                        container: &container,
                        depth,
                        env: &resolved,
                    },
                    &mut misses,
                    &mut notes,
                );
            }
        }
    }
    // Grouped by workload, its own misses (volumes, image pulls) before its
    // containers'; then by message, which starts with the container.
    misses.sort_by(|a, b| {
        (&a.workload, a.container.is_some(), &a.message, a).cmp(&(
            &b.workload,
            b.container.is_some(),
            &b.message,
            b,
        ))
    });
    misses.dedup();
    if misses.is_empty() {
        notes.sort();
        notes.dedup();
        Ok(Checked { notes, secrets })
    } else {
        Err(misses)
    }
}
