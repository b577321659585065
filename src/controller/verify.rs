//! Verification rounds of the operation in progress: the workload gate (from the watch
//! caches), then the Runbook's gates once the rollout is complete, for the verify
//! window. A round costs no request to the API server.
//!
//! `verifyWindow` means every gate keeps passing for the whole window: the window
//! restarts whenever a gate stops passing. The gate trackers live in memory, keyed by
//! what they verify (revision, operation, when the step began, the Runbook's version):
//! an edited Runbook, a resumed step or a restarted controller starts verification over.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};

use super::Context;
use super::cache::WorkloadStores;
use crate::api::{GateVerdict, InventoryEntry, Operation, OperationKind, PodRestarts, RunbookSpec, Verdict};
use crate::core::Verification;
use crate::gates::{self, WorkloadVerdict, workload};

/// How often an undecided verification is looked at again without a change waking it.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// Gate state of one verification; lives in memory between passes.
pub struct Session {
    key: SessionKey,
    gates: gates::Verification,
    /// Since when every gate has been passing without a break.
    passing_since: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SessionKey {
    revision: String,
    kind: OperationKind,
    step_started_at: String,
    runbook_version: String,
}

/// What one round found, and when the next is worth running.
pub struct Round {
    pub verification: Verification,
    pub next: Duration,
}

/// Runs one verification round for `operation`. `session` is the app's gate state,
/// replaced when it belongs to something else.
pub async fn round(
    context: &Context,
    session: &mut Option<Session>,
    operation: &Operation,
    runbook: &RunbookSpec,
    runbook_version: &str,
    inventory: &[InventoryEntry],
    target_namespace: &str,
) -> Round {
    let key = SessionKey {
        revision: operation.revision.clone(),
        kind: operation.kind,
        step_started_at: operation.step_started_at.clone(),
        runbook_version: runbook_version.to_string(),
    };
    if session.as_ref().is_none_or(|s| s.key != key) {
        *session = Some(Session {
            key,
            gates: gates::Verification::new(&runbook.gates),
            passing_since: None,
        });
    }
    let session = session.as_mut().expect("just set");

    let workload = workload_verdict(
        &context.caches.workloads,
        inventory,
        &operation.restart_baseline,
        runbook.max_restarts(),
    );
    let workload_verdict = GateVerdict::from(workload.clone());
    let with_gates = |gates: &gates::Verification| -> Vec<GateVerdict> {
        std::iter::once(workload_verdict.clone())
            .chain(gates.verdicts())
            .collect()
    };
    match workload.verdict {
        Verdict::Failed => {
            return Round {
                verification: Verification::Failed {
                    message: workload.message,
                    gates: with_gates(&session.gates),
                },
                next: IDLE_RECHECK,
            };
        }
        Verdict::Pending => {
            session.passing_since = None;
            return Round {
                verification: Verification::Pending {
                    gates: with_gates(&session.gates),
                },
                // A change of the workload, its ReplicaSets or Pods wakes the app.
                next: IDLE_RECHECK,
            };
        }
        Verdict::Passed => {}
    }

    let now = Instant::now();
    session
        .gates
        .run_due_probes(&context.prober, target_namespace, now)
        .await;
    let gates = with_gates(&session.gates);
    if let Some(failed) = session.gates.failed() {
        let message = format!(
            "gate {} failed: {}",
            failed.name,
            failed.message.unwrap_or_else(|| "no detail".into())
        );
        return Round {
            verification: Verification::Failed { message, gates },
            next: IDLE_RECHECK,
        };
    }
    let window = match operation.kind {
        // A rollback returns to a revision that already proved itself: once its
        // rollout is complete and the gates pass again, it is done.
        OperationKind::Rollback => Duration::ZERO,
        OperationKind::Deploy => runbook.verify_window().unwrap_or(Duration::from_secs(60)),
    };
    if session.gates.all_passed() {
        session.passing_since.get_or_insert(now);
    } else {
        // The window restarts: every gate must keep passing for all of it.
        session.passing_since = None;
    }
    let held_for = session
        .passing_since
        .map(|since| now.saturating_duration_since(since));
    let verification = match held_for {
        Some(held) if held >= window => Verification::Passed { gates },
        _ => Verification::Pending { gates },
    };
    let until_window = window
        .saturating_sub(held_for.unwrap_or_default())
        .max(Duration::from_millis(100));
    let next = IDLE_RECHECK
        .min(session.gates.next_due(Instant::now()))
        .min(until_window)
        .max(Duration::from_millis(100));
    Round { verification, next }
}

/// The workload gate over the watch caches, for the workloads of `inventory`.
pub fn workload_verdict(
    stores: &WorkloadStores,
    inventory: &[InventoryEntry],
    _baseline: &[PodRestarts],
    max_restarts: i32,
) -> WorkloadVerdict {
    use kube::runtime::reflector::ObjectRef;
    let verdicts = inventory
        .iter()
        .filter(|entry| entry.api_version == "apps/v1")
        .filter_map(|entry| {
            let namespace = entry.namespace.as_deref()?;
            let id = format!("{} {namespace}/{}", entry.kind, entry.name);
            let key = |name: &str| (name.to_string(), namespace.to_string());
            let pods_matching = |selector: Option<
                &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
            >| { matching(&stores.pods, namespace, selector) };
            let verdict = match entry.kind.as_str() {
                "Deployment" => {
                    let (name, ns) = key(&entry.name);
                    match stores.deployments.get(&ObjectRef::new(&name).within(&ns)) {
                        Some(deploy) => {
                            let selector = deploy.spec.as_ref().map(|s| &s.selector);
                            let replica_sets: Vec<_> = matching(&stores.replica_sets, namespace, selector);
                            let pods = pods_matching(selector);
                            workload::evaluate_deployment(&deploy, &replica_sets, &pods, max_restarts)
                        }
                        None => WorkloadVerdict::pending(format!("{id}: not found")),
                    }
                }
                "StatefulSet" => match stores
                    .stateful_sets
                    .get(&ObjectRef::new(&entry.name).within(namespace))
                {
                    Some(sts) => {
                        let pods = pods_matching(sts.spec.as_ref().map(|s| &s.selector));
                        workload::evaluate_stateful_set(&sts, &pods, max_restarts)
                    }
                    None => WorkloadVerdict::pending(format!("{id}: not found")),
                },
                "DaemonSet" => match stores
                    .daemon_sets
                    .get(&ObjectRef::new(&entry.name).within(namespace))
                {
                    Some(ds) => {
                        let selector = ds.spec.as_ref().map(|s| &s.selector);
                        let revisions = matching(&stores.controller_revisions, namespace, selector);
                        let pods = pods_matching(selector);
                        workload::evaluate_daemon_set(&ds, &revisions, &pods, max_restarts)
                    }
                    None => WorkloadVerdict::pending(format!("{id}: not found")),
                },
                _ => return None,
            };
            Some(verdict)
        });
    workload::combine(verdicts.collect::<Vec<_>>())
}

/// Objects of `namespace` in `store` whose labels match `selector`.
fn matching<K>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let Some(selector) = selector.and_then(|s| Selector::try_from(s.clone()).ok()) else {
        return Vec::new();
    };
    store
        .state_filter(|object| {
            object.meta().namespace.as_deref() == Some(namespace)
                && selector.matches(object.meta().labels.as_ref().unwrap_or(&Default::default()))
        })
        .into_iter()
        .map(|object| (*object).clone())
        .collect()
}

/// Container restart counts of the pods of `inventory`'s workloads right now: what the
/// new revision's gates count from.
pub fn restart_baseline(stores: &WorkloadStores, app_label: &str) -> Vec<PodRestarts> {
    stores
        .pods
        .state_filter(|pod: &Pod| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(crate::api::APP_LABEL))
                .is_some_and(|value| value == app_label)
        })
        .iter()
        .flat_map(|pod| {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            status
                .init_container_statuses
                .unwrap_or_default()
                .into_iter()
                .chain(status.container_statuses.unwrap_or_default())
                .filter(|c| c.restart_count > 0)
                .map(move |c| PodRestarts {
                    pod_uid: uid.clone(),
                    container: c.name,
                    restarts: c.restart_count,
                })
        })
        .collect()
}
