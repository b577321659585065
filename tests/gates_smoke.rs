//! `smoke` gates against a real HTTP server on loopback modelled on the LiteVault
//! runbook's smoke tests (create an item: 201, ENRICHING; it appears in the pending
//! list; it becomes READY_TO_CONFIRM; confirming archives it; the library shows it),
//! and end to end: a smoke-gated app verified by the real controller on the local
//! control plane, Healthy when the smoke test passes and rolled back when a step fails.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bosun::api::{Gate, Phase, RunbookSpec, SmokeGate, Verdict};
use bosun::gates::workload::WorkloadObjects;
use bosun::gates::{HttpProber, ProbeContext, RunbookGates, SecretHeaders, smoke};
use bosun_devenv::example::ExampleRevision;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use support::{Harness, status};

const NAMESPACE: &str = "shop";
const TOKEN: &str = "lv-smoke-token-0d9f";
/// Each request's timeout (the gate's `timeoutSeconds`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// When a created item becomes READY_TO_CONFIRM.
enum Enrichment {
    After(Duration),
    Never,
    /// As the example app would behave: the backend Deployment's image decides (an
    /// `unhealthy` image never enriches; any other after `after`).
    ByImage {
        deployments: Box<Api<Deployment>>,
        deployment: String,
        after: Duration,
    },
}

struct Item {
    created: Instant,
    archived: bool,
}

/// A request the app saw, for checking what the gate sent.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    request_id: Option<String>,
    body: String,
}

struct Shared {
    enrichment: Enrichment,
    next_id: AtomicU64,
    items: Mutex<BTreeMap<String, Item>>,
    seen: Mutex<Vec<Seen>>,
}

/// The LiteVault API, as far as its smoke tests go.
struct LiteVault {
    base: String,
    shared: Arc<Shared>,
}

impl LiteVault {
    async fn start(enrichment: Enrichment) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            enrichment,
            next_id: AtomicU64::new(1),
            items: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/api/v1/items", post(create_item).get(list_items))
            .route("/api/v1/items/{id}", get(get_item))
            .route("/api/v1/items/{id}/confirm", post(confirm_item))
            .route("/api/v1/library", get(library))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base, shared })
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }
}

impl Shared {
    fn record(&self, method: &str, path: String, headers: &HeaderMap, body: &str) {
        self.seen.lock().expect("lock").push(Seen {
            method: method.into(),
            path,
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: body.into(),
        });
    }

    async fn status_of(&self, id: &str) -> Option<&'static str> {
        let (created, archived) = {
            let items = self.items.lock().expect("lock");
            let item = items.get(id)?;
            (item.created, item.archived)
        };
        if archived {
            return Some("ARCHIVED");
        }
        let after = match &self.enrichment {
            Enrichment::After(after) => Some(*after),
            Enrichment::Never => None,
            Enrichment::ByImage {
                deployments,
                deployment,
                after,
            } => {
                let image = deployments
                    .get_opt(deployment)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.spec)
                    .and_then(|spec| spec.template.spec)
                    .and_then(|pod| pod.containers.into_iter().next())
                    .and_then(|container| container.image)
                    .unwrap_or_default();
                (!image.contains("unhealthy")).then_some(*after)
            }
        };
        Some(match after {
            Some(after) if created.elapsed() >= after => "READY_TO_CONFIRM",
            _ => "ENRICHING",
        })
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn not_authenticated() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"detail": "Not authenticated"})),
    )
        .into_response()
}

async fn create_item(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    shared.record("POST", "/api/v1/items".into(), &headers, &body);
    if !authorized(&headers) {
        return not_authenticated();
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "body is not JSON"})),
        )
            .into_response();
    };
    let id = format!("itm_{}", shared.next_id.fetch_add(1, Ordering::SeqCst));
    shared.items.lock().expect("lock").insert(
        id.clone(),
        Item {
            created: Instant::now(),
            archived: false,
        },
    );
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/api/v1/items/{id}")),
            (
                header::HeaderName::from_static("x-request-id"),
                format!("req-{id}"),
            ),
        ],
        Json(json!({"id": id, "status": "ENRICHING", "title": request["title"]})),
    )
        .into_response()
}

