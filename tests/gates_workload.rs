//! The workload gate against the real local control plane and the pod simulator,
//! read as the controller reads it: from reflector caches of what carries bosun's
//! `bosun.dev/app` label, filled by real watches. Each test starts its own control
//! plane, so they run side by side.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use bosun::api::{APP_LABEL, InventoryEntry, RestartBaseline, Verdict};
use bosun::gates::workload::{
    WorkloadStores, WorkloadVerdict, WorkloadView, capture_baseline, evaluate_workloads,
};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, PodSimulator};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const NS: &str = "shop";
/// The `bosun.dev/app` value of everything these tests apply (`namespace.name`).
const APP: &str = "shop.app";
const MAX_RESTARTS: i32 = 3;
/// Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(90);

/// A control plane with the pod simulator and bosun's six watch caches.
struct Cluster {
    client: Client,
    stores: WorkloadStores,
    watches: Vec<JoinHandle<()>>,
    _pods: PodSimulator,
    _plane: ControlPlane,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,kube=warn")
            .try_init();
        let plane = ControlPlane::start(ControlPlaneOptions::default())
            .await
            .expect("control plane");
        let client = plane.client();
        let pods = PodSimulator::start(client.clone());
        let mut watches = Vec::new();
        let stores = WorkloadStores {
            deployments: watch(&client, &mut watches),
            stateful_sets: watch(&client, &mut watches),
            daemon_sets: watch(&client, &mut watches),
            replica_sets: watch(&client, &mut watches),
            controller_revisions: watch(&client, &mut watches),
            pods: watch(&client, &mut watches),
        };
        let ready = async {
            stores.deployments.wait_until_ready().await?;
            stores.stateful_sets.wait_until_ready().await?;
            stores.daemon_sets.wait_until_ready().await?;
            stores.replica_sets.wait_until_ready().await?;
            stores.controller_revisions.wait_until_ready().await?;
            stores.pods.wait_until_ready().await
        };
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("watch caches fill in time")
            .expect("watch caches fill");
        apply(
            &Api::<Namespace>::all(client.clone()),
            NS,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        )
        .await;
        Cluster {
            client,
            stores,
            watches,
            _pods: pods,
            _plane: plane,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Applies one workload as the controller does: baseline first, then the object
    /// (recording the generation the server answered with), then `appliedAt`.
    async fn apply_workload<K>(&self, entry: &InventoryEntry, object: Value) -> Revision
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let inventory = vec![entry.clone()];
        let mut baseline = capture_baseline(&self.stores, &inventory);
        let applied: K = apply(&self.api::<K>(), &entry.name, object).await;
        baseline.record_generation(entry, applied.meta().generation.expect("generation"));
        Revision {
            inventory,
            baseline,
            applied_at: applied_now(),
        }
    }

