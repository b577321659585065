//! The controller's one HTTP server (`--listen-address`, default `0.0.0.0:8080`):
//!
//! - `GET /metrics`: Prometheus metrics as OpenMetrics text ([`metrics`]);
//! - `GET /healthz`: 200 while the process serves requests (the liveness probe);
//! - `GET /readyz`: 200 once the watch caches are synced, 503 before (the readiness
//!   probe: a replica that has not synced cannot reconcile yet);
//! - `POST /hooks/{github,gitlab,generic}`: Git push webhooks ([`webhook`]), unless
//!   they have a listener of their own (`--webhook-listen-address`).
//!
//! [`router`] merges one sub-router per concern; each brings its own state.

pub mod metrics;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;

pub use metrics::Metrics;

use crate::api::AppDeployment;

/// What the routes read: shared with the controller, which records into `metrics`,
/// keeps `apps` watched and marks `ready`.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Metrics,
    pub ready: Readiness,
    /// Every AppDeployment this controller watches.
    pub apps: Store<AppDeployment>,
    /// Wakes an app: a pass over it runs as soon as a worker is free.
    pub wake: UnboundedSender<ObjectRef<AppDeployment>>,
    pub client: kube::Client,
    /// The Git push webhook receiver, when it is served here.
    pub webhook: Option<webhook::WebhookReceiver>,
}

/// Whether this replica is ready: reconciling (the leader, its watch caches synced), on
/// standby (another replica holds the leader Lease: up, and ready to take over), or
/// neither yet (starting, the API server awaited).
///
/// A standby replica is ready as far as Kubernetes is concerned: were it not, a rolling
/// update of two replicas would wait forever for the new follower, and the
/// PodDisruptionBudget would forbid evicting the leader (a node drain would hang).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

// 0, the default: starting.
const STANDBY: u8 = 1;
const RECONCILING: u8 = 2;

impl Readiness {
    /// The leader with its caches synced (or the only replica).
    pub fn reconciling(&self) {
        self.0.store(RECONCILING, Ordering::Release);
    }

    /// Another replica is the leader; this one waits to take over.
    pub fn standby(&self) {
        self.0.store(STANDBY, Ordering::Release);
    }

    /// Whether this replica reconciles: only then can a push wake an app here.
    pub(crate) fn is_reconciling(&self) -> bool {
        self.0.load(Ordering::Acquire) == RECONCILING
    }

    fn is_standby(&self) -> bool {
        self.0.load(Ordering::Acquire) == STANDBY
    }
}

/// Every route of the server.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .merge(observability(&state))
        .merge(state.webhook.clone().map(webhook::routes).unwrap_or_default())
}

/// `/metrics`, `/healthz` and `/readyz`.
fn observability(state: &ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone())
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if state.ready.is_reconciling() {
        (StatusCode::OK, "ready\n")
    } else if state.ready.is_standby() {
        (
            StatusCode::OK,
            "standby: another replica holds the leader Lease; ready to take over\n",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the watch caches are not synced yet\n",
        )
    }
}

/// Binds `address` now (a port in use fails the start, not a later request) and
/// serves [`router`] in the background for the life of the process.
pub async fn spawn(address: SocketAddr, state: ServerState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = router(state);
    tokio::spawn(async move {
        // The peer's address, for the webhook receiver's rate limit.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}
