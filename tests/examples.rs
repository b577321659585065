//! The three examples of `examples/` (LiteVault, Lotus, Plannior), each run through the
//! real controller binary on a local control plane: its Runbook and AppDeployment as
//! written, its `app/` manifests committed to a local Git repository, its Secrets
//! created from the `kubectl create secret` lines of its README. A good revision
//! becomes Healthy with one backup and one migration Job; then each failure its
//! runbook warns about ends as the runbook says, with the message a user needs.
//!
//! What the test changes, and only that (see [`Local`]):
//! - URLs that point into the cluster (`http://litevault-backend.litevault.svc:8000`,
//!   the Prometheus service) point at loopback instead: a [`FakeApp`] answering as
//!   the app would for the image its Deployment runs, and a real Prometheus scraping
//!   a [`MetricsEndpoint`] whose error rate follows the backend's image. The metrics
//!   queries select that endpoint (`job="devenv"`) instead of the app's Service.
//! - Time runs ten times faster ([`TIME_SCALE`]): verify windows, probe periods,
//!   `eventually` and `logs.within` durations, and the ranges of PromQL queries are
//!   divided by ten (periods at least 1 s). Thresholds, timeouts and the progress
//!   deadline stay as written. The AppDeployment follows the local repository every 2 s.
//! - The pod simulator runs no image: the LiteVault worker's command becomes a
//!   script that logs what the worker logs at start ([`worker_logs`]); a migration
//!   fails when its image's tag contains `fail` (the simulator's convention).
//! - Notification webhooks (from Secrets) point at a loopback receiver.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bosun::api::{
    AppDeployment, AppDeploymentStatus, GateVerdict, JobKind, Phase, Runbook, Verdict, condition,
    parse_duration,
};
use bosun::render::render;
use bosun::source::SourceFile;
use bosun_devenv::{MetricsEndpoint, Prometheus, WorkRepo};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::{Harness, status};

/// How much faster than written the examples' durations run here.
const TIME_SCALE: u32 = 10;
/// How long one state change may take on a shared 2-core machine.
const WAIT: Duration = Duration::from_secs(120);
/// The token the LiteVault smoke steps send (`runbook.yaml`).
const SMOKE_TOKEN: &str = "Bearer SMOKE-TEST-USER-TOKEN";
/// What `$(openssl rand -hex 32)` in a README gives here.
const RANDOM_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

// ---- the example's files ------------------------------------------------------------

/// One directory of `examples/`.
struct Example {
    name: &'static str,
    dir: PathBuf,
}

impl Example {
    fn new(name: &'static str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        assert!(dir.is_dir(), "{} exists", dir.display());
        Example { name, dir }
    }

    fn read(&self, file: &str) -> String {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn runbook(&self) -> Runbook {
        serde_saphyr::from_str(&self.read("runbook.yaml")).expect("runbook.yaml is a Runbook")
    }

    fn app_deployment(&self) -> AppDeployment {
        serde_saphyr::from_str(&self.read("appdeployment.yaml"))
            .expect("appdeployment.yaml is an AppDeployment")
    }

    /// `app/*.yaml` by file name.
    fn app_files(&self) -> AppFiles {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.join("app")).expect("app/") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            files.insert(name, std::fs::read_to_string(&path).expect("readable"));
        }
        AppFiles(files)
    }

    /// The Secrets of the README's `kubectl create secret generic` lines.
    fn readme_secrets(&self) -> Vec<ReadmeSecret> {
        readme_secrets(&self.read("README.md"))
    }

    /// Every object of every YAML file: the Runbook, the AppDeployment and `app/`.
    fn all_objects(&self) -> Vec<(String, Value)> {
        let mut files = vec![
            ("runbook.yaml".to_string(), self.read("runbook.yaml")),
            ("appdeployment.yaml".to_string(), self.read("appdeployment.yaml")),
        ];
        files.extend(
            self.app_files()
                .0
                .into_iter()
                .map(|(name, text)| (format!("app/{name}"), text)),
        );
        let sources: Vec<SourceFile> = files
            .iter()
            .map(|(path, text)| SourceFile {
                path: format!("{}/{path}", self.name),
                content: text.clone().into_bytes(),
            })
            .collect();
        render(&sources)
            .unwrap_or_else(|e| panic!("examples/{}: {e}", self.name))
            .into_iter()
            .map(|manifest| (manifest.id(), manifest.object))
            .collect()
    }
}

/// The manifests of one revision: `app/` of the example, changed as a scenario says.
#[derive(Clone)]
struct AppFiles(BTreeMap<String, String>);

impl AppFiles {
    /// Replaces every `from` in `file` (which must contain it) by `to`.
    fn replace(mut self, file: &str, from: &str, to: &str) -> Self {
        let text = self.0.get_mut(file).unwrap_or_else(|| panic!("app/{file}"));
        assert!(text.contains(from), "app/{file} contains {from:?}");
        *text = text.replace(from, to);
        self
    }

    /// Makes these files the repository's `app/` and commits them.
    fn commit(&self, repo: &WorkRepo, message: &str) -> String {
        if repo.path().join("app").exists() {
            repo.remove("app").unwrap();
        }
        for (name, text) in &self.0 {
            repo.write(&format!("app/{name}"), text).unwrap();
        }
        repo.commit(message).unwrap()
    }
}

/// The LiteVault worker's command as written in `app/worker.yaml`.
const WORKER_COMMAND: &str = "command: [uv, run, python, -m, app.worker]";

/// The pod simulator runs no image: the worker's command becomes a script that
/// logs `lines` and keeps running, as the real worker does at start.
fn worker_logs(files: AppFiles, lines: &[&str]) -> AppFiles {
    let mut script: Vec<String> = lines.iter().map(|line| format!("echo '{line}'")).collect();
    script.push("sleep infinity".into());
    let command = format!(
        "command: [sh, -c, {}]",
        serde_json::to_string(&script.join("; ")).unwrap()
    );
    files.replace("worker.yaml", WORKER_COMMAND, &command)
}

