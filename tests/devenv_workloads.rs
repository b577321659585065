//! Workloads that need Nodes on the local control plane: a DaemonSet on fake
//! Nodes, a StatefulSet rolled out in order and rolled again, and the graceful
//! deletion of a Pod bound to a Node, which the pod simulator confirms.

mod support;

use std::time::Duration;

use bosun_devenv::{ControlPlane, ControlPlaneOptions, PodSimulator};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{eventually, init_tracing};

const WAIT: Duration = Duration::from_secs(90);
const NS: &str = "workloads";

async fn apply<K>(api: &Api<K>, object: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
    let params = PatchParams::apply("bosun-test").force();
    Ok(api.patch(&name, &params, &Patch::Apply(&object)).await?)
}

fn pod_template(app: &str, image: &str) -> serde_json::Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": { "containers": [{ "name": "main", "image": image }] }
    })
}

fn daemon_set(image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "agent" },
        "spec": {
            "selector": { "matchLabels": { "app": "agent" } },
            "template": pod_template("agent", image),
        }
    })
}

fn stateful_set(image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "db" },
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": { "matchLabels": { "app": "db" } },
            "template": pod_template("db", image),
        }
    })
}

fn images(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|pod| {
            pod.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default()
        })
        .collect()
}

/// The DaemonSet's status once its rollout of the current generation is done.
async fn daemon_set_rolled_out(daemon_sets: &Api<DaemonSet>) -> anyhow::Result<()> {
    eventually("DaemonSet agent to roll out", WAIT, || async {
        let daemon_set = daemon_sets.get("agent").await?;
        let status = daemon_set.status.unwrap_or_default();
        let done = status.observed_generation == daemon_set.metadata.generation
            && status.desired_number_scheduled == 2
            && status.updated_number_scheduled == Some(2)
            && status.number_available == Some(status.desired_number_scheduled);
        Ok(done.then_some(()))
    })
    .await
}

/// Waits until the StatefulSet runs `image` on both replicas, Ready, with one
/// revision current.
async fn stateful_set_rolled_out(
    stateful_sets: &Api<StatefulSet>,
    pods: &Api<Pod>,
    image: &str,
) -> anyhow::Result<()> {
    eventually(&format!("StatefulSet db to roll out {image}"), WAIT, || async {
        let stateful_set = stateful_sets.get("db").await?;
        let status = stateful_set.status.unwrap_or_default();
        let pods = pods.list(&ListParams::default().labels("app=db")).await?.items;
        let done = status.observed_generation == stateful_set.metadata.generation
            && status.ready_replicas == Some(2)
            && status.updated_replicas == Some(2)
            && status.update_revision.is_some()
            && status.update_revision == status.current_revision
            && images(&pods) == [image, image];
        Ok(done.then_some(()))
    })
    .await
}

#[tokio::test]
async fn daemon_and_stateful_sets_roll_out_on_fake_nodes() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let _simulator = PodSimulator::start(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }),
    )
    .await?;
    for name in ["node-a", "node-b"] {
        let node = control_plane.register_node(name).await?;
        let ready = node
            .status
            .unwrap()
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status).as_deref(), Some("True"), "Node {name}");
    }
    assert_eq!(
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        2
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // A DaemonSet places one Pod per Node (pinned by node affinity: 1.20's
    // controller leaves binding to a scheduler) and becomes available.
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    apply(&daemon_sets, daemon_set("example/agent:1")).await?;
    daemon_set_rolled_out(&daemon_sets).await?;
    let agents = pods.list(&ListParams::default().labels("app=agent")).await?.items;
    let mut targets: Vec<String> = agents.iter().map(target_node).collect();
    targets.sort();
    assert_eq!(targets, ["node-a", "node-b"]);
    // A new image rolls out to both Nodes.
    apply(&daemon_sets, daemon_set("example/agent:2")).await?;
    daemon_set_rolled_out(&daemon_sets).await?;
    eventually("the old agents to be gone", WAIT, || async {
        let agents = pods.list(&ListParams::default().labels("app=agent")).await?.items;
        Ok((images(&agents) == ["example/agent:2", "example/agent:2"]).then_some(()))
    })
    .await?;

    // A StatefulSet starts its Pods in order: db-1 only once db-0 is Ready.
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    apply(&stateful_sets, stateful_set("example/db:1")).await?;
    stateful_set_rolled_out(&stateful_sets, &pods, "example/db:1").await?;
    let writes = control_plane.audit_writes().await?;
    let position = |verb: &str, name: &str, subresource: Option<&str>| {
        writes
            .iter()
            .position(|w| {
                w.verb == verb
                    && w.resource == "pods"
                    && w.namespace.as_deref() == Some(NS)
                    && w.name.as_deref() == Some(name)
                    && w.subresource.as_deref() == subresource
            })
            .unwrap_or_else(|| panic!("no {verb} of pod {name} {subresource:?} in the audit log"))
    };
    let db0_created = position("create", "db-0", None);
    let db0_ready = position("patch", "db-0", Some("status"));
    let db1_created = position("create", "db-1", None);
    assert!(
        db0_created < db0_ready && db0_ready < db1_created,
        "{db0_created} {db0_ready} {db1_created}"
    );
    // A new image rolls both Pods, and the new revision becomes current.
    let before = stateful_sets.get("db").await?.status.unwrap().current_revision;
    apply(&stateful_sets, stateful_set("example/db:2")).await?;
    stateful_set_rolled_out(&stateful_sets, &pods, "example/db:2").await?;
    let after = stateful_sets.get("db").await?.status.unwrap().current_revision;
    assert_ne!(before, after);

    // A Pod bound to a Node is deleted gracefully: the API server keeps it, marked,
    // until the pod simulator confirms as the node's kubelet would.
    let bound = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "bound" },
        "spec": { "nodeName": "node-a", "containers": [{ "name": "main", "image": "example/ok:1" }] }
    });
    pods.create(&PostParams::default(), &serde_json::from_value(bound)?)
        .await?;
    eventually("the bound Pod to be Ready", WAIT, || async {
        let pod = pods.get("bound").await?;
        let ready = pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then_some(()))
    })
    .await?;
    let deleting = pods.delete("bound", &DeleteParams::default()).await?;
    let marked = deleting
        .left()
        .expect("a graceful deletion returns the Pod, still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    eventually("the bound Pod to be gone", Duration::from_secs(15), || async {
        Ok(pods.get_opt("bound").await?.is_none().then_some(()))
    })
    .await?;
    let confirmed = control_plane
        .audit_writes()
        .await?
        .into_iter()
        .filter(|w| w.verb == "delete" && w.name.as_deref() == Some("bound"))
        .count();
    assert_eq!(
        confirmed, 2,
        "the test's deletion and the simulator's confirmation"
    );
    Ok(())
}

/// The Node a daemon Pod is meant for: its `spec.nodeName`, else the node
/// affinity the DaemonSet controller pins it with (`metadata.name` In [node]).
fn target_node(pod: &Pod) -> String {
    let spec = pod.spec.as_ref().unwrap();
    if let Some(node) = spec.node_name.clone() {
        return node;
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|s| s.node_selector_terms.clone())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| t.match_fields.clone().unwrap_or_default())
        .find(|f| f.key == "metadata.name")
        .and_then(|f| f.values.and_then(|v| v.into_iter().next()))
        .unwrap_or_else(|| panic!("Pod {} has no target node", pod.name_any()))
}
