//! What a [`Decision`] means for `AppDeployment.status`: the operation's step, phase,
//! kstatus conditions, history, quarantine and the Events that announce it. Pure:
//! the controller persists the result and publishes the [`Notice`]s afterwards.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{RoundMode, Timestamp, TimestampRound, Unit};

use std::collections::BTreeMap;

use super::{Decision, Next, Resynced, SourceRead, StepPlan, StepResult};
use crate::api::{
    AppDeploymentStatus, BlockReason, BlockedRevision, GateVerdict, HistoryEntry, InterruptedVerification,
    InventoryEntry, JobKind, JobRecord, Operation, OperationKind, Phase, Quarantine, Step, condition,
    remove_condition, set_condition, short_revision, within_budget,
};

/// How many quarantine entries are kept (quarantine matters only while Git points at
/// a revision; old entries are of no use).
const MAX_QUARANTINED: usize = 20;
/// How many finished Jobs `status.jobs` remembers at least (a revision re-deployed
/// after its record fell out would migrate again; migration tools make that a no-op).
const MIN_JOB_RECORDS: usize = 20;

/// What the bookkeeping needs besides the status.
#[derive(Clone, Debug)]
pub struct RecordInput<'a> {
    pub now: Timestamp,
    pub generation: Option<i64>,
    /// `spec.revisionHistoryLimit` (default 10).
    pub history_limit: usize,
    /// [`crate::api::AppDeploymentSpec::apply_digest`] of the current spec.
    pub spec_digest: &'a str,
    /// The Git tip (or pin) when known: `Ready` is true only when it is what runs.
    pub desired: Option<&'a str>,
}

impl RecordInput<'_> {
    fn now_text(&self) -> String {
        rfc3339(self.now)
    }
}

/// An Event to publish once the status that records it is saved. The note always names
/// the revision it is about, so Events of different revisions are never merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }
    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
}

/// A time as status fields hold it: RFC 3339, to the second, truncated as Kubernetes
/// writes `metav1.Time` (so a time recorded here is never later than the moment it
/// names, and compares with `creationTimestamp`s second by second).
pub fn rfc3339(time: Timestamp) -> String {
    let whole_seconds = TimestampRound::new()
        .smallest(Unit::Second)
        .mode(RoundMode::Trunc);
    time.round(whole_seconds).unwrap_or(time).to_string()
}

/// Writes what reading the source found: `status.desiredRevision` and the
/// `SourceReady` condition. A failure is announced when it is new (or its message
/// changed).
pub fn source_read(
    status: &mut AppDeploymentStatus,
    read: &SourceRead,
    ctx: &RecordInput<'_>,
) -> Option<Notice> {
    match read {
        SourceRead::Resolved {
            revision, reference, ..
        } => {
            let message = format!("{reference} at {}", short_revision(revision));
            set_condition_now(status, condition::SOURCE_READY, true, "Fetched", &message, ctx);
            status.desired_revision = Some(revision.clone());
            None
        }
        SourceRead::Failed { reason, message } => {
            let changed = set_condition(
                &mut status.conditions,
                condition::SOURCE_READY,
                false,
                reason,
                message,
                ctx.generation,
                &Time(ctx.now),
            );
            changed.then(|| Notice::warning(reason, format!("Git source: {message}")))
        }
        SourceRead::NotRead => None,
    }
}

