//! Verify: is the applied revision good?
//!
//! - [`workload`]: the workload gate, always on — rollouts complete, pods of the
//!   current revision not crash-looping, unpullable or misconfigured since the
//!   revision was applied; read from watch caches, no API request per round.
//! - [`http`]: the Runbook's `http` gates, probed every `periodSeconds`.
//! - [`smoke`]: the Runbook's `smoke` gates: ordered HTTP steps, all run by one probe.
//! - [`logs`]: the Runbook's `logs` gates: a pod serving the revision logs a line
//!   matching a pattern within a time of the apply (the `pods/log` API); a revision
//!   that rolled no pod may leave the gate nothing to judge (it does not apply).
//! - [`metrics`]: the Runbook's `metrics` gates: a PromQL query against a threshold.
//! - [`tracker`]: one gate's verdict across probes (thresholds, period).
//!
//! [`RunbookGates`] holds the Runbook gates of one revision for the controller; how
//! long they must keep passing (`verifyWindow`) is the controller's decision.

pub mod http;
pub mod logs;
pub mod metrics;
pub mod secret_headers;
pub mod smoke;
pub mod tracker;
pub mod window;
pub mod workload;

use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use k8s_openapi::jiff::Timestamp;

use crate::api::{Gate, GateVerdict, Verdict};

pub use http::{HttpProber, ProbeOutcome};
pub use secret_headers::SecretHeaders;
pub use tracker::GateTracker;
pub use workload::{WorkloadStores, WorkloadVerdict, WorkloadView, capture_baseline, evaluate_workloads};

/// `next_due` when there is no gate to probe: how often the workload gate alone is
/// worth re-checking.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// What one probe of a gate found. An `http` probe always has a verdict; a `logs`
/// or `metrics` probe may find nothing to judge yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Passed or failed: counted towards the gate's thresholds.
    Probe(ProbeOutcome),
    /// Nothing to judge yet (no data, no matching line yet): not counted; the gate
    /// is pending and says why until a probe finds something.
    Waiting(String),
    /// The gate fails now, whatever its thresholds (a `logs` gate past `within`).
    Final(String),
    /// The egress policy refused a request of the probe: the Runbook must change, the
    /// revision is not to blame (never counted; verification stops on it).
    Refused(String),
    /// The gate has nothing to judge this revision by (a `logs` gate on a revision
    /// that rolled no pod): it counts as passed for good, the message saying why,
    /// since a gate that cannot judge must not hold a good revision back.
    NotApplicable(String),
}

impl Observation {
    /// An `http` or `smoke` probe's outcome: refused or counted.
    fn of(outcome: ProbeOutcome) -> Self {
        if outcome.refused {
            Observation::Refused(outcome.message)
        } else {
            Observation::Probe(outcome)
        }
    }
}

/// What the probes of one round need besides the gates.
pub struct ProbeContext<'a> {
    pub http: &'a HttpProber,
    /// The app's own client (impersonating its identity): `logs` gates read pod logs
    /// with it, so a log is read only where the app may read it.
    pub client: &'a kube::Client,
    /// Where `logs` gates find the workload's pods (the controller's watch caches).
    pub workloads: &'a (dyn WorkloadView + Sync),
    /// The app's target namespace.
    pub namespace: &'a str,
    /// The `headersFrom` values of the gates, read from the app's Secrets.
    pub secret_headers: &'a SecretHeaders,
    /// When the revision was applied: `logs` gates read lines logged since and count
    /// `within` from then.
    pub applied_at: Timestamp,
}

/// The Runbook gates of one revision being verified, in Runbook order.
#[derive(Clone, Debug)]
pub struct RunbookGates {
    gates: Vec<TrackedGate>,
}

#[derive(Clone, Debug)]
struct TrackedGate {
    gate: Gate,
    tracker: GateTracker,
    /// The last probe found nothing to judge: when, and why (not counted by the
    /// tracker; cleared by the next probe that judges).
    waiting: Option<(Instant, String)>,
    /// The egress policy refused the last probe's request: why.
    refused: Option<String>,
}

