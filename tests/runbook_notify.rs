//! Notifications end to end: the real `bosun` binary on the local control plane tells
//! the Runbook's webhooks (real HTTP servers on loopback) of Healthy, RollingBack,
//! RolledBack and Blocked; a receiver that is down (or never answers) holds up neither
//! the flip-back nor the others; a URL read from a Secret works and never reaches the
//! controller's log.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use bosun::api::Phase;
use bosun_devenv::example::{ExampleRevision, runbook_yaml};
use bosun_devenv::{HealthEndpoint, WorkRepo};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::Value;
use support::Harness;

const NS: &str = "shop";
const APP: &str = "litevault";
/// A delivery on loopback takes milliseconds; this is for a shared, loaded machine.
const WAIT: Duration = Duration::from_secs(30);

// ---- receivers ------------------------------------------------------------------

/// One POST a receiver got.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    /// The wall clock at receipt, to compare with the API server's audit times.
    wall: Timestamp,
    path: String,
    body: Value,
}

#[derive(Clone)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests answered 500 before the receiver answers 200.
    failures_first: usize,
    seen: Arc<AtomicUsize>,
}

/// A webhook receiver on loopback recording every POST.
struct Receiver {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::failing_first(0).await
    }

    /// Answers 500 to its first `failures` requests, then 200.
    async fn failing_first(failures: usize) -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let recorder = Recorder {
            received: received.clone(),
            failures_first: failures,
            seen: Arc::default(),
        };
        let router = Router::new().route("/{*path}", post(record)).with_state(recorder);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { base, received }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for a delivery whose body satisfies `matches`.
    async fn wait_for(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Received {
        support::eventually(what, WAIT, || async {
            Ok(self.received().into_iter().find(|r| matches(&r.body)))
        })
        .await
        .unwrap()
    }
}

async fn record(State(recorder): State<Recorder>, uri: Uri, body: Bytes) -> StatusCode {
    let n = recorder.seen.fetch_add(1, Ordering::SeqCst);
    if n < recorder.failures_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    recorder.received.lock().unwrap().push(Received {
        at: Instant::now(),
        wall: Timestamp::now(),
        path: uri.path().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    StatusCode::OK
}

/// A loopback port nothing listens on: bound, then closed.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A loopback port that accepts connections and never answers.
async fn silent_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    port
}

// ---- helpers --------------------------------------------------------------------

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

/// The example Runbook (gate `health`, 3 failures roll back) with `receivers` as its
/// `notify` list (YAML items, each starting `- name: ...`).
fn runbook_with(health_url: &str, receivers: &[String]) -> String {
    let mut yaml = runbook_yaml(NS, APP, health_url, "2s");
    if !receivers.is_empty() {
        yaml.push_str("  notify:\n");
        for receiver in receivers {
            for (i, line) in receiver.lines().enumerate() {
                yaml.push_str(if i == 0 { "    - " } else { "      " });
                yaml.push_str(line);
                yaml.push('\n');
            }
        }
    }
    yaml
}

fn receiver_yaml(name: &str, url: &str, format: &str) -> String {
    format!("name: {name}\nurl: {url}\nformat: {format}")
}

/// How long after the status write that made it the delivery arrived: the last
/// status write of the controller completed before `received` (from the audit log).
async fn latency(harness: &Harness, received: &Received) -> Duration {
    let writes = harness.controller_writes().await;
    let written = writes
        .iter()
        .filter(|w| w.resource == "appdeployments" && w.subresource.as_deref() == Some("status"))
        .filter(|w| w.completed_at <= received.wall)
        .map(|w| w.completed_at)
        .max()
        .expect("a status write before the delivery");
    received.wall.duration_since(written).unsigned_abs()
}

/// The controller's log without the terminal colour codes its formatter writes.
fn plain_log(harness: &Harness) -> String {
    let log = harness.controller_log_text();
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn slack_text(body: &Value) -> String {
    let fields: Vec<String> = body["blocks"][0]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["text"].as_str().map(str::to_string))
        .collect();
    format!(
        "{} | {}",
        body["text"].as_str().unwrap_or_default(),
        fields.join(" | ")
    )
}

/// The RollingBack and RolledBack deliveries of the flip-back from `bad` to `good` at
/// `receiver`, checked; returns the time between them.
async fn flip_back_told(receiver: &Receiver, bad: &str, good: &str) -> Duration {
    let about = |phase: &'static str| {
        let (bad, good) = (bad.to_string(), good.to_string());
        move |body: &Value| {
            body["phase"] == phase
                && body["revision"]["from"] == bad.as_str()
                && body["revision"]["to"] == good.as_str()
        }
    };
    let rolling = receiver.wait_for("RollingBack told", about("RollingBack")).await;
    let rolled = receiver.wait_for("RolledBack told", about("RolledBack")).await;
    for told in [&rolling, &rolled] {
        let body = &told.body;
        assert_eq!(body["app"], APP, "{body}");
        assert_eq!(body["namespace"], NS, "{body}");
        assert_eq!(body["gate"], "health", "{body}");
        let summary = body["summary"].as_str().unwrap();
        assert!(
            summary.contains(&bad[..12]) && summary.contains(&good[..12]),
            "{summary}"
        );
        assert!(summary.contains("health"), "{summary}");
    }
    // The failed gate is the cause of both.
    assert_eq!(rolling.body["reason"], "GateFailed", "{}", rolling.body);
    assert_eq!(rolled.body["reason"], "GateFailed", "{}", rolled.body);
    rolled.at.duration_since(rolling.at)
}