/// Writes `decision` into `status`; returns the Events that announce it.
pub fn record(status: &mut AppDeploymentStatus, decision: &Decision, ctx: &RecordInput<'_>) -> Vec<Notice> {
    status.observed_generation = ctx.generation;
    let mut notices = Vec::new();
    match decision {
        Decision::Wait
        | Decision::Run(_)
        | Decision::RecheckBlock { .. }
        | Decision::AwaitJob { .. }
        | Decision::Resync { .. } => {}
        Decision::DriftRepaired(resynced) => drift_repaired(status, resynced, ctx, &mut notices),
        Decision::StartDeploy { revision } => start_deploy(status, revision, ctx, &mut notices),
        Decision::StartRotation { secrets } => start_rotation(status, secrets, ctx, &mut notices),
        Decision::RejectRotation { message, gates } => {
            reject_rotation(status, message, gates, ctx, &mut notices)
        }
        Decision::Advance(result, next) => advance(status, result, *next, ctx, &mut notices),
        Decision::KeepVerifying { gates } => {
            if let Some(operation) = &status.operation
                && operation.kind == OperationKind::Deploy
            {
                let revision = operation.revision.clone();
                record_gates(status, &revision, gates, false);
            }
        }
        Decision::MarkHealthy { gates } => mark_healthy(status, gates, ctx, &mut notices),
        Decision::RollBack {
            failed_revision,
            to,
            message,
            gates,
            downgrade,
        } => roll_back(
            status,
            &RollBackTo {
                failed_revision,
                to,
                message,
                gates,
                downgrade: *downgrade,
            },
            ctx,
            &mut notices,
        ),
        Decision::FinishRollback => finish_rollback(status, ctx, &mut notices),
        Decision::Fail {
            revision,
            message,
            quarantine: held,
            gates,
        } => {
            if let Some(operation) = status.operation.take()
                && operation.step == Step::Migrate
            {
                set_condition_now(
                    status,
                    condition::MIGRATION_SUCCEEDED,
                    false,
                    "MigrationFailed",
                    message,
                    ctx,
                );
            }
            if let Some(held) = held {
                quarantine(status, held, message, ctx);
            }
            record_gates(status, revision, gates, true);
            update_history(status, revision, Phase::Failed, Some(message), true, ctx);
            set_condition_now(status, condition::GATES_PASSED, false, "GateFailed", message, ctx);
            set_phase(status, Phase::Failed, message, ctx);
            notices.push(Notice::warning(
                "Failed",
                format!("revision {}: {message}", short_revision(revision)),
            ));
        }
        Decision::GiveUp { step, message } => give_up(status, *step, message, ctx, &mut notices),
        Decision::Block {
            revision,
            reason,
            message,
            retry,
        } => block(status, revision, *reason, message, *retry, ctx, &mut notices),
        Decision::Retry { step, message } => {
            let Some(operation) = status.operation.as_mut() else {
                return notices;
            };
            // The first attempt, and any whose cause differs from the one before (a
            // webhook failing, then the API server unreachable), is announced; a
            // repeat of the same cause only updates the condition.
            let message = within_budget(message);
            let new_cause = operation.last_error.as_deref() != Some(message.as_str());
            operation.attempt = operation.attempt.saturating_add(1);
            operation.last_error = Some(message.clone());
            let text = format!(
                "retrying step {step} of revision {} (attempt {}): {message}",
                short_revision(&operation.revision),
                operation.attempt
            );
            set_condition_now(status, condition::RECONCILING, true, "Retrying", &text, ctx);
            if new_cause {
                notices.push(Notice::warning("Retrying", text));
            }
        }
        Decision::BlockOnProblem(problem) => {
            let reason = problem.kind.reason();
            // The Ready condition keeps the message within the budget: compared so.
            let changed = status.phase != Phase::Blocked
                || ready_message(status) != Some(within_budget(&problem.message).as_str());
            set_phase_with_reason(status, Phase::Blocked, reason, &problem.message, ctx);
            if changed {
                let about = status
                    .operation
                    .as_ref()
                    .map(|op| op.revision.as_str())
                    .or(ctx.desired)
                    .map(|revision| format!("revision {}: ", short_revision(revision)))
                    .unwrap_or_default();
                notices.push(Notice::warning(reason, format!("{about}{}", problem.message)));
            }
        }
        Decision::Suspend => {
            set_phase(
                status,
                Phase::Suspended,
                "spec.suspend is set: Git is not followed",
                ctx,
            );
            let about = status
                .current_revision
                .as_deref()
                .map(|revision| format!(" (revision {} stays as it is)", short_revision(revision)))
                .unwrap_or_default();
            notices.push(Notice::normal(
                "Suspended",
                format!("spec.suspend is set: Git is not followed{about}"),
            ));
        }
        Decision::Resume { phase } => {
            if let Some(operation) = status.operation.as_mut() {
                // The step starts over with a fresh deadline (and, for verification, a
                // fresh window).
                operation.step_started_at = ctx.now_text();
                operation.attempt = 0;
                operation.last_error = None;
            }
            let about = status
                .operation
                .as_ref()
                .map(|op| op.revision.as_str())
                .or(status.current_revision.as_deref())
                .map(short_revision)
                .unwrap_or_default();
            let message = format!("resumed: {phase} (revision {about})");
            set_phase(status, *phase, &message, ctx);
            notices.push(Notice::normal("Resumed", message));
        }
        Decision::LiftQuarantine { revision } => {
            status.quarantined.retain(|q| &q.revision != revision);
            notices.push(Notice::normal(
                "RetryRequested",
                format!(
                    "revision {}: quarantine lifted on request (annotation bosun.dev/retry); it may deploy again",
                    short_revision(revision)
                ),
            ));
        }
        Decision::Adopt { revision } => {
            status.blocked = None;
            let message = format!(
                "Git points at the running healthy revision {}",
                short_revision(revision)
            );
            set_phase(status, Phase::Healthy, &message, ctx);
            notices.push(Notice::normal("Healthy", message));
        }
    }
    notices
}

/// What a drift repair found: what the app owns now, and whether a prune failed (the
/// `Pruned` condition, present only while it is false). Drift that was corrected is
/// announced; a repair that found nothing is not.
fn drift_repaired(
    status: &mut AppDeploymentStatus,
    resynced: &Resynced,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    if !resynced.sent.is_empty() || resynced.pruned > 0 {
        let note = format!(
            "revision {}: corrected drift: {} re-applied{}, {} pruned",
            status
                .current_revision
                .as_deref()
                .map(short_revision)
                .unwrap_or_default(),
            resynced.sent.len(),
            if resynced.sent.is_empty() {
                String::new()
            } else {
                format!(" ({})", resynced.sent.join(", "))
            },
            resynced.pruned
        );
        notices.push(Notice::normal("DriftCorrected", note));
    }
    status.inventory = resynced.inventory.clone();
    if resynced.prune_failures.is_empty() {
        remove_condition(&mut status.conditions, condition::PRUNED);
    } else {
        let message = format!(
            "could not prune (retried): {}",
            resynced.prune_failures.join("; ")
        );
        set_condition_now(status, condition::PRUNED, false, "PruneFailed", &message, ctx);
    }
}

