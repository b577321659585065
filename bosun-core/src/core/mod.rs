//! The pure decision at the heart of bosun: given what the user asked for (spec),
//! what bosun recorded (status), what it just observed (Git tip, Runbook) and what the
//! step it just ran reported, which step comes next. No I/O and no clock of its own:
//! the controller gathers the [`Input`], calls [`decide`], lets [`record`] write the
//! [`Decision`] into the status, persists it, and only then carries the decision out.
//!
//! The life of a revision is an [`Operation`] (Deploy or Rollback) moving through its
//! [`Step`]s. Each step reports a [`StepOutcome`]; this module alone turns outcomes
//! into the next step, a rollback, a block or a failure.

pub mod block;
mod outcome;
pub mod record;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{
    AppDeploymentStatus, BlockReason, GateVerdict, JobKind, MigrationRollbackPolicy, Operation,
    OperationKind, Phase, Step,
};

pub use outcome::{Applied, Failure, FailureKind, Resynced, StepOutcome, StepResult, Verification};

pub use record::next_step;

/// What the Git side says the app should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredRevision {
    /// The source ref (or `spec.pin.revision`) resolves to this commit.
    Known { revision: String, pinned: bool },
    /// The source could not be read; the reason is already in a condition.
    Unavailable,
}

/// What reading the source (the Git ref, or the pin) found this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRead {
    /// `reference` (how the `SourceReady` condition names it) resolves to `revision`.
    Resolved {
        revision: String,
        pinned: bool,
        reference: String,
    },
    /// The source could not be read: why, as a condition reason and message.
    Failed { reason: &'static str, message: String },
    /// Not read this pass (the app is suspended, or its spec may not be fetched).
    NotRead,
}

impl SourceRead {
    /// The revision the source asks for.
    pub fn desired(&self) -> DesiredRevision {
        match self {
            SourceRead::Resolved { revision, pinned, .. } => DesiredRevision::Known {
                revision: revision.clone(),
                pinned: *pinned,
            },
            SourceRead::Failed { .. } | SourceRead::NotRead => DesiredRevision::Unavailable,
        }
    }
}

impl DesiredRevision {
    pub fn revision(&self) -> Option<&str> {
        match self {
            DesiredRevision::Known { revision, .. } => Some(revision),
            DesiredRevision::Unavailable => None,
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub status: &'a AppDeploymentStatus,
    pub generation: Option<i64>,
    pub suspended: bool,
    /// Runbook `rollback.automatic` (default true).
    pub automatic_rollback: bool,
    pub desired: DesiredRevision,
    /// Digest of the spec fields that shape what is applied
    /// ([`crate::api::AppDeploymentSpec::apply_digest`]).
    pub spec_digest: &'a str,
    /// The spec or the Runbook cannot be acted on (what and where); nothing proceeds,
    /// nothing is held against a revision.
    pub problem: Option<Failure>,
    /// What the step run just before, in this same pass, reported.
    pub outcome: Option<StepOutcome>,
    pub now: Timestamp,
    /// How long one step may take (the Runbook's `progressDeadline`).
    pub step_deadline: Duration,
    /// How often Git is looked at (`spec.source.git.interval`): the pace of re-checks
    /// of a blocked revision and of drift repair.
    pub interval: Duration,
    /// When this controller last checked the blocked revision again (checks cost no
    /// write, so the status does not say; `None`: not since it took the app over).
    pub block_checked_at: Option<Timestamp>,
    /// When a Secret or ConfigMap of the target namespace last changed (as the watch
    /// caches saw it; `None`: not since they started).
    pub config_changed_at: Option<Timestamp>,
    /// What checking the blocked revision again (render and dry run, nothing written)
    /// found, in this same pass.
    pub recheck: Option<Recheck>,
    /// Which optional steps the Runbook asks for.
    pub plan: StepPlan,
    /// When the running revision was last applied again to repair drift (or applied
    /// and verified); `None`: not since this controller took the app over.
    pub last_resync: Option<Timestamp>,
    /// The Runbook rolls the running revision out again when a Secret it reads changes
    /// (`spec.secrets.rolloutOnChange`, default true).
    pub rollout_on_secret_change: bool,
    /// The digest of the data every Secret of `status.secretDigests` holds now
    /// (`namespace/name` → digest), as far as the app's identity may read it; a Secret
    /// that is gone is not listed (preflight's business, not a rotation).
    pub secret_data: BTreeMap<String, String>,
    /// A person asked for a quarantined revision to be tried again (the AppDeployment's
    /// `bosun.dev/retry` annotation, read by the controller).
    pub retry: Option<RetryRequest>,
}

/// Annotation on an AppDeployment naming a quarantined revision (full commit id) a
/// person wants tried again (`kubectl bosun retry`).
pub const RETRY_ANNOTATION: &str = "bosun.dev/retry";
/// When the retry was asked for (RFC 3339): a quarantine recorded later stands.
pub const RETRY_AT_ANNOTATION: &str = "bosun.dev/retry-at";

impl RetryRequest {
    /// The request the annotations make, if both are there and readable.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<RetryRequest> {
        let revision = annotations.get(RETRY_ANNOTATION)?.trim();
        let requested_at = annotations.get(RETRY_AT_ANNOTATION)?.trim().parse().ok()?;
        (!revision.is_empty()).then(|| RetryRequest {
            revision: revision.to_string(),
            requested_at,
        })
    }
}

/// A request to try a quarantined (or failed) revision again. It is honoured once: a
/// quarantine recorded after `requested_at` (the revision failed again) stands, and a
/// revision that started again after it is not restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRequest {
    /// The full commit id.
    pub revision: String,
    pub requested_at: Timestamp,
}