impl RunbookGates {
    /// Tracks every gate that has a probe this controller can send (`http`, `smoke`,
    /// `logs`, `metrics`: see `send_probe`).
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
                waiting: None,
                refused: None,
            })
            .collect();
        Self { gates }
    }

    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    /// Sends every probe that is due at `now`, all at once, and records the outcomes
    /// as of `now` (periods count from the start of a probe, as for a kubelet probe).
    pub async fn run_due_probes(&mut self, probes: &ProbeContext<'_>, now: Instant) {
        let (indices, pending): (Vec<usize>, Vec<BoxFuture<'_, Observation>>) = self
            .gates
            .iter()
            .enumerate()
            .filter(|(_, tracked)| tracked.due(now))
            .filter_map(|(index, tracked)| Some((index, send_probe(&tracked.gate, probes)?)))
            .unzip();
        let observations = join_all(pending).await;
        for (index, observation) in indices.into_iter().zip(observations) {
            let tracked = &mut self.gates[index];
            let before = tracked.verdict();
            tracing::debug!(gate = %tracked.gate.name, ?observation, "gate probe");
            tracked.observe(observation, now);
            let after = tracked.verdict();
            if before.verdict != after.verdict {
                tracing::info!(gate = %tracked.gate.name, verdict = ?after.verdict, message = ?after.message, "gate verdict changed");
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
            .map(TrackedGate::verdict)
            .find(|verdict| verdict.verdict == Verdict::Failed)
    }

    /// The first gate whose request the egress policy refused, and why: a Runbook
    /// problem, to be fixed before the revision can be judged.
    pub fn refused(&self) -> Option<(String, String)> {
        self.gates.iter().find_map(|tracked| {
            tracked
                .refused
                .as_ref()
                .map(|why| (tracked.gate.name.clone(), why.clone()))
        })
    }

    /// Whether every gate passes right now (true with no gates).
    pub fn all_passed(&self) -> bool {
        self.gates
            .iter()
            .all(|tracked| tracked.verdict().verdict == Verdict::Passed)
    }

    /// Time until the next probe is due (zero if one is due now). With nothing left
    /// to probe, a short idle interval rather than "never", so callers can sleep on it.
    pub fn next_due(&self, now: Instant) -> Duration {
        self.gates
            .iter()
            .filter(|tracked| tracked.probed_again())
            .map(|tracked| tracked.until_due(now))
            .min()
            .unwrap_or(IDLE_RECHECK)
    }
}

/// One probe of `gate`, for each probe kind this controller sends; `None` for a gate
/// it cannot probe. The one place a probe kind meets the code that probes it.
fn send_probe<'a>(gate: &'a Gate, probes: &'a ProbeContext<'_>) -> Option<BoxFuture<'a, Observation>> {
    let (timeout, namespace) = (gate.timeout(), probes.namespace);
    match gate {
        Gate { http: Some(http), .. } => Some(
            probes
                .http
                .probe(
                    http,
                    probes.secret_headers.of_http(&gate.name),
                    timeout,
                    namespace,
                )
                .map(Observation::of)
                .boxed(),
        ),
        // One probe runs every step; `timeoutSeconds` bounds each request of a step
        // (see `smoke::probe` for the bound on the whole run).
        Gate {
            smoke: Some(smoke), ..
        } => Some(
            smoke::probe(
                probes.http,
                (&gate.name, smoke),
                probes.secret_headers,
                timeout,
                namespace,
            )
            .map(Observation::of)
            .boxed(),
        ),
        Gate { logs: Some(logs), .. } => Some(
            logs::probe(
                probes.client,
                probes.workloads,
                logs,
                namespace,
                probes.applied_at,
                timeout,
            )
            .boxed(),
        ),
        Gate {
            metrics: Some(metrics),
            ..
        } => Some(metrics::probe(probes.http, metrics, timeout).boxed()),
        _ => None,
    }
}

