//! The pure decision at the heart of bosun: given what the user asked for (spec),
//! what bosun recorded (status) and what it just observed (Git tip, gate verdicts),
//! which step comes next. No I/O, no clock, no client: the controller gathers the
//! inputs, calls [`decide`], and carries the [`Decision`] out.

use crate::api::{AppDeploymentStatus, OperationKind, Phase};

/// What the Git side says the app should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredRevision {
    /// The source ref (or `spec.pin.revision`) resolves to this commit.
    Known { revision: String, pinned: bool },
    /// The source could not be read; the reason is already in a condition.
    Unavailable,
}

/// Verdict of the verification round just run for the operation in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Nothing was verified (no operation, or its manifests are not applied yet).
    NotRun,
    /// Still waiting: rollout not complete, a gate below its threshold, or the verify
    /// window not yet over.
    Pending,
    Passed,
    Failed {
        message: String,
    },
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
    pub verification: Verification,
    /// Digest of the spec fields that shape what is applied
    /// ([`crate::api::AppDeploymentSpec::apply_digest`]).
    pub spec_digest: &'a str,
    /// Set when the spec cannot be acted on at all (missing Runbook, invalid path);
    /// the message says what and where.
    pub spec_problem: Option<String>,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change now.
    Idle,
    /// `spec.suspend` is set: record the phase and touch nothing else.
    Suspend,
    /// The spec itself is unusable: phase `Blocked` until it changes.
    BlockOnSpec { message: String },
    /// Start (or, after a restart, finish) applying `revision`.
    Deploy { revision: String },
    /// Keep verifying the operation in progress.
    KeepVerifying,
    /// The deployed revision passed every gate for the whole window.
    MarkHealthy { revision: String },
    /// Flip back to the last healthy revision and quarantine the failed one.
    RollBack {
        failed_revision: String,
        to: String,
        message: String,
    },
    /// Re-apply the last healthy snapshot of a rollback already under way.
    ResumeRollback { to: String },
    /// The rollback target verified: the app runs its last healthy revision again.
    FinishRollback { to: String },
    /// A failure with nothing to flip to (or rollback turned off, or the rollback
    /// itself failed): phase `Failed`.
    Fail { revision: String, message: String },
    /// `spec.suspend` was removed: restore the phase that says what runs.
    Resume { phase: Phase },
    /// Git points at the revision already running and known healthy (e.g. after a
    /// revert): record it as Healthy without re-applying.
    Adopt { revision: String },
}

pub fn decide(input: &Input<'_>) -> Decision {
    let status = input.status;

    if let Some(operation) = &status.operation {
        return match operation.kind {
            OperationKind::Rollback => decide_rollback(
                operation.revision.clone(),
                operation.applied_at.is_some(),
                &input.verification,
            ),
            OperationKind::Deploy => {
                decide_deploy_in_progress(input, &operation.revision, operation.applied_at.is_some())
            }
        };
    }

    if input.suspended {
        return if status.phase == Phase::Suspended {
            Decision::Idle
        } else {
            Decision::Suspend
        };
    }
    if let Some(message) = &input.spec_problem {
        return Decision::BlockOnSpec {
            message: message.clone(),
        };
    }

    let (revision, pinned) = match &input.desired {
        DesiredRevision::Known { revision, pinned } => (revision, *pinned),
        DesiredRevision::Unavailable => return resume_or_idle(status, false),
    };
    // The spec fields that shape what is applied changed since the running revision
    // went out (path, target namespace, ...): the same commit must be deployed again.
    let spec_changed = status
        .current_spec_digest
        .as_deref()
        .is_some_and(|digest| digest != input.spec_digest);
    // A pin or such a spec change is a human decision made after the quarantine; a
    // repeat failure quarantines the revision again, at the new generation.
    let held_back = quarantine_holds(status, revision, input.generation, pinned || spec_changed)
        || blocked_on(status, revision, input.generation);

    if status.current_revision.as_deref() == Some(revision.as_str()) && !spec_changed {
        let healthy = status.last_healthy_revision.as_deref() == Some(revision.as_str());
        return if healthy && status.phase != Phase::Healthy && !held_back {
            Decision::Adopt {
                revision: revision.clone(),
            }
        } else {
            resume_or_idle(status, false)
        };
    }
    if held_back {
        return resume_or_idle(status, true);
    }
    Decision::Deploy {
        revision: revision.clone(),
    }
}