/// A Secret as a README's `kubectl -n NS create secret generic NAME --from-literal=K=V` says.
#[derive(Clone, Debug)]
struct ReadmeSecret {
    namespace: String,
    name: String,
    data: BTreeMap<String, String>,
}

fn readme_secrets(readme: &str) -> Vec<ReadmeSecret> {
    // Whole commands: `\` continues a line.
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in readme.lines().map(str::trim) {
        if current.is_empty() && !line.starts_with("kubectl ") {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
        .iter()
        .filter(|command| command.contains(" create secret generic "))
        .map(|command| {
            let words = shell_words(&command.replace("$(openssl rand -hex 32)", RANDOM_HEX));
            let after = |flag: &str| {
                let at = words
                    .iter()
                    .position(|w| w == flag)
                    .unwrap_or_else(|| panic!("{flag} in {command}"));
                words[at + 1].clone()
            };
            let data = words
                .iter()
                .filter_map(|w| w.strip_prefix("--from-literal="))
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("KEY=VALUE");
                    (key.to_string(), value.to_string())
                })
                .collect();
            ReadmeSecret {
                namespace: after("-n"),
                name: after("generic"),
                data,
            }
        })
        .collect()
}

/// Words of a shell command line: whitespace-separated, quotes removed.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn secret_named<'a>(secrets: &'a mut [ReadmeSecret], name: &str) -> &'a mut ReadmeSecret {
    secrets
        .iter_mut()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the README creates Secret {name}"))
}

/// Creates (or updates) `secret` as an operator would.
async fn put_secret(client: &Client, secret: &ReadmeSecret) {
    let object = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            ..Default::default()
        },
        data: Some(
            secret
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &secret.namespace)
        .patch(
            &secret.name,
            &PatchParams::apply("operator").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("Secret {}: {e}", secret.name));
}

// ---- what the test changes -------------------------------------------------------

/// The example's Runbook and AppDeployment made to run here (see the module docs).
struct Local {
    /// `(as written, here)` text replacements in `runbook.yaml`, each of which must occur.
    rewrites: Vec<(String, String)>,
}

impl Local {
    fn runbook(&self, example: &Example) -> Runbook {
        let mut text = example.read("runbook.yaml");
        for (from, to) in &self.rewrites {
            assert!(text.contains(from.as_str()), "runbook.yaml contains {from:?}");
            text = text.replace(from.as_str(), to);
        }
        assert!(
            !text.contains(".svc"),
            "every in-cluster URL of examples/{}/runbook.yaml is rewritten",
            example.name
        );
        let mut runbook: Runbook = serde_saphyr::from_str(&text).expect("the rewritten Runbook parses");
        at_test_speed(&mut runbook.spec);
        assert_eq!(runbook.spec.validate(), Ok(()), "the Runbook at test speed");
        runbook
    }

    fn app_deployment(example: &Example, url: &str) -> AppDeployment {
        let mut app = example.app_deployment();
        let git = &mut app.spec.source.git;
        assert!(
            git.url.starts_with("https://github.com/YOUR-ORG/"),
            "the example's URL is the placeholder its README explains: {}",
            git.url
        );
        git.url = url.to_string();
        git.interval = Some("2s".into());
        app
    }
}

/// Divides every wait of `spec` by [`TIME_SCALE`] (see the module docs).
fn at_test_speed(spec: &mut bosun::api::RunbookSpec) {
    let faster = |text: &str| {
        let duration = parse_duration(text).expect("a duration");
        format!("{}ms", (duration / TIME_SCALE).as_millis())
    };
    spec.verify_window = spec.verify_window.as_deref().map(faster);
    for gate in &mut spec.gates {
        gate.period_seconds = gate.period_seconds.map(|p| p.div_ceil(TIME_SCALE).max(1));
        if let Some(smoke) = &mut gate.smoke {
            for eventually in smoke.steps.iter_mut().filter_map(|s| s.eventually.as_mut()) {
                eventually.within = faster(&eventually.within);
                eventually.every = eventually.every.as_deref().map(faster);
            }
        }
        if let Some(logs) = &mut gate.logs {
            logs.within = logs.within.as_deref().map(faster);
        }
        if let Some(metrics) = &mut gate.metrics {
            metrics.query = RANGE
                .replace_all(&metrics.query, |c: &regex::Captures| {
                    let unit = match &c[2] {
                        "s" => 1,
                        "m" => 60,
                        _ => 3600,
                    };
                    let seconds = c[1].parse::<u32>().unwrap() * unit;
                    format!("[{}s]", seconds.div_ceil(TIME_SCALE))
                })
                .into_owned();
        }
    }
}

async fn apply_runbook(client: &Client, runbook: &Runbook) {
    Api::<Runbook>::namespaced(client.clone(), &runbook.namespace().unwrap())
        .patch(
            &runbook.name_any(),
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(runbook),
        )
        .await
        .expect("apply Runbook");
}

async fn apply_app_deployment(client: &Client, app: &AppDeployment) {
    Api::<AppDeployment>::namespaced(client.clone(), &app.namespace().unwrap())
        .patch(
            &app.name_any(),
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(app),
        )
        .await
        .expect("apply AppDeployment");
}

// ---- the app, as its tests would see it ---------------------------------------------

/// How the app behaves while a given image runs.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    /// `/health` and `/ready` answer 200.
    healthy: bool,
    /// The worker enriches items (LiteVault).
    enriches: bool,
    /// Share of requests answering 500 (what the app's metrics count).
    error_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            healthy: true,
            enriches: true,
            error_rate: 0.0,
        }
    }
}

