//! Verify: is the applied revision good?
//!
//! - [`workload`]: the workload gate, always on — rollouts complete, pods of the
//!   current revision not crash-looping, unpullable or misconfigured since the
//!   revision was applied; read from watch caches, no API request per round.
//! - [`http`]: the Runbook's `http` gates, probed every `periodSeconds`.
//! - [`smoke`]: the Runbook's `smoke` gates: ordered HTTP steps, all run by one probe.
//! - [`tracker`]: one gate's verdict across probes (thresholds, period).
//!
//! [`Verification`] holds the Runbook gates of one revision for the controller; how
//! long they must keep passing (`verifyWindow`) is the controller's decision.

pub mod http;
pub mod smoke;
pub mod tracker;
pub mod window;
pub mod workload;

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};

use crate::api::{Gate, GateVerdict, Verdict};

pub use http::{HttpProber, ProbeOutcome};
pub use tracker::GateTracker;
pub use workload::{WorkloadStores, WorkloadVerdict, WorkloadView, capture_baseline, evaluate_workloads};

/// `next_due` when there is no gate to probe: how often the workload gate alone is
/// worth re-checking.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// The Runbook gates of one revision being verified, in Runbook order.
#[derive(Clone, Debug)]
pub struct Verification {
    gates: Vec<TrackedGate>,
}

#[derive(Clone, Debug)]
struct TrackedGate {
    gate: Gate,
    tracker: GateTracker,
}

impl Verification {
    /// Tracks every gate that has a probe this controller can send (`http`, `smoke`:
    /// see `send_probe`).
    ///
    /// Call it with the gates of a Runbook that passed `RunbookSpec::validate`, which
    /// refuses a gate without such a probe. Should one arrive all the same, it is left
    /// out (logged, never in `verdicts`): failing it, or leaving it pending until the
    /// progress deadline, would hold a Runbook problem against a good revision.
    pub fn new(gates: &[Gate]) -> Self {
        let gates = gates
            .iter()
            .filter(|gate| {
                let probeable = can_probe(gate);
                if !probeable {
                    tracing::warn!(gate = %gate.name, "gate has no probe this controller can send; not verified");
                }
                probeable
            })
            .map(|gate| TrackedGate {
                gate: gate.clone(),
                tracker: GateTracker::new(gate),
            })
            .collect();
        Self { gates }
    }

    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    /// Sends every probe that is due at `now`, all at once, and records the outcomes
    /// as of `now` (periods count from the start of a probe, as for a kubelet probe).
    pub async fn run_due_probes(&mut self, prober: &HttpProber, namespace: &str, now: Instant) {
        let (indices, probes): (Vec<usize>, Vec<_>) = self
            .gates
            .iter()
            .enumerate()
            .filter(|(_, tracked)| tracked.tracker.due(now))
            .filter_map(|(index, tracked)| Some((index, send_probe(&tracked.gate, prober, namespace)?)))
            .unzip();
        let outcomes = join_all(probes).await;
        for (index, outcome) in indices.into_iter().zip(outcomes) {
            let tracked = &mut self.gates[index];
            let before = tracked.tracker.verdict();
            let after = tracked.tracker.record(&outcome, now);
            tracing::debug!(gate = %tracked.gate.name, passed = outcome.passed, message = %outcome.message, "gate probe");
            if before != after {
                tracing::info!(gate = %tracked.gate.name, verdict = ?after, message = %outcome.message, "gate verdict changed");
            }
        }
    }

    /// Every gate's verdict, in Runbook order, for `status.history[].gates`.
    pub fn verdicts(&self) -> Vec<GateVerdict> {
        self.gates.iter().map(TrackedGate::verdict).collect()
    }

    /// The first gate that failed, if any: the revision is bad.
    pub fn failed(&self) -> Option<GateVerdict> {
        self.gates
            .iter()
            .find(|tracked| tracked.tracker.verdict() == Verdict::Failed)
            .map(TrackedGate::verdict)
    }

    /// Whether every gate passes right now (true with no gates).
    pub fn all_passed(&self) -> bool {
        self.gates
            .iter()
            .all(|tracked| tracked.tracker.verdict() == Verdict::Passed)
    }

    /// Time until the next probe is due (zero if one is due now). With nothing left
    /// to probe, a short idle interval rather than "never", so callers can sleep on it.
    pub fn next_due(&self, now: Instant) -> Duration {
        self.gates
            .iter()
            .filter(|tracked| tracked.tracker.verdict() != Verdict::Failed)
            .map(|tracked| tracked.tracker.until_due(now))
            .min()
            .unwrap_or(IDLE_RECHECK)
    }
}

/// One probe of `gate`, for each probe kind this controller sends; `None` for a gate
/// it cannot probe. The one place a probe kind meets the code that probes it.
fn send_probe<'a>(
    gate: &'a Gate,
    prober: &'a HttpProber,
    namespace: &'a str,
) -> Option<BoxFuture<'a, ProbeOutcome>> {
    match gate {
        Gate { http: Some(http), .. } => Some(prober.probe(http, gate.timeout(), namespace).boxed()),
        // One probe runs every step; `timeoutSeconds` bounds each request of a step
        // (see `smoke::probe` for the bound on the whole run).
        Gate {
            smoke: Some(smoke), ..
        } => Some(smoke::probe(prober, smoke, gate.timeout(), namespace).boxed()),
        _ => None,
    }
}