fn start_deploy(
    status: &mut AppDeploymentStatus,
    revision: &str,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let short = short_revision(revision);
    let previous = status.operation.take();
    let mut interrupted = None;
    if let Some(previous) = previous {
        match previous.kind {
            // A verification in progress is kept aside: if this revision is refused
            // before anything of it is written, it carries on.
            OperationKind::Deploy if previous.step == Step::Verify => {
                interrupted = Some(InterruptedVerification {
                    revision: previous.revision,
                    started_at: previous.started_at,
                    step_started_at: previous.step_started_at,
                    render_digest: previous.render_digest,
                    snapshot: previous.snapshot,
                    applied_at: previous.applied_at,
                    restart_baseline: previous.restart_baseline,
                });
            }
            // An unfinished deploy that never went live is simply replaced (what it may
            // have written is in the inventory and pruned by this one).
            OperationKind::Deploy => {
                let message = format!("superseded by {short}");
                update_history(
                    status,
                    &previous.revision,
                    Phase::Failed,
                    Some(&message),
                    true,
                    ctx,
                );
            }
            OperationKind::Rollback => {
                if let Some(failed) = &previous.failed_revision {
                    let message = format!("rollback given up for {short}");
                    update_history(status, failed, Phase::RolledBack, Some(&message), true, ctx);
                }
            }
        }
    }
    if status
        .blocked
        .as_ref()
        .is_some_and(|block| block.revision != revision)
    {
        status.blocked = None;
    }
    let now = ctx.now_text();
    if open_entry(status, revision).is_none() {
        open_history(status, revision, Phase::Applying, &now, ctx.history_limit);
    } else {
        update_history(status, revision, Phase::Applying, None, false, ctx);
    }
    status.operation = Some(Operation {
        kind: OperationKind::Deploy,
        revision: revision.to_string(),
        failed_revision: None,
        step: Step::Render,
        attempt: 0,
        last_error: None,
        started_at: now.clone(),
        step_started_at: now,
        render_digest: None,
        snapshot: None,
        applied_at: None,
        restart_baseline: Default::default(),
        interrupted,
        rotation: Default::default(),
        failed_snapshot: None,
    });
    remove_condition(&mut status.conditions, condition::PRUNED);
    let message = format!("applying revision {short}");
    set_phase(status, Phase::Applying, &message, ctx);
    notices.push(Notice::normal("Applying", message));
}