/// What one example's backend answers.
struct Site {
    namespace: &'static str,
    /// The Deployment whose image decides health and errors.
    backend: &'static str,
    /// The Deployment whose image decides enrichment (LiteVault).
    worker: Option<&'static str>,
    /// `GET /health` of a healthy backend.
    health: Value,
    /// The ConfigMap and key the backend reads its CORS origins from (Lotus).
    cors_origins: Option<(&'static str, &'static str)>,
}

struct Item {
    created: Instant,
    archived: bool,
}

struct AppState {
    site: Site,
    deployments: Api<Deployment>,
    config_maps: Api<ConfigMap>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    next_id: AtomicU64,
    items: Mutex<BTreeMap<String, Item>>,
}

impl AppState {
    async fn image_of(&self, deployment: &str) -> Option<String> {
        let deployment = self.deployments.get_opt(deployment).await.ok().flatten()?;
        deployment
            .spec?
            .template
            .spec?
            .containers
            .into_iter()
            .next()?
            .image
    }

    async fn behaviour_of(&self, deployment: &str) -> Option<Behaviour> {
        let image = self.image_of(deployment).await?;
        Some(
            self.behaviours
                .lock()
                .unwrap()
                .get(&image)
                .copied()
                .unwrap_or_default(),
        )
    }

    async fn healthy(&self) -> bool {
        self.behaviour_of(self.site.backend)
            .await
            .is_some_and(|b| b.healthy)
    }

    async fn item_status(&self, id: &str) -> Option<&'static str> {
        let (created, archived) = {
            let items = self.items.lock().unwrap();
            let item = items.get(id)?;
            (item.created, item.archived)
        };
        if archived {
            return Some("ARCHIVED");
        }
        let worker = self.site.worker.expect("a site with items has a worker");
        let enriches = self.behaviour_of(worker).await.is_some_and(|b| b.enriches);
        Some(if enriches && created.elapsed() >= Duration::from_secs(1) {
            "READY_TO_CONFIRM"
        } else {
            "ENRICHING"
        })
    }
}

/// The example's app on loopback, answering for the images its Deployments run.
struct FakeApp {
    base: String,
    state: Arc<AppState>,
}

impl FakeApp {
    async fn start(client: &Client, site: Site) -> FakeApp {
        let state = Arc::new(AppState {
            deployments: Api::namespaced(client.clone(), site.namespace),
            config_maps: Api::namespaced(client.clone(), site.namespace),
            site,
            behaviours: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            items: Mutex::new(BTreeMap::new()),
        });
        let router = Router::new()
            .route("/", get(frontend))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/api/scan", axum::routing::options(cors_preflight))
            .route("/api/v1/items", post(create_item).get(list_items))
            .route("/api/v1/items/{id}", get(get_item))
            .route("/api/v1/items/{id}/confirm", post(confirm_item))
            .route("/api/v1/library", get(library))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeApp { base, state }
    }

    /// How the app behaves while `image` runs (default: healthy, no errors).
    fn behaves(&self, image: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(image.to_string(), behaviour);
    }

    /// Keeps `endpoint`'s error rate at that of the backend image currently applied,
    /// as the app's own request counter would.
    fn drive_metrics(&self, endpoint: Arc<MetricsEndpoint>) -> tokio::task::JoinHandle<()> {
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                if let Some(behaviour) = state.behaviour_of(state.site.backend).await {
                    endpoint.set_error_rate(behaviour.error_rate);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

async fn frontend() -> &'static str {
    "<!doctype html><title>app</title>"
}

async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if state.healthy().await {
        (StatusCode::OK, Json(state.site.health.clone()))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "error": "database connection refused"})),
        )
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if state.healthy().await {
        (
            StatusCode::OK,
            Json(json!({"ready": true, "service": "Lotus Backend", "database": "connected"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "database": "disconnected", "error": "Connection refused"})),
        )
    }
}

/// A CORS preflight as Starlette's CORSMiddleware answers it, from the origins the
/// applied ConfigMap gives the backend.
async fn cors_preflight(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((config_map, key)) = state.site.cors_origins else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let origins = state
        .config_maps
        .get_opt(config_map)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data)
        .and_then(|data| data.get(key).cloned())
        .unwrap_or_default();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let allowed = if origins.trim() == "*" {
        Some("*".to_string())
    } else {
        origins.split(',').any(|o| o.trim() == origin).then_some(origin)
    };
    match allowed {
        Some(allowed) => (
            StatusCode::OK,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, POST, PUT, DELETE, OPTIONS".to_string(),
                ),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type".to_string()),
            ],
            "OK",
        )
            .into_response(),
        None => (StatusCode::BAD_REQUEST, "Disallowed CORS origin").into_response(),
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(SMOKE_TOKEN)
}

fn not_authenticated() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"detail": "Not authenticated"})),
    )
        .into_response()
}

async fn create_item(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> Response {
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
    let id = format!("itm_{}", state.next_id.fetch_add(1, Ordering::SeqCst));
    state.items.lock().unwrap().insert(
        id.clone(),
        Item {
            created: Instant::now(),
            archived: false,
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "status": "ENRICHING", "title": request["title"]})),
    )
        .into_response()
}

async fn list_items(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return not_authenticated();
    }
    let ids: Vec<String> = state.items.lock().unwrap().keys().rev().cloned().collect();
    let mut items = Vec::new();
    for id in ids {
        let Some(status) = state.item_status(&id).await else {
            continue;
        };
        if query.get("status").is_none_or(|wanted| wanted == status) {
            items.push(json!({"id": id, "status": status}));
        }
    }
    Json(json!({ "items": items })).into_response()
}

async fn get_item(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return not_authenticated();
    }
    match state.item_status(&id).await {
        Some(status) => Json(json!({"id": id, "status": status})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Item not found"}))).into_response(),
    }
}