/// The optional steps of a Runbook: a backup Job, a migration Job, and what a rollback
/// does to a migrated schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub backup: bool,
    /// A failed backup is a warning and the deploy goes on (`spec.backup.required:
    /// false`); otherwise it fails the revision like any required Job.
    pub backup_optional: bool,
    pub migrate: bool,
    pub migration_rollback: MigrationRollbackPolicy,
}

/// What a re-check of a blocked revision found.
#[derive(Clone, Debug, PartialEq)]
pub enum Recheck {
    /// Nothing refuses it any more: deploy it.
    Clear,
    /// Still refused (perhaps for another reason).
    Refused(Failure),
    /// The check itself could not be made now.
    Transient(String),
}

/// Where a finished step leads: the step that comes next and the phase that says
/// what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    pub step: Step,
    pub phase: Phase,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to change now.
    Wait,
    /// Run the current step of the operation in progress (already persisted).
    Run(Step),
    /// Open a Deploy operation for `revision` at its first step. A verification in
    /// progress is kept aside and restored if this revision is refused before any of it
    /// is written; a rollback in progress is given up for it (a pin or a new commit).
    StartDeploy { revision: String },
    /// The step finished: record what it learned and move to the next step, whose
    /// phase says what it does.
    Advance(StepResult, Next),
    /// Verification goes on; the gates' verdicts so far.
    KeepVerifying { gates: Vec<GateVerdict> },
    /// The deployed revision passed every gate for the whole window.
    MarkHealthy { gates: Vec<GateVerdict> },
    /// Flip back to the last healthy revision and quarantine the failed one; with
    /// `downgrade`, the failed revision's migration is undone first.
    RollBack {
        failed_revision: String,
        to: String,
        message: String,
        gates: Vec<GateVerdict>,
        downgrade: bool,
    },
    /// The rollback target verified: the app runs its last healthy revision again.
    FinishRollback,
    /// The revision failed with nothing to flip to (or rollback off, or the rollback
    /// itself failed): phase `Failed`; `quarantine` is the revision held out from now on.
    Fail {
        revision: String,
        message: String,
        quarantine: Option<String>,
        gates: Vec<GateVerdict>,
    },
    /// A step kept failing for reasons outside the revision until its deadline: phase
    /// `Failed`, nothing quarantined; the revision is tried again at the next interval.
    GiveUp { step: Step, message: String },
    /// The revision was refused before anything of it was written.
    Block {
        revision: String,
        reason: BlockReason,
        message: String,
        retry: bool,
    },
    /// The step failed for a reason that may pass: try it again after a back-off.
    Retry { step: Step, message: String },
    /// The spec or the Runbook cannot be acted on: phase `Blocked`; an operation in
    /// progress waits (it is neither failed nor rolled back).
    BlockOnProblem(Failure),
    /// `spec.suspend` is set: record the phase; an operation in progress waits.
    Suspend,
    /// `spec.suspend` was removed (or a problem fixed): the phase says again what runs,
    /// and a waiting operation's step starts over with a fresh deadline.
    Resume { phase: Phase },
    /// Git points at the revision already running and known healthy (e.g. after a
    /// revert): record it as Healthy without re-applying.
    Adopt { revision: String },
    /// A person asked for the quarantined `revision` to be tried again: its quarantine
    /// entries are removed, and the next decision deploys it if Git (or the pin)
    /// points at it.
    LiftQuarantine { revision: String },
    /// Check a blocked revision again without writing anything (render and a dry run):
    /// a block that may pass costs no write while it lasts.
    RecheckBlock { revision: String },
    /// Secrets the running revision reads changed: roll its workloads through preflight
    /// and the gates, as a revision (`namespace/name` → digest of the new data).
    StartRotation { secrets: BTreeMap<String, String> },
    /// A Job of the current step is still running: look again shortly.
    AwaitJob { message: String },
    /// The rollout of a Secret change failed: phase `Failed`; the old data is not
    /// bosun's to restore, and the same data is not rolled out again.
    RejectRotation {
        message: String,
        gates: Vec<GateVerdict>,
    },
    /// Nothing else to do and an interval has passed since the last time: apply the
    /// running, healthy revision's snapshot again (what drifted is sent, what failed to
    /// prune is pruned). Nothing is recorded before it runs.
    Resync { revision: String, snapshot: String },
    /// The drift repair ran: record what the app owns now and whether pruning failed.
    DriftRepaired(Resynced),
}