/// Writes what the step learned and moves the operation to `next` (decided by
/// [`super::decide`]), announcing a change of phase.
fn advance(
    status: &mut AppDeploymentStatus,
    result: &StepResult,
    next: Next,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let spec_digest = ctx.spec_digest.to_string();
    let now = ctx.now_text();
    let Some(operation) = status.operation.as_mut() else {
        return;
    };
    match result {
        StepResult::Rendered { render_digest, .. } => {
            operation.render_digest = Some(render_digest.clone());
        }
        StepResult::SnapshotStored { name } => {
            operation.snapshot = Some(name.clone());
        }
        StepResult::PreflightPassed => {
            let message = format!(
                "revision {}: the env contract and every Secret reference hold",
                short_revision(&operation.revision)
            );
            set_condition_now(
                status,
                condition::PREFLIGHT_PASSED,
                true,
                "PreflightPassed",
                &message,
                ctx,
            );
        }
        StepResult::JobFinished(job) => {
            let job = job.clone();
            record_job(status, job.clone(), ctx);
            let revision = short_revision(&job.revision);
            match (job.kind, job.succeeded) {
                (JobKind::Migrate, true) => {
                    let message = format!("revision {revision}: migration Job {} succeeded", job.job);
                    set_condition_now(
                        status,
                        condition::MIGRATION_SUCCEEDED,
                        true,
                        "MigrationSucceeded",
                        &message,
                        ctx,
                    );
                    notices.push(Notice::normal("Migrated", message));
                }
                (JobKind::Backup, true) => notices.push(Notice::normal(
                    "BackedUp",
                    format!("revision {revision}: backup Job {} succeeded", job.job),
                )),
                (JobKind::Downgrade, true) => notices.push(Notice::normal(
                    "Downgraded",
                    format!("revision {revision}: downgrade Job {} succeeded", job.job),
                )),
                // Only an optional backup's failure goes on (see `core::decide`).
                (JobKind::Migrate | JobKind::Downgrade, false) => {}
                (JobKind::Backup, false) => notices.push(Notice::warning(
                    "BackupFailed",
                    format!(
                        "revision {revision}: backup Job {} failed; going on (spec.backup.required is false): {}",
                        job.job,
                        job.message.as_deref().unwrap_or("no reason given")
                    ),
                )),
            }
        }
        StepResult::Planned { inventory } => {
            // Written ahead: whatever the apply creates is owned even if it stops half-way.
            let owned = union(&status.inventory, inventory);
            status.inventory = owned;
        }
        StepResult::Applied(applied) => {
            // When the apply step began: every object it created (and every pod the
            // workload controllers made from them) is younger, to the second.
            operation.applied_at = Some(operation.step_started_at.clone());
            operation.restart_baseline = applied.restart_baseline.clone();
            let revision = operation.revision.clone();
            let kind = operation.kind;
            let snapshot = operation.snapshot.clone();
            // The verification this revision interrupted is over: superseded.
            if let Some(interrupted) = operation.interrupted.take() {
                let message = format!("superseded by {}", short_revision(&revision));
                update_history(
                    status,
                    &interrupted.revision,
                    Phase::Failed,
                    Some(&message),
                    true,
                    ctx,
                );
            }
            status.inventory = applied.inventory.clone();
            status.secret_digests = applied.secret_digests.clone();
            // A rollback puts back the last healthy render, made with the spec of then.
            status.current_spec_digest = match kind {
                OperationKind::Deploy => Some(spec_digest),
                OperationKind::Rollback => status.last_healthy_spec_digest.clone().or(Some(spec_digest)),
            };
            status.current_snapshot = snapshot;
            set_current_revision(status, &revision);
            if applied.prune_failures.is_empty() {
                remove_condition(&mut status.conditions, condition::PRUNED);
            } else {
                let message = format!("could not prune (retried): {}", applied.prune_failures.join("; "));
                set_condition_now(status, condition::PRUNED, false, "PruneFailed", &message, ctx);
                notices.push(Notice::warning(
                    "PruneFailed",
                    format!("revision {}: {message}", short_revision(&revision)),
                ));
            }
            let message = format!(
                "revision {} applied ({} sent, {} unchanged, {} pruned); verifying",
                short_revision(&revision),
                applied.sent,
                applied.unchanged,
                applied.pruned
            );
            match kind {
                OperationKind::Deploy => {
                    update_history(status, &revision, Phase::Verifying, Some(&message), false, ctx);
                    set_condition_now(status, condition::GATES_PASSED, false, "Verifying", &message, ctx);
                    set_phase(status, next.phase, &message, ctx);
                    notices.push(Notice::normal("Verifying", message));
                }
                OperationKind::Rollback => {
                    let message = format!("last healthy {message}");
                    set_phase(status, next.phase, &message, ctx);
                    notices.push(Notice::warning("RollbackApplied", message));
                }
            }
        }
    }
    if let Some(operation) = status.operation.as_mut() {
        operation.step = next.step;
        operation.step_started_at = now;
        operation.attempt = 0;
        operation.last_error = None;
    }
    remove_retrying(status, ctx);
    // The phase follows the step (applied: already written, with what was applied).
    if let Some(operation) = status.operation.as_ref()
        && !matches!(result, StepResult::Applied(_))
        && status.phase != next.phase
    {
        let what = match next.phase {
            Phase::BackingUp => "backing up",
            Phase::Migrating => "migrating",
            Phase::RollingBack => "rolling back",
            _ => "applying",
        };
        let message = format!("{what} for revision {}", short_revision(&operation.revision));
        if operation.kind == OperationKind::Deploy {
            update_history(status, &operation.revision.clone(), next.phase, None, false, ctx);
        }
        set_phase(status, next.phase, &message, ctx);
    }
}

/// The step after the current one. A Deploy goes Render → Snapshot → Preflight →
/// Backup → Migrate → Inventory → Apply → Verify, leaving out a Job the Runbook does
/// not ask for or that already succeeded for the revision (a migration never runs
/// twice; neither does the backup made for it); a rollout of a Secret change runs no
/// Job. A Rollback starts at Downgrade or Inventory (see [`record`]).
pub fn next_step(operation: &Operation, jobs: &[JobRecord], plan: StepPlan) -> Step {
    let done = |kind: JobKind| {
        jobs.iter()
            .any(|job| job.kind == kind && job.revision == operation.revision && job.succeeded)
    };
    let rotation = !operation.rotation.is_empty();
    let backup = plan.backup && !rotation && !done(JobKind::Backup) && !done(JobKind::Migrate);
    let migrate = plan.migrate && !rotation && !done(JobKind::Migrate);
    match operation.step {
        Step::Render => Step::Snapshot,
        Step::Snapshot => Step::Preflight,
        Step::Preflight if operation.kind == OperationKind::Deploy && backup => Step::Backup,
        Step::Preflight | Step::Backup if operation.kind == OperationKind::Deploy && migrate => Step::Migrate,
        Step::Preflight | Step::Backup | Step::Migrate | Step::Downgrade => Step::Inventory,
        Step::Inventory => Step::Apply,
        Step::Apply | Step::Verify => Step::Verify,
    }
}

/// Keeps the newest record of every Job (one per name), newest first.
fn record_job(status: &mut AppDeploymentStatus, job: JobRecord, ctx: &RecordInput<'_>) {
    status.jobs.retain(|existing| existing.job != job.job);
    status.jobs.insert(0, job);
    status.jobs.truncate(ctx.history_limit.max(MIN_JOB_RECORDS));
}