async fn list_items(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Json<Value> {
    let ids: Vec<String> = shared.items.lock().expect("lock").keys().cloned().collect();
    let mut items = Vec::new();
    for id in ids {
        let Some(status) = shared.status_of(&id).await else {
            continue;
        };
        if query.get("status").is_none_or(|wanted| wanted == status) {
            items.push(json!({"id": id, "status": status}));
        }
    }
    Json(json!({ "items": items }))
}

async fn get_item(State(shared): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    shared.record("GET", format!("/api/v1/items/{id}"), &headers, "");
    match shared.status_of(&id).await {
        Some(status) => Json(json!({"id": id, "status": status})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Item not found"}))).into_response(),
    }
}

async fn confirm_item(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    shared.record("POST", format!("/api/v1/items/{id}/confirm"), &headers, &body);
    if !authorized(&headers) {
        return not_authenticated();
    }
    let named = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["id"].as_str().map(str::to_string));
    if named.as_deref() != Some(id.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"detail": "id in body does not match"})),
        )
            .into_response();
    }
    match shared.status_of(&id).await {
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Item not found"}))).into_response(),
        Some("READY_TO_CONFIRM") => {
            if let Some(item) = shared.items.lock().expect("lock").get_mut(&id) {
                item.archived = true;
            }
            Json(json!({"id": id, "status": "ARCHIVED"})).into_response()
        }
        Some(status) => (
            StatusCode::CONFLICT,
            Json(json!({"detail": format!("item is {status}, not READY_TO_CONFIRM")})),
        )
            .into_response(),
    }
}

async fn library(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let items: Vec<Value> = shared
        .items
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, item)| item.archived)
        .map(|(id, _)| json!({"id": id, "status": "ARCHIVED"}))
        .collect();
    Json(json!({ "items": items }))
}

/// The LiteVault smoke tests as a `smoke` gate against `base`; the item must be
/// enriched within `within`. The same text goes into the Runbook of the end-to-end test.
fn litevault_smoke_yaml(base: &str, within: &str) -> String {
    r#"steps:
  - name: create
    url: BASE/api/v1/items
    method: POST
    headers:
      Authorization: Bearer TOKEN
      Content-Type: application/json
    body: '{"title": "smoke test"}'
    expect:
      status: [201]
      json: {status: ENRICHING}
    capture:
      id: json:id
      location: header:Location
  - name: pending
    url: BASE/api/v1/items?status=ENRICHING
    expect:
      json: {items.0.status: ENRICHING}
  - name: enriched
    url: BASE/api/v1/items/{{.steps.create.id}}
    expect:
      json: {status: READY_TO_CONFIRM}
    eventually: {within: WITHIN, every: 500ms}
  - name: confirm
    url: BASE{{.steps.create.location}}/confirm
    method: POST
    headers:
      Authorization: Bearer TOKEN
      X-Request-ID: smoke-{{ .steps.create.id }}
    body: '{"id": "{{ .steps.create.id }}"}'
    expect:
      json: {status: ARCHIVED}
  - name: library
    url: BASE/api/v1/library
    expect:
      json: {items.0.status: ARCHIVED}
"#
    .replace("BASE", base)
    .replace("TOKEN", TOKEN)
    .replace("WITHIN", within)
}

fn smoke_gate(yaml: &str) -> SmokeGate {
    let smoke: SmokeGate = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("smoke YAML: {e}\n{yaml}"));
    // What a Runbook would carry is also what its validation accepts.
    let spec = RunbookSpec {
        gates: vec![Gate {
            name: "smoke".into(),
            smoke: Some(smoke.clone()),
            ..Gate::default()
        }],
        ..RunbookSpec::default()
    };
    assert_eq!(spec.validate(), Ok(()), "{yaml}");
    smoke
}