async fn confirm_item(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return not_authenticated();
    }
    match state.item_status(&id).await {
        Some("READY_TO_CONFIRM") => {
            if let Some(item) = state.items.lock().unwrap().get_mut(&id) {
                item.archived = true;
            }
            Json(json!({"id": id, "status": "ARCHIVED"})).into_response()
        }
        Some(status) => (
            StatusCode::CONFLICT,
            Json(json!({"detail": format!("item is {status}, not READY_TO_CONFIRM")})),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"detail": "Item not found"}))).into_response(),
    }
}

async fn library(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return not_authenticated();
    }
    let items: Vec<Value> = state
        .items
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter(|(_, item)| item.archived)
        .map(|(id, _)| json!({"id": id, "status": "ARCHIVED"}))
        .collect();
    Json(json!({ "items": items })).into_response()
}

/// A webhook receiver on loopback: what a Slack incoming webhook would get.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route(
                "/",
                post(
                    |State(bodies): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                        bodies.lock().unwrap().push(body);
                        "ok"
                    },
                ),
            )
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, bodies }
    }

    /// Waits for a Slack message whose `Phase` field is `phase`; returns its text.
    async fn wait_for_phase(&self, phase: Phase) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.bodies.lock().unwrap().iter().find_map(|body| {
                let fields = body["blocks"][0]["fields"].as_array()?;
                let wanted = format!("*Phase*\n{}", phase.as_str());
                fields
                    .iter()
                    .any(|f| f["text"].as_str() == Some(wanted.as_str()))
                    .then(|| body["text"].as_str().unwrap_or_default().to_string())
            });
            if let Some(text) = found {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {phase} message; got {:?}",
                self.bodies.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A real Prometheus scraping an endpoint that counts the app's requests.
async fn start_metrics() -> (Prometheus, Arc<MetricsEndpoint>) {
    let endpoint = Arc::new(MetricsEndpoint::start().await.expect("metrics endpoint"));
    let prometheus = Prometheus::start(&[endpoint.target()], Duration::from_secs(60))
        .await
        .expect("prometheus starts");
    (prometheus, endpoint)
}

// ---- what a test checks ----------------------------------------------------------

async fn wait_for_status(
    harness: &Harness,
    app: &AppDeployment,
    what: &str,
    done: impl Fn(&AppDeploymentStatus) -> bool,
) -> AppDeploymentStatus {
    let app = harness
        .wait_for(&app.namespace().unwrap(), &app.name_any(), what, WAIT, |app| {
            app.status.as_ref().is_some_and(&done)
        })
        .await;
    status(&app).clone()
}

async fn wait_for_phase(
    harness: &Harness,
    app: &AppDeployment,
    phase: Phase,
    current: &str,
) -> AppDeploymentStatus {
    wait_for_status(harness, app, &format!("{phase} at {current}"), |s| {
        s.phase == phase && s.current_revision.as_deref() == Some(current)
    })
    .await
}

async fn wait_for_block(harness: &Harness, app: &AppDeployment, revision: &str) -> AppDeploymentStatus {
    wait_for_status(harness, app, &format!("{revision} blocked"), |s| {
        s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == revision)
    })
    .await
}

/// The succeeded Jobs recorded for `revision`, by kind.
fn jobs_of(status: &AppDeploymentStatus, revision: &str) -> Vec<(JobKind, bool)> {
    let mut jobs: Vec<(JobKind, bool)> = status
        .jobs
        .iter()
        .filter(|job| job.revision == revision)
        .map(|job| (job.kind, job.succeeded))
        .collect();
    jobs.sort_by_key(|(kind, _)| kind.as_str());
    jobs
}

/// The Jobs the controller created (HTTP 201), by name, with how often.
async fn jobs_created(harness: &Harness) -> BTreeMap<String, usize> {
    let mut created = BTreeMap::new();
    for write in harness.controller_writes().await {
        if write.resource == "jobs" && write.verb == "create" && write.code == Some(201) {
            *created.entry(write.name.clone().unwrap_or_default()).or_insert(0) += 1;
        }
    }
    created
}

/// Every Job in `status.jobs` was created once, and no other but the `failed` ones
/// (a failed migration is told in the history, not recorded as done).
async fn assert_each_job_created_once(harness: &Harness, status: &AppDeploymentStatus, failed: &[&str]) {
    let created = jobs_created(harness).await;
    let mut expected: BTreeSet<String> = status.jobs.iter().map(|j| j.job.clone()).collect();
    expected.extend(failed.iter().map(|name| name.to_string()));
    assert_eq!(
        created.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "the Jobs created are the Jobs recorded"
    );
    assert!(
        created.values().all(|&n| n == 1),
        "each Job created once: {created:?}"
    );
}

fn gate<'a>(gates: &'a [GateVerdict], name: &str) -> &'a GateVerdict {
    gates
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("gate {name} in {gates:?}"))
}

fn gate_message(gates: &[GateVerdict], name: &str) -> String {
    gate(gates, name).message.clone().unwrap_or_default()
}

fn condition_of<'a>(
    status: &'a AppDeploymentStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("condition {type_} in {:?}", status.conditions))
}

/// A revision that became Healthy: every gate passed, one backup and one migration Job.
fn assert_healthy_with_jobs(status: &AppDeploymentStatus, revision: &str, gates: &[&str]) {
    let entry = &status.history[0];
    assert_eq!(entry.revision, revision);
    assert_eq!(entry.phase, Phase::Healthy);
    for name in gates {
        assert_eq!(
            gate(&entry.gates, name).verdict,
            Verdict::Passed,
            "{:?}",
            entry.gates
        );
    }
    assert_eq!(
        jobs_of(status, revision),
        [(JobKind::Backup, true), (JobKind::Migrate, true)],
        "{:?}",
        status.jobs
    );
    assert_eq!(
        condition_of(status, condition::MIGRATION_SUCCEEDED).status,
        "True"
    );
}