impl Decision {
    /// Whether the controller decides again at once after recording this decision
    /// (the decision changed the status but did no I/O of its own).
    pub fn continues(&self) -> bool {
        matches!(
            self,
            Decision::StartDeploy { .. }
                | Decision::StartRotation { .. }
                | Decision::Advance(..)
                | Decision::RollBack { .. }
                | Decision::Block { .. }
                | Decision::Resume { .. }
                | Decision::Adopt { .. }
                | Decision::LiftQuarantine { .. }
                | Decision::DriftRepaired(_)
        )
    }
}

pub fn decide(input: &Input<'_>) -> Decision {
    if let Some(StepOutcome::Resynced(resynced)) = &input.outcome {
        return Decision::DriftRepaired(resynced.clone());
    }
    let decision = match &input.status.operation {
        Some(operation) => decide_operation(input, operation),
        None => decide_at_rest(input),
    };
    match decision {
        Decision::Wait => resync_due(input).unwrap_or(Decision::Wait),
        other => other,
    }
}

/// Drift is repaired once per interval, and only for an app at rest on a revision
/// known healthy: a failed revision is not reasserted, and a suspended app is left as
/// it is. A drift repair that could not be made is tried again an interval later.
fn resync_due(input: &Input<'_>) -> Option<Decision> {
    let status = input.status;
    if status.operation.is_some() || input.suspended {
        return None;
    }
    let revision = status.current_revision.as_ref()?;
    let snapshot = status.current_snapshot.as_ref()?;
    if status.last_healthy_revision.as_ref() != Some(revision) {
        return None;
    }
    let due = input
        .last_resync
        .is_none_or(|last| elapsed(input.now, last) >= input.interval);
    due.then(|| Decision::Resync {
        revision: revision.clone(),
        snapshot: snapshot.clone(),
    })
}