    /// Polls the gate from the caches until `done`; every verdict passes through `seen`.
    async fn poll(
        &self,
        revision: &Revision,
        mut seen: impl FnMut(&WorkloadVerdict),
        done: impl Fn(&WorkloadVerdict) -> bool,
    ) -> WorkloadVerdict {
        let start = Instant::now();
        loop {
            let verdict = revision.verdict(&self.stores);
            seen(&verdict);
            if done(&verdict) {
                eprintln!("after {:?}: {verdict:?}", start.elapsed());
                return verdict;
            }
            assert!(start.elapsed() < WAIT, "gave up; last verdict {verdict:?}");
            // A round reads only the caches, so polling often costs the server nothing.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the gate says `verdict`.
    async fn until(&self, revision: &Revision, verdict: Verdict) -> WorkloadVerdict {
        self.poll(revision, |_| {}, |v| v.verdict == verdict).await
    }

    /// Polls until the gate passes, asserting it never fails on the way; returns the
    /// verdicts seen before it passed (each change once) and the passing one.
    async fn until_passed_without_failing(
        &self,
        revision: &Revision,
    ) -> (Vec<WorkloadVerdict>, WorkloadVerdict) {
        let mut before = Vec::new();
        let passed = self
            .poll(
                revision,
                |v| {
                    assert_ne!(v.verdict, Verdict::Failed, "{v:?}");
                    if v.verdict != Verdict::Passed && before.last() != Some(v) {
                        before.push(v.clone());
                    }
                },
                |v| v.verdict == Verdict::Passed,
            )
            .await;
        (before, passed)
    }

    /// The verdict holds for `rounds` rounds 200 ms apart.
    async fn holds(&self, revision: &Revision, expected: Verdict, rounds: usize) {
        for _ in 0..rounds {
            let verdict = revision.verdict(&self.stores);
            assert_eq!(verdict.verdict, expected, "{verdict:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn pods(&self, selector: &str) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }
}

/// A revision under verification: what the controller persists at apply time.
struct Revision {
    inventory: Vec<InventoryEntry>,
    baseline: RestartBaseline,
    applied_at: Timestamp,
}

impl Revision {
    fn verdict(&self, stores: &WorkloadStores) -> WorkloadVerdict {
        evaluate_workloads(
            stores,
            &self.inventory,
            &self.baseline,
            self.applied_at,
            MAX_RESTARTS,
        )
    }
}

/// `appliedAt` as the controller records it: now, to the second.
fn applied_now() -> Timestamp {
    Timestamp::now().round(Unit::Second).expect("rounds")
}

/// A reflector cache of every `K` carrying the app label, kept by a watch task.
fn watch<K>(client: &Client, watches: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(APP_LABEL);
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), config).default_backoff(),
    );
    watches.push(tokio::spawn(stream.for_each(|_| async {})));
    reader
}

async fn apply<K>(api: &Api<K>, name: &str, object: Value) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug + Serialize,
{
    api.patch(
        name,
        &PatchParams::apply("gates-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}

fn entry(kind: &str, name: &str) -> InventoryEntry {
    InventoryEntry {
        api_version: if kind == "ConfigMap" { "v1" } else { "apps/v1" }.into(),
        kind: kind.into(),
        namespace: Some(NS.into()),
        name: name.into(),
        adopted: false,
    }
}

/// A pod template labelled as bosun labels what it applies, so the ReplicaSets,
/// ControllerRevisions and Pods made from it land in the caches.
fn template(app: &str, container: &str, image: &str, annotations: Value) -> Value {
    json!({
        "metadata": {
            "labels": {"app": app, APP_LABEL: APP},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": container, "image": image}]}
    })
}

fn deployment(image: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "backend", "namespace": NS, "labels": {APP_LABEL: APP}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "backend"}},
            "template": template("backend", "api", image, annotations)
        }
    })
}

fn config_map(greeting: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "backend-config", "namespace": NS, "labels": {APP_LABEL: APP}},
        "data": {"greeting": greeting}
    })
}

fn stateful_set(image: &str, partition: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS, "labels": {APP_LABEL: APP}},
        "spec": {
            "replicas": 2, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
            "template": template("db", "postgres", image, json!({}))
        }
    })
}

fn daemon_set(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NS, "labels": {APP_LABEL: APP}},
        "spec": {
            // Pods count as available 2 s after they are ready: a rollout the gate
            // must be seen waiting for, however fast the simulator is.
            "minReadySeconds": 2,
            "selector": {"matchLabels": {"app": "agent"}},
            "template": template("agent", "agent", image, json!({}))
        }
    })
}

fn images(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| c.image.clone())
        .collect()
}