async fn image_of(harness: &Harness, namespace: &str, deployment: &str) -> String {
    harness.image_of(namespace, deployment).await
}

// ---- the files are valid ------------------------------------------------------------

/// Every Runbook passes `RunbookSpec::validate`; every file of every example
/// (Runbook, AppDeployment, `app/`) is accepted by a real API server with bosun's
/// CRDs in a server-side dry run; and that dry run does refuse what the CRD schema
/// forbids.
#[tokio::test]
async fn every_example_file_is_valid_for_bosun_and_the_api_server() {
    let harness = Harness::start().await;
    let client = harness.client.clone();
    for name in ["litevault", "lotus", "plannior"] {
        let example = Example::new(name);
        let runbook = example.runbook();
        assert_eq!(runbook.spec.validate(), Ok(()), "examples/{name}/runbook.yaml");
        assert_eq!(runbook.namespace().as_deref(), Some(name));
        let app = example.app_deployment();
        assert_eq!(app.namespace().as_deref(), Some(name));
        assert_eq!(app.spec.source.git.path.as_deref(), Some("app"));
        assert!(
            !example.readme_secrets().is_empty(),
            "examples/{name}/README.md creates Secrets"
        );

        harness.namespace(name).await;
        let objects = example.all_objects();
        assert!(objects.len() >= 8, "examples/{name}: {} objects", objects.len());
        for (id, object) in &objects {
            dry_run_apply(&client, name, object)
                .await
                .unwrap_or_else(|e| panic!("examples/{name}: {id} is refused: {e}"));
        }
    }

    // The demo's Runbook with its migration step, too.
    let demo: Runbook = serde_saphyr::from_str(&bosun_devenv::example::runbook_with_migration_yaml(
        "litevault",
        "litevault",
        "http://127.0.0.1:8000/health",
        "10s",
    ))
    .expect("the demo's Runbook parses");
    assert_eq!(demo.spec.validate(), Ok(()));
    assert_eq!(
        demo.spec.migrate.as_ref().unwrap().job.command,
        ["uv", "run", "alembic", "upgrade", "head"]
    );
    dry_run_apply(&client, "litevault", &serde_json::to_value(&demo).unwrap())
        .await
        .expect("the demo's Runbook is accepted");

    // The dry run checks the schema: a gate with two probe kinds is refused.
    let mut runbook = serde_json::to_value(Example::new("lotus").runbook()).unwrap();
    runbook["spec"]["gates"][0]["logs"] = json!({"workload": "lotus-backend", "pattern": "started"});
    let refused = dry_run_apply(&client, "lotus", &runbook)
        .await
        .expect_err("a gate with http and logs is refused");
    assert!(
        refused.contains("spec.gates") && refused.contains("one and only one schema"),
        "{refused}"
    );
}

/// Server-side apply of `object` with `dryRun=All`: what `kubectl apply --server-side
/// --dry-run=server` does.
async fn dry_run_apply(client: &Client, namespace: &str, object: &Value) -> Result<(), String> {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap());
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| e.to_string())?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("bosun-examples").dry_run().force(),
        &Patch::Apply(object),
    )
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}

// ---- LiteVault ------------------------------------------------------------------------

/// LiteVault: Healthy with a backup and `uv run alembic upgrade head` once; a worker
/// that never enriches fails the `enriched` smoke step (rolled back); a worker that
/// never logs "EnrichmentWorker started" fails the logs gate (rolled back).
#[tokio::test]
async fn litevault_example() {
    let started = Instant::now();
    let mut harness = Harness::start().await;
    let example = Example::new("litevault");
    let client = harness.client.clone();
    harness.namespace("litevault").await;
    let fake = FakeApp::start(
        &client,
        Site {
            namespace: "litevault",
            backend: "litevault-backend",
            worker: Some("litevault-worker"),
            health: json!({"status": "ok"}),
            cors_origins: None,
        },
    )
    .await;
    for secret in example.readme_secrets() {
        put_secret(&client, &secret).await;
    }
    let local = Local {
        rewrites: vec![(
            "http://litevault-backend.litevault.svc:8000".into(),
            fake.base.clone(),
        )],
    };
    apply_runbook(&client, &local.runbook(&example)).await;

    let repo = harness.repo("litevault-deploy");
    let started_line = "INFO litevault.worker: EnrichmentWorker started (provider=litellm)";
    let v1 = worker_logs(example.app_files(), &[started_line]);
    let good = v1.commit(&repo, "litevault 1.0.0");
    let app = Local::app_deployment(&example, &harness.git.url(repo.name()));
    apply_app_deployment(&client, &app).await;
    harness.start_controller();

    let healthy = wait_for_phase(&harness, &app, Phase::Healthy, &good).await;
    assert_healthy_with_jobs(&healthy, &good, &["health", "smoke", "worker-started"]);
    let smoke = gate_message(&healthy.history[0].gates, "smoke");
    assert!(smoke.starts_with("5 steps passed"), "{smoke}");
    assert_each_job_created_once(&harness, &healthy, &[]).await;
    eprintln!("litevault: 1.0.0 Healthy at {:?}", started.elapsed());

    // 1.1.0: the worker runs and says it started, but never enriches an item.
    let v2_image = "registry.example.com/litevault/backend:1.1.0";
    fake.behaves(
        v2_image,
        Behaviour {
            enriches: false,
            ..Behaviour::default()
        },
    );
    let no_enrichment = v1
        .clone()
        .replace("backend.yaml", "backend:1.0.0", "backend:1.1.0")
        .replace("worker.yaml", "backend:1.0.0", "backend:1.1.0")
        .commit(&repo, "litevault 1.1.0: enrichment broken");
    let rolled_back = wait_for_phase(&harness, &app, Phase::RolledBack, &good).await;
    let entry = &rolled_back.history[0];
    assert_eq!(
        (entry.revision.as_str(), entry.phase),
        (no_enrichment.as_str(), Phase::RolledBack)
    );
    let smoke = gate(&entry.gates, "smoke");
    assert_eq!(smoke.verdict, Verdict::Failed, "{:?}", entry.gates);
    let message = smoke.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("step enriched (3 of 5)")
            && message.contains(&format!("{}/api/v1/items/itm_", fake.base))
            && message.contains(r#"got "ENRICHING""#),
        "{message}"
    );
    assert!(
        rolled_back
            .quarantined
            .iter()
            .any(|q| q.revision == no_enrichment)
    );
    assert_eq!(
        image_of(&harness, "litevault", "litevault-worker").await,
        "registry.example.com/litevault/backend:1.0.0"
    );
    // Its migration ran and, under the Keep policy, nothing undid it.
    assert_eq!(
        jobs_of(&rolled_back, &no_enrichment),
        [(JobKind::Backup, true), (JobKind::Migrate, true)]
    );
    eprintln!("litevault: 1.1.0 rolled back at {:?}", started.elapsed());

    // 1.2.0: the worker runs but never gets to "EnrichmentWorker started".
    let silent = worker_logs(
        example
            .app_files()
            .replace("backend.yaml", "backend:1.0.0", "backend:1.2.0")
            .replace("worker.yaml", "backend:1.0.0", "backend:1.2.0"),
        &["INFO litevault.worker: connecting to the job queue"],
    )
    .commit(&repo, "litevault 1.2.0: worker stuck at start");
    let rolled_back = wait_for_status(&harness, &app, "1.2.0 rolled back", |s| {
        s.phase == Phase::RolledBack && s.history.first().is_some_and(|e| e.revision == silent)
    })
    .await;
    assert_eq!(rolled_back.current_revision.as_deref(), Some(good.as_str()));
    let entry = &rolled_back.history[0];
    let logs = gate(&entry.gates, "worker-started");
    assert_eq!(logs.verdict, Verdict::Failed, "{:?}", entry.gates);
    let message = logs.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("Deployment litevault/litevault-worker")
            && message.contains("EnrichmentWorker started"),
        "{message}"
    );
    assert_eq!(gate(&entry.gates, "health").verdict, Verdict::Passed);
    assert!(
        rolled_back
            .quarantined
            .iter()
            .any(|q| q.revision == silent && q.reason.contains("worker-started")),
        "{:?}",
        rolled_back.quarantined
    );
    assert_each_job_created_once(&harness, &rolled_back, &[]).await;
    assert!(rolled_back.jobs.iter().all(|j| j.kind != JobKind::Downgrade));
    eprintln!("litevault: 1.2.0 rolled back at {:?}", started.elapsed());
}