#[tokio::test]
async fn the_litevault_smoke_test_passes_when_the_item_is_enriched_in_time() -> anyhow::Result<()> {
    let app = LiteVault::start(Enrichment::After(Duration::from_secs(2))).await?;
    let smoke = smoke_gate(&litevault_smoke_yaml(&app.base, "10s"));
    let started = Instant::now();
    let outcome = smoke::probe(
        &HttpProber::new(loopback_policy())?,
        ("smoke", &smoke),
        SecretHeaders::none(),
        REQUEST_TIMEOUT,
        NAMESPACE,
    )
    .await;
    let took = started.elapsed();
    assert!(outcome.passed, "{}", outcome.message);
    assert!(
        took >= Duration::from_secs(2),
        "enrichment takes 2s, took {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        outcome
            .message
            .starts_with("5 steps passed: create 201, pending 200, enriched 200 after "),
        "{}",
        outcome.message
    );
    assert!(
        outcome.message.ends_with(", confirm 200, library 200"),
        "{}",
        outcome.message
    );

    // The captured id went into the later URLs, the header and the body.
    let seen = app.seen();
    let confirm = seen
        .iter()
        .find(|s| s.path.ends_with("/confirm"))
        .expect("confirm sent");
    assert_eq!(confirm.method, "POST");
    assert_eq!(confirm.path, "/api/v1/items/itm_1/confirm");
    assert_eq!(confirm.request_id.as_deref(), Some("smoke-itm_1"));
    assert_eq!(confirm.body, r#"{"id": "itm_1"}"#);
    let polls = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/api/v1/items/itm_1")
        .count();
    assert!(
        (3..=8).contains(&polls),
        "polled every 500ms for about 2s: {polls} polls"
    );
    Ok(())
}

#[tokio::test]
async fn an_item_never_enriched_fails_after_within_naming_the_step_request_and_answer() -> anyhow::Result<()>
{
    let app = LiteVault::start(Enrichment::Never).await?;
    let smoke = smoke_gate(&litevault_smoke_yaml(&app.base, "2s"));
    let started = Instant::now();
    let outcome = smoke::probe(
        &HttpProber::new(loopback_policy())?,
        ("smoke", &smoke),
        SecretHeaders::none(),
        REQUEST_TIMEOUT,
        NAMESPACE,
    )
    .await;
    let took = started.elapsed();
    assert!(!outcome.passed);
    assert!(took >= Duration::from_secs(2), "tried for the whole 2s: {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let message = &outcome.message;
    assert!(
        message.starts_with("step enriched (3 of 5): still failing after 2s ("),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            " tries): GET {}/api/v1/items/itm_1: 200 but json status: expected \"READY_TO_CONFIRM\", got \
             \"ENRICHING\" (body: {{\"id\":\"itm_1\",\"status\":\"ENRICHING\"}})",
            app.base
        )),
        "{message}"
    );
    assert!(!message.contains(TOKEN), "{message}");
    // The steps after it did not run.
    assert!(!app.seen().iter().any(|s| s.path.ends_with("/confirm")));
    Ok(())
}

#[tokio::test]
async fn a_failing_step_names_the_request_and_what_came_back_but_never_a_header_value() -> anyhow::Result<()>
{
    let app = LiteVault::start(Enrichment::After(Duration::ZERO)).await?;
    let smoke = smoke_gate(
        &r#"steps:
  - name: create
    url: BASE/api/v1/items
    method: POST
    headers: {Authorization: Bearer wrong-token-4711}
    body: '{"title": "smoke test"}'
    expect: {status: [201]}
"#
        .replace("BASE", &app.base),
    );
    let outcome = smoke::probe(
        &HttpProber::new(loopback_policy())?,
        ("smoke", &smoke),
        SecretHeaders::none(),
        REQUEST_TIMEOUT,
        NAMESPACE,
    )
    .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "step create (1 of 1): POST {}/api/v1/items: status 401, expected 201 (body: {{\"detail\":\"Not \
             authenticated\"}})",
            app.base
        )
    );
    assert!(!outcome.message.contains("wrong-token"));
    Ok(())
}

