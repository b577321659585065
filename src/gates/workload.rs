//! The workload gate (always on): every Deployment, StatefulSet and DaemonSet of the
//! revision reaches its rollout, and fails fast — in seconds, not after
//! `progressDeadlineSeconds` — when a pod of the *current* revision cannot start.
//!
//! Pods of older ReplicaSets / revisions are ignored on purpose: during a rollback the
//! crash-looping pods being replaced must not fail the revision that replaces them.
//!
//! The `evaluate_*` functions are pure (objects in, verdict out); [`check_workloads`]
//! reads the objects from the API server.

use super::truncate;
use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::core::Selector;

use crate::api::{GateVerdict, InventoryEntry, Verdict};

/// Name under which the workload gate appears in `status.history[].gates`.
pub const WORKLOAD_GATE_NAME: &str = "workload";

/// Waiting reasons that do not resolve by waiting: the pod will not start as it is.
const FAILING_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const CONTROLLER_REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Longest kubelet message quoted in a verdict (image pull messages can be long).
const MAX_DETAIL_CHARS: usize = 160;

/// The workload gate's answer for one workload, or for all of them combined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadVerdict {
    pub verdict: Verdict,
    pub message: String,
}

impl WorkloadVerdict {
    pub fn passed(message: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Passed,
            message: message.into(),
        }
    }
    pub fn pending(message: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pending,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Failed,
            message: message.into(),
        }
    }
}

impl From<WorkloadVerdict> for GateVerdict {
    fn from(workload: WorkloadVerdict) -> Self {
        GateVerdict {
            name: WORKLOAD_GATE_NAME.into(),
            verdict: workload.verdict,
            message: Some(workload.message),
        }
    }
}

/// Rollout state of a Deployment, judged on the pods of its current ReplicaSet only.
pub fn evaluate_deployment(
    deploy: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    max_restarts: i32,
) -> WorkloadVerdict {
    let id = workload_id("Deployment", &deploy.metadata);
    let Some(status) = deploy.status.as_ref() else {
        return WorkloadVerdict::pending(format!("{id}: waiting for the Deployment controller"));
    };
    let generation = deploy.metadata.generation.unwrap_or(0);
    // Until the controller has seen this generation its status (and revision
    // annotation) describe the previous template.
    if status.observed_generation.unwrap_or(0) < generation {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the Deployment controller to observe generation {generation}"
        ));
    }
    let Some(current) = current_replica_set(deploy, replica_sets) else {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the Deployment controller to create the new ReplicaSet"
        ));
    };
    let current_pods = pods.iter().filter(|pod| pod_of_replica_set(pod, current));
    if let Some(failure) = first_pod_failure(current_pods, max_restarts) {
        return WorkloadVerdict::failed(format!("{id}: {failure}"));
    }

    let desired = deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let waiting = if updated < desired {
        Some(format!("{updated} of {desired} replicas updated"))
    } else if total > updated {
        Some(format!("{} old replicas pending termination", total - updated))
    } else if available < updated {
        Some(format!("{available} of {updated} updated replicas available"))
    } else {
        None
    };
    match waiting {
        None => WorkloadVerdict::passed(format!("{id}: rolled out ({desired} replicas)")),
        Some(waiting) => match progress_deadline_exceeded(deploy) {
            // Only an unfinished rollout can be past its deadline; a stale condition
            // on a completed one is ignored above.
            Some(detail) => {
                WorkloadVerdict::failed(format!("{id}: progress deadline exceeded ({waiting}){detail}"))
            }
            None => WorkloadVerdict::pending(format!("{id}: {waiting}")),
        },
    }
}

/// Rollout state of a StatefulSet, judged on the pods of its update revision only.
pub fn evaluate_stateful_set(sts: &StatefulSet, pods: &[Pod], max_restarts: i32) -> WorkloadVerdict {
    let id = workload_id("StatefulSet", &sts.metadata);
    let Some(status) = sts.status.as_ref() else {
        return WorkloadVerdict::pending(format!("{id}: waiting for the StatefulSet controller"));
    };
    let generation = sts.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the StatefulSet controller to observe generation {generation}"
        ));
    }
    let Some(update_revision) = status.update_revision.as_deref() else {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the StatefulSet controller to record the update revision"
        ));
    };
    // StatefulSet pods carry the full ControllerRevision name in this label.
    let current_pods = pods.iter().filter(|pod| {
        owned_by(&pod.metadata, "StatefulSet", &sts.metadata)
            && label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(update_revision)
    });
    if let Some(failure) = first_pod_failure(current_pods, max_restarts) {
        return WorkloadVerdict::failed(format!("{id}: {failure}"));
    }

    let spec = sts.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if ready < desired {
        return WorkloadVerdict::pending(format!("{id}: {ready} of {desired} replicas ready"));
    }
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        // Pods change only when someone deletes them: nothing more to wait for.
        return WorkloadVerdict::passed(format!(
            "{id}: {ready} replicas ready (OnDelete: pods update when deleted)"
        ));
    }
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        let expected = (desired - partition).max(0);
        if updated < expected {
            return WorkloadVerdict::pending(format!(
                "{id}: {updated} of {expected} replicas above partition {partition} updated"
            ));
        }
    } else if status.current_revision.as_deref() != Some(update_revision) {
        return WorkloadVerdict::pending(format!("{id}: {updated} of {desired} replicas updated"));
    }
    WorkloadVerdict::passed(format!("{id}: rolled out ({desired} replicas)"))
}