// ---- Lotus ----------------------------------------------------------------------------

/// Lotus: an OpenAI key left at the guide's template value blocks the first revision
/// (never printing it) until the Secret is fixed, then Healthy with one backup and one
/// migration Job; `CORS_ORIGINS=*` is blocked naming it; a backend whose `/health`
/// answers 503 is rolled back after three failures, and Slack is told.
#[tokio::test]
async fn lotus_example() {
    let started = Instant::now();
    let mut harness = Harness::start().await;
    let example = Example::new("lotus");
    let client = harness.client.clone();
    harness.namespace("lotus").await;
    let fake = FakeApp::start(
        &client,
        Site {
            namespace: "lotus",
            backend: "lotus-backend",
            worker: None,
            health: json!({
                "status": "healthy", "service": "Lotus Backend", "version": "0.1.0",
                "environment": "production", "timestamp": "2026-01-31T18:00:00Z",
            }),
            cors_origins: Some(("lotus-backend-config", "CORS_ORIGINS")),
        },
    )
    .await;
    let (prometheus, endpoint) = start_metrics().await;
    let _metrics = fake.drive_metrics(endpoint);
    let slack = Receiver::start().await;

    let template_key = "sk-your-openai-key";
    let mut secrets = example.readme_secrets();
    let openai_key = secret_named(&mut secrets, "lotus-openai").data["api-key"].clone();
    secret_named(&mut secrets, "lotus-openai")
        .data
        .insert("api-key".into(), template_key.into());
    secret_named(&mut secrets, "lotus-alerts")
        .data
        .insert("slack-webhook-url".into(), slack.url.clone());
    for secret in &secrets {
        put_secret(&client, secret).await;
    }
    let local = Local {
        rewrites: vec![
            ("http://lotus-backend.lotus.svc:8000".into(), fake.base.clone()),
            (
                "http://prometheus-operated.monitoring.svc:9090".into(),
                prometheus.url(),
            ),
            (
                r#"namespace="lotus", service="lotus-backend""#.into(),
                r#"job="devenv""#.into(),
            ),
        ],
    };
    apply_runbook(&client, &local.runbook(&example)).await;

    let repo = harness.repo("lotus-deploy");
    let good = example.app_files().commit(&repo, "lotus 0.1.0");
    let app = Local::app_deployment(&example, &harness.git.url(repo.name()));
    apply_app_deployment(&client, &app).await;
    harness.start_controller();

    // The template value of .env.production: blocked, nothing applied, no Job run.
    let blocked = wait_for_block(&harness, &app, &good).await;
    let block = blocked.blocked.as_ref().unwrap();
    assert_eq!(block.reason, bosun::api::BlockReason::PreflightFailed);
    assert!(
        block.message.contains(
            "Deployment lotus/lotus-backend container api: OPENAI_API_KEY (Secret lotus/lotus-openai, key api-key) \
             still has a value the Runbook forbids (notEquals)"
        ),
        "{}",
        block.message
    );
    assert!(!block.message.contains(template_key), "{}", block.message);
    assert!(!serde_json::to_string(&blocked).unwrap().contains(template_key));
    assert_eq!(
        condition_of(&blocked, condition::PREFLIGHT_PASSED).status,
        "False"
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "lotus")
            .get_opt("lotus-backend")
            .await
            .unwrap()
            .is_none(),
        "nothing of a blocked revision is applied"
    );
    assert!(jobs_created(&harness).await.is_empty());
    let told = slack.wait_for_phase(Phase::Blocked).await;
    assert!(!told.contains(template_key), "{told}");

    // The operator puts the real key in; the revision goes on without a new commit.
    secret_named(&mut secrets, "lotus-openai")
        .data
        .insert("api-key".into(), openai_key);
    put_secret(&client, secret_named(&mut secrets, "lotus-openai")).await;
    let healthy = wait_for_phase(&harness, &app, Phase::Healthy, &good).await;
    assert_healthy_with_jobs(
        &healthy,
        &good,
        &["health", "ready", "cors-preflight", "error-rate"],
    );
    assert_each_job_created_once(&harness, &healthy, &[]).await;
    eprintln!("lotus: 0.1.0 Healthy at {:?}", started.elapsed());

    // CORS opened to everyone: blocked naming the variable; the healthy revision runs on.
    let open_cors = example
        .app_files()
        .replace(
            "config.yaml",
            "CORS_ORIGINS: https://lotus.example.com,https://www.lotus.example.com",
            "CORS_ORIGINS: \"*\"",
        )
        .commit(&repo, "lotus: allow every origin");
    let blocked = wait_for_block(&harness, &app, &open_cors).await;
    let message = &blocked.blocked.as_ref().unwrap().message;
    assert!(
        message.contains(
            "Deployment lotus/lotus-backend container api: CORS_ORIGINS (ConfigMap lotus/lotus-backend-config, \
             key CORS_ORIGINS) is \"*\", a value the Runbook forbids (notEquals)"
        ),
        "{message}"
    );
    assert_eq!(blocked.current_revision.as_deref(), Some(good.as_str()));
    let applied = Api::<ConfigMap>::namespaced(client.clone(), "lotus")
        .get("lotus-backend-config")
        .await
        .unwrap();
    assert_eq!(
        applied.data.unwrap()["CORS_ORIGINS"],
        "https://lotus.example.com,https://www.lotus.example.com"
    );
    assert!(
        jobs_of(&blocked, &open_cors).is_empty(),
        "no Job runs for a blocked revision"
    );

    // 0.2.0: its /health answers 503; three failures in a row roll it back.
    let unhealthy_image = "registry.example.com/lotus/backend:0.2.0";
    fake.behaves(
        unhealthy_image,
        Behaviour {
            healthy: false,
            ..Behaviour::default()
        },
    );
    let unhealthy = example
        .app_files()
        .replace("backend.yaml", "backend:0.1.0", "backend:0.2.0")
        .commit(&repo, "lotus 0.2.0");
    let rolled_back = wait_for_phase(&harness, &app, Phase::RolledBack, &good).await;
    let entry = &rolled_back.history[0];
    assert_eq!(
        (entry.revision.as_str(), entry.phase),
        (unhealthy.as_str(), Phase::RolledBack)
    );
    let health = gate(&entry.gates, "health");
    assert_eq!(health.verdict, Verdict::Failed, "{:?}", entry.gates);
    let message = health.message.as_deref().unwrap_or_default();
    assert!(message.contains("503"), "{message}");
    let quarantine = rolled_back
        .quarantined
        .iter()
        .find(|q| q.revision == unhealthy)
        .expect("0.2.0 quarantined");
    assert!(
        quarantine.reason.contains("gate health failed"),
        "{}",
        quarantine.reason
    );
    assert_eq!(
        image_of(&harness, "lotus", "lotus-backend").await,
        "registry.example.com/lotus/backend:0.1.0"
    );
    let told = slack.wait_for_phase(Phase::RolledBack).await;
    assert!(
        told.starts_with(&format!(
            "lotus/lotus: revision {} rolled back to {}: ",
            &unhealthy[..12],
            &good[..12]
        )),
        "{told}"
    );
    assert_each_job_created_once(&harness, &rolled_back, &[]).await;
    eprintln!("lotus: 0.2.0 rolled back at {:?}", started.elapsed());
}

