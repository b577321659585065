//! What the pods of a revision's workloads had already been through when the revision
//! was applied, so the workload gate judges the revision and not the pods' history.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::InventoryEntry;

/// Restart counts of the pods that existed just before a revision was applied (and the
/// workload generations that apply produced), kept in the AppDeployment status so a
/// restarted controller judges the revision the same way.
///
/// The workload gate counts only restarts beyond these counts; a pod not listed here
/// was created under the revision, and all of its restarts count.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartBaseline {
    /// Pod uid → container name → `restartCount`. Containers that never restarted are
    /// left out to keep this short; a pod none of whose containers restarted is an
    /// empty map (it still counts as older than the revision).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<String, BTreeMap<String, i32>>,
    /// Workload (`Kind namespace/name`) → the `metadata.generation` the apply wrote.
    /// Until a watch cache shows at least that generation it still holds the object
    /// from before the apply, whose rollout status says nothing about this revision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<String, i64>,
}

impl RestartBaseline {
    /// The restart counts of `pods` as they are now (init and app containers; their
    /// names are unique within a pod). Pods without a uid cannot be told apart later
    /// and are left out.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let pods = pods
            .into_iter()
            .filter_map(|pod| {
                let uid = pod.metadata.uid.clone()?;
                let status = pod.status.as_ref();
                let containers = status
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .into_iter()
                    .chain(status.and_then(|s| s.container_statuses.as_ref()))
                    .flatten()
                    .filter(|c| c.restart_count > 0)
                    .map(|c| (c.name.clone(), c.restart_count))
                    .collect();
                Some((uid, containers))
            })
            .collect();
        Self {
            pods,
            generations: BTreeMap::new(),
        }
    }

    /// Nothing recorded (no pods, no generations).
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.generations.is_empty()
    }

    /// Whether the pod with this uid existed when the baseline was taken.
    pub fn has_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Restarts of a container when the baseline was taken (0 if not recorded).
    pub fn restarts(&self, uid: &str, container: &str) -> i32 {
        self.pods
            .get(uid)
            .and_then(|containers| containers.get(container))
            .copied()
            .unwrap_or(0)
    }

    /// Records the generation the apply wrote for `workload` (from the apply's response).
    pub fn record_generation(&mut self, workload: &InventoryEntry, generation: i64) {
        self.generations.insert(workload.to_string(), generation);
    }

    /// The generation the apply wrote for `workload`, if it was recorded.
    pub fn applied_generation(&self, workload: &InventoryEntry) -> Option<i64> {
        self.generations.get(&workload.to_string()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, statuses: &str) -> Pod {
        serde_saphyr::from_str(&format!("metadata: {{name: p, uid: {uid}}}\nstatus:\n{statuses}"))
            .expect("fixture parses")
    }

    #[test]
    fn records_only_restarted_containers_but_every_pod() {
        let restarted = pod(
            "u1",
            "  initContainerStatuses: [{name: init, image: i, imageID: '', ready: true, restartCount: 2}]\n  containerStatuses:\n  - {name: api, image: a, imageID: '', ready: true, restartCount: 10}\n  - {name: sidecar, image: s, imageID: '', ready: true, restartCount: 0}",
        );
        let fresh = pod(
            "u2",
            "  containerStatuses: [{name: api, image: a, imageID: '', ready: true, restartCount: 0}]",
        );
        let baseline = RestartBaseline::from_pods([&restarted, &fresh]);
        assert_eq!(baseline.restarts("u1", "api"), 10);
        assert_eq!(baseline.restarts("u1", "init"), 2);
        assert_eq!(baseline.restarts("u1", "sidecar"), 0);
        assert!(baseline.has_pod("u2"));
        assert!(!baseline.has_pod("u3"));
        assert_eq!(baseline.restarts("u3", "api"), 0);

        let json = serde_json::to_value(&baseline).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"pods": {"u1": {"api": 10, "init": 2}, "u2": {}}})
        );
        let back: RestartBaseline = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, baseline);
    }

    #[test]
    fn generations_are_keyed_by_workload() {
        let entry = InventoryEntry {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: "backend".into(),
            adopted: false,
        };
        let mut baseline = RestartBaseline::default();
        assert_eq!(baseline.applied_generation(&entry), None);
        baseline.record_generation(&entry, 4);
        assert_eq!(baseline.applied_generation(&entry), Some(4));
        assert_eq!(
            serde_json::to_value(&baseline).expect("serializes"),
            serde_json::json!({"generations": {"Deployment shop/backend": 4}})
        );
        assert_eq!(
            serde_json::to_value(RestartBaseline::default()).expect("serializes"),
            serde_json::json!({})
        );
    }
}
