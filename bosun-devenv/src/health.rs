//! A stand-in for the example app's `/health` endpoint. No Pod really runs on the
//! local control plane, so this serves on loopback what the app would answer,
//! decided by the image currently applied to its Deployment: an image whose
//! reference contains `unhealthy` answers `503 {"status":"degraded"}`, any other
//! `200 {"status":"ok"}`; no Deployment answers `503 {"status":"down"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Counters a test can read.
#[derive(Default, Debug)]
pub struct HealthCounters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

pub struct HealthEndpoint {
    port: u16,
    counters: Arc<HealthCounters>,
    task: JoinHandle<()>,
}

struct Shared {
    deployments: Api<Deployment>,
    deployment: String,
    counters: Arc<HealthCounters>,
}

impl HealthEndpoint {
    /// Serves `GET /health` on a free loopback port for Deployment `namespace/deployment`.
    pub async fn start(client: kube::Client, namespace: &str, deployment: &str) -> anyhow::Result<Self> {
        let counters = Arc::new(HealthCounters::default());
        let shared = Arc::new(Shared {
            deployments: Api::namespaced(client, namespace),
            deployment: deployment.to_string(),
            counters: counters.clone(),
        });
        let app = axum::Router::new()
            .route("/health", get(health))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HealthEndpoint { port, counters, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    pub fn counters(&self) -> &HealthCounters {
        &self.counters
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the app would answer while running `image`.
pub fn answer_for_image(image: Option<&str>) -> (StatusCode, Value) {
    match image {
        None => (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "down"})),
        Some(image) if image.contains("unhealthy") => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "degraded", "database": "unreachable"}),
        ),
        Some(_) => (StatusCode::OK, json!({"status": "ok", "database": "connected"})),
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let image = match shared.deployments.get_opt(&shared.deployment).await {
        Ok(Some(deployment)) => deployment
            .spec
            .and_then(|spec| spec.template.spec)
            .and_then(|pod| pod.containers.into_iter().next())
            .and_then(|container| container.image),
        _ => None,
    };
    let (status, body) = answer_for_image(image.as_deref());
    if !status.is_success() {
        shared.counters.failures.fetch_add(1, Ordering::Relaxed);
    }
    (status, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_image() {
        assert_eq!(answer_for_image(Some("example/backend:1.0")).0, StatusCode::OK);
        assert_eq!(
            answer_for_image(Some("example/backend:2.0-unhealthy")).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer_for_image(None).1["status"], "down");
    }
}