#[tokio::test]
async fn a_missing_capture_fails_naming_the_capture() -> anyhow::Result<()> {
    let app = LiteVault::start(Enrichment::After(Duration::ZERO)).await?;
    let yaml = litevault_smoke_yaml(&app.base, "5s").replace("id: json:id", "id: json:item.id");
    let smoke = smoke_gate(&yaml);
    let outcome = smoke::probe(
        &HttpProber::new(loopback_policy())?,
        ("smoke", &smoke),
        SecretHeaders::none(),
        REQUEST_TIMEOUT,
        NAMESPACE,
    )
    .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "step create (1 of 5): POST {}/api/v1/items: 201 but capture id: json:item.id is missing (body: \
             {{\"id\":\"itm_1\",\"status\":\"ENRICHING\",\"title\":\"smoke test\"}})",
            app.base
        )
    );
    assert_eq!(app.seen().len(), 1, "no step after it ran");
    Ok(())
}

#[tokio::test]
async fn a_reference_to_a_capture_no_step_took_fails_naming_it() -> anyhow::Result<()> {
    // The Runbook's validation refuses this; the gate must not send a request with a
    // hole in it all the same.
    let app = LiteVault::start(Enrichment::After(Duration::from_secs(60))).await?;
    let yaml = litevault_smoke_yaml(&app.base, "5s")
        .replace("items/{{.steps.create.id}}", "items/{{.steps.create.uid}}");
    let smoke: SmokeGate = serde_saphyr::from_str(&yaml)?;
    let outcome = smoke::probe(
        &HttpProber::new(loopback_policy())?,
        ("smoke", &smoke),
        SecretHeaders::none(),
        REQUEST_TIMEOUT,
        NAMESPACE,
    )
    .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        r#"step enriched (3 of 5): url: {{.steps.create.uid}}: step "create" captured no "uid""#
    );
    assert!(!app.seen().iter().any(|s| s.path.contains("uid")));
    Ok(())
}

/// A smoke gate run through the verification façade: the dispatch the controller uses.
fn gate(smoke: SmokeGate, timeout_seconds: u32, failure_threshold: u32) -> Gate {
    Gate {
        name: "smoke".into(),
        timeout_seconds: Some(timeout_seconds),
        failure_threshold: Some(failure_threshold),
        smoke: Some(smoke),
        ..Gate::default()
    }
}

/// A smoke gate reads no pods: a client of no API server will do.
fn offline_client() -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube::Config::new(
        "http://127.0.0.1:1".parse()?,
    ))?)
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
        namespace: NAMESPACE,
        secret_headers: SecretHeaders::none(),
        applied_at: k8s_openapi::jiff::Timestamp::now(),
    }
}

#[tokio::test]
async fn the_gate_timeout_bounds_each_request_not_an_eventually() -> anyhow::Result<()> {
    let app = LiteVault::start(Enrichment::After(Duration::from_secs(3))).await?;
    // One second per request, four for the item to be enriched.
    let smoke = smoke_gate(&litevault_smoke_yaml(&app.base, "4s"));
    let mut verification = RunbookGates::new(&[gate(smoke, 1, 1)]);
    assert!(!verification.is_empty(), "a smoke gate is verified");
    let started = Instant::now();
    let (prober, client, workloads) = (
        HttpProber::new(loopback_policy())?,
        offline_client()?,
        WorkloadObjects::default(),
    );
    verification
        .run_due_probes(&probe_context(&prober, &client, &workloads), started)
        .await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    let verdicts = verification.verdicts();
    assert_eq!(verdicts[0].verdict, Verdict::Passed, "{verdicts:?}");
    assert!(verification.all_passed());
    Ok(())
}