fn mark_healthy(
    status: &mut AppDeploymentStatus,
    gates: &[GateVerdict],
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let Some(operation) = status.operation.take() else {
        return;
    };
    let revision = operation.revision;
    let short = short_revision(&revision);
    set_last_healthy(status, &revision, operation.snapshot);
    status.last_healthy_spec_digest = status.current_spec_digest.clone();
    if status
        .blocked
        .as_ref()
        .is_some_and(|block| block.revision == revision)
    {
        status.blocked = None;
    }
    // The workloads just verified run with the data of `secret_digests`: no refusal of
    // a Secret's data stands any more. Should refused data come back, it is a change
    // like any other, rolled out through the gates (never silently left out).
    status.rejected_secret_digests.clear();
    let message = format!("revision {short} passed every gate");
    record_gates(status, &revision, gates, true);
    update_history(status, &revision, Phase::Healthy, Some(&message), true, ctx);
    set_condition_now(
        status,
        condition::GATES_PASSED,
        true,
        "GatesPassed",
        &message,
        ctx,
    );
    let phase = phase_at_rest(status, ctx.desired, ctx.spec_digest);
    let phase_message = match (phase, &status.blocked) {
        (Phase::Blocked, Some(block)) => format!(
            "{message}; Git tip {} is blocked: {}",
            short_revision(&block.revision),
            block.message
        ),
        _ => message.clone(),
    };
    set_phase(status, phase, &phase_message, ctx);
    notices.push(Notice::normal("Healthy", message));
}

/// What a [`Decision::RollBack`] says.
struct RollBackTo<'a> {
    failed_revision: &'a str,
    to: &'a str,
    message: &'a str,
    gates: &'a [GateVerdict],
    downgrade: bool,
}

fn roll_back(
    status: &mut AppDeploymentStatus,
    rollback: &RollBackTo<'_>,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let RollBackTo {
        failed_revision,
        to,
        message,
        gates,
        downgrade,
    } = *rollback;
    // The failed revision's snapshot: a downgrade Job takes its image from there.
    let failed_snapshot = status
        .operation
        .as_ref()
        .filter(|op| op.revision == failed_revision)
        .and_then(|op| op.snapshot.clone())
        .or_else(|| status.current_snapshot.clone());
    quarantine(status, failed_revision, message, ctx);
    record_gates(status, failed_revision, gates, true);
    update_history(
        status,
        failed_revision,
        Phase::RollingBack,
        Some(message),
        false,
        ctx,
    );
    set_condition_now(status, condition::GATES_PASSED, false, "GateFailed", message, ctx);
    let now = ctx.now_text();
    status.operation = Some(Operation {
        kind: OperationKind::Rollback,
        revision: to.to_string(),
        failed_revision: Some(failed_revision.to_string()),
        step: if downgrade {
            Step::Downgrade
        } else {
            Step::Inventory
        },
        attempt: 0,
        last_error: None,
        started_at: now.clone(),
        step_started_at: now,
        render_digest: None,
        snapshot: status.last_healthy_snapshot.clone(),
        applied_at: None,
        restart_baseline: Default::default(),
        interrupted: None,
        rotation: Default::default(),
        failed_snapshot,
    });
    let note = format!(
        "revision {} failed ({message}); rolling back to {}{}",
        short_revision(failed_revision),
        short_revision(to),
        if downgrade {
            " after its migration is downgraded"
        } else {
            ""
        }
    );
    set_phase(status, Phase::RollingBack, &note, ctx);
    notices.push(Notice::warning("RollingBack", note));
}

/// Opens a Deploy of the running revision for a Secret change: its snapshot is applied
/// again from preflight on, with the new digests in the pod templates.
fn start_rotation(
    status: &mut AppDeploymentStatus,
    secrets: &BTreeMap<String, String>,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let Some(revision) = status.current_revision.clone() else {
        return;
    };
    let names: Vec<String> = secrets.keys().cloned().collect();
    let now = ctx.now_text();
    open_history(status, &revision, Phase::Applying, &now, ctx.history_limit);
    if let Some(entry) = open_entry(status, &revision) {
        entry.rotation = names.clone();
    }
    status.operation = Some(Operation {
        kind: OperationKind::Deploy,
        revision: revision.clone(),
        failed_revision: None,
        step: Step::Preflight,
        attempt: 0,
        last_error: None,
        started_at: now.clone(),
        step_started_at: now,
        render_digest: None,
        snapshot: status.current_snapshot.clone(),
        applied_at: None,
        restart_baseline: Default::default(),
        interrupted: None,
        rotation: secrets.clone(),
        failed_snapshot: None,
    });
    let message = format!(
        "Secret {} changed: rolling out revision {} again",
        names.join(", "),
        short_revision(&revision)
    );
    set_phase(status, Phase::Applying, &message, ctx);
    notices.push(Notice::normal("RotatingSecrets", message));
}

