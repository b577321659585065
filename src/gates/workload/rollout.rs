//! Whether each kind of workload finished rolling out its current revision, judged
//! as `kubectl rollout status` judges it, and failing fast when a pod of that
//! revision will not start. Pure: objects in, verdict out.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::super::truncate;
use super::WorkloadVerdict;
use super::pods::{PodCriteria, first_pod_failure};

const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
pub(super) const CONTROLLER_REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// Longest condition message quoted in a verdict.
const MAX_DETAIL_CHARS: usize = 160;

/// Rollout state of a Deployment, judged on the pods of its current ReplicaSet only
/// (`replica_sets` and `pods` may include other revisions' and other workloads').
///
/// As `kubectl rollout status`: the controller has observed the generation, then all
/// replicas updated, no old replicas left, all updated replicas available. Unlike
/// kubectl, a `ProgressDeadlineExceeded` condition left on a rollout that has since
/// completed is ignored.
pub fn evaluate_deployment(
    deploy: &Deployment,
    replica_sets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
    criteria: &PodCriteria,
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
    let current_pods = pods
        .iter()
        .map(Arc::as_ref)
        .filter(|pod| pod_of_replica_set(pod, current));
    if let Some(failure) = first_pod_failure(current_pods, criteria) {
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
            Some(detail) => {
                WorkloadVerdict::failed(format!("{id}: progress deadline exceeded ({waiting}){detail}"))
            }
            None => WorkloadVerdict::pending(format!("{id}: {waiting}")),
        },
    }
}

/// Rollout state of a StatefulSet, judged on the pods of its update revision only.
///
/// As `kubectl rollout status`: the controller has observed the generation
/// (`observedGeneration`), `readyReplicas` reached `replicas`, and then
/// - with a `rollingUpdate` strategy (the API server always sets one for
///   `RollingUpdate`): `updatedReplicas` reached `replicas - partition`; the pods
///   below the partition keep the old revision on purpose;
/// - without one: `currentRevision` caught up with `updateRevision`.
///
/// kubectl refuses `OnDelete` ("only available for RollingUpdate"). Here, with
/// `OnDelete`, pods change only when someone deletes them, so there is no rollout to
/// wait for: the StatefulSet passes once every replica is ready, and the pods already
/// recreated at the update revision are judged like any other.
pub fn evaluate_stateful_set(
    sts: &StatefulSet,
    pods: &[Arc<Pod>],
    criteria: &PodCriteria,
) -> WorkloadVerdict {
    let id = workload_id("StatefulSet", &sts.metadata);
    let Some(status) = sts.status.as_ref() else {
        return WorkloadVerdict::pending(format!("{id}: waiting for the StatefulSet controller"));
    };
    let generation = sts.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || observed < generation {
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
    let current_pods = pods.iter().map(Arc::as_ref).filter(|pod| {
        owned_by(&pod.metadata, "StatefulSet", &sts.metadata)
            && label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(update_revision)
    });
    if let Some(failure) = first_pod_failure(current_pods, criteria) {
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
        return WorkloadVerdict::passed(format!(
            "{id}: {ready} replicas ready, {updated} at the update revision (OnDelete: pods update when deleted)"
        ));
    }
    match strategy.and_then(|s| s.rolling_update.as_ref()) {
        Some(rolling_update) => {
            let partition = rolling_update.partition.unwrap_or(0);
            let expected = (desired - partition).max(0);
            if updated < expected {
                let waiting = if partition > 0 {
                    format!("{updated} of {expected} replicas above partition {partition} updated")
                } else {
                    format!("{updated} of {desired} replicas updated")
                };
                return WorkloadVerdict::pending(format!("{id}: {waiting}"));
            }
            if partition > 0 {
                return WorkloadVerdict::passed(format!(
                    "{id}: rolled out to the {expected} of {desired} replicas above partition {partition}"
                ));
            }
        }
        None if status.current_revision.as_deref() != Some(update_revision) => {
            let current = status.current_replicas.unwrap_or(0);
            return WorkloadVerdict::pending(format!(
                "{id}: {updated} of {desired} replicas updated ({current} still at the current revision)"
            ));
        }
        None => {}
    }
    WorkloadVerdict::passed(format!("{id}: rolled out ({desired} replicas)"))
}

/// Rollout state of a DaemonSet, judged on the pods of its current template only.
/// `revisions` are ControllerRevisions of its namespace: the one it owns that holds
/// its current template tells the current pods by their `controller-revision-hash`.
///
/// As `kubectl rollout status`: the controller has observed the generation, then
/// `updatedNumberScheduled` and `numberAvailable` reached `desiredNumberScheduled`
/// (and no pod is counted in `numberUnavailable`).
///
/// kubectl refuses `OnDelete`. Here, as for a StatefulSet, `OnDelete` has no rollout
/// to wait for: the DaemonSet passes once a pod is available on every node it wants.
pub fn evaluate_daemon_set(
    ds: &DaemonSet,
    revisions: &[Arc<ControllerRevision>],
    pods: &[Arc<Pod>],
    criteria: &PodCriteria,
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
    let Some(current_hash) = current_daemon_set_hash(ds, revisions) else {
        return WorkloadVerdict::pending(format!(
            "{id}: waiting for the DaemonSet controller to record a revision of the current template"
        ));
    };
    let current_pods = pods.iter().map(Arc::as_ref).filter(|pod| {
        owned_by(&pod.metadata, "DaemonSet", &ds.metadata)
            && label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(current_hash)
    });
    if let Some(failure) = first_pod_failure(current_pods, criteria) {
        return WorkloadVerdict::failed(format!("{id}: {failure}"));
    }

    let desired = status.desired_number_scheduled;
    let on_delete = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    let unavailable = status.number_unavailable.unwrap_or(0);
    if !on_delete && updated < desired {
        return WorkloadVerdict::pending(format!("{id}: {updated} of {desired} updated pods scheduled"));
    }
    if available < desired || unavailable > 0 {
        return WorkloadVerdict::pending(format!("{id}: {available} of {desired} pods available"));
    }
    if desired == 0 {
        return WorkloadVerdict::passed(format!("{id}: no nodes to schedule on"));
    }
    if on_delete {
        return WorkloadVerdict::passed(format!(
            "{id}: available on {desired} nodes, {updated} updated (OnDelete: pods update when deleted)"
        ));
    }
    WorkloadVerdict::passed(format!("{id}: rolled out on {desired} nodes"))
}

/// The ReplicaSet the Deployment controller is rolling out: owned by the Deployment
/// and carrying the Deployment's revision number. A watch cache that has not yet seen
/// the controller's latest ReplicaSet write has none, which reads as pending.
pub(super) fn current_replica_set<'a>(
    deploy: &Deployment,
    replica_sets: &'a [Arc<ReplicaSet>],
) -> Option<&'a ReplicaSet> {
    let revision = annotation(&deploy.metadata, REVISION_ANNOTATION)?;
    replica_sets.iter().map(Arc::as_ref).find(|rs| {
        owned_by(&rs.metadata, "Deployment", &deploy.metadata)
            && annotation(&rs.metadata, REVISION_ANNOTATION) == Some(revision)
    })
}