/// Whether [`send_probe`] has a probe for `gate`.
fn can_probe(gate: &Gate) -> bool {
    matches!(
        gate,
        Gate { http: Some(_), .. }
            | Gate { smoke: Some(_), .. }
            | Gate { logs: Some(_), .. }
            | Gate { metrics: Some(_), .. }
    )
}

impl TrackedGate {
    /// The gate's verdict: the tracker's, except that a gate whose last probe found
    /// nothing to judge is pending (unless it failed for good).
    fn verdict(&self) -> GateVerdict {
        if let Some(why) = &self.refused {
            return GateVerdict {
                name: self.gate.name.clone(),
                verdict: Verdict::Pending,
                message: Some(why.clone()),
            };
        }
        let (verdict, message) = match (&self.waiting, self.tracker.verdict()) {
            (Some((_, why)), verdict) if verdict != Verdict::Failed => (Verdict::Pending, why.clone()),
            (_, verdict) => (verdict, self.tracker.summary()),
        };
        GateVerdict {
            name: self.gate.name.clone(),
            verdict,
            message: Some(message),
        }
    }

    /// Whether the gate is probed again: not once failed, nor a `logs` gate once it
    /// passed (the line was logged, or the gate does not apply; the tail read later
    /// may no longer hold the line).
    fn probed_again(&self) -> bool {
        match self.tracker.verdict() {
            Verdict::Failed => false,
            Verdict::Passed if self.gate.logs.is_some() => self.waiting.is_some(),
            _ => true,
        }
    }

    /// Time until the next probe is due: a period after the last probe, counted or not.
    fn until_due(&self, now: Instant) -> Duration {
        let since_waiting = self.waiting.as_ref().map_or(Duration::ZERO, |(at, _)| {
            (*at + self.gate.period()).saturating_duration_since(now)
        });
        self.tracker.until_due(now).max(since_waiting)
    }

    fn due(&self, now: Instant) -> bool {
        self.probed_again() && self.until_due(now).is_zero()
    }