/// The rules the gate had before (and a Deployment's ReplicaSets): fail fast on a
/// crash-looping or unpullable current revision, ignore the pods of older ReplicaSets.
#[tokio::test(flavor = "multi_thread")]
async fn deployment_gate_judges_the_current_replica_set_only() {
    let cluster = Cluster::start().await;
    let backend = entry("Deployment", "backend");
    let missing = Revision {
        inventory: vec![backend.clone()],
        baseline: RestartBaseline::default(),
        applied_at: applied_now(),
    };
    assert_eq!(
        missing.verdict(&cluster.stores),
        WorkloadVerdict::pending("Deployment shop/backend: not found")
    );

    // A first revision whose pods all crash-loop fails fast.
    let crashing = cluster
        .apply_workload::<Deployment>(&backend, deployment("backend:crashloop", json!({})))
        .await;
    let failed = cluster.until(&crashing, Verdict::Failed).await;
    assert!(
        failed
            .message
            .starts_with("Deployment shop/backend: pod backend-")
            && failed.message.contains("container api: CrashLoopBackOff"),
        "{failed:?}"
    );

    // The next revision's pods never become ready, so with maxUnavailable 0 the
    // Deployment controller keeps the crash-looping pods around: they belong to an
    // old ReplicaSet now and must not fail the gate.
    let not_ready = cluster
        .apply_workload::<Deployment>(&backend, deployment("backend:v2-notready", json!({})))
        .await;
    let start = Instant::now();
    loop {
        let images = images(&cluster.pods("app=backend").await);
        if images.iter().filter(|i| i.contains("crashloop")).count() == 2
            && images.iter().any(|i| i.contains("notready"))
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "pods never matched: {images:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.until(&not_ready, Verdict::Pending).await;
    cluster.holds(&not_ready, Verdict::Pending, 5).await;

    let healthy = cluster
        .apply_workload::<Deployment>(&backend, deployment("backend:v1", json!({})))
        .await;
    let (_, passed) = cluster.until_passed_without_failing(&healthy).await;
    assert_eq!(passed.message, "1 workload rolled out");

    // A crash-looping and an unpullable update of a healthy Deployment fail fast.
    for (image, reason) in [
        ("backend:crashloop", "CrashLoopBackOff"),
        ("backend:errimagepull", "ErrImagePull"),
    ] {
        let bad = cluster
            .apply_workload::<Deployment>(&backend, deployment(image, json!({})))
            .await;
        let failed = cluster.until(&bad, Verdict::Failed).await;
        assert!(failed.message.contains(reason), "{failed:?}");
        // Rolling back to the healthy template passes again.
        let rollback = cluster
            .apply_workload::<Deployment>(&backend, deployment("backend:v1", json!({})))
            .await;
        cluster.until_passed_without_failing(&rollback).await;
    }
}

/// (a) Pods that restarted 10 times and were OOM-killed last month do not fail a
/// ConfigMap-only revision; a restart of theirs after the apply does.
#[tokio::test(flavor = "multi_thread")]
async fn history_from_before_the_apply_does_not_fail_a_config_only_revision() {
    let cluster = Cluster::start().await;
    let inventory = vec![
        entry("ConfigMap", "backend-config"),
        entry("Deployment", "backend"),
    ];
    let history = json!({
        "sim.bosun.dev/restarts": "10",
        "sim.bosun.dev/last-termination": "OOMKilled@2026-01-01T00:00:00Z",
    });

    // Revision 1 creates the pods: their restarts all happened under it, so it fails.
    let first_baseline = capture_baseline(&cluster.stores, &inventory);
    apply(&cluster.api::<ConfigMap>(), "backend-config", config_map("hello")).await;
    apply::<Deployment>(&cluster.api(), "backend", deployment("backend:v1", history)).await;
    let first = Revision {
        inventory: inventory.clone(),
        baseline: first_baseline,
        applied_at: applied_now(),
    };
    let failed = cluster.until(&first, Verdict::Failed).await;
    assert!(
        failed
            .message
            .ends_with("container api: restarted 10 times (more than 3)"),
        "{failed:?}"
    );
    // Wait for the rollout as such (both pods ready, with their history).
    let start = Instant::now();
    loop {
        let deploy = deployment_ready(&cluster.stores, "backend");
        let restarted = cluster
            .stores
            .pods
            .state()
            .iter()
            .filter(|pod| restart_count(pod) == Some(10))
            .count();
        if deploy && restarted == 2 {
            break;
        }
        assert!(start.elapsed() < WAIT, "rollout never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Revision 2 changes only the ConfigMap. Baseline before the apply, appliedAt after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = capture_baseline(&cluster.stores, &inventory);
    assert_eq!(baseline.pods.len(), 2, "{baseline:?}");
    assert!(
        baseline
            .pods
            .values()
            .all(|containers| containers.get("api") == Some(&10))
    );
    apply(
        &cluster.api::<ConfigMap>(),
        "backend-config",
        config_map("hello again"),
    )
    .await;
    let config_only = Revision {
        inventory: inventory.clone(),
        baseline,
        applied_at: applied_now(),
    };
    let passed = cluster.until(&config_only, Verdict::Passed).await;
    assert_eq!(passed.message, "1 workload rolled out");
    cluster.holds(&config_only, Verdict::Passed, 10).await;
    // What the gate said before baselines: lifetime restarts and an old OOM kill fail.
    let without_baseline = Revision {
        inventory: inventory.clone(),
        baseline: RestartBaseline::default(),
        applied_at: Timestamp::UNIX_EPOCH,
    };
    assert_eq!(without_baseline.verdict(&cluster.stores).verdict, Verdict::Failed);

    // One of the same pods restarts 4 more times after the apply (annotated live: the
    // Deployment is untouched, so no new pods).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod_name = cluster.pods("app=backend").await[0].name_any();
    let crashed_at = Timestamp::now().round(Unit::Second).expect("rounds");
    cluster
        .api::<Pod>()
        .patch(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "sim.bosun.dev/restarts": "14",
                "sim.bosun.dev/last-termination": format!("Error@{crashed_at}"),
            }}})),
        )
        .await
        .expect("annotate pod");
    let failed = cluster.until(&config_only, Verdict::Failed).await;
    assert_eq!(
        failed.message,
        format!(
            "Deployment shop/backend: pod {pod_name} container api: restarted 4 times since the revision was applied (more than 3; 10 before)"
        )
    );
}

