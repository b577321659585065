//! The controller's HTTP server against the real binary: `/healthz` answers while the
//! API server is down, `/readyz` turns from 503 to 200 once the watch caches are
//! synced, `/metrics` is OpenMetrics text, and a real Prometheus scraping it counts
//! the rollback of a flip-back.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bosun::api::Phase;
use bosun_devenv::example::{ExampleRevision, runbook_yaml};
use bosun_devenv::{HealthEndpoint, Prometheus, WorkRepo};
use support::Harness;

const NS: &str = "shop";
const APP: &str = "litevault";

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

/// A namespace, a health endpoint, the example Runbook (an HTTP gate, three failures
/// roll back) and the AppDeployment on `repo`.
async fn set_up_app(harness: &Harness, repo: &WorkRepo) -> HealthEndpoint {
    harness.namespace(NS).await;
    let health = HealthEndpoint::start(harness.client.clone(), NS, "backend")
        .await
        .unwrap();
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health.url(), "3s"))
        .await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    health
}

struct Endpoint {
    base: String,
    http: reqwest::Client,
}

impl Endpoint {
    fn new(address: &str) -> Endpoint {
        Endpoint {
            base: format!("http://{address}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// The status code of `GET path`, `None` while nothing answers.
    async fn status(&self, path: &str) -> Option<u16> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await;
        response.ok().map(|r| r.status().as_u16())
    }

    async fn wait_for_status(&self, path: &str, status: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.status(path).await;
            if got == Some(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "GET {path}: {got:?}, not {status}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /metrics`: the `Content-Type` and the text.
    async fn metrics(&self) -> (String, String) {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (content_type, response.text().await.unwrap())
    }
}

/// The samples of an OpenMetrics text exposition, `(series, value)`, checked against
/// the format's rules as far as this test relies on them: `# TYPE`/`# HELP`/`# UNIT`
/// lines for every family before its samples, each sample named after its family
/// (with the suffix its type allows), numeric values, and `# EOF` last.
fn parse_openmetrics(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end:\n{text}");
    let mut families: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "stateset",
                    "unknown",
                    "summary",
                    "gaugehistogram"
                ]
                .contains(&kind),
                "unknown type in {line:?}"
            );
            assert!(
                !families.iter().any(|(n, _)| n == name),
                "family {name} declared twice"
            );
            families.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let name = series.split('{').next().unwrap();
        let (family, kind) = families.last().expect("a sample before any # TYPE");
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            _ => &[""],
        };
        assert!(
            allowed.iter().any(|suffix| name == format!("{family}{suffix}")),
            "sample {name} does not belong to family {family} ({kind})"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "labels not closed in {line:?}");
        }
        samples.push((series.to_string(), value));
    }
    samples
}

/// Waits until the instant query `promql` gives `expected` (Prometheus answers from
/// its last scrape, which may be a second behind).
async fn wait_for_prometheus(prometheus: &Prometheus, promql: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let value = prometheus
            .wait_for_value(promql, remaining.max(Duration::from_millis(1)))
            .await;
        match value {
            Ok(value) if value == expected => return,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => panic!("{promql}: {other:?}, expected {expected}"),
        }
    }
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[tokio::test]
async fn health_readiness_and_metrics_then_prometheus_counts_a_flip_back() {
    let mut harness = Harness::start().await;
    harness
        .run_as_chart_account(support::chart::APPLY_AS_CONTROLLER)
        .await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo).await;
    let port = bosun_devenv::process::free_ports(1).unwrap()[0];
    let address = format!("127.0.0.1:{port}");
    let endpoint = Endpoint::new(&address);

    // Started while the API server is down: alive, not ready, for as long as it is down.
    harness.control_plane.stop_apiserver().await.unwrap();
    harness.start_controller_with(&["--listen-address", &address], &[]);
    endpoint
        .wait_for_status("/healthz", 200, Duration::from_secs(30))
        .await;
    assert_eq!(endpoint.status("/readyz").await, Some(503));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.status("/readyz").await, Some(503));
    assert_eq!(endpoint.status("/healthz").await, Some(200));
    harness.control_plane.start_apiserver().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        harness.controller_running(),
        "the controller exited\n{}",
        harness.controller_log()
    );
    let ready_after = endpoint
        .wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await;
    println!(
        "/readyz: 200 {:.2}s after the API server was back",
        ready_after.as_secs_f64()
    );

    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let (content_type, text) = endpoint.metrics().await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let samples = parse_openmetrics(&text);
    assert_eq!(
        value(&samples, r#"bosun_appdeployments{phase="Healthy"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&samples, r#"bosun_appdeployments{phase="RolledBack"}"#),
        Some(0.0)
    );
    assert!(value(&samples, r#"bosun_reconciles_total{result="ok"}"#).is_some_and(|v| v >= 1.0));
    assert!(
        value(&samples, r#"bosun_reconcile_duration_seconds_count{result="ok"}"#).is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(&samples, r#"bosun_git_fetch_duration_seconds_count{result="ok"}"#).is_some_and(|v| v >= 1.0)
    );
    assert!(value(&samples, "bosun_queue_depth").is_some());
    for gate in ["workload", "http"] {
        let series = format!(r#"bosun_gate_verdicts_total{{kind="{gate}",verdict="passed"}}"#);
        assert_eq!(value(&samples, &series), Some(1.0), "{series}\n{text}");
    }
    assert!(
        !text.contains("bosun_rollbacks_total"),
        "a rollback counted before any:\n{text}"
    );

    // Prometheus scrapes every second; the flip-back happens while it does.
    let prometheus = Prometheus::start(std::slice::from_ref(&address), Duration::from_secs(60))
        .await
        .expect("Prometheus starts");
    // `up` is 1 once a scrape was read by Prometheus's own OpenMetrics parser.
    wait_for_prometheus(&prometheus, &format!(r#"up{{instance="{address}"}}"#), 1.0).await;

    let bad = commit(&repo, &ExampleRevision::unhealthy("2.0"), "v2.0 degraded");
    harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    println!("{bad} rolled back to {good}");
    wait_for_prometheus(
        &prometheus,
        &format!(r#"bosun_rollbacks_total{{namespace="{NS}",app="{APP}"}}"#),
        1.0,
    )
    .await;
    wait_for_prometheus(&prometheus, r#"bosun_appdeployments{phase="RolledBack"}"#, 1.0).await;
    // Still one a few scrapes later: the rollback was counted once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_prometheus(&prometheus, "sum(bosun_rollbacks_total)", 1.0).await;

    let (_, text) = endpoint.metrics().await;
    let samples = parse_openmetrics(&text);
    assert_eq!(
        value(&samples, "bosun_time_to_rollback_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let time_to_rollback = value(&samples, "bosun_time_to_rollback_seconds_sum").unwrap();
    assert!(
        time_to_rollback > 0.0 && time_to_rollback < 60.0,
        "{time_to_rollback}"
    );
    println!("from the failing round to the rollback applied: {time_to_rollback:.2}s");
    assert_eq!(
        value(
            &samples,
            r#"bosun_gate_verdicts_total{kind="http",verdict="failed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // Prometheus parsed every series of the exposition.
    let names: BTreeSet<&str> = samples
        .iter()
        .map(|(series, _)| series.split('{').next().unwrap())
        .collect();
    for name in names {
        let series = samples
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .count();
        // At least those (a later scrape may hold more, e.g. a failed pass).
        wait_for_prometheus(&prometheus, &format!("count({name}) >= bool {series}"), 1.0).await;
    }
}