/// A Secret change that failed preflight or the gates: the app is `Failed` until the
/// Secret changes again (or a commit comes); the change is not rolled out again.
fn reject_rotation(
    status: &mut AppDeploymentStatus,
    message: &str,
    gates: &[GateVerdict],
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let Some(operation) = status.operation.take() else {
        return;
    };
    let names: Vec<String> = operation.rotation.keys().cloned().collect();
    status.rejected_secret_digests.extend(operation.rotation.clone());
    let note = format!(
        "the rollout of a change of Secret {} failed: {message} (the Secret's old data is not restored by \
         bosun; fix the Secret or push a commit)",
        names.join(", ")
    );
    record_gates(status, &operation.revision, gates, true);
    update_history(status, &operation.revision, Phase::Failed, Some(&note), true, ctx);
    if !gates.is_empty() {
        set_condition_now(status, condition::GATES_PASSED, false, "GateFailed", &note, ctx);
    }
    set_phase_with_reason(status, Phase::Failed, "RotationFailed", &note, ctx);
    notices.push(Notice::warning(
        "RotationFailed",
        format!("revision {}: {note}", short_revision(&operation.revision)),
    ));
}

fn finish_rollback(status: &mut AppDeploymentStatus, ctx: &RecordInput<'_>, notices: &mut Vec<Notice>) {
    let Some(operation) = status.operation.take() else {
        return;
    };
    let message = match &operation.failed_revision {
        Some(failed) => format!(
            "rolled back from {} to last healthy revision {}",
            short_revision(failed),
            short_revision(&operation.revision)
        ),
        None => format!(
            "rolled back to last healthy revision {}",
            short_revision(&operation.revision)
        ),
    };
    if let Some(failed) = &operation.failed_revision {
        update_history(status, failed, Phase::RolledBack, None, true, ctx);
    }
    set_condition_now(status, condition::ROLLED_BACK, true, "RolledBack", &message, ctx);
    // Healthy only when what runs is what Git (or the pin) asks for; while Git still
    // points at the failed revision (or cannot be read) the phase says it was rolled back.
    let phase = match phase_at_rest(status, ctx.desired, ctx.spec_digest) {
        Phase::Healthy if ctx.desired.is_some() && runs_desired(status, ctx) => Phase::Healthy,
        Phase::Blocked => Phase::Blocked,
        _ => Phase::RolledBack,
    };
    set_phase(status, phase, &message, ctx);
    notices.push(Notice::warning("RolledBack", message));
}

fn give_up(
    status: &mut AppDeploymentStatus,
    step: Step,
    message: &str,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    let Some(operation) = status.operation.take() else {
        return;
    };
    let (revision, note) = match operation.kind {
        OperationKind::Deploy => (operation.revision.clone(), message.to_string()),
        OperationKind::Rollback => (
            operation.failed_revision.clone().unwrap_or_default(),
            format!(
                "rolling back to {} gave up: {message}",
                short_revision(&operation.revision)
            ),
        ),
    };
    if operation.kind == OperationKind::Deploy {
        // Nothing is held against the revision: it is tried again at the next interval.
        status.blocked = Some(BlockedRevision {
            revision: revision.clone(),
            reason: BlockReason::DeadlineExceeded,
            message: within_budget(&note),
            generation: ctx.generation,
            at: ctx.now_text(),
            retry: true,
        });
    }
    let _ = step;
    update_history(status, &revision, Phase::Failed, Some(&note), true, ctx);
    remove_retrying(status, ctx);
    set_phase_with_reason(status, Phase::Failed, "DeadlineExceeded", &note, ctx);
    notices.push(Notice::warning(
        "DeadlineExceeded",
        format!("revision {}: {note}", short_revision(&revision)),
    ));
}

#[allow(clippy::too_many_arguments)]
fn block(
    status: &mut AppDeploymentStatus,
    revision: &str,
    reason: crate::api::BlockReason,
    message: &str,
    retry: bool,
    ctx: &RecordInput<'_>,
    notices: &mut Vec<Notice>,
) {
    // The status and the Event keep the refusal normalised and within the budget (the
    // full text is in the log): the same refusal worded anew is the same block.
    let message = super::block::block_message(message);
    let message = message.as_str();
    let note = format!("revision {}: {message}", short_revision(revision));
    if reason == BlockReason::PreflightFailed {
        set_condition_now(
            status,
            condition::PREFLIGHT_PASSED,
            false,
            "PreflightFailed",
            &note,
            ctx,
        );
    }
    let repeated = status.blocked.as_ref().is_some_and(|block| {
        block.revision == revision && block.reason == reason && block.message == message
    });
    status.blocked = Some(BlockedRevision {
        revision: revision.to_string(),
        reason,
        message: message.to_string(),
        generation: ctx.generation,
        at: ctx.now_text(),
        retry,
    });
    if open_entry(status, revision).is_none() && !repeated {
        match status.history.iter_mut().find(|entry| entry.revision == revision) {
            // Blocked again for another reason: the revision keeps its one entry (a new
            // entry per re-check would push the healthy ones out of the history).
            Some(entry) if entry.phase == Phase::Blocked => entry.finished_at = None,
            _ => open_history(
                status,
                revision,
                Phase::Blocked,
                &ctx.now_text(),
                ctx.history_limit,
            ),
        }
    }
    update_history(status, revision, Phase::Blocked, Some(message), true, ctx);
    remove_retrying(status, ctx);
    let interrupted = status
        .operation
        .take()
        .filter(|op| op.revision == revision)
        .and_then(|op| op.interrupted);
    match interrupted {
        Some(verification) => {
            // Nothing of the blocked revision was written: the one it interrupted
            // carries on with its verification.
            let message = format!(
                "{note}; still verifying {}",
                short_revision(&verification.revision)
            );
            status.operation = Some(Operation {
                kind: OperationKind::Deploy,
                revision: verification.revision,
                failed_revision: None,
                step: Step::Verify,
                attempt: 0,
                last_error: None,
                started_at: verification.started_at,
                step_started_at: verification.step_started_at,
                render_digest: verification.render_digest,
                snapshot: verification.snapshot,
                applied_at: verification.applied_at,
                restart_baseline: verification.restart_baseline,
                interrupted: None,
                rotation: Default::default(),
                failed_snapshot: None,
            });
            set_phase(status, Phase::Verifying, &message, ctx);
        }
        None => set_phase_with_reason(status, Phase::Blocked, reason.as_str(), &note, ctx),
    }
    if !repeated {
        notices.push(Notice::warning("Blocked", note));
    }
}