/// Rollout state of a DaemonSet. `revisions` are ControllerRevisions of its namespace:
/// the newest one it owns says which pods are current; without one, all its pods count.
pub fn evaluate_daemon_set(
    ds: &DaemonSet,
    revisions: &[ControllerRevision],
    pods: &[Pod],
    max_restarts: i32,
) -> WorkloadVerdict {
    let id = workload_id("DaemonSet", &ds.metadata);
    let Some(status) = ds.status.as_ref() else {
        return WorkloadVerdict::pending(format!("{id}: waiting for the DaemonSet controller"));
    };
    let generation = ds.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the DaemonSet controller to observe generation {generation}"
        ));
    }
    let current_hash = revisions
        .iter()
        .filter(|r| owned_by(&r.metadata, "DaemonSet", &ds.metadata))
        .max_by_key(|r| r.revision)
        .and_then(|r| label(&r.metadata, CONTROLLER_REVISION_HASH_LABEL));
    let current_pods = pods.iter().filter(|pod| {
        owned_by(&pod.metadata, "DaemonSet", &ds.metadata)
            && current_hash
                .is_none_or(|hash| label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(hash))
    });
    if let Some(failure) = first_pod_failure(current_pods, max_restarts) {
        return WorkloadVerdict::failed(format!("{id}: {failure}"));
    }

    let desired = status.desired_number_scheduled;
    if desired == 0 {
        return WorkloadVerdict::passed(format!("{id}: no nodes to schedule on"));
    }
    let on_delete = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if !on_delete && updated < desired {
        return WorkloadVerdict::pending(format!("{id}: {updated} of {desired} updated pods scheduled"));
    }
    if available < desired {
        return WorkloadVerdict::pending(format!("{id}: {available} of {desired} pods available"));
    }
    WorkloadVerdict::passed(format!("{id}: rolled out on {desired} nodes"))
}

/// Why this pod of the current revision will not become healthy by waiting, if so:
/// e.g. `pod backend-7d9-abc container api: CrashLoopBackOff (restarts 4)`.
pub fn pod_failure(pod: &Pod, max_restarts: i32) -> Option<String> {
    let status = pod.status.as_ref()?;
    let pod_name = pod.metadata.name.as_deref().unwrap_or("<unnamed>");
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|c| ("init container", c));
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| ("container", c));
    init.chain(main).find_map(|(what, container)| {
        container_failure(container, max_restarts)
            .map(|failure| format!("pod {pod_name} {what} {}: {failure}", container.name))
    })
}

fn container_failure(container: &ContainerStatus, max_restarts: i32) -> Option<String> {
    let restarts = container.restart_count;
    let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
    if let Some(waiting) = waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if FAILING_WAITING_REASONS.contains(&reason) {
            // The back-off message only repeats the reason; the others (image name,
            // missing Secret or key) say what to fix.
            let detail = match waiting.message.as_deref() {
                Some(message) if reason != "CrashLoopBackOff" && !message.is_empty() => {
                    format!(": {}", truncate(message, MAX_DETAIL_CHARS))
                }
                _ => String::new(),
            };
            return Some(format!("{reason} (restarts {restarts}){detail}"));
        }
    }
    let oom_killed = [container.state.as_ref(), container.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|state| state.terminated.as_ref())
        .any(|terminated| terminated.reason.as_deref() == Some("OOMKilled"));
    if oom_killed {
        return Some(format!("OOMKilled (restarts {restarts})"));
    }
    if restarts > max_restarts {
        return Some(format!("restarted {restarts} times (more than {max_restarts})"));
    }
    None
}