// ---- Plannior -------------------------------------------------------------------------

/// Plannior: a missing Secret blocks naming it, until it is created (then Healthy with
/// one backup and one migration Job); a failing migration leaves the workloads alone
/// and the app Failed with the Job's log line; 5% failing requests fail the error-rate
/// gate (rolled back, Slack told).
#[tokio::test]
async fn plannior_example() {
    let started = Instant::now();
    let mut harness = Harness::start().await;
    let example = Example::new("plannior");
    let client = harness.client.clone();
    harness.namespace("plannior").await;
    let fake = FakeApp::start(
        &client,
        Site {
            namespace: "plannior",
            backend: "plannior-backend",
            worker: None,
            health: json!({"status": "healthy", "service": "Plannior Phase III", "version": "1.0.0"}),
            cors_origins: None,
        },
    )
    .await;
    let (prometheus, endpoint) = start_metrics().await;
    let _metrics = fake.drive_metrics(endpoint);
    let slack = Receiver::start().await;

    let mut secrets = example.readme_secrets();
    secret_named(&mut secrets, "plannior-alerts")
        .data
        .insert("slack-webhook-url".into(), slack.url.clone());
    let jwt = secret_named(&mut secrets, "plannior-jwt").clone();
    assert_eq!(jwt.data["secret"], RANDOM_HEX);
    for secret in secrets.iter().filter(|s| s.name != "plannior-jwt") {
        put_secret(&client, secret).await;
    }
    let local = Local {
        rewrites: vec![
            (
                "http://plannior-backend.plannior.svc:8000".into(),
                fake.base.clone(),
            ),
            (
                "http://plannior-frontend.plannior.svc:3000".into(),
                fake.base.clone(),
            ),
            (
                "http://prometheus-operated.monitoring.svc:9090".into(),
                prometheus.url(),
            ),
            (
                r#"namespace="plannior", service="plannior-backend""#.into(),
                r#"job="devenv""#.into(),
            ),
        ],
    };
    apply_runbook(&client, &local.runbook(&example)).await;

    let repo = harness.repo("plannior-deploy");
    let good = example.app_files().commit(&repo, "plannior 1.0.0");
    let app = Local::app_deployment(&example, &harness.git.url(repo.name()));
    apply_app_deployment(&client, &app).await;
    harness.start_controller();

    // The JWT Secret was forgotten: blocked naming it, nothing applied.
    let blocked = wait_for_block(&harness, &app, &good).await;
    let message = &blocked.blocked.as_ref().unwrap().message;
    assert!(
        message.contains("Deployment plannior/plannior-backend container api")
            && message.contains("JWT_SECRET")
            && message.contains("Secret plannior/plannior-jwt"),
        "{message}"
    );
    assert_eq!(
        condition_of(&blocked, condition::PREFLIGHT_PASSED).status,
        "False"
    );
    assert!(jobs_created(&harness).await.is_empty());
    slack.wait_for_phase(Phase::Blocked).await;

    // Created: the revision goes on within seconds, no new commit needed.
    let created_at = Instant::now();
    put_secret(&client, &jwt).await;
    let healthy = wait_for_phase(&harness, &app, Phase::Healthy, &good).await;
    eprintln!(
        "plannior: 1.0.0 Healthy {:?} after the Secret was created (verify window 30s)",
        created_at.elapsed()
    );
    assert_healthy_with_jobs(
        &healthy,
        &good,
        &["health", "frontend", "error-rate", "latency-p95"],
    );
    assert_each_job_created_once(&harness, &healthy, &[]).await;
    eprintln!("plannior: 1.0.0 Healthy at {:?}", started.elapsed());

    // 1.1.0: its migration fails. Nothing of it is applied; the app is Failed with the
    // Job's log.
    let failing = example
        .app_files()
        .replace(
            "backend.yaml",
            "plannior-backend:1.0.0",
            "plannior-backend:1.1.0-failing-migration",
        )
        .commit(&repo, "plannior 1.1.0");
    let failed = wait_for_status(&harness, &app, "1.1.0 Failed", |s| {
        s.phase == Phase::Failed && s.history.first().is_some_and(|e| e.revision == failing)
    })
    .await;
    let entry = &failed.history[0];
    let message = entry.message.as_deref().unwrap_or_default();
    let migration_job = format!("plannior-migrate-{}", &failing[..12]);
    assert!(
        message.starts_with(&format!(
            "migrate Job plannior/{migration_job} failed: BackoffLimitExceeded"
        )) && message.ends_with("last lines of its log:\nsimulated: ran python reset_database.py"),
        "{message}"
    );
    assert_eq!(
        condition_of(&failed, condition::MIGRATION_SUCCEEDED).status,
        "False"
    );
    assert_eq!(failed.current_revision.as_deref(), Some(good.as_str()));
    assert!(failed.quarantined.iter().any(|q| q.revision == failing));
    assert_eq!(
        image_of(&harness, "plannior", "plannior-backend").await,
        "registry.example.com/plannior-backend:1.0.0"
    );
    // The backup ran; the failed migration is in the history entry, not in status.jobs
    // (which records what never needs to run again).
    assert_eq!(jobs_of(&failed, &failing), [(JobKind::Backup, true)]);
    assert_eq!(jobs_created(&harness).await.get(&migration_job), Some(&1));
    let told = slack.wait_for_phase(Phase::Failed).await;
    assert!(told.contains("BackoffLimitExceeded"), "{told}");
    eprintln!("plannior: 1.1.0 Failed at {:?}", started.elapsed());

    // 1.2.0: 5% of its requests fail; the error-rate gate rolls it back.
    fake.behaves(
        "registry.example.com/plannior-backend:1.2.0",
        Behaviour {
            error_rate: 0.05,
            ..Behaviour::default()
        },
    );
    let erroring = example
        .app_files()
        .replace("backend.yaml", "plannior-backend:1.0.0", "plannior-backend:1.2.0")
        .commit(&repo, "plannior 1.2.0");
    let rolled_back = wait_for_phase(&harness, &app, Phase::RolledBack, &good).await;
    let entry = &rolled_back.history[0];
    assert_eq!(
        (entry.revision.as_str(), entry.phase),
        (erroring.as_str(), Phase::RolledBack)
    );
    let errors = gate(&entry.gates, "error-rate");
    assert_eq!(errors.verdict, Verdict::Failed, "{:?}", entry.gates);
    let message = errors.message.as_deref().unwrap_or_default();
    assert!(message.contains("not < 0.01"), "{message}");
    assert_eq!(gate(&entry.gates, "health").verdict, Verdict::Passed);
    assert_eq!(
        jobs_of(&rolled_back, &erroring),
        [(JobKind::Backup, true), (JobKind::Migrate, true)]
    );
    assert_eq!(
        image_of(&harness, "plannior", "plannior-backend").await,
        "registry.example.com/plannior-backend:1.0.0"
    );
    let told = slack.wait_for_phase(Phase::RolledBack).await;
    assert!(
        told.starts_with(&format!(
            "plannior/plannior: revision {} rolled back to {}: ",
            &erroring[..12],
            &good[..12]
        )) && told.contains("error-rate"),
        "{told}"
    );
    assert_each_job_created_once(&harness, &rolled_back, &[&migration_job]).await;
    eprintln!("plannior: 1.2.0 rolled back at {:?}", started.elapsed());
}

/// A PromQL range like `[5m]`, whose duration the tests shorten.
static RANGE: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"\[(\d+)([smh])\]").unwrap());