/// (b) A StatefulSet rolled by the real StatefulSet controller: pending, then passed;
/// with a partition, passed once the pods above it are updated; a crash-looping
/// image fails.
#[tokio::test(flavor = "multi_thread")]
async fn stateful_set_rollouts_as_kubectl_judges_them() {
    let cluster = Cluster::start().await;
    let db = entry("StatefulSet", "db");

    let first = cluster
        .apply_workload::<StatefulSet>(&db, stateful_set("postgres:16", 0))
        .await;
    let (_, passed) = cluster.until_passed_without_failing(&first).await;
    assert_eq!(passed.message, "1 workload rolled out");

    let update = cluster
        .apply_workload::<StatefulSet>(&db, stateful_set("postgres:17", 0))
        .await;
    let (waiting, _) = cluster.until_passed_without_failing(&update).await;
    assert!(!waiting.is_empty(), "the rolling update was never seen pending");
    eprintln!("pending on the way: {waiting:?}");
    assert!(
        images(&cluster.pods("app=db").await)
            .iter()
            .all(|image| image == "postgres:17")
    );

    // Partition 1: only db-1 moves to postgres:18; db-0 stays on purpose.
    let partitioned = cluster
        .apply_workload::<StatefulSet>(&db, stateful_set("postgres:18", 1))
        .await;
    let (waiting, _) = cluster.until_passed_without_failing(&partitioned).await;
    assert!(
        !waiting.is_empty(),
        "the partitioned update was never seen pending"
    );
    // Passed although the StatefulSet as a whole is not at one revision: as kubectl.
    let status = cluster
        .stores
        .stateful_set(NS, "db")
        .and_then(|sts| sts.status.clone())
        .expect("status");
    assert_eq!(status.updated_replicas, Some(1), "{status:?}");
    assert_ne!(status.current_revision, status.update_revision, "{status:?}");
    let pods = cluster.pods("app=db").await;
    let image_of = |name: &str| {
        let pod = pods.iter().find(|p| p.name_any() == name).expect("pod exists");
        images(std::slice::from_ref(pod))
    };
    assert_eq!(image_of("db-1"), ["postgres:18"]);
    assert_eq!(image_of("db-0"), ["postgres:17"]);

    // A crash-looping image: the controller replaces db-1 first, and it never starts.
    let crashing = cluster
        .apply_workload::<StatefulSet>(&db, stateful_set("postgres:crashloop", 0))
        .await;
    let failed = cluster.until(&crashing, Verdict::Failed).await;
    assert!(
        failed
            .message
            .starts_with("StatefulSet shop/db: pod db-1 container postgres: CrashLoopBackOff"),
        "{failed:?}"
    );
}

