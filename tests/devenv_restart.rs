//! kube-apiserver stopped and started again in place: clients, watches and
//! kube-controller-manager carry on once it is back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bosun_devenv::{ControlPlane, ControlPlaneOptions};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::json;
use support::{eventually, init_tracing};

const WAIT: Duration = Duration::from_secs(60);

async fn apply_config_map(api: &Api<ConfigMap>, name: &str, value: &str) -> kube::Result<ConfigMap> {
    let object = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "value": value } });
    api.patch(
        name,
        &PatchParams::apply("bosun-test").force(),
        &Patch::Apply(&object),
    )
    .await
}

/// Applies a one-replica Deployment `name`.
async fn apply_deployment(api: &Api<Deployment>, name: &str) -> kube::Result<Deployment> {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "example/app:1" }] }
            }
        }
    });
    api.patch(
        name,
        &PatchParams::apply("bosun-test").force(),
        &Patch::Apply(&object),
    )
    .await
}

/// Waits until kube-controller-manager made a ReplicaSet for Deployment `name`.
async fn replica_set_of(replica_sets: &Api<ReplicaSet>, name: &str) -> anyhow::Result<()> {
    let selector = ListParams::default().labels(&format!("app={name}"));
    eventually(&format!("a ReplicaSet for Deployment {name}"), WAIT, || async {
        Ok((!replica_sets.list(&selector).await?.items.is_empty()).then_some(()))
    })
    .await
}

#[tokio::test]
async fn apiserver_stops_and_starts_in_place() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = Arc::new(ControlPlane::start(ControlPlaneOptions::default()).await?);
    let client = control_plane.client();
    let controller = control_plane.controller_client().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let controller_config_maps: Api<ConfigMap> = Api::namespaced(controller.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    apply_config_map(&config_maps, "watched", "before").await?;
    apply_deployment(&deployments, "before").await?;
    replica_set_of(&replica_sets, "before").await?;
    let server_url = control_plane.server_url().to_owned();

    // A watcher that must see a change made after the restart.
    let seen_values = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watch_errors = Arc::new(AtomicUsize::new(0));
    let watch = {
        let config = watcher::Config::default().fields("metadata.name=watched");
        let stream = watcher::watcher(config_maps.clone(), config).default_backoff();
        let seen_values = seen_values.clone();
        let watch_errors = watch_errors.clone();
        tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                        let value = cm.data.unwrap_or_default().remove("value").unwrap_or_default();
                        seen_values.lock().unwrap().push(value);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        watch_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    eventually("the watcher to list", WAIT, || async {
        Ok(seen_values
            .lock()
            .unwrap()
            .contains(&"before".to_owned())
            .then_some(()))
    })
    .await?;

    // Stopped: requests fail to connect; the audit log can still be read.
    let stopping = Instant::now();
    control_plane.stop_apiserver().await?;
    eprintln!("kube-apiserver stopped (SIGTERM) in {:?}", stopping.elapsed());
    assert!(!control_plane.apiserver_running());
    let error = config_maps.get("watched").await.unwrap_err();
    eprintln!("request while stopped: {error}");
    assert!(!matches!(error, kube::Error::Api(_)), "{error:?}");
    assert!(control_plane.stop_apiserver().await.is_err(), "already stopped");
    let writes_while_stopped = control_plane.audit_writes().await?;
    assert!(
        writes_while_stopped
            .iter()
            .any(|w| w.name.as_deref() == Some("watched"))
    );

    // Started again: the same URL, and the clients made before work again.
    let starting = Instant::now();
    control_plane.start_apiserver().await?;
    eprintln!("kube-apiserver ready again in {:?}", starting.elapsed());
    assert!(control_plane.apiserver_running());
    assert!(control_plane.start_apiserver().await.is_err(), "already running");
    assert_eq!(control_plane.server_url(), server_url);
    assert_eq!(config_maps.get("watched").await?.data.unwrap()["value"], "before");
    apply_config_map(&controller_config_maps, "watched", "after").await?;
    eventually(
        "the watcher to see the change made after the restart",
        WAIT,
        || async {
            Ok(seen_values
                .lock()
                .unwrap()
                .contains(&"after".to_owned())
                .then_some(()))
        },
    )
    .await?;
    eprintln!(
        "watch errors while the API server was away: {}",
        watch_errors.load(Ordering::Relaxed)
    );
    // kube-controller-manager reconnected and still acts.
    apply_deployment(&deployments, "after-restart").await?;
    replica_set_of(&replica_sets, "after-restart").await?;
    // The audit log goes on in the same file.
    let writes = control_plane.controller_writes().await?;
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].name.as_deref(), Some("watched"));

    // A crash (SIGKILL) in the middle of a burst of writes, injected from a task
    // holding a shared reference as a fault injector would. The writer goes on
    // until three writes succeeded after the first failure.
    let writer = {
        let controller_config_maps = controller_config_maps.clone();
        tokio::spawn(async move {
            let mut outcomes: Vec<bool> = Vec::new();
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                let name = format!("burst-{}", outcomes.len());
                outcomes.push(
                    apply_config_map(&controller_config_maps, &name, "x")
                        .await
                        .is_ok(),
                );
                let first_failure = outcomes.iter().position(|ok| !ok);
                if first_failure.is_some_and(|first| outcomes[first..].iter().filter(|ok| **ok).count() >= 3)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            outcomes
        })
    };
    let injector = {
        let control_plane = control_plane.clone();
        tokio::spawn(async move {
            // Once the controller has written a few, kill the API server.
            loop {
                let burst = control_plane.controller_writes().await?.len() - 1;
                if burst >= 5 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            control_plane.kill_apiserver().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            control_plane.start_apiserver().await
        })
    };
    injector.await??;
    let outcomes = writer.await?;
    let failed = outcomes.iter().filter(|ok| !**ok).count();
    let succeeded = outcomes.len() - failed;
    eprintln!(
        "burst of {} applies around a kill: {failed} failed",
        outcomes.len()
    );
    assert!(failed > 0, "some applies fall into the outage");
    assert!(*outcomes.last().unwrap(), "the writer ends with a success");
    // A write the API server acknowledged was audited before its (small) response
    // left the process; one in flight at the kill may be in etcd yet unaudited.
    let audited = control_plane
        .controller_writes()
        .await?
        .into_iter()
        .filter(|w| w.name.as_deref().is_some_and(|n| n.starts_with("burst-")))
        .collect::<Vec<_>>();
    let audited_ok = audited.iter().filter(|w| w.succeeded()).count();
    eprintln!("audited: {} burst writes, {audited_ok} succeeded", audited.len());
    assert!(
        audited_ok >= succeeded,
        "every acknowledged write is in the audit log"
    );
    assert_eq!(config_maps.get("watched").await?.data.unwrap()["value"], "after");

    watch.abort();
    Ok(())
}
