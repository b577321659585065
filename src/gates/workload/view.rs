//! What the workload gate reads: the workloads of a revision with their ReplicaSets,
//! ControllerRevisions and Pods, from the controller's watch caches
//! ([`WorkloadStores`]) or from plain lists ([`WorkloadObjects`]). Reading costs no
//! API request: a verification round only looks at what the watches already hold.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};

/// The objects the workload gate judges a revision by. Implementations only look
/// up what they hold: no I/O, no waiting.
pub trait WorkloadView {
    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>>;
    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>>;
    fn daemon_set(&self, namespace: &str, name: &str) -> Option<Arc<DaemonSet>>;
    /// ReplicaSets of `namespace` whose labels match `selector`.
    fn replica_sets(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ReplicaSet>>;
    /// ControllerRevisions of `namespace` whose labels match `selector`.
    fn controller_revisions(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ControllerRevision>>;
    /// Pods of `namespace` whose labels match `selector`.
    fn pods(&self, namespace: &str, selector: &Selector) -> Vec<Arc<Pod>>;
}

/// The controller's reflector caches of what bosun manages: every object carrying
/// the [`APP_LABEL`](crate::api::APP_LABEL) label. bosun stamps that label on the
/// workloads and on their pod templates, so the ReplicaSets, ControllerRevisions and
/// Pods the workload controllers make from those templates carry it too. Each store
/// is filled by a watcher with `watcher::Config::default().labels(APP_LABEL)`.
///
/// A store that has not finished its first list is simply empty: the workloads it
/// lacks read as "not found", which the gate reports as pending.
#[derive(Clone)]
pub struct WorkloadStores {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub replica_sets: Store<ReplicaSet>,
    pub controller_revisions: Store<ControllerRevision>,
    pub pods: Store<Pod>,
}

impl WorkloadView for WorkloadStores {
    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(namespace))
    }

    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets.get(&ObjectRef::new(name).within(namespace))
    }

    fn daemon_set(&self, namespace: &str, name: &str) -> Option<Arc<DaemonSet>> {
        self.daemon_sets.get(&ObjectRef::new(name).within(namespace))
    }

    fn replica_sets(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ReplicaSet>> {
        self.replica_sets
            .state_filter(|object| selected(object, namespace, selector))
    }

    fn controller_revisions(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ControllerRevision>> {
        self.controller_revisions
            .state_filter(|object| selected(object, namespace, selector))
    }

    fn pods(&self, namespace: &str, selector: &Selector) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|object| selected(object, namespace, selector))
    }
}

/// The same view over plain lists: for tests, and for objects read some other way.
#[derive(Clone, Debug, Default)]
pub struct WorkloadObjects {
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub replica_sets: Vec<ReplicaSet>,
    pub controller_revisions: Vec<ControllerRevision>,
    pub pods: Vec<Pod>,
}

impl WorkloadView for WorkloadObjects {
    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        named(&self.deployments, namespace, name)
    }

    fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        named(&self.stateful_sets, namespace, name)
    }

    fn daemon_set(&self, namespace: &str, name: &str) -> Option<Arc<DaemonSet>> {
        named(&self.daemon_sets, namespace, name)
    }

    fn replica_sets(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ReplicaSet>> {
        matching(&self.replica_sets, namespace, selector)
    }

    fn controller_revisions(&self, namespace: &str, selector: &Selector) -> Vec<Arc<ControllerRevision>> {
        matching(&self.controller_revisions, namespace, selector)
    }

    fn pods(&self, namespace: &str, selector: &Selector) -> Vec<Arc<Pod>> {
        matching(&self.pods, namespace, selector)
    }
}

/// Whether `object` lives in `namespace` and its labels match `selector`. The
/// namespace is compared first: it is the cheaper test and rules out most objects.
fn selected<K: Resource>(object: &K, namespace: &str, selector: &Selector) -> bool {
    let meta = object.meta();
    meta.namespace.as_deref() == Some(namespace)
        && match meta.labels.as_ref() {
            Some(labels) => selector.matches(labels),
            None => selector.matches(&Default::default()),
        }
}

fn named<K: Resource + Clone>(objects: &[K], namespace: &str, name: &str) -> Option<Arc<K>> {
    objects
        .iter()
        .find(|object| {
            let meta = object.meta();
            meta.namespace.as_deref() == Some(namespace) && meta.name.as_deref() == Some(name)
        })
        .map(|object| Arc::new(object.clone()))
}

fn matching<K: Resource + Clone>(objects: &[K], namespace: &str, selector: &Selector) -> Vec<Arc<K>> {
    objects
        .iter()
        .filter(|object| selected(*object, namespace, selector))
        .map(|object| Arc::new(object.clone()))
        .collect()
}