/// No operation in progress: follow Git, or wait.
fn decide_at_rest(input: &Input<'_>) -> Decision {
    let status = input.status;
    if input.suspended {
        return if status.phase == Phase::Suspended {
            Decision::Wait
        } else {
            Decision::Suspend
        };
    }
    if let Some(problem) = &input.problem {
        return Decision::BlockOnProblem(problem.clone());
    }
    if let Some(revision) = quarantine_to_lift(input) {
        return Decision::LiftQuarantine { revision };
    }
    if status.phase == Phase::Suspended {
        return resume_or_wait(input);
    }
    let DesiredRevision::Known { revision, .. } = &input.desired else {
        return resume_or_wait(input);
    };
    let spec_changed = spec_changed(input);
    let held_back = !deployable(input, revision);
    // The running revision, known healthy, rolls out its Secrets' new data whenever no
    // other revision is about to replace it: Git points at it, or at a revision held
    // back (blocked, or quarantined after a rollback) that may stay there for long.
    let rotation = || {
        let runs_healthy =
            status.current_revision.is_some() && status.current_revision == status.last_healthy_revision;
        let rotated = rotated_secrets(input);
        (runs_healthy && !rotated.is_empty()).then_some(Decision::StartRotation { secrets: rotated })
    };
    if status.current_revision.as_deref() == Some(revision.as_str()) && !spec_changed {
        let healthy = status.last_healthy_revision.as_deref() == Some(revision.as_str());
        if let Some(rotation) = rotation() {
            return rotation;
        }
        // The revision failed where it stands (nothing to flip back to) and a person
        // asked for it to be tried again: deploy it once more.
        if !healthy && retry_pending(input, revision) && !held_back {
            return Decision::StartDeploy {
                revision: revision.clone(),
            };
        }
        // A Secret change whose rollout failed keeps the app Failed until the Secret
        // changes again or a commit comes: the running revision is not re-adopted.
        return if healthy && status.phase != Phase::Healthy && !held_back && !rotation_failed(status) {
            Decision::Adopt {
                revision: revision.clone(),
            }
        } else {
            resume_or_wait(input)
        };
    }
    if let Some(block) = recheckable_block(input, revision) {
        return match &input.recheck {
            None => Decision::RecheckBlock {
                revision: revision.clone(),
            },
            Some(Recheck::Clear) => Decision::StartDeploy {
                revision: revision.clone(),
            },
            // The same refusal worded anew (addresses, order of causes) is the same block:
            // nothing to record.
            Some(Recheck::Refused(failure))
                if !block::same_block(block, block_reason(failure.kind), &failure.message) =>
            {
                Decision::Block {
                    revision: revision.clone(),
                    reason: block_reason(failure.kind),
                    message: failure.message.clone(),
                    retry: true,
                }
            }
            Some(Recheck::Refused(_) | Recheck::Transient(_)) => rotation().unwrap_or(Decision::Wait),
        };
    }
    if held_back {
        return rotation().unwrap_or_else(|| resume_or_wait(input));
    }
    Decision::StartDeploy {
        revision: revision.clone(),
    }
}

/// The revision whose quarantine a retry request lifts: it names a quarantined
/// revision, and asked after the quarantine was recorded (a revision that failed again
/// after the request is quarantined anew and stays so).
fn quarantine_to_lift(input: &Input<'_>) -> Option<String> {
    let retry = input.retry.as_ref()?;
    input
        .status
        .quarantined
        .iter()
        .filter(|q| q.revision == retry.revision)
        .any(|q| q.at.parse::<Timestamp>().is_ok_and(|at| at < retry.requested_at))
        .then(|| retry.revision.clone())
}

/// Whether a retry request for `revision` has not been acted on yet: the revision has
/// not started since it was made.
fn retry_pending(input: &Input<'_>, revision: &str) -> bool {
    let Some(retry) = input.retry.as_ref().filter(|r| r.revision == revision) else {
        return false;
    };
    let last_start = input
        .status
        .history
        .iter()
        .find(|entry| entry.revision == revision)
        .and_then(|entry| entry.started_at.parse::<Timestamp>().ok());
    last_start.is_none_or(|started| started < retry.requested_at)
}

/// The block on `revision` when it may pass and is due for a check: only then, and only
/// when no quarantine holds the revision out anyway.
fn recheckable_block<'a>(input: &'a Input<'_>, revision: &str) -> Option<&'a crate::api::BlockedRevision> {
    let block = input.status.blocked.as_ref()?;
    let quarantined = input
        .status
        .quarantined
        .iter()
        .any(|q| quarantine_applies(q, revision, input.spec_digest) && q.generation == input.generation);
    (block.revision == revision
        && block.generation == input.generation
        && block.retry
        && block_check_due(input, block)
        && !quarantined)
        .then_some(block)
}