/// After `spec.suspend` is removed, the phase says again what runs.
fn resume_or_idle(status: &AppDeploymentStatus, desired_held_back: bool) -> Decision {
    if status.phase != Phase::Suspended {
        return Decision::Idle;
    }
    let phase = match (&status.current_revision, &status.last_healthy_revision) {
        (Some(current), Some(healthy)) if current == healthy && desired_held_back => Phase::RolledBack,
        (Some(current), Some(healthy)) if current == healthy => Phase::Healthy,
        (Some(current), _) if is_quarantined(status, current) => Phase::Failed,
        _ => Phase::Pending,
    };
    Decision::Resume { phase }
}

/// Whether a quarantine keeps `revision` out. `overridable`: a pin or spec change
/// made after the quarantine (a later generation) lifts it.
fn quarantine_holds(
    status: &AppDeploymentStatus,
    revision: &str,
    generation: Option<i64>,
    overridable: bool,
) -> bool {
    status
        .quarantined
        .iter()
        .filter(|q| q.revision == revision)
        .any(|q| !(overridable && q.generation < generation))
}

fn decide_deploy_in_progress(input: &Input<'_>, revision: &str, applied: bool) -> Decision {
    let status = input.status;
    // A newer commit supersedes a revision that has not proven itself yet.
    if let DesiredRevision::Known {
        revision: desired, ..
    } = &input.desired
        && desired != revision
        && !is_quarantined(status, desired)
        && !blocked_on(status, desired, input.generation)
        && !input.suspended
    {
        return Decision::Deploy {
            revision: desired.clone(),
        };
    }
    if !applied {
        return Decision::Deploy {
            revision: revision.to_string(),
        };
    }
    match &input.verification {
        Verification::NotRun | Verification::Pending => Decision::KeepVerifying,
        Verification::Passed => Decision::MarkHealthy {
            revision: revision.to_string(),
        },
        Verification::Failed { message } => {
            failure_response(status, input.automatic_rollback, revision, message).into()
        }
    }
}

/// What a failed revision leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureResponse {
    RollBack {
        failed_revision: String,
        to: String,
        message: String,
    },
    Fail {
        revision: String,
        message: String,
    },
}

impl From<FailureResponse> for Decision {
    fn from(response: FailureResponse) -> Decision {
        match response {
            FailureResponse::RollBack {
                failed_revision,
                to,
                message,
            } => Decision::RollBack {
                failed_revision,
                to,
                message,
            },
            FailureResponse::Fail { revision, message } => Decision::Fail { revision, message },
        }
    }
}

/// What to do when `revision` failed: flip back when there is somewhere to go.
pub fn failure_response(
    status: &AppDeploymentStatus,
    automatic_rollback: bool,
    revision: &str,
    message: &str,
) -> FailureResponse {
    match status.last_healthy_revision.as_deref() {
        Some(last_healthy) if automatic_rollback && last_healthy != revision => FailureResponse::RollBack {
            failed_revision: revision.to_string(),
            to: last_healthy.to_string(),
            message: message.to_string(),
        },
        Some(_) if !automatic_rollback => FailureResponse::Fail {
            revision: revision.to_string(),
            message: format!("{message} (automatic rollback is off in the Runbook)"),
        },
        _ => FailureResponse::Fail {
            revision: revision.to_string(),
            message: format!("{message} (no healthy revision to roll back to)"),
        },
    }
}

fn decide_rollback(to: String, applied: bool, verification: &Verification) -> Decision {
    if !applied {
        return Decision::ResumeRollback { to };
    }
    match verification {
        Verification::NotRun | Verification::Pending => Decision::KeepVerifying,
        Verification::Passed => Decision::FinishRollback { to },
        Verification::Failed { message } => Decision::Fail {
            revision: to,
            message: format!("rollback target failed verification: {message}"),
        },
    }
}

pub fn is_quarantined(status: &AppDeploymentStatus, revision: &str) -> bool {
    status.quarantined.iter().any(|q| q.revision == revision)
}

/// A revision whose latest attempt was Blocked stays blocked (its manifests do not
/// change) until the spec does.
fn blocked_on(status: &AppDeploymentStatus, revision: &str, generation: Option<i64>) -> bool {
    status.observed_generation == generation
        && status
            .history
            .iter()
            .find(|entry| entry.revision == revision)
            .is_some_and(|entry| entry.phase == Phase::Blocked)
}

#[cfg(test)]
mod tests;
