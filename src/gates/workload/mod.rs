//! The workload gate (always on): every Deployment, StatefulSet and DaemonSet of the
//! revision reaches its rollout, and fails fast — in seconds, not after
//! `progressDeadlineSeconds` — when a pod of the *current* revision cannot start.
//!
//! It judges the revision, not the pods' history:
//! - pods of older ReplicaSets / revisions are ignored, so during a rollback the
//!   crash-looping pods being replaced do not fail the revision that replaces them;
//! - restarts count only beyond the [`RestartBaseline`] taken before the apply, and
//!   terminations (OOM kills included) only when they finished after the apply, so a
//!   ConfigMap-only commit to an app whose pods restarted last month passes.
//!
//! Evaluation is pure over a [`WorkloadView`]: the controller's watch caches
//! ([`WorkloadStores`]), so a verification round costs no API request, or plain
//! lists ([`WorkloadObjects`]). The controller calls [`capture_baseline`] before it
//! sends a revision's objects, persists the baseline with the operation, and calls
//! [`evaluate_workloads`] every round.
//!
//! [`serving_pods`] names the pods of a workload's current revision, whenever they
//! were created, for gates that read pods (the `logs` gate): a revision that rolled
//! no pod is served by older pods all the same.

mod pods;
mod rollout;
mod serving;
mod view;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::core::Selector;

use crate::api::{GateVerdict, InventoryEntry, RestartBaseline, Verdict};

pub use pods::{PodCriteria, first_pod_failure, pod_failure};
pub use rollout::{evaluate_daemon_set, evaluate_deployment, evaluate_stateful_set};
pub use serving::{Serving, ServingPods, serving_pods};
pub use view::{WorkloadObjects, WorkloadStores, WorkloadView};

/// Name under which the workload gate appears in `status.history[].gates`.
pub const WORKLOAD_GATE_NAME: &str = "workload";

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

/// Judges every Deployment, StatefulSet and DaemonSet of `inventory` (other kinds are
/// ignored) as `view` shows them, and combines the verdicts ([`combine`]).
///
/// `baseline` is what [`capture_baseline`] returned before the revision was applied
/// (an empty one counts every restart); `applied_at` is when the apply finished.
/// A workload the view does not hold counts as pending, not failed: the verify window
/// decides how long that may last.
pub fn evaluate_workloads(
    view: &dyn WorkloadView,
    inventory: &[InventoryEntry],
    baseline: &RestartBaseline,
    applied_at: Timestamp,
    max_restarts: i32,
) -> WorkloadVerdict {
    let criteria = PodCriteria {
        baseline,
        applied_at,
        max_restarts,
    };
    combine(
        inventory
            .iter()
            .filter_map(|entry| evaluate_workload(view, entry, &criteria)),
    )
}

/// The restart counts of every pod of the workloads in `inventory` as `view` shows
/// them now (all revisions' pods: a rollback may make an older ReplicaSet current).
///
/// Take it before the revision's objects are sent, and persist it with the
/// operation: the pods it lists count as older than the revision, so a failing
/// waiting reason on them needs evidence from after the apply. Workloads that do not
/// exist yet have no pods to record.
pub fn capture_baseline(view: &dyn WorkloadView, inventory: &[InventoryEntry]) -> RestartBaseline {
    let pods: Vec<Arc<Pod>> = inventory
        .iter()
        .filter_map(|entry| {
            let workload = find_workload(view, entry)?;
            let selector = Selector::try_from(workload.selector()?.clone()).ok()?;
            Some(view.pods(namespace_of(entry), &selector))
        })
        .flatten()
        .collect();
    RestartBaseline::from_pods(pods.iter().map(Arc::as_ref))
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

/// One workload of the inventory as the view holds it.
enum Workload {
    Deployment(Arc<Deployment>),
    StatefulSet(Arc<StatefulSet>),
    DaemonSet(Arc<DaemonSet>),
}

impl Workload {
    fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(object) => &object.metadata,
            Workload::StatefulSet(object) => &object.metadata,
            Workload::DaemonSet(object) => &object.metadata,
        }
    }

    fn selector(&self) -> Option<&LabelSelector> {
        match self {
            Workload::Deployment(object) => object.spec.as_ref().map(|s| &s.selector),
            Workload::StatefulSet(object) => object.spec.as_ref().map(|s| &s.selector),
            Workload::DaemonSet(object) => object.spec.as_ref().map(|s| &s.selector),
        }
    }
}

/// Whether the entry names a workload the gate judges.
fn is_workload(entry: &InventoryEntry) -> bool {
    api_group(&entry.api_version) == "apps"
        && matches!(entry.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
}

/// The apply places every namespaced object in a namespace; `default` is only a
/// fallback for an inventory written some other way.
fn namespace_of(entry: &InventoryEntry) -> &str {
    entry.namespace.as_deref().unwrap_or("default")
}

fn find_workload(view: &dyn WorkloadView, entry: &InventoryEntry) -> Option<Workload> {
    if !is_workload(entry) {
        return None;
    }
    let (namespace, name) = (namespace_of(entry), entry.name.as_str());
    match entry.kind.as_str() {
        "Deployment" => view.deployment(namespace, name).map(Workload::Deployment),
        "StatefulSet" => view.stateful_set(namespace, name).map(Workload::StatefulSet),
        _ => view.daemon_set(namespace, name).map(Workload::DaemonSet),
    }
}

/// The verdict on one inventory entry; `None` for what is not a workload.
fn evaluate_workload(
    view: &dyn WorkloadView,
    entry: &InventoryEntry,
    criteria: &PodCriteria,
) -> Option<WorkloadVerdict> {
    if !is_workload(entry) {
        return None;
    }
    let namespace = namespace_of(entry);
    let id = format!("{} {namespace}/{}", entry.kind, entry.name);
    let Some(workload) = find_workload(view, entry) else {
        return Some(WorkloadVerdict::pending(format!("{id}: not found")));
    };
    // The cache may not have delivered the apply's write yet: it then still holds the
    // previous object, whose finished rollout says nothing about this revision.
    if let Some(applied) = criteria.baseline.applied_generation(entry) {
        let seen = workload.metadata().generation.unwrap_or(0);
        if seen < applied {
            return Some(WorkloadVerdict::pending(format!(
                "{id}: waiting for the watch cache to show generation {applied} (it shows {seen})"
            )));
        }
    }
    let selector = match workload.selector().cloned().map(Selector::try_from) {
        Some(Ok(selector)) => selector,
        // The API server validates apps/v1 selectors, so this is a cache holding
        // something unexpected; waiting is the safe answer.
        Some(Err(error)) => {
            return Some(WorkloadVerdict::pending(format!("{id}: spec.selector: {error}")));
        }
        None => return Some(WorkloadVerdict::pending(format!("{id}: no spec yet"))),
    };
    let pods = view.pods(namespace, &selector);
    Some(match workload {
        Workload::Deployment(deploy) => {
            let replica_sets = view.replica_sets(namespace, &selector);
            evaluate_deployment(&deploy, &replica_sets, &pods, criteria)
        }
        Workload::StatefulSet(sts) => evaluate_stateful_set(&sts, &pods, criteria),
        Workload::DaemonSet(ds) => {
            let revisions = view.controller_revisions(namespace, &selector);
            evaluate_daemon_set(&ds, &revisions, &pods, criteria)
        }
    })
}

/// `apps` for `apps/v1`, `` for `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}
