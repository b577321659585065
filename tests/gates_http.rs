//! `http` gates against a real HTTP server on loopback whose answers the test controls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use bosun::api::{Gate, HttpExpect, HttpGate, Verdict};
use bosun::gates::http::MAX_QUOTED_CHARS;
use bosun::gates::workload::WorkloadObjects;
use bosun::gates::{GateTracker, HttpProber, ProbeContext, RunbookGates, SecretHeaders};
use serde_json::json;

const NAMESPACE: &str = "shop";
const TOKEN: &str = "s3cr3t-token-value";

/// The app under test: `/health` answers according to `healthy`.
struct App {
    base: String,
    healthy: Arc<AtomicBool>,
}

impl App {
    async fn start() -> anyhow::Result<Self> {
        let healthy = Arc::new(AtomicBool::new(true));
        let router = Router::new()
            .route("/health", get(health))
            .route("/slow", get(never_answers))
            .route("/cors", get(cors))
            .route("/status/{code}", get(status))
            .route("/echo", any(echo))
            .route("/moved", get(moved))
            .route("/moved-with-credentials", get(moved_with_credentials))
            .route("/long-json", get(long_json))
            .route("/long-header", get(long_header))
            .route("/api/scan", any(cors_preflight))
            .route("/api/public", any(cors_preflight_any_origin))
            .with_state(healthy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base, healthy })
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn gate(&self, path: &str, expect: HttpExpect) -> HttpGate {
        HttpGate {
            url: Some(self.base.clone()),
            path: Some(path.into()),
            expect,
            ..HttpGate::default()
        }
    }
}

async fn health(State(healthy): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if healthy.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "checks": {"database": "connected"}, "items": [{"id": 7}]})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "checks": {"database": "down"}})),
        )
    }
}

async fn never_answers() -> &'static str {
    futures::future::pending::<()>().await;
    "unreachable"
}

async fn cors() -> impl IntoResponse {
    (
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "https://shop.example")],
        "cors ok",
    )
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        format!("answered {code}"),
    )
}

async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> Json<serde_json::Value> {
    let token = headers.get("x-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    Json(json!({
        "method": method.as_str(),
        "body": String::from_utf8_lossy(&body),
        "tokenMatches": token == TOKEN,
    }))
}

async fn moved() -> impl IntoResponse {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "/health")],
        "moved to /health",
    )
}

/// A redirect whose Location carries credentials, which no message may show.
async fn moved_with_credentials() -> impl IntoResponse {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "http://user:hunter2@127.0.0.1:1/login")],
        "",
    )
}

const LONG: usize = 5000;

async fn long_json() -> Json<serde_json::Value> {
    Json(json!({"status": "z".repeat(LONG)}))
}

async fn long_header() -> impl IntoResponse {
    ([("x-version", "v".repeat(LONG))], "ok")
}

/// The origins the Lotus API allows (its `CORS_ORIGINS`).
const ALLOWED_ORIGINS: &[&str] = &["https://your-frontend.vercel.app", "https://your-domain.com"];
const ALLOWED_METHODS: &str = "DELETE, GET, OPTIONS, PATCH, POST, PUT";

/// A CORS preflight answered as Starlette's `CORSMiddleware` (FastAPI, as in the
/// Lotus and LiteVault backends) answers it: an allowed origin is echoed in
/// `Access-Control-Allow-Origin`; any other gets 400 "Disallowed CORS origin" without
/// it. A request that is not a preflight is not this handler's business.
async fn cors_preflight(method: Method, headers: HeaderMap) -> axum::response::Response {
    preflight(method, &headers, |origin| {
        ALLOWED_ORIGINS.contains(&origin).then(|| origin.to_string())
    })
}

/// `allow_origins=["*"]`: every origin gets `*`.
async fn cors_preflight_any_origin(method: Method, headers: HeaderMap) -> axum::response::Response {
    preflight(method, &headers, |_| Some("*".to_string()))
}