/// A block that may pass (a permission, an owner, a deadline) is checked again once
/// the Git interval has passed since it was recorded and since it was last checked. A
/// preflight miss is checked as soon as a Secret or ConfigMap of the target namespace
/// changed since the last check: creating the missing Secret unblocks the revision
/// within seconds, not an interval later.
pub fn block_check_due(input: &Input<'_>, block: &crate::api::BlockedRevision) -> bool {
    let since_block = interval_passed_since(input.now, &block.at, input.interval);
    let since_check = input
        .block_checked_at
        .is_none_or(|checked| elapsed(input.now, checked) >= input.interval);
    let changed_since_check = block.reason == BlockReason::PreflightFailed
        && block.retry
        && input
            .config_changed_at
            .is_some_and(|changed| input.block_checked_at.is_none_or(|checked| changed > checked));
    (since_block && since_check) || changed_since_check
}

/// Whether `interval` has passed since `at`, a time in status. Status times are
/// truncated to the second; a second of slack keeps a pass requeued one interval after
/// the moment from finding it not quite due and waiting a whole interval more.
pub fn interval_passed_since(now: Timestamp, at: &str, interval: Duration) -> bool {
    record::elapsed_since(now, at) + Duration::from_secs(1) >= interval
}

/// How long from `since` to `now` (zero if `since` is later).
fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    now.duration_since(since).try_into().unwrap_or(Duration::ZERO)
}

/// The Secrets read by the running workloads whose data changed since it was rolled
/// out (`namespace/name` → digest of the new data), when the Runbook rolls on a
/// change. A change already rolled out and refused is not offered again. Data put
/// back to what runs after a refused change is offered (a change stopped at preflight
/// left the app `Failed` with nothing applied; verifying what runs ends it, and
/// clears the refusal).
pub fn rotated_secrets(input: &Input<'_>) -> BTreeMap<String, String> {
    if !input.rollout_on_secret_change {
        return BTreeMap::new();
    }
    let status = input.status;
    status
        .secret_digests
        .iter()
        .filter_map(|(key, applied)| {
            let now = input.secret_data.get(key)?;
            let refused = status.rejected_secret_digests.get(key);
            let changed = now != applied && refused != Some(now);
            let refusal_undone = now == applied && refused.is_some_and(|refused| refused != now);
            (changed || refusal_undone).then(|| (key.clone(), now.clone()))
        })
        .collect()
}

fn block_reason(kind: FailureKind) -> BlockReason {
    match kind {
        FailureKind::Forbidden => BlockReason::Forbidden,
        FailureKind::OwnershipConflict => BlockReason::OwnershipConflict,
        FailureKind::PreflightFailed => BlockReason::PreflightFailed,
        _ => BlockReason::RevisionInvalid,
    }
}

/// After `spec.suspend` is removed or a problem is fixed, the phase says again what runs.
fn resume_or_wait(input: &Input<'_>) -> Decision {
    let status = input.status;
    let paused = status.phase == Phase::Suspended
        || (status.phase == Phase::Blocked && status.blocked.is_none() && status.operation.is_none());
    if !paused {
        return Decision::Wait;
    }
    Decision::Resume {
        phase: record::phase_at_rest(status, input.desired.revision(), input.spec_digest),
    }
}

/// The spec fields that shape what is applied changed since the running revision went
/// out (path, target namespace, ...): the same commit must be deployed again.
fn spec_changed(input: &Input<'_>) -> bool {
    input
        .status
        .current_spec_digest
        .as_deref()
        .is_some_and(|digest| digest != input.spec_digest)
}

/// Whether `revision` may be deployed now: not held out by a quarantine or a block.
fn deployable(input: &Input<'_>, revision: &str) -> bool {
    let pinned = matches!(input.desired, DesiredRevision::Known { pinned: true, .. });
    // A pin or a change of the applied spec is a human decision made after the
    // quarantine; a repeat failure quarantines the revision again, at the new generation.
    let overridable = pinned || spec_changed(input);
    let quarantined = input
        .status
        .quarantined
        .iter()
        .filter(|q| quarantine_applies(q, revision, input.spec_digest))
        .any(|q| !(overridable && q.generation < input.generation));
    !quarantined && !blocked(input, revision)
}

