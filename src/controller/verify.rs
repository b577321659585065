//! One verification round for the operation in progress: the workload gate, then
//! the Runbook's gates once the rollout is complete.

use std::time::{Duration, Instant};

use crate::api::{GateVerdict, InventoryEntry, OperationKind, RunbookSpec, Verdict};
use crate::core::Verification;
use crate::gates;

use super::Context;

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