pub(super) fn pod_of_replica_set(pod: &Pod, rs: &ReplicaSet) -> bool {
    owned_by(&pod.metadata, "ReplicaSet", &rs.metadata)
        || label(&rs.metadata, POD_TEMPLATE_HASH_LABEL)
            .is_some_and(|hash| label(&pod.metadata, POD_TEMPLATE_HASH_LABEL) == Some(hash))
}

/// The `controller-revision-hash` of the ControllerRevision holding the DaemonSet's
/// current template. DaemonSet status names no update revision, and the newest
/// revision a watch cache holds may still be the previous one, so the revision is
/// found the way the DaemonSet controller finds it: by its template. The controller
/// stores `spec.template` (with `$patch: replace`) in `data`.
pub(super) fn current_daemon_set_hash<'a>(
    ds: &DaemonSet,
    revisions: &'a [Arc<ControllerRevision>],
) -> Option<&'a str> {
    let template = &ds.spec.as_ref()?.template;
    revisions
        .iter()
        .map(Arc::as_ref)
        .filter(|revision| owned_by(&revision.metadata, "DaemonSet", &ds.metadata))
        .filter(|revision| revision_template(revision).as_ref() == Some(template))
        .max_by_key(|revision| revision.revision)
        .and_then(|revision| label(&revision.metadata, CONTROLLER_REVISION_HASH_LABEL))
}

fn revision_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let template = revision.data.as_ref()?.0.get("spec")?.get("template")?;
    serde_json::from_value(template.clone()).ok()
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

/// Whether `owner` (of `kind`) is among the object's owner references; by uid when
/// both sides have one, else by name.
pub(super) fn owned_by(meta: &ObjectMeta, kind: &str, owner: &ObjectMeta) -> bool {
    meta.owner_references.iter().flatten().any(|reference| {
        reference.kind == kind
            && match owner.uid.as_deref() {
                Some(uid) if !reference.uid.is_empty() => reference.uid == uid,
                _ => Some(reference.name.as_str()) == owner.name.as_deref(),
            }
    })
}

pub(super) fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    lookup(meta.labels.as_ref(), key)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    lookup(meta.annotations.as_ref(), key)
}

fn lookup<'a>(map: Option<&'a BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(String::as_str)
}

pub(super) fn workload_id(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("<unnamed>")
    )
}