/// A revision blocked at this generation stays out until Git or the spec changes, or a
/// re-check ([`Decision::RecheckBlock`]) finds the block gone.
fn blocked(input: &Input<'_>, revision: &str) -> bool {
    input
        .status
        .blocked
        .as_ref()
        .is_some_and(|block| block.revision == revision && block.generation == input.generation)
}

fn decide_operation(input: &Input<'_>, operation: &Operation) -> Decision {
    if let Some(outcome) = &input.outcome {
        return decide_outcome(input, operation, outcome);
    }
    // Between steps: whatever the user changed is taken before the next step starts.
    if input.suspended {
        return if input.status.phase == Phase::Suspended {
            Decision::Wait
        } else {
            Decision::Suspend
        };
    }
    if let Some(problem) = &input.problem {
        return Decision::BlockOnProblem(problem.clone());
    }
    if matches!(input.status.phase, Phase::Suspended | Phase::Blocked) {
        return Decision::Resume {
            phase: record::phase_of_step(operation),
        };
    }
    if let DesiredRevision::Known {
        revision: desired, ..
    } = &input.desired
        && desired != &operation.revision
        && operation.failed_revision.as_deref() != Some(desired.as_str())
        && deployable(input, desired)
        // A Job runs against the app's data: it is seen to its end, never abandoned
        // half-way for a newer commit that would start its own.
        && !matches!(operation.step, Step::Backup | Step::Migrate | Step::Downgrade)
    {
        // A newer commit supersedes a revision that has not proven itself yet; a pin or
        // a new commit takes over from a rollback as soon as its current step ended.
        return Decision::StartDeploy {
            revision: desired.clone(),
        };
    }
    Decision::Run(operation.step)
}

fn decide_outcome(input: &Input<'_>, operation: &Operation, outcome: &StepOutcome) -> Decision {
    match outcome {
        StepOutcome::Done(StepResult::JobFinished(job)) if !job.succeeded && !optional_backup(input, job) => {
            let message = job
                .message
                .clone()
                .unwrap_or_else(|| format!("{} Job {} failed", job.kind.as_str(), job.job));
            decide_refusal(input, operation, &Failure::new(FailureKind::JobFailed, message))
        }
        StepOutcome::Done(result) => Decision::Advance(result.clone(), next_after(input, operation, result)),
        StepOutcome::Verified(verification) => decide_verification(input, operation, verification),
        StepOutcome::Running(message) => Decision::AwaitJob {
            message: message.clone(),
        },
        StepOutcome::Transient(message) => {
            if past(input, &operation.step_started_at, input.step_deadline) {
                Decision::GiveUp {
                    step: operation.step,
                    message: format!(
                        "step {} did not finish within {}: {message}",
                        operation.step,
                        human_duration(input.step_deadline)
                    ),
                }
            } else {
                Decision::Retry {
                    step: operation.step,
                    message: message.clone(),
                }
            }
        }
        StepOutcome::Refused(failure) => decide_refusal(input, operation, failure),
        // Reported only at rest (see `decide`).
        StepOutcome::Resynced(resynced) => Decision::DriftRepaired(resynced.clone()),
    }
}

fn decide_verification(input: &Input<'_>, operation: &Operation, verification: &Verification) -> Decision {
    let gates = verification.gates().to_vec();
    let verification = match verification {
        Verification::Pending { .. } if past(input, &operation.step_started_at, input.step_deadline) => {
            Verification::Failed {
                message: format!(
                    "verification did not finish within the progress deadline of {}",
                    human_duration(input.step_deadline)
                ),
                gates: gates.clone(),
            }
        }
        other => other.clone(),
    };
    match (operation.kind, verification) {
        // Checked before the deadline: a refused gate is the Runbook's problem however
        // long it lasts, and the operation waits for the Runbook to change.
        (_, Verification::Refused { problem, .. }) => Decision::BlockOnProblem(problem),
        (_, Verification::Pending { .. }) => Decision::KeepVerifying { gates },
        (OperationKind::Deploy, Verification::Passed { .. }) => Decision::MarkHealthy { gates },
        (OperationKind::Rollback, Verification::Passed { .. }) => Decision::FinishRollback,
        (OperationKind::Deploy, Verification::Failed { message, .. }) if is_rotation(operation) => {
            Decision::RejectRotation { message, gates }
        }
        (OperationKind::Deploy, Verification::Failed { message, .. }) => {
            failure_response(input, operation, &message, gates)
        }
        (OperationKind::Rollback, Verification::Failed { message, .. }) => Decision::Fail {
            revision: operation.failed_revision.clone().unwrap_or_default(),
            message: format!(
                "rolling back to {} failed verification: {message}",
                crate::api::short_revision(&operation.revision)
            ),
            // The revision that failed is quarantined already; the one returned to
            // proved itself before and is not blamed.
            quarantine: None,
            gates: Vec::new(),
        },
    }
}