#[tokio::test]
async fn a_failed_smoke_run_counts_as_one_failed_probe() -> anyhow::Result<()> {
    let app = LiteVault::start(Enrichment::Never).await?;
    let smoke = smoke_gate(&litevault_smoke_yaml(&app.base, "1s"));
    let mut verification = RunbookGates::new(&[gate(smoke, 2, 2)]);
    let (prober, client, workloads) = (
        HttpProber::new(loopback_policy())?,
        offline_client()?,
        WorkloadObjects::default(),
    );
    let probes = probe_context(&prober, &client, &workloads);
    let start = Instant::now();
    verification.run_due_probes(&probes, start).await;
    let first = &verification.verdicts()[0];
    assert_eq!(first.verdict, Verdict::Pending, "1 of 2 failures: {first:?}");
    assert!(
        first
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("failed 1 of 2 probes in a row: step enriched (3 of 5): ")),
        "{first:?}"
    );
    verification
        .run_due_probes(&probes, start + Duration::from_secs(5))
        .await;
    let failed = verification.failed().expect("failed at the threshold");
    assert_eq!(failed.name, "smoke");
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m
                .starts_with("2 consecutive failed probes: step enriched (3 of 5): still failing after 1s")),
        "{failed:?}"
    );
    // Every probe ran the steps from the start: two items were created.
    let created = app.seen().iter().filter(|s| s.path == "/api/v1/items").count();
    assert_eq!(created, 2);
    Ok(())
}

// End to end: the real controller verifies a smoke-gated app on the local control plane.

const NS: &str = "shop";
const APP: &str = "litevault";

fn smoke_runbook_yaml(base: &str) -> String {
    let smoke = litevault_smoke_yaml(base, "6s");
    let indented: String = smoke.lines().map(|line| format!("        {line}\n")).collect();
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: {APP}
  namespace: {NS}
spec:
  verifyWindow: 2s
  rollback:
    automatic: true
  gates:
    - name: smoke
      periodSeconds: 2
      timeoutSeconds: 2
      failureThreshold: 1
      smoke:
{indented}"#
    )
}

#[tokio::test]
async fn a_smoke_gated_app_is_healthy_when_the_smoke_passes_and_rolled_back_when_a_step_fails() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    harness.namespace(NS).await;
    let app = LiteVault::start(Enrichment::ByImage {
        deployments: Box::new(Api::namespaced(harness.client.clone(), NS)),
        deployment: "backend".into(),
        after: Duration::from_secs(1),
    })
    .await
    .unwrap();
    harness.apply_runbook(&smoke_runbook_yaml(&app.base)).await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.start_controller();

    let healthy = harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let entry = &status(&healthy).history[0];
    assert_eq!(entry.revision, good);
    let smoke = entry
        .gates
        .iter()
        .find(|g| g.name == "smoke")
        .expect("smoke verdict in history");
    assert_eq!(smoke.verdict, Verdict::Passed, "{smoke:?}");
    assert!(
        smoke
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("5 steps passed: create 201")),
        "{smoke:?}"
    );

    // The next revision's backend never enriches an item: the `enriched` step fails.
    let bad = ExampleRevision::unhealthy("2.0")
        .commit_to(&repo, "v2.0 enrichment broken")
        .unwrap();
    let rolled_back = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let s = status(&rolled_back);
    let entry = &s.history[0];
    assert_eq!(entry.revision, bad);
    assert_eq!(entry.phase, Phase::RolledBack);
    let smoke = entry
        .gates
        .iter()
        .find(|g| g.name == "smoke")
        .expect("smoke verdict in history");
    assert_eq!(smoke.verdict, Verdict::Failed, "{:?}", entry.gates);
    let message = smoke.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("step enriched (3 of 5): still failing after 6s")
            && message.contains(&format!("GET {}/api/v1/items/itm_", app.base))
            && message.contains(r#"got "ENRICHING""#),
        "{message}"
    );
    assert!(
        s.quarantined[0].reason.contains("gate smoke failed"),
        "{}",
        s.quarantined[0].reason
    );
    assert_eq!(
        harness.image_of(NS, "backend").await,
        "example/litevault-backend:1.0"
    );
}

/// The built-in egress denials, with loopback allowed: the endpoints here listen on it.
fn loopback_policy() -> bosun::egress::EgressPolicy {
    bosun::egress::EgressPolicy::from_flags(&["127.0.0.0/8".into()], &[], &bosun::egress::Builtins::default())
        .expect("valid rules")
}
