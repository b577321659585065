//! What a step reports back to [`decide`](super::decide): plain data, so that the
//! decision about what follows is made in one place and can be tested without I/O.

use std::collections::BTreeMap;

use crate::api::{GateVerdict, InventoryEntry, JobRecord, RestartBaseline};

/// The result of running one step of the operation in progress.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// The step finished; what it learned goes into the status.
    Done(StepResult),
    /// One verification round (step `Verify`).
    Verified(Verification),
    /// A Job of the step (backup, migration, downgrade) is still running: look again
    /// later. Its own `activeDeadlineSeconds` bounds it, not the step deadline.
    Running(String),
    /// The step could not finish now for a reason outside the revision (the API server
    /// or Git unreachable, a timeout, 429, most 5xx, a conflict): try again later,
    /// never a verdict on the revision.
    Transient(String),
    /// The step cannot succeed as things are: the revision, the spec, the Runbook or a
    /// permission is wrong.
    Refused(Failure),
    /// The drift repair of an app at rest ([`super::Decision::Resync`]) applied the
    /// running revision again.
    Resynced(Resynced),
}

/// What a drift repair did: the running revision's snapshot applied again, with the
/// Secret digests of its last rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resynced {
    /// What the app owns now: the revision's objects, plus any whose prune failed.
    pub inventory: Vec<InventoryEntry>,
    /// The objects that had drifted and were sent again.
    pub sent: Vec<String>,
    pub pruned: usize,
    /// Objects that should have been pruned but could not be (retried at the next
    /// resync; a warning, never a verdict on the revision).
    pub prune_failures: Vec<String>,
}

/// What a finished step learned.
#[derive(Clone, Debug, PartialEq)]
pub enum StepResult {
    Rendered {
        render_digest: String,
        objects: usize,
    },
    SnapshotStored {
        name: String,
    },
    /// The env contract and every Secret reference hold.
    PreflightPassed,
    /// A backup, migration or downgrade Job finished: succeeded, or an optional backup
    /// failed (a warning; a required Job that fails is a [`FailureKind::JobFailed`]).
    JobFinished(JobRecord),
    /// Every object the revision will own, to be recorded before any is written.
    Planned {
        inventory: Vec<InventoryEntry>,
    },
    Applied(Applied),
}

/// What applying a revision did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// What the app owns now: the revision's objects, plus any whose prune failed.
    pub inventory: Vec<InventoryEntry>,
    pub sent: usize,
    pub unchanged: usize,
    pub pruned: usize,
    /// Objects that should have been pruned but could not be (retried later; a warning,
    /// never a verdict on the revision).
    pub prune_failures: Vec<String>,
    /// Container restarts just before the apply and the generations it wrote, so gates
    /// count only what happens after.
    pub restart_baseline: RestartBaseline,
    /// The digests of the Secrets the workloads read, as written into their pod
    /// templates (Secret `namespace/name` → digest).
    pub secret_digests: BTreeMap<String, String>,
}

/// Verdict of one verification round.
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    /// Rollout not complete, a gate below its threshold, or the window not over yet.
    Pending { gates: Vec<GateVerdict> },
    /// Every gate passed for the whole verify window.
    Passed { gates: Vec<GateVerdict> },
    Failed {
        message: String,
        gates: Vec<GateVerdict>,
    },
    /// A gate's request was refused by the controller's egress policy: the Runbook
    /// must change (a [`FailureKind::RunbookInvalid`] problem); no verdict on the
    /// revision, which is neither failed nor rolled back.
    Refused {
        problem: Failure,
        gates: Vec<GateVerdict>,
    },
}

impl Verification {
    pub fn gates(&self) -> &[GateVerdict] {
        match self {
            Verification::Pending { gates }
            | Verification::Passed { gates }
            | Verification::Failed { gates, .. }
            | Verification::Refused { gates, .. } => gates,
        }
    }
}

/// Why a step cannot succeed: the one classification every stage maps its errors to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// Names the object, the field and the file where there is one; never a secret.
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The revision itself: a parse error, an unknown kind, a refusal at dry run.
    RevisionInvalid,
    /// The identity bosun applies as may not do this (HTTP 403 from RBAC).
    Forbidden,
    /// An object of the revision belongs to another AppDeployment.
    OwnershipConflict,
    /// The AppDeployment's spec cannot be acted on.
    SpecInvalid,
    /// The Runbook cannot be evaluated.
    RunbookInvalid,
    /// The env contract or a Secret reference is not met (fixable in the cluster).
    PreflightFailed,
    /// A required backup, a migration or a downgrade Job failed or timed out.
    JobFailed,
}

impl FailureKind {
    /// CamelCase reason for conditions and Events.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::RevisionInvalid => "RevisionInvalid",
            FailureKind::Forbidden => "Forbidden",
            FailureKind::OwnershipConflict => "OwnershipConflict",
            FailureKind::SpecInvalid => "SpecInvalid",
            FailureKind::RunbookInvalid => "RunbookInvalid",
            FailureKind::PreflightFailed => "PreflightFailed",
            FailureKind::JobFailed => "JobFailed",
        }
    }
}
