//! The `logs` and `metrics` gates against real servers: pod logs read through the
//! `pods/log` API of the local 1.20 control plane (the pod simulator's kubelet
//! endpoint serves what the containers' `sh -c` scripts echo), and PromQL answered
//! by a real Prometheus scraping metrics endpoints whose error rate and latency the
//! test sets. Each gate passes and fails; `noData` waits, fails and passes.

mod support;

use std::time::{Duration, Instant};

use bosun::api::{Gate, LogsGate, MetricsGate, NoData, Threshold, Verdict};
use bosun::gates::workload::WorkloadObjects;
use bosun::gates::{HttpProber, Observation, ProbeContext, RunbookGates, logs, metrics};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, MetricsEndpoint, PodSimulator, Prometheus};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::init_tracing;

const NS: &str = "shop";
const NODE: &str = "devenv-node";
const PATTERN: &str = "EnrichmentWorker started";
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A control plane whose Pods are bound to a Node, so their logs can be read.
struct Cluster {
    control_plane: ControlPlane,
    client: Client,
    _pods: PodSimulator,
}

impl Cluster {
    async fn start() -> Cluster {
        init_tracing();
        let control_plane = ControlPlane::start(ControlPlaneOptions::default())
            .await
            .expect("control plane starts");
        let client = control_plane.client();
        control_plane.register_node(NODE).await.expect("Node registered");
        let pods = PodSimulator::start_on_node(client.clone(), NODE);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } });
        namespaces
            .patch(NS, &PatchParams::apply("bosun-test"), &Patch::Apply(&namespace))
            .await
            .expect("namespace");
        Cluster {
            control_plane,
            client,
            _pods: pods,
        }
    }

    /// Applies Deployment `worker` running `script` in container `worker` (next to
    /// a sidecar); returns the time of the apply, as the controller records it.
    async fn apply_worker(&self, version: &str, script: &str) -> Timestamp {
        let applied_at = Timestamp::now();
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "worker" },
            "spec": {
                "selector": { "matchLabels": { "app": "worker" } },
                "template": {
                    "metadata": { "labels": { "app": "worker" } },
                    "spec": { "containers": [
                        { "name": "proxy", "image": "example/proxy:1" },
                        { "name": "worker", "image": format!("example/worker:{version}"),
                          "command": ["sh", "-c", script] },
                    ] }
                }
            }
        });
        Api::<Deployment>::namespaced(self.client.clone(), NS)
            .patch(
                "worker",
                &PatchParams::apply("bosun-test").force(),
                &Patch::Apply(&deployment),
            )
            .await
            .expect("apply the worker");
        applied_at
    }

    /// What the controller's watch caches would hold for the namespace, listed.
    async fn workloads(&self) -> WorkloadObjects {
        async fn list<K>(client: &Client) -> Vec<K>
        where
            K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug,
            K::DynamicType: Default,
        {
            Api::<K>::namespaced(client.clone(), NS)
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
        }
        WorkloadObjects {
            deployments: list::<Deployment>(&self.client).await,
            stateful_sets: list::<StatefulSet>(&self.client).await,
            daemon_sets: list::<DaemonSet>(&self.client).await,
            replica_sets: list::<ReplicaSet>(&self.client).await,
            controller_revisions: vec![],
            pods: list::<Pod>(&self.client).await,
        }
    }

    async fn probe_logs(&self, gate: &LogsGate, applied_at: Timestamp) -> Observation {
        let workloads = self.workloads().await;
        logs::probe(&self.client, &workloads, gate, NS, applied_at, PROBE_TIMEOUT).await
    }

    /// Probes `gate` every half second until `done` accepts an observation.
    async fn probe_logs_until(
        &self,
        gate: &LogsGate,
        applied_at: Timestamp,
        what: &str,
        done: impl Fn(&Observation) -> bool,
    ) -> (Observation, Vec<Observation>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let observation = self.probe_logs(gate, applied_at).await;
            if done(&observation) {
                return (observation, seen);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {observation:?} after 60s; kube-apiserver log:\n{}",
                bosun_devenv::process::log_tail(&self.control_plane.log_dir().join("kube-apiserver.log"), 10)
            );
            seen.push(observation);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn logs_gate(container: Option<&str>, within: Option<&str>) -> LogsGate {
    LogsGate {
        workload: "worker".into(),
        container: container.map(Into::into),
        pattern: PATTERN.into(),
        within: within.map(Into::into),
    }
}

fn passed(observation: &Observation) -> bool {
    matches!(observation, Observation::Probe(outcome) if outcome.passed)
}

fn message(observation: &Observation) -> &str {
    match observation {
        Observation::Probe(outcome) => &outcome.message,
        Observation::Waiting(message)
        | Observation::Final(message)
        | Observation::Refused(message)
        | Observation::NotApplicable(message) => message,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_gate_passes_on_a_new_pods_line_and_fails_when_within_passes_without_one() {
    let cluster = Cluster::start().await;
    let gate = logs_gate(Some("worker"), Some("30s"));

    // The worker logs the line a second after it starts.
    let applied_at = cluster
        .apply_worker(
            "1",
            "echo 'booting'; sleep 1; echo 'EnrichmentWorker started (queue: enrichment)'; sleep infinity",
        )
        .await;
    let started = Instant::now();
    let (found, before) = cluster
        .probe_logs_until(&gate, applied_at, "the worker's line", passed)
        .await;
    eprintln!("logs gate passed {:?} after the apply", started.elapsed());
    assert!(
        message(&found).starts_with(
            "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": pod worker-"
        ),
        "{found:?}"
    );
    assert!(
        message(&found).ends_with("logged \"EnrichmentWorker started (queue: enrichment)\""),
        "{found:?}"
    );
    assert!(
        before.iter().all(|o| matches!(o, Observation::Waiting(_))),
        "waiting until then: {before:?}"
    );

    // The pattern is looked for in the gate's container only: the sidecar's log has
    // no such line.
    let sidecar = cluster
        .probe_logs(&logs_gate(Some("proxy"), Some("30s")), applied_at)
        .await;
    assert!(matches!(sidecar, Observation::Waiting(_)), "{sidecar:?}");
    assert!(
        message(&sidecar).contains("no matching line in the last 500 lines of 1 pods"),
        "{sidecar:?}"
    );
    // Without `container`, the first container (the sidecar) is read.
    let first = cluster
        .probe_logs(&logs_gate(None, Some("30s")), applied_at)
        .await;
    assert!(message(&first).contains("container proxy"), "{first:?}");

    // Pods from before the apply do not count, even though they logged the line.
    let later = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(2);
    let old_pods = cluster.probe_logs(&gate, later).await;
    assert!(
        message(&old_pods).contains("no pod created since the apply (1 older pods do not count)"),
        "{old_pods:?}"
    );

    // A revision whose worker never logs the line: waiting, then failed at `within`.
    let gate = logs_gate(Some("worker"), Some("6s"));
    let applied_at = cluster
        .apply_worker(
            "2",
            "echo 'EnrichmentWorker crashed: OPENAI_API_KEY is not set'; sleep infinity",
        )
        .await;
    let (failed, before) = cluster
        .probe_logs_until(&gate, applied_at, "the gate to fail", |o| {
            matches!(o, Observation::Final(_))
        })
        .await;
    let took = Timestamp::now().as_second() - applied_at.as_second();
    assert!((6..=9).contains(&took), "failed {took}s after the apply");
    assert!(
        !before.is_empty() && before.iter().all(|o| matches!(o, Observation::Waiting(_))),
        "{before:?}"
    );
    assert!(
        message(&failed).starts_with(
            "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": \
             no line matched within 6s of the apply (no matching line in the last 500 lines of "
        ),
        "{failed:?}"
    );

    // A pattern that is no regular expression fails with a message naming the field.
    let bad = LogsGate {
        pattern: "EnrichmentWorker (started".into(),
        ..gate.clone()
    };
    let refused = cluster.probe_logs(&bad, applied_at).await;
    assert!(
        matches!(&refused, Observation::Final(m) if m.starts_with("logs.pattern \"EnrichmentWorker (started\" is not a regular expression")),
        "{refused:?}"
    );
}

/// Two simulated apps scraped by one real Prometheus: `healthy` (no errors, 20 ms)
/// and `failing` (5% errors, 7 s).
struct Metrics {
    prometheus: Prometheus,
    healthy: MetricsEndpoint,
    failing: MetricsEndpoint,
}

impl Metrics {
    async fn start() -> Metrics {
        init_tracing();
        let healthy = MetricsEndpoint::start().await.expect("endpoint");
        let failing = MetricsEndpoint::start().await.expect("endpoint");
        failing.set_error_rate(0.05);
        failing.set_latency(Duration::from_secs(7));
        let prometheus = Prometheus::start(&[healthy.target(), failing.target()], Duration::from_secs(60))
            .await
            .expect("prometheus starts");
        eprintln!("prometheus ready in {:?}", prometheus.startup_duration());
        Metrics {
            prometheus,
            healthy,
            failing,
        }
    }

    fn gate(&self, query: &str, op: &str, value: f64, no_data: NoData) -> MetricsGate {
        MetricsGate {
            prometheus: self.prometheus.url(),
            query: query.into(),
            threshold: Threshold { op: op.into(), value },
            no_data,
        }
    }

    /// Probes until a probe judges (passed or failed), not waiting for data.
    async fn judged(&self, gate: &MetricsGate) -> Observation {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let observation = metrics::probe(&prober(), gate, PROBE_TIMEOUT).await;
            if let Observation::Probe(_) = observation {
                return observation;
            }
            assert!(
                Instant::now() < deadline,
                "{observation:?}\n{}",
                self.prometheus.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn error_rate(instance: &str) -> String {
    format!(
        "sum(rate(http_requests_total{{instance=\"{instance}\",code=~\"5..\"}}[5s])) \
         / sum(rate(http_requests_total{{instance=\"{instance}\"}}[5s]))"
    )
}

fn p95(instance: &str) -> String {
    format!(
        "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket{{instance=\"{instance}\"}}[5s])) by (le))"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_gate_compares_a_real_prometheus_answer_with_the_threshold() {
    let setup = Metrics::start().await;
    let (healthy, failing) = (setup.healthy.target(), setup.failing.target());

    // Error rate < 1%: the healthy app passes, the failing one does not.
    let ok = setup
        .judged(&setup.gate(&error_rate(&healthy), "<", 0.01, NoData::Wait))
        .await;
    assert!(passed(&ok), "{ok:?}");
    assert!(message(&ok).ends_with("returned 0 (< 0.01)"), "{ok:?}");
    let bad = setup
        .judged(&setup.gate(&error_rate(&failing), "<", 0.01, NoData::Wait))
        .await;
    assert!(!passed(&bad), "{bad:?}");
    let text = message(&bad);
    let value: f64 = text
        .strip_prefix(&format!("query {} returned ", error_rate(&failing)))
        .and_then(|rest| rest.strip_suffix(", not < 0.01"))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .expect("the value");
    assert!((value - 0.05).abs() < 0.01, "{text}");

    // p95 latency < 5s.
    let fast = setup
        .judged(&setup.gate(&p95(&healthy), "<", 5.0, NoData::Wait))
        .await;
    assert!(passed(&fast), "{fast:?}");
    let slow = setup
        .judged(&setup.gate(&p95(&failing), "<", 5.0, NoData::Wait))
        .await;
    assert!(!passed(&slow), "{slow:?}");
    assert!(message(&slow).contains(", not < 5"), "{slow:?}");

    // Every sample of a vector must hold; the one that does not is named.
    let per_code = format!("sum by (code) (rate(http_requests_total{{instance=\"{failing}\"}}[5s]))");
    let both = setup.judged(&setup.gate(&per_code, ">", 1.0, NoData::Wait)).await;
    assert!(passed(&both), "{both:?}");
    assert!(
        message(&both).ends_with("returned 2 samples, all > 1"),
        "{both:?}"
    );
    let per_code_healthy = format!("sum by (code) (rate(http_requests_total{{instance=\"{healthy}\"}}[5s]))");
    let some = setup
        .judged(&setup.gate(&per_code_healthy, ">", 1.0, NoData::Wait))
        .await;
    assert!(!passed(&some), "{some:?}");
    assert!(
        message(&some).ends_with("returned 0 for {code=\"500\"}, not > 1 (1 of 2 samples fail)"),
        "{some:?}"
    );

    // No data: wait, fail or pass as the gate says.
    let absent = "sum(rate(http_requests_total{app=\"not-deployed\"}[5s]))";
    let wait = metrics::probe(
        &prober(),
        &setup.gate(absent, "<", 0.01, NoData::Wait),
        PROBE_TIMEOUT,
    )
    .await;
    assert!(matches!(wait, Observation::Waiting(_)), "{wait:?}");
    assert_eq!(
        message(&wait),
        format!("query {absent} returned no data; waiting for data (noData: Wait)")
    );
    let fail = metrics::probe(
        &prober(),
        &setup.gate(absent, "<", 0.01, NoData::Fail),
        PROBE_TIMEOUT,
    )
    .await;
    assert!(matches!(&fail, Observation::Probe(o) if !o.passed), "{fail:?}");
    let pass = metrics::probe(
        &prober(),
        &setup.gate(absent, "<", 0.01, NoData::Pass),
        PROBE_TIMEOUT,
    )
    .await;
    assert!(passed(&pass), "{pass:?}");

    // A query Prometheus refuses: a failed probe quoting its error.
    let refused = metrics::probe(
        &prober(),
        &setup.gate("sum(rate(", "<", 1.0, NoData::Wait),
        PROBE_TIMEOUT,
    )
    .await;
    assert!(
        matches!(&refused, Observation::Probe(o) if !o.passed && o.message.contains("Prometheus answered bad_data")),
        "{refused:?}"
    );
    // A Prometheus that is not there: a failed probe naming the URL.
    let gone = MetricsGate {
        prometheus: "http://127.0.0.1:1".into(),
        ..setup.gate("up", "==", 1.0, NoData::Wait)
    };
    let unreachable = metrics::probe(&prober(), &gone, PROBE_TIMEOUT).await;
    assert!(
        matches!(&unreachable, Observation::Probe(o) if !o.passed && o.message.starts_with("GET http://127.0.0.1:1/api/v1/query: ")),
        "{unreachable:?}"
    );
}

/// Both gates through the verification the controller runs: probed by period,
/// counted by the tracker, the logs gate passing once, the metrics gate failing
/// after `failureThreshold` probes.
#[tokio::test(flavor = "multi_thread")]
async fn logs_and_metrics_gates_through_verification() {
    let cluster = Cluster::start().await;
    let metrics = Metrics::start().await;
    let applied_at = cluster
        .apply_worker("1", "echo 'EnrichmentWorker started'; sleep infinity")
        .await;
    let gate = |name: &str| Gate {
        name: name.into(),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Gate::default()
    };
    let gates = [
        Gate {
            logs: Some(logs_gate(Some("worker"), None)),
            ..gate("worker-started")
        },
        Gate {
            metrics: Some(metrics.gate(&error_rate(&metrics.healthy.target()), "<", 0.01, NoData::Wait)),
            ..gate("error-rate")
        },
    ];
    let mut verification = RunbookGates::new(&gates);
    let prober = HttpProber::new(loopback_policy()).expect("prober");
    let started = Instant::now();
    while !verification.all_passed() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:#?}",
            verification.verdicts()
        );
        let workloads = cluster.workloads().await;
        let probes = ProbeContext {
            http: &prober,
            client: &cluster.client,
            workloads: &workloads,
            namespace: NS,
            secret_headers: bosun::gates::SecretHeaders::none(),
            applied_at,
        };
        verification.run_due_probes(&probes, Instant::now()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdicts = verification.verdicts();
    assert!(
        verdicts.iter().all(|v| v.verdict == Verdict::Passed),
        "{verdicts:#?}"
    );
    assert!(
        verdicts[0]
            .message
            .as_deref()
            .unwrap()
            .contains("logged \"EnrichmentWorker started\""),
        "{verdicts:#?}"
    );

    // The same metrics gate on the failing app fails after two probes.
    let mut verification = RunbookGates::new(&[Gate {
        metrics: Some(metrics.gate(&error_rate(&metrics.failing.target()), "<", 0.01, NoData::Wait)),
        ..gate("error-rate")
    }]);
    let started = Instant::now();
    let failed = loop {
        if let Some(failed) = verification.failed() {
            break failed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:#?}",
            verification.verdicts()
        );
        let workloads = WorkloadObjects::default();
        let probes = ProbeContext {
            http: &prober,
            client: &cluster.client,
            workloads: &workloads,
            namespace: NS,
            secret_headers: bosun::gates::SecretHeaders::none(),
            applied_at,
        };
        verification.run_due_probes(&probes, Instant::now()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let message = failed.message.unwrap();
    assert!(
        message.starts_with("2 consecutive failed probes: query "),
        "{message}"
    );
    assert!(message.ends_with(", not < 0.01"), "{message}");
}

/// The built-in egress denials, with loopback allowed: the endpoints here listen on it.
fn loopback_policy() -> bosun::egress::EgressPolicy {
    bosun::egress::EgressPolicy::from_flags(&["127.0.0.0/8".into()], &[], &bosun::egress::Builtins::default())
        .expect("valid rules")
}

/// Probes with the built-in egress denials, loopback allowed (Prometheus listens on it).
fn prober() -> bosun::gates::HttpProber {
    bosun::gates::HttpProber::new(loopback_policy()).expect("client")
}
