//! Notifications: the webhooks of a Runbook's `spec.notify[]` are told when an app
//! becomes Healthy, Blocked, Failed, RollingBack or RolledBack.
//!
//! - [`event_of`] (pure): which change of the status, if any, is an event, and what it
//!   says ([`PhaseEvent`]). It reads the status only, and the status never holds a
//!   Secret's value, so no notification can carry one.
//! - [`json_payload`] / [`slack_payload`] (pure): the bodies posted.
//! - [`receivers_of`] and [`resolve`]: which receivers want an event, and their URLs
//!   (inline or read from a Secret key; a URL from a Secret is a credential, never
//!   logged or quoted: receivers are named by `name` only). [`receivers_for`] does both
//!   with the Secrets read from the API server.
//! - [`Notifier`]: delivery in the background, with retries, never blocking a pass.
//!
//! The controller calls them right after a status write succeeds, comparing the status
//! it last saved with the one just written: a notification announces only what is
//! persisted, and at most once (a controller that dies before delivery does not send it
//! after a restart; Kubernetes Events remain the record).

mod event;
mod payload;
mod receivers;
mod sender;

pub use event::{PhaseEvent, event_of};
pub use receivers::{Receiver, receivers_for};
pub(crate) use receivers::{receivers_of, secrets_read_by};
pub use sender::{Attempt, DeliveryOutcome, DeliveryReport, DeliverySettings, Notifier, NotifyError, judge};
