//! The workload gate against the real local control plane and the pod simulator.

use std::time::{Duration, Instant};

use bosun::api::{InventoryEntry, Verdict};
use bosun::gates::workload::{WorkloadVerdict, check_workloads};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, PodSimulator};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "shop";
const MAX_RESTARTS: i32 = 3;

fn entry(kind: &str, name: &str) -> InventoryEntry {
    InventoryEntry {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        namespace: Some(NS.into()),
        name: name.into(),
        adopted: false,
    }
}

async fn apply<K>(api: &Api<K>, name: &str, object: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    api.patch(
        name,
        &PatchParams::apply("gates-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

fn deployment(image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "backend", "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "backend"}},
            "template": {
                "metadata": {"labels": {"app": "backend"}},
                "spec": {"containers": [{"name": "api", "image": image}]}
            }
        }
    })
}

/// Waits until the images of the Deployment's pods satisfy `ready`.
async fn wait_for_pods(client: &Client, ready: impl Fn(&[String]) -> bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let start = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=backend"))
            .await
            .expect("list pods");
        let images: Vec<String> = list
            .items
            .iter()
            .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
            .filter_map(|c| c.image.clone())
            .collect();
        if ready(&images) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pods never matched: {images:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the gate until `done` says so; every verdict seen passes through `seen`.
async fn poll(
    client: &Client,
    workloads: &[InventoryEntry],
    limit: Duration,
    mut seen: impl FnMut(&WorkloadVerdict),
    done: impl Fn(&WorkloadVerdict) -> bool,
) -> WorkloadVerdict {
    let start = Instant::now();
    loop {
        let verdict = check_workloads(client, workloads, MAX_RESTARTS).await;
        seen(&verdict);
        if done(&verdict) {
            eprintln!("after {:?}: {:?}", start.elapsed(), verdict);
            return verdict;
        }
        assert!(start.elapsed() < limit, "gave up; last verdict {verdict:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_gate_on_a_real_control_plane() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let client = plane.client();
    let _pods = PodSimulator::start(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let backend = [entry("Deployment", "backend")];

    // Missing → pending.
    let missing = check_workloads(&client, &backend, MAX_RESTARTS).await;
    assert_eq!(missing.verdict, Verdict::Pending, "{missing:?}");

    let mut never_failed = |v: &WorkloadVerdict| assert_ne!(v.verdict, Verdict::Failed, "{v:?}");

    // A first revision whose pods all crash-loop fails fast.
    apply(&deployments, "backend", deployment("backend:crashloop")).await;
    let failed = poll(
        &client,
        &backend,
        Duration::from_secs(60),
        |_| {},
        |v| v.verdict == Verdict::Failed,
    )
    .await;
    assert!(
        failed
            .message
            .starts_with("Deployment shop/backend: pod backend-"),
        "{failed:?}"
    );
    assert!(
        failed.message.contains("container api: CrashLoopBackOff"),
        "{failed:?}"
    );

    // The next revision's pods never become ready, so with maxUnavailable 0 the
    // Deployment controller keeps the crash-looping pods around: they belong to an
    // old ReplicaSet now and must not fail the gate.
    apply(&deployments, "backend", deployment("backend:v2-notready")).await;
    wait_for_pods(&client, |images| {
        images.iter().filter(|i| i.contains("crashloop")).count() == 2
            && images.iter().any(|i| i.contains("notready"))
    })
    .await;
    for _ in 0..5 {
        let verdict = check_workloads(&client, &backend, MAX_RESTARTS).await;
        assert_eq!(verdict.verdict, Verdict::Pending, "{verdict:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    apply(&deployments, "backend", deployment("backend:v1")).await;
    poll(
        &client,
        &backend,
        Duration::from_secs(60),
        &mut never_failed,
        |v| v.verdict == Verdict::Passed,
    )
    .await;

    // A crash-looping update of a healthy Deployment fails fast too, and rolling
    // back to the healthy template passes again.
    apply(&deployments, "backend", deployment("backend:crashloop")).await;
    poll(
        &client,
        &backend,
        Duration::from_secs(60),
        |_| {},
        |v| v.verdict == Verdict::Failed,
    )
    .await;
    apply(&deployments, "backend", deployment("backend:v1")).await;
    poll(
        &client,
        &backend,
        Duration::from_secs(60),
        &mut never_failed,
        |v| v.verdict == Verdict::Passed,
    )
    .await;

    apply(&deployments, "backend", deployment("backend:errimagepull")).await;
    let failed = poll(
        &client,
        &backend,
        Duration::from_secs(60),
        |_| {},
        |v| v.verdict == Verdict::Failed,
    )
    .await;
    assert!(failed.message.contains("ErrImagePull"), "{failed:?}");
    apply(&deployments, "backend", deployment("backend:v1")).await;
    poll(
        &client,
        &backend,
        Duration::from_secs(60),
        &mut never_failed,
        |v| v.verdict == Verdict::Passed,
    )
    .await;

    // StatefulSet and DaemonSet.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let sts_object = |image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": NS},
            "spec": {
                "replicas": 2, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "postgres", "image": image}]}
                }
            }
        })
    };
    apply(&sts, "db", sts_object("postgres:16")).await;
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    apply(
        &ds,
        "agent",
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}
                }
            }
        }),
    )
    .await;
    let all = [
        entry("Deployment", "backend"),
        entry("StatefulSet", "db"),
        entry("DaemonSet", "agent"),
        InventoryEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some(NS.into()),
            name: "ignored".into(),
            adopted: false,
        },
    ];
    let passed = poll(&client, &all, Duration::from_secs(90), &mut never_failed, |v| {
        v.verdict == Verdict::Passed
    })
    .await;
    assert_eq!(passed.message, "3 workloads rolled out");

    apply(&sts, "db", sts_object("postgres:configerror")).await;
    let failed = poll(
        &client,
        &all,
        Duration::from_secs(90),
        |_| {},
        |v| v.verdict == Verdict::Failed,
    )
    .await;
    assert!(
        failed
            .message
            .starts_with("StatefulSet shop/db: pod db-1 container postgres: CreateContainerConfigError"),
        "{failed:?}"
    );
}