    /// Records what a probe started at `now` found.
    fn observe(&mut self, observation: Observation, now: Instant) {
        match observation {
            Observation::Probe(outcome) => {
                self.waiting = None;
                self.refused = None;
                self.tracker.record(&outcome, now);
            }
            Observation::Waiting(why) => {
                self.refused = None;
                self.waiting = Some((now, why));
            }
            Observation::Final(why) => {
                self.waiting = None;
                self.refused = None;
                self.tracker.fail(why);
            }
            Observation::Refused(why) => {
                self.waiting = None;
                self.refused = Some(why);
            }
            Observation::NotApplicable(why) => {
                self.waiting = None;
                self.refused = None;
                self.tracker.pass(why);
            }
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
    use crate::api::{HttpGate, LogsGate, MetricsGate, NoData, Threshold};
    use crate::gates::workload::WorkloadObjects;

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

    fn record(verification: &mut RunbookGates, name: &str, outcome: ProbeOutcome, now: Instant) {
        let tracked = verification
            .gates
            .iter_mut()
            .find(|t| t.gate.name == name)
            .expect("gate exists");
        tracked.tracker.record(&outcome, now);
    }

    #[test]
    fn no_gates_pass_and_idle() {
        let verification = RunbookGates::new(&[]);
        assert!(verification.all_passed());
        assert!(verification.failed().is_none());
        assert!(verification.verdicts().is_empty());
        assert_eq!(verification.next_due(Instant::now()), IDLE_RECHECK);
    }

    #[test]
    fn verdicts_follow_runbook_order_and_all_must_pass() {
        let mut verification = RunbookGates::new(&[http_gate("health", 5), http_gate("cors", 5)]);
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
        let mut verification = RunbookGates::new(&[http_gate("cors", 5), gate]);
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
        let verification = RunbookGates::new(std::slice::from_ref(&smoke));
        assert!(verification.failed().is_none(), "never held against the revision");
        assert!(verification.is_empty());
        assert!(verification.all_passed(), "nothing left to wait for");
        assert_eq!(verification.next_due(Instant::now()), IDLE_RECHECK);

        // Next to a gate with a probe, only that one is verified.
        let mut verification = RunbookGates::new(&[smoke, http_gate("health", 5)]);
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
        let mut verification = RunbookGates::new(&[http_gate("slow", 30), http_gate("fast", 5)]);
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
        let mut verification = RunbookGates::new(&[http_gate("a", 5), http_gate("b", 60)]);
        let prober = HttpProber::new(crate::egress::EgressPolicy::unrestricted()).expect("client");
        let client = unreachable_client();
        let workloads = WorkloadObjects::default();
        let probes = probe_context(&prober, &client, &workloads);
        let start = Instant::now();
        verification.run_due_probes(&probes, start).await;
        let failures = |v: &RunbookGates| -> Vec<u32> {
            v.gates.iter().map(|t| t.tracker.consecutive_failures()).collect()
        };
        assert_eq!(failures(&verification), [1, 1]);
        verification
            .run_due_probes(&probes, start + Duration::from_secs(5))
            .await;
        assert_eq!(failures(&verification), [2, 1], "only gate a was due again");
    }

    /// A client of an API server that is not there (port 1): nothing here calls it.
    fn unreachable_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client")
    }

    fn probe_context<'a>(
        prober: &'a HttpProber,
        client: &'a kube::Client,
        workloads: &'a WorkloadObjects,
    ) -> ProbeContext<'a> {
        ProbeContext {
            http: prober,
            client,
            workloads,
            namespace: "shop",
            secret_headers: SecretHeaders::none(),
            applied_at: Timestamp::now(),
        }
    }

    fn metrics_gate(name: &str, no_data: NoData) -> Gate {
        Gate {
            name: name.into(),
            metrics: Some(MetricsGate {
                prometheus: "http://127.0.0.1:1".into(),
                query: "up".into(),
                threshold: Threshold {
                    op: "==".into(),
                    value: 1.0,
                },
                no_data,
            }),
            ..Gate::default()
        }
    }

    fn logs_gate(name: &str) -> Gate {
        Gate {
            name: name.into(),
            logs: Some(LogsGate {
                workload: "worker".into(),
                pattern: "started".into(),
                ..LogsGate::default()
            }),
            ..Gate::default()
        }
    }

    fn observe(verification: &mut RunbookGates, name: &str, observation: Observation, now: Instant) {
        let tracked = verification
            .gates
            .iter_mut()
            .find(|t| t.gate.name == name)
            .expect("gate exists");
        tracked.observe(observation, now);
    }

    #[test]
    fn waiting_is_pending_not_counted_and_probed_again_a_period_later() {
        let mut verification = RunbookGates::new(&[metrics_gate("errors", NoData::Wait)]);
        let start = Instant::now();
        observe(
            &mut verification,
            "errors",
            Observation::Probe(ProbeOutcome::passed("query up returned 1 (== 1)")),
            start,
        );
        assert!(verification.all_passed());
        observe(
            &mut verification,
            "errors",
            Observation::Waiting("query up returned no data; waiting for data (noData: Wait)".into()),
            start + Duration::from_secs(5),
        );
        let verdict = &verification.verdicts()[0];
        assert_eq!(
            verdict.verdict,
            Verdict::Pending,
            "no data after data: not passing"
        );
        assert_eq!(
            verdict.message.as_deref(),
            Some("query up returned no data; waiting for data (noData: Wait)")
        );
        assert_eq!(
            verification.gates[0].tracker.consecutive_failures(),
            0,
            "not counted"
        );
        assert_eq!(
            verification.next_due(start + Duration::from_secs(7)),
            Duration::from_secs(3),
            "a period after the probe that waited"
        );
        observe(
            &mut verification,
            "errors",
            Observation::Probe(ProbeOutcome::passed("query up returned 1 (== 1)")),
            start + Duration::from_secs(10),
        );
        assert!(verification.all_passed());
    }

    #[test]
    fn a_final_observation_fails_at_once_and_a_passed_logs_gate_is_done() {
        let mut gate = logs_gate("worker-started");
        gate.failure_threshold = Some(5);
        let mut verification = RunbookGates::new(&[gate, logs_gate("other")]);
        let start = Instant::now();
        observe(
            &mut verification,
            "worker-started",
            Observation::Final("no line matched within 60s of the apply".into()),
            start,
        );
        let failed = verification.failed().expect("failed at once, threshold or not");
        assert_eq!(failed.name, "worker-started");
        assert_eq!(
            failed.message.as_deref(),
            Some("no line matched within 60s of the apply")
        );

        observe(
            &mut verification,
            "other",
            Observation::Probe(ProbeOutcome::passed("pod worker-1 logged \"started\"")),
            start,
        );
        let other = &verification.gates[1];
        assert_eq!(other.verdict().verdict, Verdict::Passed);
        assert!(!other.due(start + Duration::from_secs(3600)), "passed for good");
        assert_eq!(
            verification.next_due(start),
            IDLE_RECHECK,
            "nothing left to probe"
        );
    }

    #[test]
    fn a_gate_that_does_not_apply_passes_for_good_saying_why() {
        let mut gate = logs_gate("worker-started");
        gate.success_threshold = Some(3);
        let mut verification = RunbookGates::new(&[gate]);
        let start = Instant::now();
        observe(
            &mut verification,
            "worker-started",
            Observation::NotApplicable("the gate does not apply, the revision rolled no pod".into()),
            start,
        );
        assert!(verification.all_passed(), "not held against the revision");
        assert!(verification.failed().is_none());
        let verdict = &verification.verdicts()[0];
        assert_eq!(verdict.verdict, Verdict::Passed);
        assert_eq!(
            verdict.message.as_deref(),
            Some("the gate does not apply, the revision rolled no pod")
        );
        assert!(
            !verification.gates[0].due(start + Duration::from_secs(3600)),
            "not probed again"
        );
    }

    #[tokio::test]
    async fn metrics_probes_are_dispatched_and_counted() {
        // Nothing listens on port 1: a failed probe, counted like an http probe's.
        let mut verification = RunbookGates::new(&[metrics_gate("errors", NoData::Wait)]);
        let prober = HttpProber::new(crate::egress::EgressPolicy::unrestricted()).expect("client");
        let client = unreachable_client();
        let workloads = WorkloadObjects::default();
        verification
            .run_due_probes(&probe_context(&prober, &client, &workloads), Instant::now())
            .await;
        assert_eq!(verification.gates[0].tracker.consecutive_failures(), 1);
        let message = verification.verdicts()[0].message.clone().unwrap();
        assert!(
            message.contains("GET http://127.0.0.1:1/api/v1/query"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn logs_probes_are_dispatched_and_wait_for_the_workload() {
        let mut verification = RunbookGates::new(&[logs_gate("worker-started")]);
        let prober = HttpProber::new(crate::egress::EgressPolicy::unrestricted()).expect("client");
        let client = unreachable_client();
        let workloads = WorkloadObjects::default();
        verification
            .run_due_probes(&probe_context(&prober, &client, &workloads), Instant::now())
            .await;
        let verdict = &verification.verdicts()[0];
        assert_eq!(verdict.verdict, Verdict::Pending);
        assert!(
            verdict
                .message
                .as_deref()
                .unwrap()
                .contains("no Deployment, StatefulSet or DaemonSet shop/worker found"),
            "{verdict:?}"
        );
    }
}