/// All workloads' verdicts as one: the first failure, else the first thing still
/// waiting, else passed.
pub fn combine(verdicts: impl IntoIterator<Item = WorkloadVerdict>) -> WorkloadVerdict {
    let mut passed = 0usize;
    let mut pending: Vec<WorkloadVerdict> = Vec::new();
    for verdict in verdicts {
        match verdict.verdict {
            Verdict::Failed => return verdict,
            Verdict::Pending => pending.push(verdict),
            Verdict::Passed => passed += 1,
        }
    }
    let more = pending.len().saturating_sub(1);
    match pending.into_iter().next() {
        Some(first) if more == 0 => first,
        Some(first) => WorkloadVerdict::pending(format!("{} (and {more} more waiting)", first.message)),
        None if passed == 0 => WorkloadVerdict::passed("no workloads to check"),
        None if passed == 1 => WorkloadVerdict::passed("1 workload rolled out"),
        None => WorkloadVerdict::passed(format!("{passed} workloads rolled out")),
    }
}

/// Reads every Deployment, StatefulSet and DaemonSet of `workloads` (other kinds are
/// ignored) with their ReplicaSets / revisions and pods, and judges them together.
/// A workload that is missing or cannot be read counts as pending, not failed: the
/// verify window decides how long that may last.
pub async fn check_workloads(
    client: &Client,
    workloads: &[InventoryEntry],
    max_restarts: i32,
) -> WorkloadVerdict {
    let checks = workloads
        .iter()
        .filter(|entry| api_group(&entry.api_version) == "apps")
        .filter_map(|entry| {
            let namespace = entry.namespace.as_deref();
            let name = entry.name.as_str();
            match entry.kind.as_str() {
                "Deployment" | "StatefulSet" | "DaemonSet" => {
                    Some(check_one(client, &entry.kind, namespace, name, max_restarts))
                }
                _ => None,
            }
        });
    combine(join_all(checks).await)
}

async fn check_one(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    max_restarts: i32,
) -> WorkloadVerdict {
    let namespace = namespace.unwrap_or(client.default_namespace());
    let id = format!("{kind} {namespace}/{name}");
    let result = match kind {
        "Deployment" => check_deployment(client, namespace, name, max_restarts).await,
        "StatefulSet" => check_stateful_set(client, namespace, name, max_restarts).await,
        _ => check_daemon_set(client, namespace, name, max_restarts).await,
    };
    match result {
        Ok(Some(verdict)) => verdict,
        Ok(None) => WorkloadVerdict::pending(format!("{id}: not found")),
        Err(error) => WorkloadVerdict::pending(format!("{id}: cannot read it yet: {error}")),
    }
}

async fn check_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
    max_restarts: i32,
) -> Result<Option<WorkloadVerdict>, ReadError> {
    let Some(deploy) = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let selector = deploy.spec.as_ref().map(|s| &s.selector);
    let params = list_params(selector)?;
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?;
    Ok(Some(evaluate_deployment(
        &deploy,
        &replica_sets.items,
        &pods.items,
        max_restarts,
    )))
}

async fn check_stateful_set(
    client: &Client,
    namespace: &str,
    name: &str,
    max_restarts: i32,
) -> Result<Option<WorkloadVerdict>, ReadError> {
    let Some(sts) = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let params = list_params(sts.spec.as_ref().map(|s| &s.selector))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?;
    Ok(Some(evaluate_stateful_set(&sts, &pods.items, max_restarts)))
}

async fn check_daemon_set(
    client: &Client,
    namespace: &str,
    name: &str,
    max_restarts: i32,
) -> Result<Option<WorkloadVerdict>, ReadError> {
    let Some(ds) = Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let params = list_params(ds.spec.as_ref().map(|s| &s.selector))?;
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?;
    Ok(Some(evaluate_daemon_set(
        &ds,
        &revisions.items,
        &pods.items,
        max_restarts,
    )))
}

/// Why a workload's objects could not be read; reported as "pending", never fatal.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("spec.selector: {0}")]
    Selector(#[from] kube::core::ParseExpressionError),
}

fn list_params(selector: Option<&LabelSelector>) -> Result<ListParams, ReadError> {
    let selector = Selector::try_from(selector.cloned().unwrap_or_default())?;
    Ok(ListParams::default().labels_from(&selector))
}

/// `apps` for `apps/v1`, `` for `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// The ReplicaSet the Deployment controller is rolling out: owned by the Deployment
/// and carrying the Deployment's revision number.
fn current_replica_set<'a>(deploy: &Deployment, replica_sets: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let revision = annotation(&deploy.metadata, REVISION_ANNOTATION)?;
    replica_sets.iter().find(|rs| {
        owned_by(&rs.metadata, "Deployment", &deploy.metadata)
            && annotation(&rs.metadata, REVISION_ANNOTATION) == Some(revision)
    })
}

fn pod_of_replica_set(pod: &Pod, rs: &ReplicaSet) -> bool {
    owned_by(&pod.metadata, "ReplicaSet", &rs.metadata)
        || label(&rs.metadata, POD_TEMPLATE_HASH_LABEL)
            .is_some_and(|hash| label(&pod.metadata, POD_TEMPLATE_HASH_LABEL) == Some(hash))
}