// ---- tests ----------------------------------------------------------------------

#[tokio::test]
async fn a_flip_back_is_told_to_every_receiver_and_a_receiver_that_is_down_holds_nothing_up() {
    let json_receiver = Receiver::start().await;
    let slack_receiver = Receiver::start().await;
    let down = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let silent = format!("http://127.0.0.1:{}/hook", silent_port().await);
    let all_receivers = vec![
        receiver_yaml("ops", &json_receiver.url("/ops"), "Json"),
        receiver_yaml("chat", &slack_receiver.url("/chat"), "Slack"),
        receiver_yaml("down", &down, "Json"),
        receiver_yaml("silent", &silent, "Json"),
    ];
    let mut harness = Harness::start().await;
    harness.namespace(NS).await;
    let health = HealthEndpoint::start(harness.client.clone(), NS, "backend")
        .await
        .unwrap();
    harness
        .apply_runbook(&runbook_with(&health.url(), &all_receivers))
        .await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;

    // Healthy, to both receivers that are up.
    let healthy = json_receiver
        .wait_for("Healthy told", |b| {
            b["phase"] == "Healthy" && b["revision"]["to"] == good.as_str()
        })
        .await;
    assert_eq!(healthy.path, "/ops");
    assert_eq!(healthy.body["app"], APP);
    assert_eq!(healthy.body["namespace"], NS);
    assert_eq!(healthy.body["revision"]["from"], Value::Null);
    println!(
        "Healthy: delivered {:.3}s after the status write",
        latency(&harness, &healthy).await.as_secs_f64()
    );
    let slack = slack_receiver
        .wait_for("Healthy told in Slack's format", |b| {
            b["text"]
                .as_str()
                .is_some_and(|t| t.contains(&good[..12]) && t.contains("healthy"))
        })
        .await;
    assert_eq!(slack.path, "/chat");
    assert_eq!(slack.body["blocks"][0]["type"], "section");

    // A revision that fails its gate: flipped back, told as RollingBack then RolledBack,
    // with the down and the silent receivers among those told.
    let bad = commit(&repo, &ExampleRevision::unhealthy("2.0"), "v2.0 degraded");
    harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let with_dead_receivers = flip_back_told(&json_receiver, &bad, &good).await;
    for phase in ["RollingBack", "RolledBack"] {
        let told = slack_receiver
            .wait_for(&format!("{phase} told in Slack's format"), |b| {
                slack_text(b).contains(&format!("*Phase*\n{phase}"))
            })
            .await;
        let text = slack_text(&told.body);
        for fragment in [
            format!("*App*\n{NS}/{APP}"),
            format!("`{}` → `{}`", &bad[..12], &good[..12]),
            "*Gate*\nhealth".to_string(),
        ] {
            assert!(text.contains(&fragment), "{fragment:?} not in {text}");
        }
    }
    let rolled = json_receiver
        .received()
        .into_iter()
        .find(|r| r.body["phase"] == "RolledBack")
        .unwrap();
    println!(
        "RolledBack: delivered {:.3}s after the status write",
        latency(&harness, &rolled).await.as_secs_f64()
    );

    // A good commit: Healthy again, told.
    let fixed = commit(&repo, &ExampleRevision::good("2.1"), "v2.1 fixed");
    harness.wait_for_phase(NS, APP, Phase::Healthy, &fixed).await;
    json_receiver
        .wait_for("Healthy told for the fixed commit", |b| {
            b["phase"] == "Healthy" && b["revision"]["to"] == fixed.as_str()
        })
        .await;

    // The same flip-back without the dead receivers, to compare.
    harness
        .apply_runbook(&runbook_with(&health.url(), &all_receivers[..2]))
        .await;
    let bad_again = commit(&repo, &ExampleRevision::unhealthy("3.0"), "v3.0 degraded");
    harness.wait_for_phase(NS, APP, Phase::RolledBack, &fixed).await;
    let without = flip_back_told(&json_receiver, &bad_again, &fixed).await;
    println!(
        "flip-back (RollingBack told → RolledBack told): {:.2}s with a receiver down and one silent, {:.2}s without",
        with_dead_receivers.as_secs_f64(),
        without.as_secs_f64()
    );
    // The dead receivers' retries (5 attempts, 5 s timeouts, back-off from 1 s) would
    // add tens of seconds if anything waited for them.
    assert!(
        with_dead_receivers < without + Duration::from_secs(4),
        "the dead receivers held the flip-back up: {with_dead_receivers:?} against {without:?}"
    );
    // They were tried, and named (by name only) in the log.
    let log = plain_log(&harness);
    assert!(log.contains("receiver=down"), "the down receiver was not tried");
    assert!(
        log.contains("receiver=silent"),
        "the silent receiver was not tried"
    );
}