fn preflight(
    method: Method,
    headers: &HeaderMap,
    allowed: impl Fn(&str) -> Option<String>,
) -> axum::response::Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let (Some(origin), Some(requested)) = (text(header::ORIGIN), text(header::ACCESS_CONTROL_REQUEST_METHOD))
    else {
        return (StatusCode::METHOD_NOT_ALLOWED, "not a CORS preflight").into_response();
    };
    if method != Method::OPTIONS {
        return (StatusCode::METHOD_NOT_ALLOWED, "not a CORS preflight").into_response();
    }
    let mut answer = HeaderMap::new();
    answer.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static(ALLOWED_METHODS),
    );
    answer.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        header::HeaderValue::from_static("600"),
    );
    let method_allowed = ALLOWED_METHODS.split(", ").any(|m| m == requested);
    match allowed(origin) {
        Some(allow_origin) if method_allowed => {
            answer.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::HeaderValue::from_str(&allow_origin).expect("origin is a header value"),
            );
            (StatusCode::OK, answer, "OK").into_response()
        }
        Some(_) => (StatusCode::BAD_REQUEST, answer, "Disallowed CORS method").into_response(),
        None => (StatusCode::BAD_REQUEST, answer, "Disallowed CORS origin").into_response(),
    }
}

fn expect_json(pairs: &[(&str, serde_json::Value)]) -> HttpExpect {
    HttpExpect {
        json: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        ..HttpExpect::default()
    }
}

fn ok_json() -> HttpExpect {
    expect_json(&[
        ("status", json!("ok")),
        ("checks.database", json!("connected")),
        ("items.0.id", json!(7)),
    ])
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn passes_with_expected_json() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let outcome = prober
        .probe(
            &app.gate("/health", ok_json()),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);
    assert_eq!(outcome.message, format!("GET {}/health: 200", app.base));
    Ok(())
}