fn progress_deadline_exceeded(deploy: &Deployment) -> Option<String> {
    let conditions = deploy.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .map(|c| match c.message.as_deref() {
            Some(message) if !message.is_empty() => {
                format!(": {}", truncate(message, MAX_DETAIL_CHARS))
            }
            _ => String::new(),
        })
}

fn first_pod_failure<'a>(pods: impl Iterator<Item = &'a Pod>, max_restarts: i32) -> Option<String> {
    let mut pods: Vec<&Pod> = pods.collect();
    // Deterministic across list orders: the same failure is reported each round.
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods.into_iter().find_map(|pod| pod_failure(pod, max_restarts))
}

/// Whether `owner` (of `kind`) is among the object's owner references; by uid when
/// both sides have one, else by name.
fn owned_by(meta: &ObjectMeta, kind: &str, owner: &ObjectMeta) -> bool {
    meta.owner_references.iter().flatten().any(|reference| {
        reference.kind == kind
            && match owner.uid.as_deref() {
                Some(uid) if !reference.uid.is_empty() => reference.uid == uid,
                _ => Some(reference.name.as_str()) == owner.name.as_deref(),
            }
    })
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    lookup(meta.labels.as_ref(), key)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    lookup(meta.annotations.as_ref(), key)
}

fn lookup<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(String::as_str)
}

