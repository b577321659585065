//! One verification round for the operation in progress: the workload gate, then
//! the Runbook's gates once the rollout is complete.

use std::time::{Duration, Instant};

use crate::api::{GateVerdict, InventoryEntry, Operation, OperationKind, RunbookSpec, Verdict};
use crate::core::Verification;
use crate::gates;

use super::{Context, status};

/// Gate state of one revision being verified; lives in memory between reconciles.
pub struct Session {
    revision: String,
    kind: OperationKind,
    gates: gates::Verification,
    rollout_complete_at: Option<Instant>,
}

pub struct Round {
    pub outcome: Verification,
    pub gates: Vec<GateVerdict>,
    /// When the next round is worth running.
    pub next: Duration,
}

const WORKLOAD_GATE: &str = "workload";

pub async fn run_round(
    context: &Context,
    key: &str,
    kind: OperationKind,
    revision: &str,
    runbook: &RunbookSpec,
    inventory: &[InventoryEntry],
    target_namespace: &str,
) -> Round {
    let taken = context
        .verifications
        .lock()
        .expect("verification map poisoned")
        .remove(key);
    let mut session = match taken {
        Some(session) if session.revision == revision && session.kind == kind => session,
        _ => Session {
            revision: revision.to_string(),
            kind,
            gates: gates::Verification::new(&runbook.gates),
            rollout_complete_at: None,
        },
    };
    let round = evaluate(context, &mut session, runbook, inventory, target_namespace).await;
    context
        .verifications
        .lock()
        .expect("verification map poisoned")
        .insert(key.to_string(), session);
    round
}

/// Forgets the gate state of an app (its operation ended).
pub fn forget(context: &Context, key: &str) {
    context
        .verifications
        .lock()
        .expect("verification map poisoned")
        .remove(key);
}

async fn evaluate(
    context: &Context,
    session: &mut Session,
    runbook: &RunbookSpec,
    inventory: &[InventoryEntry],
    target_namespace: &str,
) -> Round {
    let tick = context.settings.verify_tick;
    let workload = gates::workload::check_workloads(&context.client, inventory, runbook.max_restarts()).await;
    let workload_verdict = GateVerdict {
        name: WORKLOAD_GATE.into(),
        verdict: workload.verdict,
        message: Some(workload.message.clone()),
    };
    match workload.verdict {
        Verdict::Failed => {
            return Round {
                outcome: Verification::Failed {
                    message: workload.message,
                },
                gates: with_gates(workload_verdict, &session.gates),
                next: tick,
            };
        }
        Verdict::Pending => {
            session.rollout_complete_at = None;
            return Round {
                outcome: Verification::Pending,
                gates: with_gates(workload_verdict, &session.gates),
                next: tick,
            };
        }
        Verdict::Passed => {}
    }

    let now = Instant::now();
    let rollout_complete_at = *session.rollout_complete_at.get_or_insert(now);
    session
        .gates
        .run_due_probes(&context.prober, target_namespace, now)
        .await;
    let verdicts = with_gates(workload_verdict, &session.gates);
    if let Some(failed) = session.gates.failed() {
        let message = format!(
            "gate {} failed: {}",
            failed.name,
            failed.message.unwrap_or_else(|| "no detail".into())
        );
        return Round {
            outcome: Verification::Failed { message },
            gates: verdicts,
            next: tick,
        };
    }
    let window = match session.kind {
        // A rollback returns to a revision that already proved itself: once its
        // rollout is complete and the gates pass again, it is done.
        OperationKind::Rollback => Duration::ZERO,
        OperationKind::Deploy => runbook.verify_window().unwrap_or(Duration::from_secs(60)),
    };
    let held_for = now.saturating_duration_since(rollout_complete_at);
    let outcome = if session.gates.all_passed() && held_for >= window {
        Verification::Passed
    } else {
        Verification::Pending
    };
    let until_window = window.saturating_sub(held_for).max(Duration::from_millis(100));
    let next = tick
        .min(session.gates.next_due(Instant::now()))
        .min(until_window)
        .max(Duration::from_millis(100));
    Round {
        outcome,
        gates: verdicts,
        next,
    }
}

fn with_gates(workload: GateVerdict, gates: &gates::Verification) -> Vec<GateVerdict> {
    std::iter::once(workload).chain(gates.verdicts()).collect()
}

/// Verification undecided for longer than the Runbook's `progressDeadline` (counted
/// from the apply recorded in status, so a restart does not reset it) fails.
pub(super) fn past_deadline(
    outcome: Verification,
    operation: &Operation,
    runbook: &RunbookSpec,
) -> Verification {
    let deadline = runbook.progress_deadline().unwrap_or(Duration::from_secs(600));
    let elapsed = operation
        .applied_at
        .as_deref()
        .and_then(status::parse_rfc3339)
        .and_then(|at| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(at)
                .try_into()
                .ok()
        })
        .unwrap_or(Duration::ZERO);
    match outcome {
        Verification::Pending if elapsed > deadline => Verification::Failed {
            message: format!(
                "verification did not finish within the progress deadline of {}s",
                deadline.as_secs()
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_seconds_ago(seconds: i64) -> Operation {
        let at = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(seconds);
        Operation {
            kind: OperationKind::Deploy,
            revision: "r".into(),
            failed_revision: None,
            started_at: at.to_string(),
            applied_at: Some(at.to_string()),
        }
    }

    #[test]
    fn undecided_verification_fails_after_the_progress_deadline() {
        let runbook = RunbookSpec {
            progress_deadline: Some("30s".into()),
            ..Default::default()
        };
        let late = past_deadline(Verification::Pending, &applied_seconds_ago(31), &runbook);
        assert!(
            matches!(late, Verification::Failed { ref message } if message.contains("30s")),
            "{late:?}"
        );
        let in_time = past_deadline(Verification::Pending, &applied_seconds_ago(5), &runbook);
        assert_eq!(in_time, Verification::Pending);
        // A decided verification is never overridden.
        let passed = past_deadline(Verification::Passed, &applied_seconds_ago(31), &runbook);
        assert_eq!(passed, Verification::Passed);
    }
}