/// The phase that says what runs when no operation is in progress.
pub fn phase_at_rest(status: &AppDeploymentStatus, desired: Option<&str>, spec_digest: &str) -> Phase {
    let current = status.current_revision.as_deref();
    let healthy = status.last_healthy_revision.as_deref();
    let runs_healthy = current.is_some() && current == healthy;
    let current_digest = status.current_spec_digest.as_deref().unwrap_or(spec_digest);
    let quarantined = |revision: &str| super::quarantined_at(status, revision, spec_digest);
    match desired {
        Some(desired) if status.blocked.as_ref().is_some_and(|b| b.revision == desired) => {
            if status
                .blocked
                .as_ref()
                .is_some_and(|b| b.reason == BlockReason::DeadlineExceeded)
            {
                Phase::Failed
            } else {
                Phase::Blocked
            }
        }
        Some(desired) if runs_healthy && quarantined(desired) => Phase::RolledBack,
        Some(desired) if runs_healthy && current == Some(desired) && current_digest == spec_digest => {
            Phase::Healthy
        }
        None if runs_healthy => Phase::Healthy,
        _ if current.is_some_and(|c| super::quarantined_at(status, c, current_digest)) => Phase::Failed,
        _ if runs_healthy => Phase::Healthy,
        _ => Phase::Pending,
    }
}

/// Whether what runs is what Git (or the pin) asks for, rendered from the current spec.
fn runs_desired(status: &AppDeploymentStatus, ctx: &RecordInput<'_>) -> bool {
    ctx.desired
        .is_none_or(|desired| status.current_revision.as_deref() == Some(desired))
        && status
            .current_spec_digest
            .as_deref()
            .is_none_or(|digest| digest == ctx.spec_digest)
}

/// The phase that says what an operation at its current step is doing.
pub fn phase_of_step(operation: &Operation) -> Phase {
    phase_of(operation.kind, operation.step)
}

/// The phase that says what an operation of `kind` at `step` is doing.
pub fn phase_of(kind: OperationKind, step: Step) -> Phase {
    match (kind, step) {
        (OperationKind::Rollback, _) => Phase::RollingBack,
        (OperationKind::Deploy, Step::Verify) => Phase::Verifying,
        (OperationKind::Deploy, Step::Backup) => Phase::BackingUp,
        (OperationKind::Deploy, Step::Migrate) => Phase::Migrating,
        (OperationKind::Deploy, _) => Phase::Applying,
    }
}

/// Sets the phase and the kstatus conditions that follow from it. `Ready` is true only
/// when the app is Healthy *and* runs the Git tip (or pin); `Reconciling` (work under
/// way) and `Stalled` (nothing changes without a new commit or spec) are present only
/// while true, as kstatus expects.
pub fn set_phase(status: &mut AppDeploymentStatus, phase: Phase, message: &str, ctx: &RecordInput<'_>) {
    let reason = match phase {
        Phase::Pending
        | Phase::Fetching
        | Phase::BackingUp
        | Phase::Migrating
        | Phase::Applying
        | Phase::Verifying => "Progressing",
        _ => phase.as_str(),
    };
    set_phase_with_reason(status, phase, reason, message, ctx);
}

fn set_phase_with_reason(
    status: &mut AppDeploymentStatus,
    phase: Phase,
    reason: &str,
    message: &str,
    ctx: &RecordInput<'_>,
) {
    status.phase = phase;
    let runs_desired = runs_desired(status, ctx);
    let (ready, reconciling, stalled) = match phase {
        Phase::Healthy => (Some(runs_desired), !runs_desired, false),
        Phase::Pending
        | Phase::Fetching
        | Phase::BackingUp
        | Phase::Migrating
        | Phase::Applying
        | Phase::Verifying
        | Phase::RollingBack => (Some(false), true, false),
        Phase::RolledBack | Phase::Blocked | Phase::Failed => (Some(false), false, true),
        // Suspension changes nothing about what runs: Ready keeps its last word.
        Phase::Suspended => (None, false, false),
    };
    let ready_reason = if phase == Phase::Healthy && !runs_desired {
        "Progressing"
    } else {
        reason
    };
    if let Some(ready) = ready {
        set_condition_now(status, condition::READY, ready, ready_reason, message, ctx);
    }
    if reconciling {
        if !is_retrying(status) {
            set_condition_now(status, condition::RECONCILING, true, phase.as_str(), message, ctx);
        }
    } else {
        remove_condition(&mut status.conditions, condition::RECONCILING);
    }
    if stalled {
        set_condition_now(status, condition::STALLED, true, reason, message, ctx);
    } else {
        remove_condition(&mut status.conditions, condition::STALLED);
    }
    if phase == Phase::Healthy {
        remove_condition(&mut status.conditions, condition::ROLLED_BACK);
    }
}