/// (c) A DaemonSet on one (fake, Ready) Node: passed after the rollout; an image
/// change is pending, then passed.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_set_rolls_out_on_a_node() {
    let cluster = Cluster::start().await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            }))
            .expect("node"),
        )
        .await
        .expect("create node");
    let now = Timestamp::now().round(Unit::Second).expect("rounds").to_string();
    nodes
        .patch_status(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "simulated", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .expect("node Ready");
    // The API server's TaintNodesByCondition admission gives every new Node the taint
    // node.kubernetes.io/not-ready:NoSchedule, which DaemonSet pods do not tolerate.
    // The node lifecycle controller removes it once the Node is Ready; that controller
    // is off on this control plane (no kubelets to watch), so the test does its part.
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .expect("untaint node");

    let agent = entry("DaemonSet", "agent");
    let first = cluster
        .apply_workload::<DaemonSet>(&agent, daemon_set("agent:1"))
        .await;
    let desired = |stores: &WorkloadStores| {
        let ds = stores.daemon_set(NS, "agent")?;
        Some(ds.status.as_ref()?.desired_number_scheduled)
    };
    // Passed with no node to run on is right too; wait for the pass with the node.
    cluster
        .poll(
            &first,
            |v| assert_ne!(v.verdict, Verdict::Failed, "{v:?}"),
            |v| v.verdict == Verdict::Passed && desired(&cluster.stores) == Some(1),
        )
        .await;
    assert_eq!(images(&cluster.pods("app=agent").await), ["agent:1"]);

    let update = cluster
        .apply_workload::<DaemonSet>(&agent, daemon_set("agent:2"))
        .await;
    let (waiting, _) = cluster.until_passed_without_failing(&update).await;
    eprintln!("pending on the way: {waiting:?}");
    assert!(
        waiting
            .iter()
            .any(|v| v.message == "DaemonSet shop/agent: 0 of 1 pods available"),
        "the rollout was never seen waiting for availability"
    );
    assert_eq!(images(&cluster.pods("app=agent").await), ["agent:2"]);

    let crashing = cluster
        .apply_workload::<DaemonSet>(&agent, daemon_set("agent:crashloop"))
        .await;
    let failed = cluster.until(&crashing, Verdict::Failed).await;
    assert!(
        failed.message.starts_with("DaemonSet shop/agent: pod agent-")
            && failed.message.contains("container agent: CrashLoopBackOff"),
        "{failed:?}"
    );
}

fn restart_count(pod: &Pod) -> Option<i32> {
    Some(
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .restart_count,
    )
}

/// Whether the cache shows the Deployment with both replicas updated and available.
fn deployment_ready(stores: &WorkloadStores, name: &str) -> bool {
    stores.deployment(NS, name).is_some_and(|deploy| {
        let status = deploy.status.clone().unwrap_or_default();
        status.available_replicas == Some(2) && status.updated_replicas == Some(2)
    })
}
