use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::Context;
use crate::api::AppDeployment;

/// Publishes a Kubernetes Event on the AppDeployment. An Event that cannot be
/// written is logged, never fatal: the status already says the same.
pub async fn publish(context: &Context, app: &AppDeployment, warning: bool, reason: &str, note: &str) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        // Event notes are limited to 1 kB by the API server.
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: None,
    };
    let reference = app.object_ref(&());
    if let Err(error) = context.recorder.publish(&event, &reference).await {
        warn!(%error, reason, "could not publish Event");
    }
}