/// Whether [`send_probe`] has a probe for `gate`.
fn can_probe(gate: &Gate) -> bool {
    matches!(gate, Gate { http: Some(_), .. } | Gate { smoke: Some(_), .. })
}

impl TrackedGate {
    fn verdict(&self) -> GateVerdict {
        GateVerdict {
            name: self.gate.name.clone(),
            verdict: self.tracker.verdict(),
            message: Some(self.tracker.summary()),
        }
    }
}

/// At most `max_chars` characters of `text`, marked when cut: gate messages quote
/// bodies and kubelet details, which can be long.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HttpGate;

    fn http_gate(name: &str, period_seconds: u32) -> Gate {
        Gate {
            name: name.into(),
            period_seconds: Some(period_seconds),
            http: Some(HttpGate {
                url: Some("http://127.0.0.1:1/health".into()),
                ..HttpGate::default()
            }),
            ..Gate::default()
        }
    }

    fn record(verification: &mut Verification, name: &str, outcome: ProbeOutcome, now: Instant) {
        let tracked = verification
            .gates
            .iter_mut()
            .find(|t| t.gate.name == name)
            .expect("gate exists");
        tracked.tracker.record(&outcome, now);
    }

    #[test]
    fn no_gates_pass_and_idle() {
        let verification = Verification::new(&[]);
        assert!(verification.all_passed());
        assert!(verification.failed().is_none());
        assert!(verification.verdicts().is_empty());
        assert_eq!(verification.next_due(Instant::now()), IDLE_RECHECK);
    }

    #[test]
    fn verdicts_follow_runbook_order_and_all_must_pass() {
        let mut verification = Verification::new(&[http_gate("health", 5), http_gate("cors", 5)]);
        let now = Instant::now();
        assert!(!verification.all_passed());
        record(&mut verification, "cors", ProbeOutcome::passed("cors ok"), now);
        assert!(!verification.all_passed());
        record(
            &mut verification,
            "health",
            ProbeOutcome::passed("health ok"),
            now,
        );
        assert!(verification.all_passed());
        let names: Vec<_> = verification.verdicts().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["health", "cors"]);
    }

    #[test]
    fn failed_names_the_gate() {
        let mut gate = http_gate("health", 5);
        gate.failure_threshold = Some(1);
        let mut verification = Verification::new(&[http_gate("cors", 5), gate]);
        record(
            &mut verification,
            "health",
            ProbeOutcome::failed("status 503"),
            Instant::now(),
        );
        let failed = verification.failed().expect("a failed gate");
        assert_eq!(failed.name, "health");
        assert_eq!(failed.verdict, Verdict::Failed);
        assert_eq!(
            failed.message.as_deref(),
            Some("1 consecutive failed probes: status 503")
        );
    }

    #[test]
    fn a_gate_without_a_probe_is_left_out_not_failed() {
        let smoke = Gate {
            name: "smoke".into(),
            ..Gate::default()
        };
        let verification = Verification::new(std::slice::from_ref(&smoke));
        assert!(verification.failed().is_none(), "never held against the revision");
        assert!(verification.is_empty());
        assert!(verification.all_passed(), "nothing left to wait for");
        assert_eq!(verification.next_due(Instant::now()), IDLE_RECHECK);

        // Next to a gate with a probe, only that one is verified.
        let mut verification = Verification::new(&[smoke, http_gate("health", 5)]);
        let names: Vec<_> = verification.verdicts().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["health"]);
        assert!(!verification.all_passed(), "health not probed yet");
        record(
            &mut verification,
            "health",
            ProbeOutcome::passed("ok"),
            Instant::now(),
        );
        assert!(verification.all_passed());
    }

    #[test]
    fn next_due_is_the_soonest_gate() {
        let mut verification = Verification::new(&[http_gate("slow", 30), http_gate("fast", 5)]);
        let start = Instant::now();
        assert_eq!(verification.next_due(start), Duration::ZERO);
        record(&mut verification, "slow", ProbeOutcome::passed("ok"), start);
        record(&mut verification, "fast", ProbeOutcome::passed("ok"), start);
        assert_eq!(
            verification.next_due(start + Duration::from_secs(2)),
            Duration::from_secs(3)
        );
        assert_eq!(
            verification.next_due(start + Duration::from_secs(9)),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn run_due_probes_probes_only_due_gates() {
        // Port 1 on loopback refuses connections: every probe fails fast.
        let mut verification = Verification::new(&[http_gate("a", 5), http_gate("b", 60)]);
        let prober = HttpProber::new().expect("client");
        let start = Instant::now();
        verification.run_due_probes(&prober, "shop", start).await;
        let failures = |v: &Verification| -> Vec<u32> {
            v.gates.iter().map(|t| t.tracker.consecutive_failures()).collect()
        };
        assert_eq!(failures(&verification), [1, 1]);
        verification
            .run_due_probes(&prober, "shop", start + Duration::from_secs(5))
            .await;
        assert_eq!(failures(&verification), [2, 1], "only gate a was due again");
    }
}