fn is_retrying(status: &AppDeploymentStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::RECONCILING && c.reason == "Retrying")
}

/// A step that finished is no longer being retried.
fn remove_retrying(status: &mut AppDeploymentStatus, ctx: &RecordInput<'_>) {
    if is_retrying(status) {
        remove_condition(&mut status.conditions, condition::RECONCILING);
        let phase = status.phase;
        let message = ready_message(status).unwrap_or_default().to_string();
        set_phase(status, phase, &message, ctx);
    }
}

fn ready_message(status: &AppDeploymentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.message.as_str())
}

pub fn set_condition_now(
    status: &mut AppDeploymentStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    ctx: &RecordInput<'_>,
) {
    set_condition(
        &mut status.conditions,
        type_,
        value,
        reason,
        message,
        ctx.generation,
        &Time(ctx.now),
    );
}

pub fn set_current_revision(status: &mut AppDeploymentStatus, revision: &str) {
    status.current_revision = Some(revision.to_string());
    status.current_revision_short = Some(short_revision(revision));
}

fn set_last_healthy(status: &mut AppDeploymentStatus, revision: &str, snapshot: Option<String>) {
    status.last_healthy_revision = Some(revision.to_string());
    status.last_healthy_revision_short = Some(short_revision(revision));
    status.last_healthy_snapshot = snapshot;
}

/// Opens a history entry for `revision`, newest first, bounded by `limit`.
pub fn open_history(
    status: &mut AppDeploymentStatus,
    revision: &str,
    phase: Phase,
    started_at: &str,
    limit: usize,
) {
    status.history.insert(
        0,
        HistoryEntry {
            revision: revision.to_string(),
            phase,
            started_at: started_at.to_string(),
            ..Default::default()
        },
    );
    status.history.truncate(limit.max(1));
}

/// The unfinished history entry of `revision`, if any.
pub fn open_entry<'a>(status: &'a mut AppDeploymentStatus, revision: &str) -> Option<&'a mut HistoryEntry> {
    status
        .history
        .iter_mut()
        .find(|entry| entry.revision == revision && entry.finished_at.is_none())
}

/// Updates the open entry of `revision`; `finished` closes it.
pub fn update_history(
    status: &mut AppDeploymentStatus,
    revision: &str,
    phase: Phase,
    message: Option<&str>,
    finished: bool,
    ctx: &RecordInput<'_>,
) {
    if let Some(entry) = open_entry(status, revision) {
        entry.phase = phase;
        if let Some(message) = message {
            entry.message = Some(within_budget(message));
        }
        if finished {
            entry.finished_at = Some(ctx.now_text());
        }
    }
}

/// The gates' verdicts on the open entry of `revision`. While verification goes on only
/// a change of verdict is written (a message that changes every probe would rewrite the
/// status every round); `always` writes the final word.
fn record_gates(status: &mut AppDeploymentStatus, revision: &str, gates: &[GateVerdict], always: bool) {
    if gates.is_empty() {
        return;
    }
    if let Some(entry) = open_entry(status, revision) {
        let verdicts = |list: &[GateVerdict]| -> Vec<(String, crate::api::Verdict)> {
            list.iter().map(|g| (g.name.clone(), g.verdict)).collect()
        };
        if always || verdicts(&entry.gates) != verdicts(gates) {
            entry.gates = gates.to_vec();
        }
    }
}

/// Quarantines `revision` at the current generation; a repeat failure refreshes it.
pub fn quarantine(status: &mut AppDeploymentStatus, revision: &str, reason: &str, ctx: &RecordInput<'_>) {
    status.quarantined.retain(|q| q.revision != revision);
    status.quarantined.insert(
        0,
        Quarantine {
            revision: revision.to_string(),
            reason: within_budget(reason),
            at: ctx.now_text(),
            generation: ctx.generation,
            spec_digest: Some(ctx.spec_digest.to_string()),
        },
    );
    status.quarantined.truncate(MAX_QUARANTINED);
}

/// Sorted union of what is owned and what is planned; an entry already owned keeps
/// its `adopted` flag.
pub fn union(owned: &[InventoryEntry], planned: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let mut all: Vec<InventoryEntry> = owned.to_vec();
    for entry in planned {
        if !all.iter().any(|e| e.same_object(entry)) {
            all.push(entry.clone());
        }
    }
    all.sort();
    all
}

/// How long since an RFC 3339 time in status (zero if it does not parse or is ahead).
pub fn elapsed_since(now: Timestamp, since: &str) -> Duration {
    since
        .parse::<Timestamp>()
        .ok()
        .and_then(|at| now.duration_since(at).try_into().ok())
        .unwrap_or(Duration::ZERO)
}
