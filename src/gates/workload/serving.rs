//! The pods that serve a workload's current revision, whenever they were created:
//! what a gate that reads pods judges a revision by. A revision that rolls no pod (a
//! ConfigMap-only commit, a rollback onto pods that never went away) is served by
//! pods older than its apply; they are its pods all the same. Pure over a
//! [`WorkloadView`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Selector;

use super::WorkloadView;
use super::rollout::{
    CONTROLLER_REVISION_HASH_LABEL, current_daemon_set_hash, current_replica_set, label, owned_by,
    pod_of_replica_set, workload_id,
};

/// A workload's pods, as [`serving_pods`] finds them.
#[derive(Clone, Debug)]
pub enum Serving {
    /// No Deployment, StatefulSet or DaemonSet of that name.
    NotFound,
    /// The workload is there, but which revision is current cannot be told yet (its
    /// controller has not observed the latest generation, or the view lacks the
    /// ReplicaSet / ControllerRevision): `why`.
    Unknown {
        workload: String,
        why: String,
    },
    Found(ServingPods),
}

/// The pods of a workload's current revision.
#[derive(Clone, Debug)]
pub struct ServingPods {
    /// The workload as messages name it: `Deployment shop/worker`.
    pub workload: String,
    /// Pods of the current ReplicaSet (Deployment) or controller revision
    /// (StatefulSet, DaemonSet), not being deleted, in no particular order.
    pub pods: Vec<Arc<Pod>>,
    /// Pods of the workload's other revisions (not serving the current one).
    pub others: usize,
    /// How many pods the workload's controller wants at the current revision: a view
    /// that shows fewer has not seen them all yet.
    pub expected: i32,
}

/// The pods that serve the current revision of the workload `name` in `namespace`
/// (looked up as a Deployment, then a StatefulSet, then a DaemonSet), as the
/// workload gate tells them apart (see [`super::rollout`]).
pub fn serving_pods(view: &dyn WorkloadView, namespace: &str, name: &str) -> Serving {
    let unknown = |workload: &str, why: &str| Serving::Unknown {
        workload: workload.to_string(),
        why: why.to_string(),
    };
    let selector_pods = |selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        Selector::try_from(selector.clone())
            .map(|selector| (view.pods(namespace, &selector), selector))
            .map_err(|error| format!("its selector cannot select pods: {error}"))
    };
    if let Some(deploy) = view.deployment(namespace, name) {
        let id = workload_id("Deployment", &deploy.metadata);
        let Some(spec) = deploy.spec.as_ref() else {
            return unknown(&id, "no spec yet");
        };
        let (pods, selector) = match selector_pods(&spec.selector) {
            Ok(found) => found,
            Err(why) => return unknown(&id, &why),
        };
        // Until the controller has observed the latest generation, the revision
        // annotation still names the previous template's ReplicaSet.
        let observed = deploy.status.as_ref().and_then(|s| s.observed_generation);
        if observed.unwrap_or(0) < deploy.metadata.generation.unwrap_or(0) {
            return unknown(
                &id,
                "waiting for the Deployment controller to observe the latest generation",
            );
        }
        let replica_sets = view.replica_sets(namespace, &selector);
        let Some(current) = current_replica_set(&deploy, &replica_sets) else {
            return unknown(
                &id,
                "waiting for the Deployment controller to show the current ReplicaSet",
            );
        };
        let expected = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let owned: Vec<Arc<Pod>> = pods
            .into_iter()
            .filter(|pod| {
                replica_sets.iter().any(|rs| {
                    owned_by(&rs.metadata, "Deployment", &deploy.metadata)
                        && owned_by(&pod.metadata, "ReplicaSet", &rs.metadata)
                }) || pod_of_replica_set(pod, current)
            })
            .collect();
        return Serving::Found(split(id, owned, expected, |pod| pod_of_replica_set(pod, current)));
    }
    if let Some(sts) = view.stateful_set(namespace, name) {
        let id = workload_id("StatefulSet", &sts.metadata);
        let Some(spec) = sts.spec.as_ref() else {
            return unknown(&id, "no spec yet");
        };
        let pods = match selector_pods(&spec.selector) {
            Ok((pods, _)) => pods,
            Err(why) => return unknown(&id, &why),
        };
        let status = sts.status.as_ref();
        let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
        let update_revision = status.and_then(|s| s.update_revision.as_deref());
        let Some(update_revision) =
            update_revision.filter(|_| observed > 0 && observed >= sts.metadata.generation.unwrap_or(0))
        else {
            return unknown(
                &id,
                "waiting for the StatefulSet controller to record the update revision",
            );
        };
        let expected = status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let owned = pods
            .into_iter()
            .filter(|pod| owned_by(&pod.metadata, "StatefulSet", &sts.metadata))
            .collect();
        return Serving::Found(split(id, owned, expected, |pod| {
            label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(update_revision)
        }));
    }
    if let Some(ds) = view.daemon_set(namespace, name) {
        let id = workload_id("DaemonSet", &ds.metadata);
        let Some(spec) = ds.spec.as_ref() else {
            return unknown(&id, "no spec yet");
        };
        let (pods, selector) = match selector_pods(&spec.selector) {
            Ok(found) => found,
            Err(why) => return unknown(&id, &why),
        };
        let status = ds.status.as_ref();
        if status.and_then(|s| s.observed_generation).unwrap_or(0) < ds.metadata.generation.unwrap_or(0) {
            return unknown(
                &id,
                "waiting for the DaemonSet controller to observe the latest generation",
            );
        }
        let revisions = view.controller_revisions(namespace, &selector);
        let Some(hash) = current_daemon_set_hash(&ds, &revisions) else {
            return unknown(
                &id,
                "waiting for the DaemonSet controller to record a revision of the current template",
            );
        };
        let expected = status.and_then(|s| s.updated_number_scheduled).unwrap_or(0);
        let owned = pods
            .into_iter()
            .filter(|pod| owned_by(&pod.metadata, "DaemonSet", &ds.metadata))
            .collect();
        return Serving::Found(split(id, owned, expected, |pod| {
            label(&pod.metadata, CONTROLLER_REVISION_HASH_LABEL) == Some(hash)
        }));
    }
    Serving::NotFound
}

/// The workload's `owned` pods split into those of the current revision (`current`)
/// that are not being deleted, and a count of the others.
fn split(
    workload: String,
    owned: Vec<Arc<Pod>>,
    expected: i32,
    current: impl Fn(&Pod) -> bool,
) -> ServingPods {
    let total = owned.len();
    let pods: Vec<Arc<Pod>> = owned
        .into_iter()
        .filter(|pod| current(pod) && pod.metadata.deletion_timestamp.is_none())
        .collect();
    ServingPods {
        workload,
        others: total - pods.len(),
        pods,
        expected,
    }
}