#[tokio::test]
async fn unexpected_json_fails_with_what_came() -> anyhow::Result<()> {
    let app = App::start().await?;
    app.set_healthy(false);
    let mut expect = ok_json();
    expect.status = vec![200, 503];
    let outcome = HttpProber::new(loopback_policy())?
        .probe(
            &app.gate("/health", expect),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert!(
        outcome
            .message
            .contains(r#"json status: expected "ok", got "degraded""#),
        "{}",
        outcome.message
    );
    assert!(
        outcome
            .message
            .contains(r#"json checks.database: expected "connected", got "down""#),
        "{}",
        outcome.message
    );
    assert!(
        !outcome.message.contains("status 503"),
        "503 is accepted here: {}",
        outcome.message
    );
    Ok(())
}

/// A gate probed through the façade, one period per round, with synthetic time.
struct Rounds {
    verification: RunbookGates,
    prober: HttpProber,
    now: Instant,
    period: Duration,
}

impl Rounds {
    fn new(gate: Gate) -> anyhow::Result<Self> {
        Ok(Self {
            period: gate.period(),
            verification: RunbookGates::new(std::slice::from_ref(&gate)),
            prober: HttpProber::new(loopback_policy())?,
            now: Instant::now(),
        })
    }

    async fn probe(&mut self) -> Verdict {
        assert_eq!(
            self.verification.next_due(self.now),
            Duration::ZERO,
            "a probe is due"
        );
        // An http gate reads no pods: a client of no API server will do.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client");
        let probes = ProbeContext {
            http: &self.prober,
            client: &client,
            workloads: &WorkloadObjects::default(),
            namespace: NAMESPACE,
            secret_headers: SecretHeaders::none(),
            applied_at: k8s_openapi::jiff::Timestamp::now(),
        };
        self.verification.run_due_probes(&probes, self.now).await;
        self.now += self.period;
        self.verification.verdicts()[0].verdict
    }
}

fn health_gate(app: &App, failure_threshold: u32) -> Gate {
    Gate {
        name: "health".into(),
        period_seconds: Some(10),
        failure_threshold: Some(failure_threshold),
        http: Some(app.gate("/health", ok_json())),
        ..Gate::default()
    }
}

#[tokio::test]
async fn fails_after_exactly_failure_threshold_consecutive_failures() -> anyhow::Result<()> {
    let app = App::start().await?;
    let mut rounds = Rounds::new(health_gate(&app, 3))?;
    assert_eq!(rounds.probe().await, Verdict::Passed);
    app.set_healthy(false);
    assert_eq!(rounds.probe().await, Verdict::Pending);
    assert_eq!(rounds.probe().await, Verdict::Pending);
    assert!(
        rounds.verification.failed().is_none(),
        "not failed before the threshold"
    );
    assert_eq!(rounds.probe().await, Verdict::Failed);

    let failed = rounds.verification.failed().expect("gate failed");
    assert_eq!(failed.name, "health");
    let message = failed.message.unwrap_or_default();
    assert!(message.starts_with("3 consecutive failed probes: "), "{message}");
    assert!(message.contains("status 503, expected 2xx"), "{message}");
    assert!(!rounds.verification.all_passed());
    Ok(())
}

#[tokio::test]
async fn a_recovery_in_between_resets_the_count() -> anyhow::Result<()> {
    let app = App::start().await?;
    let mut rounds = Rounds::new(health_gate(&app, 3))?;
    app.set_healthy(false);
    assert_eq!(rounds.probe().await, Verdict::Pending);
    assert_eq!(rounds.probe().await, Verdict::Pending);
    app.set_healthy(true);
    assert_eq!(rounds.probe().await, Verdict::Passed);
    assert!(rounds.verification.all_passed());
    app.set_healthy(false);
    assert_eq!(rounds.probe().await, Verdict::Pending);
    assert_eq!(
        rounds.probe().await,
        Verdict::Pending,
        "only two failures since the recovery"
    );
    assert_eq!(rounds.probe().await, Verdict::Failed);
    Ok(())
}

#[tokio::test]
async fn timeout_counts_as_a_failure() -> anyhow::Result<()> {
    let app = App::start().await?;
    let gate = Gate {
        name: "slow".into(),
        timeout_seconds: Some(1),
        failure_threshold: Some(2),
        http: Some(app.gate("/slow", HttpExpect::default())),
        ..Gate::default()
    };
    let outcome = HttpProber::new(loopback_policy())?
        .probe(
            gate.http.as_ref().expect("http"),
            &HeaderMap::new(),
            gate.timeout(),
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!("GET {}/slow: no answer within 1s", app.base)
    );

    let mut tracker = GateTracker::new(&gate);
    let now = Instant::now();
    assert_eq!(tracker.record(&outcome, now), Verdict::Pending);
    assert_eq!(tracker.record(&outcome, now + gate.period()), Verdict::Failed);
    Ok(())
}

#[tokio::test]
async fn wrong_status() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let outcome = prober
        .probe(
            &app.gate("/status/404", HttpExpect::default()),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "GET {}/status/404: status 404, expected 2xx (body: answered 404)",
            app.base
        )
    );

    let listed = HttpExpect {
        status: vec![200, 202],
        ..HttpExpect::default()
    };
    let outcome = prober
        .probe(
            &app.gate("/status/204", listed.clone()),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed, "204 is not listed: {}", outcome.message);
    let outcome = prober
        .probe(
            &app.gate("/status/202", listed),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);

    let not_found_expected = HttpExpect {
        status: vec![404],
        ..HttpExpect::default()
    };
    let outcome = prober
        .probe(
            &app.gate("/status/404", not_found_expected),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn contains() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let wanted = |text: &str| HttpExpect {
        contains: Some(text.into()),
        ..HttpExpect::default()
    };
    let outcome = prober
        .probe(
            &app.gate("/health", wanted("\"ok\"")),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);
    let outcome = prober
        .probe(
            &app.gate("/health", wanted("READY")),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert!(
        outcome.message.contains(r#"body does not contain "READY""#),
        "{}",
        outcome.message
    );
    Ok(())
}

#[tokio::test]
async fn cors_header() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let wanted = |origin: &str| HttpExpect {
        headers: [("Access-Control-Allow-Origin".to_string(), origin.to_string())].into(),
        ..HttpExpect::default()
    };
    let outcome = prober
        .probe(
            &app.gate("/cors", wanted("https://shop.example")),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);
    let outcome = prober
        .probe(
            &app.gate("/cors", wanted("https://evil.example")),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert!(
        outcome.message.contains(
            r#"header Access-Control-Allow-Origin: expected "https://evil.example", got "https://shop.example""#
        ),
        "{}",
        outcome.message
    );
    let outcome = prober
        .probe(
            &app.gate("/health", wanted("https://shop.example")),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert!(outcome.message.contains("got none"), "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn method_headers_and_body_are_sent_and_headers_never_echoed() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let mut gate = app.gate(
        "/echo",
        expect_json(&[
            ("method", json!("POST")),
            ("body", json!("{\"ping\":1}")),
            ("tokenMatches", json!(true)),
        ]),
    );
    gate.method = Some("post".into());
    gate.headers = [("X-Token".to_string(), TOKEN.to_string())].into();
    gate.body = Some("{\"ping\":1}".into());
    let outcome = prober.probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(outcome.passed, "{}", outcome.message);
    assert_eq!(outcome.message, format!("POST {}/echo: 200", app.base));

    gate.path = Some("/status/500".into());
    let outcome = prober.probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(!outcome.passed);
    assert!(!outcome.message.contains(TOKEN), "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn connection_refused_is_a_failed_probe_with_a_message() -> anyhow::Result<()> {
    // Take a free port, then close it: nothing listens there any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let gate = HttpGate {
        url: Some(format!("http://user:hunter2@{closed}")),
        path: Some("/health".into()),
        ..HttpGate::default()
    };
    let outcome = HttpProber::new(loopback_policy())?
        .probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert!(!outcome.passed);
    assert!(
        outcome
            .message
            .starts_with(&format!("GET http://{closed}/health: ")),
        "{}",
        outcome.message
    );
    assert!(
        outcome.message.to_lowercase().contains("connect"),
        "says the connection failed: {}",
        outcome.message
    );
    assert!(!outcome.message.contains("hunter2"), "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn invalid_gate_fails_without_a_request() -> anyhow::Result<()> {
    let prober = HttpProber::new(loopback_policy())?;
    let outcome = prober
        .probe(&HttpGate::default(), &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert!(!outcome.passed);
    assert_eq!(outcome.message, "http gate names neither url nor service");
    let bad_method = HttpGate {
        url: Some("http://127.0.0.1:1".into()),
        method: Some("GE T".into()),
        ..HttpGate::default()
    };
    let outcome = prober
        .probe(&bad_method, &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert_eq!(outcome.message, r#"method "GE T" is not an HTTP method"#);
    Ok(())
}

fn expect_status(codes: &[u16]) -> HttpExpect {
    HttpExpect {
        status: codes.to_vec(),
        ..HttpExpect::default()
    }
}

#[tokio::test]
async fn redirects_are_judged_as_they_are_unless_followed() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;

    let outcome = prober
        .probe(
            &app.gate("/moved", expect_status(&[200])),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed, "not followed by default: {}", outcome.message);
    assert_eq!(
        outcome.message,
        format!(
            "GET {base}/moved: status 302, expected 200 (body: moved to /health); Location: {base}/health, \
             not followed (set followRedirects: true to follow it)",
            base = app.base
        )
    );

    let outcome = prober
        .probe(
            &app.gate("/moved", expect_status(&[302])),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(outcome.passed, "{}", outcome.message);
    assert_eq!(
        outcome.message,
        format!(
            "GET {base}/moved: 302; Location: {base}/health, not followed (set followRedirects: true to follow it)",
            base = app.base
        )
    );

    let mut following = app.gate("/moved", ok_json());
    following.follow_redirects = true;
    let outcome = prober
        .probe(&following, &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert!(outcome.passed, "followed to /health: {}", outcome.message);
    assert_eq!(
        outcome.message,
        format!("GET {base}/moved → {base}/health: 200", base = app.base)
    );

    let outcome = prober
        .probe(
            &app.gate("/moved-with-credentials", HttpExpect::default()),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert!(
        outcome
            .message
            .contains("Location: http://127.0.0.1:1/login, not followed"),
        "{}",
        outcome.message
    );
    assert!(!outcome.message.contains("hunter2"), "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn long_values_from_a_response_are_cut_in_messages() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let cut = |letter: &str| format!("{}…", letter.repeat(MAX_QUOTED_CHARS - 1));

    let outcome = prober
        .probe(
            &app.gate("/long-json", expect_json(&[("status", json!("ok"))])),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    // The JSON value (with its opening quote) and the body are each cut.
    assert!(
        outcome.message.contains(&format!(
            "json status: expected \"ok\", got \"{} (body: ",
            cut("z")
        )),
        "{}",
        outcome.message
    );
    assert!(
        outcome.message.len() < 3 * MAX_QUOTED_CHARS,
        "{}",
        outcome.message
    );

    let wanted = HttpExpect {
        headers: [("X-Version".to_string(), "2".to_string())].into(),
        ..HttpExpect::default()
    };
    let outcome = prober
        .probe(
            &app.gate("/long-header", wanted),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "GET {}/long-header: 200 but header X-Version: expected \"2\", got \"{} (body: ok)",
            app.base,
            cut("v")
        )
    );
    Ok(())
}

/// The Lotus guide's CORS check as a gate: an OPTIONS preflight with `Origin` and
/// `Access-Control-Request-Method`, expecting the origin back.
fn preflight_gate(
    app: &App,
    path: &str,
    origin: &str,
    expected_header: &str,
    expected_origin: &str,
) -> HttpGate {
    let yaml = format!(
        r#"
url: {base}
path: {path}
method: OPTIONS
headers:
  Origin: {origin}
  Access-Control-Request-Method: POST
expect:
  headers:
    {expected_header}: {expected_origin}
"#,
        base = app.base
    );
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("gate YAML: {e}\n{yaml}"))
}

#[tokio::test]
async fn cors_preflight_passes_for_an_allowed_origin() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let origin = "https://your-frontend.vercel.app";
    let gate = preflight_gate(&app, "/api/scan", origin, "Access-Control-Allow-Origin", origin);
    let outcome = prober.probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(outcome.passed, "{}", outcome.message);
    assert_eq!(outcome.message, format!("OPTIONS {}/api/scan: 200", app.base));

    // Header names in any case; the server sends them in lower case.
    let shouting = preflight_gate(&app, "/api/scan", origin, "ACCESS-CONTROL-ALLOW-ORIGIN", origin);
    let outcome = prober
        .probe(&shouting, &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert!(outcome.passed, "{}", outcome.message);

    // Without the preflight headers the same server does not answer as a preflight:
    // the gate passes above only because they were sent.
    let mut bare = gate.clone();
    bare.headers.clear();
    let outcome = prober.probe(&bare, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(!outcome.passed);
    assert!(outcome.message.contains("status 405"), "{}", outcome.message);
    Ok(())
}

#[tokio::test]
async fn cors_preflight_fails_for_an_origin_not_allowed_naming_the_header_and_the_answer()
-> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let origin = "https://evil.example";
    let outcome = prober
        .probe(
            &preflight_gate(&app, "/api/scan", origin, "Access-Control-Allow-Origin", origin),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "OPTIONS {}/api/scan: status 400, expected 2xx; header Access-Control-Allow-Origin: expected \
             \"https://evil.example\", got none (body: Disallowed CORS origin)",
            app.base
        )
    );
    Ok(())
}

#[tokio::test]
async fn cors_header_values_compare_exactly() -> anyhow::Result<()> {
    let app = App::start().await?;
    let prober = HttpProber::new(loopback_policy())?;
    let origin = "https://your-frontend.vercel.app";

    // `*` is not the origin the Runbook expects (it is what `CORS_ORIGINS=*` gives).
    let outcome = prober
        .probe(
            &preflight_gate(&app, "/api/public", origin, "Access-Control-Allow-Origin", origin),
            &HeaderMap::new(),
            TIMEOUT,
            NAMESPACE,
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(
        outcome.message,
        format!(
            "OPTIONS {}/api/public: 200 but header Access-Control-Allow-Origin: expected \
             \"https://your-frontend.vercel.app\", got \"*\" (body: OK)",
            app.base
        )
    );
    let wildcard = preflight_gate(&app, "/api/public", origin, "Access-Control-Allow-Origin", "'*'");
    let outcome = prober
        .probe(&wildcard, &HeaderMap::new(), TIMEOUT, NAMESPACE)
        .await;
    assert!(outcome.passed, "{}", outcome.message);

    // Values are compared with their case.
    let upper = preflight_gate(
        &app,
        "/api/scan",
        origin,
        "Access-Control-Allow-Origin",
        "HTTPS://YOUR-FRONTEND.VERCEL.APP",
    );
    let outcome = prober.probe(&upper, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(!outcome.passed, "{}", outcome.message);

    // A list-valued header is compared as the whole value sent.
    let methods = HttpExpect {
        headers: [(
            "Access-Control-Allow-Methods".to_string(),
            ALLOWED_METHODS.to_string(),
        )]
        .into(),
        ..HttpExpect::default()
    };
    let mut gate = preflight_gate(&app, "/api/scan", origin, "Vary", "Origin");
    gate.expect.headers.extend(methods.headers);
    let outcome = prober.probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(outcome.passed, "{}", outcome.message);
    gate.expect
        .headers
        .insert("Access-Control-Allow-Methods".into(), "POST".into());
    let outcome = prober.probe(&gate, &HeaderMap::new(), TIMEOUT, NAMESPACE).await;
    assert!(
        !outcome.passed,
        "POST alone is not the value sent: {}",
        outcome.message
    );
    Ok(())
}

/// The built-in egress denials, with loopback allowed: the endpoints here listen on it.
fn loopback_policy() -> bosun::egress::EgressPolicy {
    bosun::egress::EgressPolicy::from_flags(&["127.0.0.0/8".into()], &[], &bosun::egress::Builtins::default())
        .expect("valid rules")
}