/// A step refused the revision. Before anything is written (render, snapshot,
/// inventory with its dry run) the revision is blocked; once part of it may be live
/// (apply) it failed like a failed gate.
fn decide_refusal(input: &Input<'_>, operation: &Operation, failure: &Failure) -> Decision {
    let written = operation.step >= Step::Apply;
    match operation.kind {
        // A Secret's new data cannot go out; the revision itself is not to blame.
        OperationKind::Deploy if is_rotation(operation) => Decision::RejectRotation {
            message: failure.message.clone(),
            gates: Vec::new(),
        },
        // A Job ran against the app's data and failed: nothing of the revision's
        // workloads was written, but the revision is not tried again by itself.
        OperationKind::Deploy if failure.kind == FailureKind::JobFailed => Decision::Fail {
            revision: operation.revision.clone(),
            message: failure.message.clone(),
            quarantine: Some(operation.revision.clone()),
            gates: Vec::new(),
        },
        OperationKind::Deploy if !written => {
            Decision::Block {
                revision: operation.revision.clone(),
                reason: block_reason(failure.kind),
                message: failure.message.clone(),
                // The same files render the same way; anything the cluster says may change
                // without a new commit (a Secret or namespace created, a permission granted).
                retry: operation.step >= Step::Preflight,
            }
        }
        OperationKind::Deploy => failure_response(
            input,
            operation,
            &format!("apply failed: {}", failure.message),
            Vec::new(),
        ),
        OperationKind::Rollback => Decision::Fail {
            revision: operation.failed_revision.clone().unwrap_or_default(),
            message: format!(
                "cannot roll back to {}: {}",
                crate::api::short_revision(&operation.revision),
                failure.message
            ),
            quarantine: None,
            gates: Vec::new(),
        },
    }
}

/// What a failed revision leads to: a flip back to the last healthy render when there
/// is one and it is not the render that failed (the same commit rendered from another
/// path may well have somewhere to go back to).
fn failure_response(
    input: &Input<'_>,
    operation: &Operation,
    message: &str,
    gates: Vec<GateVerdict>,
) -> Decision {
    let status = input.status;
    let revision = operation.revision.as_str();
    let elsewhere_to_go =
        status.last_healthy_snapshot.is_some() && status.last_healthy_snapshot != operation.snapshot;
    let migrated = migration_of(status, revision);
    match status.last_healthy_revision.as_deref() {
        Some(_)
            if input.plan.migration_rollback == MigrationRollbackPolicy::Hold
                && migrated.is_some_and(|job| job.irreversible)
                && elsewhere_to_go =>
        {
            Decision::Fail {
                revision: revision.to_string(),
                message: format!(
                    "{message}; not rolled back: the revision's migration is marked irreversible and \
                     spec.migrate.rollback.policy is Hold, so the app holds at this revision for a person \
                     to decide (pin a revision, or push a fix)"
                ),
                quarantine: Some(revision.to_string()),
                gates,
            }
        }
        Some(last_healthy) if input.automatic_rollback && elsewhere_to_go => Decision::RollBack {
            failed_revision: revision.to_string(),
            to: last_healthy.to_string(),
            message: message.to_string(),
            gates,
            downgrade: input.plan.migration_rollback == MigrationRollbackPolicy::Downgrade
                && migrated.is_some(),
        },
        Some(_) if !input.automatic_rollback => Decision::Fail {
            revision: revision.to_string(),
            message: format!("{message} (automatic rollback is off in the Runbook)"),
            quarantine: Some(revision.to_string()),
            gates,
        },
        _ => Decision::Fail {
            revision: revision.to_string(),
            message: format!("{message} (no healthy revision to roll back to)"),
            quarantine: Some(revision.to_string()),
            gates,
        },
    }
}

