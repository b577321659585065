//! Drift correction of an app at rest: once per interval (as [`crate::core::decide`]
//! decides) the running revision's snapshot is applied again. Unchanged objects are
//! not sent (judged from the watch caches and, where that is unsure, the API server's
//! dry run), so an idle resync writes nothing; prunes that failed before are tried
//! again. What it did is recorded by [`crate::core::record`].

use std::time::Instant;

use kube::ResourceExt;
use tracing::{debug, warn};

use super::{AppState, Context, Error};
use crate::api::{AppDeployment, AppDeploymentStatus, RunbookSpec};
use crate::core::{Resynced, StepOutcome};
use crate::snapshot;

/// The running revision was just applied and verified: the next resync is an interval away.
pub fn mark_done(state: &mut AppState) {
    state.last_resync = Some(Instant::now());
}

/// Applies the running revision's snapshot again ([`Decision::Resync`], decided by
/// [`crate::core::decide`]) and reports what it did; the status is written by
/// [`crate::core::record`]. A repair that cannot be made now is logged and tried again
/// at the next interval.
///
/// [`Decision::Resync`]: crate::core::Decision::Resync
pub async fn run(
    context: &Context,
    app: &AppDeployment,
    revision: &str,
    snapshot: &str,
    status: &AppDeploymentStatus,
    runbook: &RunbookSpec,
) -> Result<StepOutcome, Error> {
    // With the Secret digests of the last rollout: a Secret change goes out through
    // preflight and the gates, never through a drift repair.
    let prepared = match super::steps::prepare(
        context,
        app,
        Some(snapshot),
        revision,
        runbook,
        Some(&status.secret_digests),
    )
    .await
    {
        Ok(prepared) => prepared,
        Err(outcome) => {
            warn!(
                ?outcome,
                "resync skipped: the running revision cannot be prepared"
            );
            return Ok(outcome);
        }
    };
    let applier = match context.applier(app) {
        Ok(applier) => applier,
        Err(error) => {
            warn!(%error, "resync skipped");
            return Ok(StepOutcome::Transient(error.to_string()));
        }
    };
    Ok(
        match applier
            .apply(prepared.names.plan(&prepared.objects, &status.inventory))
            .await
        {
            Ok(outcome) => {
                if outcome.sent.is_empty() && outcome.pruned.is_empty() {
                    debug!("resync: nothing drifted");
                }
                StepOutcome::Resynced(Resynced {
                    sent: outcome.sent.iter().map(ToString::to_string).collect(),
                    pruned: outcome.pruned.len(),
                    prune_failures: outcome.prune_failure_notes(),
                    inventory: outcome.inventory,
                })
            }
            Err(error) => {
                warn!(%error, "resync failed; tried again at the next interval");
                StepOutcome::from(error.classify())
            }
        },
    )
}

/// Deletes snapshot Secrets nothing can return to any more: only the running revision's
/// and the last healthy one's (the rollback target) are kept, plus an operation's.
pub async fn retain_snapshots(context: &Context, app: &AppDeployment, status: &AppDeploymentStatus) {
    let mut keep: Vec<String> = Vec::new();
    keep.extend(status.current_snapshot.clone());
    keep.extend(status.last_healthy_snapshot.clone());
    if let Some(operation) = &status.operation {
        keep.extend(operation.snapshot.clone());
    }
    // The candidates come from the watch cache of snapshot Secrets: no LIST per app.
    let uid = app.uid();
    let candidates: Vec<k8s_openapi::api::core::v1::Secret> = context
        .caches
        .snapshots
        .state_filter(|secret| {
            secret
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .iter()
        .map(|secret| (**secret).clone())
        .collect();
    if let Err(error) = snapshot::retain_among(&context.client, app, &candidates, &keep).await {
        warn!(%error, "could not delete old snapshots");
    }
}
