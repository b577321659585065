//! Deleting an AppDeployment. Its finalizer holds the deletion until bosun has done
//! what `spec.deletionPolicy` says with the objects it created: `Orphan` (the default)
//! leaves them running and releases them (no owner annotation, so another AppDeployment
//! may take them over); `Delete` deletes them, by the same rules as prune (never what
//! bosun found rather than created, never a Namespace, CRD or PersistentVolumeClaim
//! unless annotated `bosun.dev/prune: "true"`). Snapshot Secrets go with the app (they
//! are owned by it). The app's state in memory is dropped. An object the app's identity
//! is refused (403) is left as it is with a Warning Event (`DeletionIncomplete`), so
//! that a namespace whose RoleBinding went first still finishes deleting; other
//! failures are retried.

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::pass::{app_key, backoff};
use super::status_writer::{self, FINALIZER};
use super::{AppState, Context, Error};
use crate::api::{AppDeployment, DeletionPolicy};
use crate::core::record::Notice;

pub async fn finalize(
    context: &Context,
    api: &Api<AppDeployment>,
    app: &AppDeployment,
    state: &mut AppState,
) -> Result<Action, Error> {
    if !app.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let policy = app.spec.deletion_policy;
    let inventory = app
        .status
        .as_ref()
        .map(|s| s.inventory.clone())
        .unwrap_or_default();
    let owner = app_key(app);
    // An app that owns nothing needs no identity to go (one refused for naming none
    // never applied anything).
    let outcome = if inventory.is_empty() {
        Default::default()
    } else {
        let applier = context.applier(app)?;
        applier
            .remove_all(&inventory, &owner, policy == DeletionPolicy::Delete)
            .await
    };
    // Only 403s left: the app's identity may no longer touch these objects (its
    // RoleBinding went first when its namespace was deleted, or was revoked). Retrying
    // would hold the finalizer, and with it the namespace, forever: they are left as
    // they are, said in a Warning, and the deletion finishes.
    let forbidden_only = !outcome.prune_failures.is_empty()
        && outcome
            .prune_failures
            .iter()
            .all(|(entry, _)| outcome.prune_forbidden.contains(entry));
    let mut left_behind = String::new();
    if forbidden_only {
        let failures = outcome.prune_failure_notes();
        let note = format!(
            "deletion ({policy:?}) could not remove or release {} object(s), left as they are: the app's identity is refused (403): {}",
            failures.len(),
            failures.join("; ")
        );
        warn_deletion(context, app, "DeletionIncomplete", note).await;
        left_behind = format!(", {} left as they are (refused)", failures.len());
    } else if !outcome.prune_failures.is_empty() {
        let failures = outcome.prune_failure_notes();
        let note = format!(
            "deletion ({policy:?}) could not finish, retried: {}",
            failures.join("; ")
        );
        warn_deletion(context, app, "DeletionPending", note).await;
        state.errors = state.errors.saturating_add(1);
        return Ok(Action::requeue(backoff(state.errors)));
    }
    let note = match policy {
        DeletionPolicy::Orphan => format!(
            "deletionPolicy Orphan: {} objects left running and released{left_behind}",
            outcome.prune_skipped.len()
        ),
        DeletionPolicy::Delete => format!(
            "deletionPolicy Delete: {} objects deleted, {} kept (found rather than created, or never pruned){left_behind}",
            outcome.pruned.len(),
            outcome.prune_skipped.len()
        ),
    };
    info!(%note, "AppDeployment deleted");
    context
        .events
        .publish(
            app,
            &Notice {
                warning: false,
                reason: "Deleted",
                note,
            },
        )
        .await;
    status_writer::set_finalizer(&context.leader, api, app, false).await?;
    context.forget(app);
    state.forgotten = true;
    Ok(Action::await_change())
}

/// A Warning about the deletion, in the log and as an Event on the app.
async fn warn_deletion(context: &Context, app: &AppDeployment, reason: &'static str, note: String) {
    warn!(%note);
    context
        .events
        .publish(
            app,
            &Notice {
                warning: true,
                reason,
                note,
            },
        )
        .await;
}