/// The step after `operation`'s current one, given what it learned (a Job that just
/// finished counts as done), and the phase of that step.
fn next_after(input: &Input<'_>, operation: &Operation, result: &StepResult) -> Next {
    let step = match result {
        StepResult::Rendered { .. } => Step::Snapshot,
        StepResult::SnapshotStored { .. } => Step::Preflight,
        StepResult::PreflightPassed => next_step(operation, &input.status.jobs, input.plan),
        StepResult::JobFinished(job) => {
            let mut jobs = vec![job.clone()];
            jobs.extend(input.status.jobs.iter().cloned());
            next_step(operation, &jobs, input.plan)
        }
        StepResult::Planned { .. } => Step::Apply,
        StepResult::Applied(_) => Step::Verify,
    };
    Next {
        step,
        phase: record::phase_of(operation.kind, step),
    }
}

/// A backup the Runbook does not require: its failure is a warning, and the deploy
/// goes on without it (every other failed Job fails the revision).
fn optional_backup(input: &Input<'_>, job: &crate::api::JobRecord) -> bool {
    job.kind == JobKind::Backup && input.plan.backup_optional
}

/// How long every gate must keep passing before the operation is done. A rollback
/// returns to a revision that already proved itself: once its rollout is complete and
/// the gates pass again, it is done. A deploy waits the Runbook's `verifyWindow`.
pub fn verify_window(kind: OperationKind, runbook_window: Duration) -> Duration {
    match kind {
        OperationKind::Rollback => Duration::ZERO,
        OperationKind::Deploy => runbook_window,
    }
}

/// Whether more than `limit` has passed since `since` (an RFC 3339 time in status).
fn past(input: &Input<'_>, since: &str, limit: Duration) -> bool {
    let Ok(since) = since.parse::<Timestamp>() else {
        return false;
    };
    let elapsed = input.now.duration_since(since);
    elapsed.as_secs() >= 0 && elapsed.unsigned_abs() > limit
}

/// `90s`, `10m`, `1h30m`: how durations read in messages.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Whether the newest history entry is a Secret change whose rollout failed.
fn rotation_failed(status: &AppDeploymentStatus) -> bool {
    status
        .history
        .first()
        .is_some_and(|entry| !entry.rotation.is_empty() && entry.phase == Phase::Failed)
}

/// Whether the operation rolls out a Secret change rather than a revision.
fn is_rotation(operation: &Operation) -> bool {
    !operation.rotation.is_empty()
}

/// The successful migration of `revision`, if it ran one.
pub fn migration_of<'a>(
    status: &'a AppDeploymentStatus,
    revision: &str,
) -> Option<&'a crate::api::JobRecord> {
    job_succeeded(status, JobKind::Migrate, revision)
}

/// The successful Job of `kind` for `revision`, if one ran.
pub fn job_succeeded<'a>(
    status: &'a AppDeploymentStatus,
    kind: JobKind,
    revision: &str,
) -> Option<&'a crate::api::JobRecord> {
    status
        .jobs
        .iter()
        .find(|job| job.kind == kind && job.revision == revision && job.succeeded)
}

pub fn is_quarantined(status: &AppDeploymentStatus, revision: &str) -> bool {
    status.quarantined.iter().any(|q| q.revision == revision)
}

/// Whether a quarantine entry concerns `revision` as rendered with `spec_digest` (an
/// entry without a digest concerns every render of the revision).
pub fn quarantine_applies(quarantine: &crate::api::Quarantine, revision: &str, spec_digest: &str) -> bool {
    quarantine.revision == revision && quarantine.spec_digest.as_deref().is_none_or(|d| d == spec_digest)
}

/// Whether `revision`, rendered with `spec_digest`, is quarantined.
pub fn quarantined_at(status: &AppDeploymentStatus, revision: &str, spec_digest: &str) -> bool {
    status
        .quarantined
        .iter()
        .any(|q| quarantine_applies(q, revision, spec_digest))
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