fn workload_id(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_RESTARTS: i32 = 3;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
    }

    /// A Deployment `shop/backend` at generation 2, revision 2, with the given status.
    fn deployment(observed: i64, replicas: i32, updated: i32, total: i32, available: i32) -> Deployment {
        parse(&format!(
            r#"
metadata:
  name: backend
  namespace: shop
  uid: deploy-uid
  generation: 2
  annotations:
    deployment.kubernetes.io/revision: "2"
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: backend}}
  template:
    metadata:
      labels: {{app: backend}}
    spec:
      containers: [{{name: api, image: backend:v2}}]
status:
  observedGeneration: {observed}
  replicas: {total}
  updatedReplicas: {updated}
  availableReplicas: {available}
"#
        ))
    }

    fn replica_set(name: &str, hash: &str, revision: &str) -> ReplicaSet {
        parse(&format!(
            r#"
metadata:
  name: {name}
  namespace: shop
  uid: {name}-uid
  labels: {{app: backend, pod-template-hash: "{hash}"}}
  annotations:
    deployment.kubernetes.io/revision: "{revision}"
  ownerReferences:
  - {{apiVersion: apps/v1, kind: Deployment, name: backend, uid: deploy-uid, controller: true}}
spec:
  selector:
    matchLabels: {{app: backend, pod-template-hash: "{hash}"}}
"#
        ))
    }

    /// The old (revision 1, crash-looping) and current (revision 2) ReplicaSets.
    fn replica_sets() -> Vec<ReplicaSet> {
        vec![
            replica_set("backend-old", "old", "1"),
            replica_set("backend-7d9", "7d9", "2"),
        ]
    }

    /// A pod owned by ReplicaSet `backend-{hash}` whose only container `api` has this
    /// status (YAML mapping fields of a ContainerStatus, indented for the list item).
    fn pod(name: &str, hash: &str, container_status: &str) -> Pod {
        parse(&format!(
            r#"
metadata:
  name: {name}
  namespace: shop
  labels: {{app: backend, pod-template-hash: "{hash}"}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: backend-{hash}, uid: backend-{hash}-uid, controller: true}}
status:
  phase: Running
  containerStatuses:
  - name: api
    image: backend:v2
    imageID: ""
    ready: false
{container_status}
"#
        ))
    }

    fn running(restarts: i32) -> String {
        format!(
            "    restartCount: {restarts}\n    state: {{running: {{startedAt: \"2024-01-01T00:00:00Z\"}}}}"
        )
    }

    fn waiting(reason: &str, restarts: i32) -> String {
        format!(
            "    restartCount: {restarts}\n    state: {{waiting: {{reason: {reason}, message: \"detail for {reason}\"}}}}"
        )
    }

    fn complete() -> Deployment {
        deployment(2, 2, 2, 2, 2)
    }

    #[test]
    fn complete_rollout_with_running_pods_passes() {
        let pods = [
            pod("backend-7d9-a", "7d9", &running(0)),
            pod("backend-7d9-b", "7d9", &running(1)),
        ];
        let verdict = evaluate_deployment(&complete(), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(
            verdict,
            WorkloadVerdict::passed("Deployment shop/backend: rolled out (2 replicas)")
        );
    }

    #[test]
    fn unobserved_generation_is_pending_even_with_crashing_pods() {
        // The revision annotation still names the previous ReplicaSet until the
        // controller observes the new generation; its pods must not be judged.
        let pods = [pod("backend-7d9-a", "7d9", &waiting("CrashLoopBackOff", 5))];
        let verdict = evaluate_deployment(&deployment(1, 2, 2, 2, 2), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Pending);
        assert!(
            verdict.message.contains("observe generation 2"),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn missing_status_is_pending() {
        let mut deploy = complete();
        deploy.status = None;
        let verdict = evaluate_deployment(&deploy, &replica_sets(), &[], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Pending);
    }

    #[test]
    fn too_few_updated_replicas_is_pending() {
        let verdict = evaluate_deployment(&deployment(2, 2, 1, 2, 1), &replica_sets(), &[], MAX_RESTARTS);
        assert_eq!(
            verdict,
            WorkloadVerdict::pending("Deployment shop/backend: 1 of 2 replicas updated")
        );
    }

    #[test]
    fn old_replicas_left_is_pending() {
        let verdict = evaluate_deployment(&deployment(2, 2, 2, 3, 2), &replica_sets(), &[], MAX_RESTARTS);
        assert_eq!(
            verdict,
            WorkloadVerdict::pending("Deployment shop/backend: 1 old replicas pending termination")
        );
    }

    #[test]
    fn unavailable_updated_replicas_is_pending() {
        let pods = [pod("backend-7d9-a", "7d9", &waiting("ContainerCreating", 0))];
        let verdict = evaluate_deployment(&deployment(2, 2, 2, 2, 1), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(
            verdict,
            WorkloadVerdict::pending("Deployment shop/backend: 1 of 2 updated replicas available")
        );
    }

    #[test]
    fn replicas_default_to_one() {
        let mut deploy = deployment(2, 1, 1, 1, 1);
        deploy.spec.as_mut().expect("spec").replicas = None;
        assert_eq!(
            evaluate_deployment(&deploy, &replica_sets(), &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );
        deploy.status.as_mut().expect("status").available_replicas = Some(0);
        assert_eq!(
            evaluate_deployment(&deploy, &replica_sets(), &[], MAX_RESTARTS).verdict,
            Verdict::Pending
        );
    }

    fn with_deadline_exceeded(mut deploy: Deployment) -> Deployment {
        let condition = parse(
            r#"
type: Progressing
status: "False"
reason: ProgressDeadlineExceeded
message: ReplicaSet "backend-7d9" has timed out progressing.
"#,
        );
        deploy.status.as_mut().expect("status").conditions = Some(vec![condition]);
        deploy
    }

    #[test]
    fn progress_deadline_exceeded_fails_an_unfinished_rollout() {
        let deploy = with_deadline_exceeded(deployment(2, 2, 2, 2, 1));
        let verdict = evaluate_deployment(&deploy, &replica_sets(), &[], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Failed);
        assert!(
            verdict.message.contains("progress deadline exceeded"),
            "{}",
            verdict.message
        );
        assert!(
            verdict.message.contains("has timed out progressing"),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn stale_deadline_condition_on_a_finished_rollout_is_ignored() {
        let deploy = with_deadline_exceeded(complete());
        assert_eq!(
            evaluate_deployment(&deploy, &replica_sets(), &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );
    }

    #[test]
    fn crash_loop_in_current_replica_set_fails_with_names() {
        let pods = [
            pod("backend-7d9-a", "7d9", &running(0)),
            pod("backend-7d9-abc", "7d9", &waiting("CrashLoopBackOff", 4)),
        ];
        let verdict = evaluate_deployment(&deployment(2, 2, 2, 2, 1), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(
            verdict,
            WorkloadVerdict::failed(
                "Deployment shop/backend: pod backend-7d9-abc container api: CrashLoopBackOff (restarts 4)"
            )
        );
    }

    #[test]
    fn crash_loop_in_old_replica_set_does_not_fail() {
        // A rollback in progress: the bad pods are still there, being replaced.
        let pods = [
            pod("backend-old-x", "old", &waiting("CrashLoopBackOff", 9)),
            pod("backend-7d9-a", "7d9", &running(0)),
        ];
        let rolling = evaluate_deployment(&deployment(2, 1, 1, 2, 1), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(rolling.verdict, Verdict::Pending, "{}", rolling.message);
        let done = evaluate_deployment(&deployment(2, 1, 1, 1, 1), &replica_sets(), &pods, MAX_RESTARTS);
        assert_eq!(done.verdict, Verdict::Passed, "{}", done.message);
    }

    #[test]
    fn every_fatal_waiting_reason_fails_fast_with_its_detail() {
        for reason in [
            "ErrImagePull",
            "ImagePullBackOff",
            "CreateContainerConfigError",
            "InvalidImageName",
        ] {
            let pods = [pod("backend-7d9-a", "7d9", &waiting(reason, 0))];
            let verdict =
                evaluate_deployment(&deployment(2, 1, 1, 1, 0), &replica_sets(), &pods, MAX_RESTARTS);
            assert_eq!(
                verdict,
                WorkloadVerdict::failed(format!(
                    "Deployment shop/backend: pod backend-7d9-a container api: {reason} (restarts 0): detail for {reason}"
                ))
            );
        }
    }

    #[test]
    fn ordinary_waiting_reasons_do_not_fail() {
        for reason in ["ContainerCreating", "PodInitializing"] {
            let pods = [pod("backend-7d9-a", "7d9", &waiting(reason, 0))];
            let verdict =
                evaluate_deployment(&deployment(2, 1, 1, 1, 0), &replica_sets(), &pods, MAX_RESTARTS);
            assert_eq!(verdict.verdict, Verdict::Pending, "{reason}: {}", verdict.message);
        }
    }

    #[test]
    fn oom_killed_now_or_last_time_fails() {
        let last = format!(
            "{}\n    lastState: {{terminated: {{reason: OOMKilled, exitCode: 137}}}}",
            running(1)
        );
        let now = "    restartCount: 0\n    state: {terminated: {reason: OOMKilled, exitCode: 137}}";
        for (status, restarts) in [(last.as_str(), 1), (now, 0)] {
            let pods = [pod("backend-7d9-a", "7d9", status)];
            let verdict = evaluate_deployment(&complete(), &replica_sets(), &pods, MAX_RESTARTS);
            assert_eq!(
                verdict,
                WorkloadVerdict::failed(format!(
                    "Deployment shop/backend: pod backend-7d9-a container api: OOMKilled (restarts {restarts})"
                ))
            );
        }
    }

    #[test]
    fn other_terminations_do_not_fail() {
        let status = format!(
            "{}\n    lastState: {{terminated: {{reason: Error, exitCode: 1}}}}",
            running(1)
        );
        let pods = [pod("backend-7d9-a", "7d9", &status)];
        assert_eq!(
            evaluate_deployment(&complete(), &replica_sets(), &pods, MAX_RESTARTS).verdict,
            Verdict::Passed
        );
    }

    #[test]
    fn restarts_above_the_limit_fail_and_at_the_limit_do_not() {
        let at_limit = [pod("backend-7d9-a", "7d9", &running(MAX_RESTARTS))];
        assert_eq!(
            evaluate_deployment(&complete(), &replica_sets(), &at_limit, MAX_RESTARTS).verdict,
            Verdict::Passed
        );
        let above = [pod("backend-7d9-a", "7d9", &running(MAX_RESTARTS + 1))];
        assert_eq!(
            evaluate_deployment(&complete(), &replica_sets(), &above, MAX_RESTARTS),
            WorkloadVerdict::failed(
                "Deployment shop/backend: pod backend-7d9-a container api: restarted 4 times (more than 3)"
            )
        );
    }

    #[test]
    fn init_container_failures_count() {
        let mut failing = pod("backend-7d9-a", "7d9", &waiting("PodInitializing", 0));
        let init = parse(
            r#"
name: migrate
image: backend:v2
imageID: ""
ready: false
restartCount: 2
state: {waiting: {reason: CrashLoopBackOff}}
"#,
        );
        failing.status.as_mut().expect("status").init_container_statuses = Some(vec![init]);
        let verdict = evaluate_deployment(
            &deployment(2, 1, 1, 1, 0),
            &replica_sets(),
            &[failing],
            MAX_RESTARTS,
        );
        assert_eq!(
            verdict,
            WorkloadVerdict::failed(
                "Deployment shop/backend: pod backend-7d9-a init container migrate: CrashLoopBackOff (restarts 2)"
            )
        );
    }

    #[test]
    fn pods_are_matched_by_template_hash_without_owner_reference() {
        let mut orphan_labelled = pod("backend-7d9-a", "7d9", &waiting("ErrImagePull", 0));
        orphan_labelled.metadata.owner_references = None;
        let verdict = evaluate_deployment(&complete(), &replica_sets(), &[orphan_labelled], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Failed);
    }

    #[test]
    fn pods_are_matched_by_owner_reference_without_labels() {
        let mut unlabelled = pod("backend-7d9-a", "7d9", &waiting("ErrImagePull", 0));
        unlabelled.metadata.labels = None;
        let verdict = evaluate_deployment(&complete(), &replica_sets(), &[unlabelled], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Failed);
    }

    #[test]
    fn no_replica_set_with_the_current_revision_is_pending() {
        let only_old = [replica_set("backend-old", "old", "1")];
        let verdict = evaluate_deployment(&complete(), &only_old, &[], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Pending);
        assert!(verdict.message.contains("new ReplicaSet"), "{}", verdict.message);
    }

    #[test]
    fn replica_sets_of_another_deployment_are_not_current() {
        let mut foreign = replica_set("backend-7d9", "7d9", "2");
        foreign.metadata.owner_references.as_mut().expect("owners")[0].uid = "other-uid".into();
        let verdict = evaluate_deployment(&complete(), &[foreign], &[], MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Pending);
    }

    // --- StatefulSet ---

    fn stateful_set(replicas: i32, ready: i32, updated: i32, current: &str, update: &str) -> StatefulSet {
        parse(&format!(
            r#"
metadata: {{name: db, namespace: shop, uid: sts-uid, generation: 3}}
spec:
  replicas: {replicas}
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec: {{containers: [{{name: postgres, image: "postgres:16"}}]}}
status:
  observedGeneration: 3
  replicas: {replicas}
  readyReplicas: {ready}
  updatedReplicas: {updated}
  currentRevision: {current}
  updateRevision: {update}
"#
        ))
    }

    fn sts_pod(name: &str, revision: &str, container_status: &str) -> Pod {
        parse(&format!(
            r#"
metadata:
  name: {name}
  namespace: shop
  labels: {{app: db, controller-revision-hash: {revision}}}
  ownerReferences: [{{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: sts-uid}}]
status:
  containerStatuses:
  - name: postgres
    image: "postgres:16"
    imageID: ""
    ready: false
{container_status}
"#
        ))
    }

    #[test]
    fn stateful_set_rules() {
        let done = stateful_set(2, 2, 2, "db-new", "db-new");
        assert_eq!(
            evaluate_stateful_set(&done, &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );

        let rolling = stateful_set(2, 2, 1, "db-old", "db-new");
        assert_eq!(
            evaluate_stateful_set(&rolling, &[], MAX_RESTARTS),
            WorkloadVerdict::pending("StatefulSet shop/db: 1 of 2 replicas updated")
        );

        let not_ready = stateful_set(2, 1, 2, "db-new", "db-new");
        assert_eq!(
            evaluate_stateful_set(&not_ready, &[], MAX_RESTARTS),
            WorkloadVerdict::pending("StatefulSet shop/db: 1 of 2 replicas ready")
        );

        let mut unobserved = done.clone();
        unobserved.status.as_mut().expect("status").observed_generation = Some(2);
        assert_eq!(
            evaluate_stateful_set(&unobserved, &[], MAX_RESTARTS).verdict,
            Verdict::Pending
        );
    }

    #[test]
    fn stateful_set_fails_only_on_pods_of_the_update_revision() {
        let rolling = stateful_set(2, 1, 1, "db-old", "db-new");
        let old_crashing = [sts_pod("db-0", "db-old", &waiting("CrashLoopBackOff", 7))];
        assert_eq!(
            evaluate_stateful_set(&rolling, &old_crashing, MAX_RESTARTS).verdict,
            Verdict::Pending
        );

        let new_crashing = [sts_pod("db-1", "db-new", &waiting("ImagePullBackOff", 0))];
        let verdict = evaluate_stateful_set(&rolling, &new_crashing, MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Failed);
        assert!(
            verdict.message.starts_with(
                "StatefulSet shop/db: pod db-1 container postgres: ImagePullBackOff (restarts 0)"
            ),
            "{}",
            verdict.message
        );
    }

    #[test]
    fn stateful_set_partition_and_on_delete() {
        let mut partitioned = stateful_set(3, 3, 1, "db-old", "db-new");
        partitioned.spec.as_mut().expect("spec").update_strategy =
            Some(parse("{type: RollingUpdate, rollingUpdate: {partition: 2}}"));
        assert_eq!(
            evaluate_stateful_set(&partitioned, &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );
        partitioned.status.as_mut().expect("status").updated_replicas = Some(0);
        assert_eq!(
            evaluate_stateful_set(&partitioned, &[], MAX_RESTARTS).verdict,
            Verdict::Pending
        );

        let mut on_delete = stateful_set(2, 2, 0, "db-old", "db-new");
        on_delete.spec.as_mut().expect("spec").update_strategy = Some(parse("{type: OnDelete}"));
        assert_eq!(
            evaluate_stateful_set(&on_delete, &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );
    }

    // --- DaemonSet ---

    fn daemon_set(desired: i32, updated: i32, available: i32) -> DaemonSet {
        parse(&format!(
            r#"
metadata: {{name: agent, namespace: ops, uid: ds-uid, generation: 1}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec: {{containers: [{{name: agent, image: "agent:2"}}]}}
status:
  observedGeneration: 1
  currentNumberScheduled: {desired}
  desiredNumberScheduled: {desired}
  numberMisscheduled: 0
  numberReady: {available}
  updatedNumberScheduled: {updated}
  numberAvailable: {available}
"#
        ))
    }

    fn controller_revision(hash: &str, revision: i64) -> ControllerRevision {
        parse(&format!(
            r#"
metadata:
  name: agent-{hash}
  namespace: ops
  labels: {{app: agent, controller-revision-hash: "{hash}"}}
  ownerReferences: [{{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds-uid}}]
revision: {revision}
"#
        ))
    }

    fn ds_pod(name: &str, hash: &str, container_status: &str) -> Pod {
        parse(&format!(
            r#"
metadata:
  name: {name}
  namespace: ops
  labels: {{app: agent, controller-revision-hash: "{hash}"}}
  ownerReferences: [{{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds-uid}}]
status:
  containerStatuses:
  - name: agent
    image: "agent:2"
    imageID: ""
    ready: false
{container_status}
"#
        ))
    }

    #[test]
    fn daemon_set_rules() {
        let revisions = [controller_revision("aaa", 1), controller_revision("bbb", 2)];
        assert_eq!(
            evaluate_daemon_set(&daemon_set(0, 0, 0), &revisions, &[], MAX_RESTARTS),
            WorkloadVerdict::passed("DaemonSet ops/agent: no nodes to schedule on")
        );
        assert_eq!(
            evaluate_daemon_set(&daemon_set(2, 2, 2), &revisions, &[], MAX_RESTARTS).verdict,
            Verdict::Passed
        );
        assert_eq!(
            evaluate_daemon_set(&daemon_set(2, 1, 2), &revisions, &[], MAX_RESTARTS),
            WorkloadVerdict::pending("DaemonSet ops/agent: 1 of 2 updated pods scheduled")
        );
        assert_eq!(
            evaluate_daemon_set(&daemon_set(2, 2, 1), &revisions, &[], MAX_RESTARTS),
            WorkloadVerdict::pending("DaemonSet ops/agent: 1 of 2 pods available")
        );
    }

    #[test]
    fn daemon_set_judges_pods_of_the_newest_revision_only() {
        let revisions = [controller_revision("bbb", 2), controller_revision("aaa", 1)];
        let old = [ds_pod("agent-x", "aaa", &waiting("CrashLoopBackOff", 8))];
        assert_eq!(
            evaluate_daemon_set(&daemon_set(1, 1, 1), &revisions, &old, MAX_RESTARTS).verdict,
            Verdict::Passed
        );
        let current = [ds_pod(
            "agent-y",
            "bbb",
            &waiting("CreateContainerConfigError", 0),
        )];
        let verdict = evaluate_daemon_set(&daemon_set(1, 1, 0), &revisions, &current, MAX_RESTARTS);
        assert_eq!(verdict.verdict, Verdict::Failed);
        assert!(
            verdict
                .message
                .starts_with("DaemonSet ops/agent: pod agent-y container agent: CreateContainerConfigError"),
            "{}",
            verdict.message
        );
        // Without revisions to tell them apart, every pod of the DaemonSet counts.
        assert_eq!(
            evaluate_daemon_set(&daemon_set(1, 1, 1), &[], &old, MAX_RESTARTS).verdict,
            Verdict::Failed
        );
    }

    // --- combining and helpers ---

    #[test]
    fn combine_reports_the_first_failure_then_the_first_wait() {
        let verdicts = vec![
            WorkloadVerdict::passed("a"),
            WorkloadVerdict::pending("b waiting"),
            WorkloadVerdict::failed("c broken"),
            WorkloadVerdict::failed("d broken"),
        ];
        assert_eq!(combine(verdicts), WorkloadVerdict::failed("c broken"));

        let waiting = vec![
            WorkloadVerdict::pending("b waiting"),
            WorkloadVerdict::passed("a"),
            WorkloadVerdict::pending("e waiting"),
        ];
        assert_eq!(
            combine(waiting),
            WorkloadVerdict::pending("b waiting (and 1 more waiting)")
        );
        assert_eq!(
            combine(vec![WorkloadVerdict::pending("only")]),
            WorkloadVerdict::pending("only")
        );
        assert_eq!(
            combine(vec![WorkloadVerdict::passed("a"), WorkloadVerdict::passed("b")]),
            WorkloadVerdict::passed("2 workloads rolled out")
        );
        assert_eq!(combine(Vec::new()).verdict, Verdict::Passed);
    }

    #[test]
    fn workload_verdict_becomes_the_workload_gate_verdict() {
        let gate: GateVerdict = WorkloadVerdict::failed("x").into();
        assert_eq!(gate.name, WORKLOAD_GATE_NAME);
        assert_eq!(gate.verdict, Verdict::Failed);
        assert_eq!(gate.message.as_deref(), Some("x"));
    }

    #[test]
    fn helpers() {
        assert_eq!(api_group("apps/v1"), "apps");
        assert_eq!(api_group("v1"), "");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