#[tokio::test]
async fn a_url_from_a_secret_is_used_never_logged_and_a_preflight_block_is_told() {
    const TOKEN: &str = "T0KEN-b7e3c1d9a5f24e68";
    // The first delivery is answered 500: retried, and the retry logged (not the URL).
    let receiver = Receiver::failing_first(1).await;
    let url = receiver.url(&format!("/hooks/{TOKEN}"));
    let mut harness = Harness::start().await;
    harness.namespace(NS).await;
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let hooks = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("hooks".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ops".to_string(),
            ByteString(url.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &hooks).await.unwrap();
    harness
        .apply_runbook(&format!(
            "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: {APP}\n  namespace: {NS}\nspec:\n  verifyWindow: 1s\n  notify:\n    - name: ops\n      urlFrom:\n        name: hooks\n        key: ops\n"
        ))
        .await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let healthy = receiver
        .wait_for("Healthy told", |b| {
            b["phase"] == "Healthy" && b["revision"]["to"] == good.as_str()
        })
        .await;
    assert_eq!(
        healthy.path,
        format!("/hooks/{TOKEN}"),
        "delivered to the Secret's URL"
    );
    println!(
        "Healthy through a urlFrom receiver (one 500 first): delivered {:.3}s after the status write",
        latency(&harness, &healthy).await.as_secs_f64()
    );

    // A commit whose worker reads a Secret that does not exist: Blocked, told.
    for (path, contents) in ExampleRevision::good("1.1").files() {
        let contents = if path.ends_with("worker.yaml") {
            let reads_db = contents.replace(
                "          args: [\"python\", \"-m\", \"app.worker\"]\n",
                "          args: [\"python\", \"-m\", \"app.worker\"]\n          env:\n            - name: DATABASE_URL\n              valueFrom:\n                secretKeyRef:\n                  name: db\n                  key: url\n",
            );
            assert!(reads_db.contains("secretKeyRef"), "{reads_db}");
            reads_db
        } else {
            contents
        };
        repo.write(&path, &contents).unwrap();
    }
    let blocked = repo.commit("the worker reads Secret db").unwrap();
    let told = receiver
        .wait_for("Blocked told", |b| {
            b["phase"] == "Blocked" && b["revision"]["to"] == blocked.as_str()
        })
        .await;
    let body = &told.body;
    assert_eq!(body["reason"], "PreflightFailed", "{body}");
    assert_eq!(body["revision"]["from"], good.as_str(), "{body}");
    for field in ["message", "summary"] {
        let text = body[field].as_str().unwrap();
        for fragment in ["Secret shop/db", "DATABASE_URL", "Deployment shop/worker"] {
            assert!(text.contains(fragment), "{field} lacks {fragment:?}: {text}");
        }
    }
    println!(
        "Blocked: delivered {:.3}s after the status write",
        latency(&harness, &told).await.as_secs_f64()
    );

    // The URL is a credential: nowhere in the log, the status or the Events.
    let log = plain_log(&harness);
    assert!(
        log.contains("receiver=ops") && log.contains("retrying"),
        "the retry of receiver ops is not in the log"
    );
    let app = serde_json::to_string(&harness.app(NS, APP).await).unwrap();
    let events = Api::<Event>::namespaced(harness.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let events = serde_json::to_string(&events.items).unwrap();
    for (place, text) in [
        ("the controller log", &log),
        ("the status", &app),
        ("the Events", &events),
    ] {
        assert!(!text.contains(TOKEN), "{place} holds the webhook URL's token");
    }
}
