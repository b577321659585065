//! Drift correction of an app at rest: once per interval the running revision's
//! snapshot is applied again. Unchanged objects are not sent (judged from the watch
//! caches and, where that is unsure, the API server's dry run), so an idle resync writes
//! nothing; prunes that failed before are tried again.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{debug, warn};

use super::{AppNames, AppState, Context};
use crate::api::{
    AppDeployment, AppDeploymentStatus, RunbookSpec, condition, remove_condition, short_revision,
};
use crate::core::record::Notice;
use crate::snapshot;

/// The running revision was just applied and verified: the next resync is an interval away.
pub fn mark_done(state: &mut AppState) {
    state.last_resync = Some(Instant::now());
}

/// Re-applies the running revision when an interval has passed since the last time.
/// Only a healthy revision is kept in place: a failed one is not reasserted.
pub async fn if_due(
    context: &Context,
    app: &AppDeployment,
    state: &mut AppState,
    status: &mut AppDeploymentStatus,
    interval: Duration,
    runbook: &RunbookSpec,
) {
    if status.operation.is_some() || app.spec.suspend {
        return;
    }
    let (Some(current), Some(snapshot_name)) =
        (status.current_revision.clone(), status.current_snapshot.clone())
    else {
        return;
    };
    if status.last_healthy_revision.as_ref() != Some(&current) {
        return;
    }
    if state.last_resync.is_some_and(|at| at.elapsed() < interval) {
        return;
    }
    state.last_resync = Some(Instant::now());
    let namespace = app.namespace().unwrap_or_default();
    let manifests = match context.caches.snapshot(&namespace, &snapshot_name, &current) {
        Some(Ok(manifests)) => manifests,
        Some(Err(error)) => {
            warn!(%error, "resync skipped: the running revision's snapshot is unreadable");
            return;
        }
        None => match snapshot::load(&context.client, &namespace, &snapshot_name, &current).await {
            Ok(manifests) => std::sync::Arc::new(manifests),
            Err(error) => {
                warn!(%error, "resync skipped: no snapshot of the running revision");
                return;
            }
        },
    };
    let applier = match context.applier(app) {
        Ok(applier) => applier,
        Err(error) => {
            warn!(%error, "resync skipped");
            return;
        }
    };
    let names = AppNames::of(app);
    let inventory = status.inventory.clone();
    // With the Secret digests of the last rollout: a Secret change goes out through
    // preflight and the gates, never through a drift repair.
    let (manifests, _) = match super::steps::prepared(
        context,
        app,
        &manifests,
        runbook,
        &names.target_namespace,
        Some(&status.secret_digests),
    )
    .await
    {
        Ok(prepared) => prepared,
        Err(outcome) => {
            warn!(
                ?outcome,
                "resync skipped: the revision's reads are not the app's to make"
            );
            return;
        }
    };
    match applier.apply(names.plan(&manifests, &inventory)).await {
        Ok(outcome) => {
            if !outcome.sent.is_empty() || !outcome.pruned.is_empty() {
                let objects: Vec<String> = outcome.sent.iter().map(ToString::to_string).collect();
                let note = format!(
                    "revision {}: corrected drift: {} re-applied{}, {} pruned",
                    short_revision(&current),
                    outcome.sent.len(),
                    if objects.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", objects.join(", "))
                    },
                    outcome.pruned.len()
                );
                context
                    .events
                    .publish(
                        app,
                        &Notice {
                            warning: false,
                            reason: "DriftCorrected",
                            note,
                        },
                    )
                    .await;
            } else {
                debug!("resync: nothing drifted");
            }
            status.inventory = outcome.inventory.clone();
            if outcome.prune_failures.is_empty() {
                remove_condition(&mut status.conditions, condition::PRUNED);
            } else {
                let failures = outcome.prune_failure_notes();
                crate::api::set_condition(
                    &mut status.conditions,
                    condition::PRUNED,
                    false,
                    "PruneFailed",
                    &format!("could not prune (retried): {}", failures.join("; ")),
                    app.metadata.generation,
                    &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
                );
            }
        }
        Err(error) => warn!(%error, "resync failed; tried again at the next interval"),
    }
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
