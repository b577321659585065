//! Verification rounds of the operation in progress: the workload gate (from the watch
//! caches), then the Runbook's gates once the rollout is complete, for the verify
//! window. A round costs no request to the API server.
//!
//! `verifyWindow` means every gate keeps passing for the whole window: the window
//! restarts whenever a gate stops passing. The gate trackers live in memory, keyed by
//! what they verify (revision, operation, when the step began, the Runbook's version):
//! an edited Runbook, a resumed step or a restarted controller starts verification over.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use super::Context;
use crate::api::{GateVerdict, InventoryEntry, Operation, OperationKind, RunbookSpec, Verdict};
use crate::core::{Failure, FailureKind, Verification};
use crate::gates::window::{VerifyWindow, WindowState};
use crate::gates::{self, evaluate_workloads};

/// How often an undecided verification is looked at again without a change waking it.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// Gate state of one verification; lives in memory between passes.
pub struct Session {
    key: SessionKey,
    gates: gates::RunbookGates,
    window: VerifyWindow,
    /// The verdicts were counted in the metrics (once per verification).
    counted: bool,
    /// A gate's request was refused by the egress policy: the Runbook problem reported
    /// (see [`Session::refusal`]).
    refused: Option<Failure>,
}

impl Session {
    /// The egress refusal found while verifying with the Runbook at `runbook_version`:
    /// a Runbook problem that holds until the Runbook changes (or the controller
    /// restarts, which probes again), so the blocked operation is not resumed only to
    /// be refused again.
    pub fn refusal(&self, runbook_version: &str) -> Option<Failure> {
        self.refused
            .clone()
            .filter(|_| self.key.runbook_version == runbook_version)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionKey {
    revision: String,
    kind: OperationKind,
    step_started_at: String,
    runbook_version: String,
}

/// What one round found, and when the next is worth running.
pub struct Round {
    pub verification: Verification,
    pub next: Duration,
}

/// Runs one verification round for `operation`. `session` is the app's gate state,
/// replaced when it belongs to something else; `client` is the app's own (its
/// identity's), which `logs` gates read with.
#[allow(clippy::too_many_arguments)]
pub async fn round(
    context: &Context,
    client: &kube::Client,
    session: &mut Option<Session>,
    operation: &Operation,
    runbook: &RunbookSpec,
    runbook_version: &str,
    inventory: &[InventoryEntry],
    target_namespace: &str,
    secret_headers: &gates::SecretHeaders,
) -> Round {
    let round = judge(
        context,
        client,
        session,
        operation,
        runbook,
        runbook_version,
        inventory,
        target_namespace,
        secret_headers,
    )
    .await;
    if let (Some(session), Verification::Passed { gates } | Verification::Failed { gates, .. }) =
        (session.as_mut(), &round.verification)
        && !session.counted
    {
        session.counted = true;
        // The workload gate comes first (see `judge`), then the Runbook's gates.
        for (index, gate) in gates.iter().enumerate() {
            let kind = if index == 0 {
                "workload"
            } else {
                gate_kind(runbook, &gate.name)
            };
            context.metrics.gate_verdict(kind, gate.verdict);
        }
    }
    round
}

/// The kind of the Runbook's gate `name` for the metrics: the probe it sends.
fn gate_kind(runbook: &RunbookSpec, name: &str) -> &'static str {
    match runbook.gates.iter().find(|gate| gate.name == name) {
        None => "other",
        Some(gate) if gate.http.is_some() => "http",
        Some(gate) if gate.smoke.is_some() => "smoke",
        Some(gate) if gate.logs.is_some() => "logs",
        Some(gate) if gate.metrics.is_some() => "metrics",
        Some(_) => "other",
    }
}

/// One round: the workload gate, then the Runbook's gates and the window.
#[allow(clippy::too_many_arguments)]
async fn judge(
    context: &Context,
    client: &kube::Client,
    session: &mut Option<Session>,
    operation: &Operation,
    runbook: &RunbookSpec,
    runbook_version: &str,
    inventory: &[InventoryEntry],
    target_namespace: &str,
    secret_headers: &gates::SecretHeaders,
) -> Round {
    let key = SessionKey {
        revision: operation.revision.clone(),
        kind: operation.kind,
        step_started_at: operation.step_started_at.clone(),
        runbook_version: runbook_version.to_string(),
    };
    if session.as_ref().is_none_or(|s| s.key != key) {
        *session = Some(Session {
            key,
            gates: gates::RunbookGates::new(&runbook.gates),
            window: VerifyWindow::default(),
            counted: false,
            refused: None,
        });
    }
    let session = session.as_mut().expect("just set");

    let applied_at = operation
        .applied_at
        .as_deref()
        .and_then(|at| at.parse::<Timestamp>().ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let workload = evaluate_workloads(
        &context.caches.workloads,
        inventory,
        &operation.restart_baseline,
        applied_at,
        runbook.max_restarts(),
    );
    let workload_verdict = GateVerdict::from(workload.clone());
    let with_gates = |gates: &gates::RunbookGates| -> Vec<GateVerdict> {
        std::iter::once(workload_verdict.clone())
            .chain(gates.verdicts())
            .collect()
    };
    match workload.verdict {
        Verdict::Failed => {
            return Round {
                verification: Verification::Failed {
                    message: workload.message,
                    gates: with_gates(&session.gates),
                },
                next: IDLE_RECHECK,
            };
        }
        Verdict::Pending => {
            session.window.observe(false, Instant::now(), Duration::ZERO);
            return Round {
                verification: Verification::Pending {
                    gates: with_gates(&session.gates),
                },
                // A change of the workload, its ReplicaSets or Pods wakes the app.
                next: IDLE_RECHECK,
            };
        }
        Verdict::Passed => {}
    }

    let now = Instant::now();
    let probes = gates::ProbeContext {
        http: &context.prober,
        client,
        workloads: &context.caches.workloads,
        namespace: target_namespace,
        secret_headers,
        applied_at,
    };
    session.gates.run_due_probes(&probes, now).await;
    let gates = with_gates(&session.gates);
    if let Some((gate, why)) = session.gates.refused() {
        let problem = Failure::new(FailureKind::RunbookInvalid, format!("gate {gate}: {why}"));
        session.refused = Some(problem.clone());
        return Round {
            verification: Verification::Refused { problem, gates },
            next: IDLE_RECHECK,
        };
    }
    if let Some(failed) = session.gates.failed() {
        let message = format!(
            "gate {} failed: {}",
            failed.name,
            failed.message.unwrap_or_else(|| "no detail".into())
        );
        return Round {
            verification: Verification::Failed { message, gates },
            next: IDLE_RECHECK,
        };
    }
    let window = crate::core::verify_window(
        operation.kind,
        runbook.verify_window().unwrap_or(Duration::from_secs(60)),
    );
    let (verification, until_window) = match session.window.observe(session.gates.all_passed(), now, window) {
        WindowState::Complete => (Verification::Passed { gates }, Duration::ZERO),
        WindowState::Holding { remaining, .. } => (Verification::Pending { gates }, remaining),
        WindowState::NotPassing => (Verification::Pending { gates }, window),
    };
    let next = IDLE_RECHECK
        .min(session.gates.next_due(Instant::now()))
        .min(until_window.max(Duration::from_millis(100)))
        .max(Duration::from_millis(100));
    Round { verification, next }
}
