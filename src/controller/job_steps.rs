//! The steps that run Jobs against the app's data: backup and migration before a
//! revision's workloads are applied, and the downgrade of a failed revision's migration
//! before a rollback flips the workloads back. Each step creates its Job (named from
//! app, kind and revision) or adopts the one a stopped controller left running, and
//! reports `Running` until it ends; what follows is decided by [`crate::core::decide`].

use kube::ResourceExt;

use super::Error;
use super::steps::{StepInput, prepare};
use crate::api::{JobKind, RunbookSpec, short_revision};
use crate::core::{Failure, FailureKind, StepOutcome, StepResult};
use crate::jobs::{self, JobRequest, JobState};

/// Runs (or looks in on) the Job of `kind` for the operation in progress.
pub async fn run(step: &StepInput<'_>, runbook: &RunbookSpec, kind: JobKind) -> Result<StepOutcome, Error> {
    let operation = step.operation;
    // The downgrade undoes the failed revision's migration with that revision's image.
    let (revision, snapshot) = match kind {
        JobKind::Downgrade => (
            operation.failed_revision.clone().unwrap_or_default(),
            operation.failed_snapshot.clone(),
        ),
        JobKind::Backup | JobKind::Migrate => (operation.revision.clone(), operation.snapshot.clone()),
    };
    // The Job runs the container as the workload will run it: with the defaults the
    // Runbook injects (`spec.env[].inject`), not as the bare manifests have it.
    let prepared = match prepare(
        step.context,
        step.app,
        snapshot.as_deref(),
        &revision,
        runbook,
        None,
    )
    .await
    {
        Ok(prepared) => prepared,
        Err(outcome) => return Ok(outcome),
    };
    let objects = prepared.objects;
    let request = match (kind, &runbook.backup, &runbook.migrate) {
        (JobKind::Backup, Some(backup), _) => JobRequest::backup(step.app, backup, &revision, &objects),
        (JobKind::Migrate, _, Some(migrate)) => JobRequest::migrate(step.app, migrate, &revision, &objects),
        (JobKind::Downgrade, _, Some(migrate)) => {
            JobRequest::downgrade(step.app, migrate, &revision, &objects)
        }
        _ => {
            return Ok(StepOutcome::Refused(Failure::new(
                FailureKind::RunbookInvalid,
                format!(
                    "the Runbook no longer has spec.{} while the {} step of revision {} was due",
                    if kind == JobKind::Backup {
                        "backup"
                    } else {
                        "migrate"
                    },
                    kind.as_str(),
                    short_revision(&revision)
                ),
            )));
        }
    };
    let job = match jobs::build_job(&request) {
        Ok(job) => job,
        Err(error) => return Ok(StepOutcome::from(error.classify())),
    };
    let client = step.context.client_for(step.app)?;
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let state = match jobs::ensure(&client, &job).await {
        Ok(state) => state,
        Err(error) => return Ok(StepOutcome::from(error.classify())),
    };
    let what = format!("{} Job {namespace}/{name}", kind.as_str());
    // A Job that failed before this operation started is an earlier attempt's at the
    // same revision, retried by a person (a pin or a spec change after its quarantine):
    // it is made again, not adopted with its old failure.
    if state.failed_before(&operation.started_at) {
        return Ok(
            match jobs::delete_failed_before(&client, &namespace, &name, &operation.started_at).await {
                Ok(_) => StepOutcome::Running(format!(
                    "{what} failed in an earlier attempt at revision {}; it is made again",
                    short_revision(&revision)
                )),
                Err(error) => StepOutcome::from(error.classify()),
            },
        );
    }
    let irreversible = kind == JobKind::Migrate
        && jobs::irreversible(
            &objects,
            runbook.migrate.as_ref().and_then(|m| m.job.from.as_ref()),
        );
    let outcome = match state.record(kind, &revision, &name, irreversible) {
        None => {
            let since = match &state {
                JobState::Running { since } => since.as_str(),
                _ => "",
            };
            StepOutcome::Running(format!("{what} running since {since}"))
        }
        Some(record) if record.succeeded => StepOutcome::Done(StepResult::JobFinished(record)),
        // Whether the deploy goes on without it (an optional backup) is core's to decide.
        Some(mut record) => {
            record.message = Some(format!(
                "{what} failed: {}",
                state.failure_message().unwrap_or_default()
            ));
            StepOutcome::Done(StepResult::JobFinished(record))
        }
    };
    if state.is_finished() {
        // Only the newest Jobs of the app are kept (`revisionHistoryLimit`).
        let keep = step.app.spec.revision_history_limit.unwrap_or(10) as usize;
        let label = prepared.names.label;
        if let Err(error) = jobs::cleanup(&client, &namespace, &label, keep.max(1)).await {
            tracing::warn!(%error, "could not delete the app's old Jobs (tried again after the next Job)");
        }
    }
    Ok(outcome)
}
