//! The Runbook `logs` gate: a pod of the workload, created for the revision being
//! verified, logs a line matching `pattern` within `within` (default 60s) of the
//! apply ("EnrichmentWorker started").
//!
//! - Only pods of the workload created at or after the apply count: a pod of the
//!   previous revision that logged the line proves nothing about this one. A
//!   revision that does not roll the workload therefore has no pod to prove it.
//! - Logs are read through the `pods/log` API, the last [`TAIL_LINES`] lines (at
//!   most [`LIMIT_BYTES`]) of the gate's `container` (default: the pod's first
//!   container), newest pods first, at most [`MAX_PODS`] per probe.
//! - The gate passes at the first matching line and stays passed (a line that
//!   scrolled out of the tail since is not a failure). Until `within` has passed
//!   since the apply, not matching yet is waiting, not failing; then the gate fails
//!   at once, whatever its `failureThreshold`.
//!
//! Messages name the workload, the container and the pattern. [`plan`] (which pods
//! to read, from the watch caches) and [`judge`] are pure; [`probe`] does the I/O.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::LogParams;
use kube::core::Selector;
use regex::Regex;

use super::http::ProbeOutcome;
use super::workload::WorkloadView;
use super::{Observation, truncate};
use crate::api::{LogsGate, parse_duration};

/// Lines read from the end of each pod's log: bounded, never the whole log.
pub const TAIL_LINES: i64 = 500;
/// Bytes read at most from each pod's log.
pub const LIMIT_BYTES: i64 = 1024 * 1024;
/// Pods read at most per probe (the newest).
pub const MAX_PODS: usize = 10;
/// `within` when the gate does not say.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(60);
/// Longest log line or error quoted in a message.
const MAX_QUOTED_CHARS: usize = 200;

/// One container log to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTarget {
    pub pod: String,
    pub container: String,
}

/// Which logs a probe reads, and what it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPlan {
    /// The workload as messages name it: `Deployment shop/worker`.
    pub workload: String,
    /// The container read (`None`: the gate names none and no pod was found to
    /// tell the first container's name).
    pub container: Option<String>,
    /// Newest pod first.
    pub targets: Vec<LogTarget>,
    /// Why there is nothing (more) to read: no such workload, no new pod, a pod
    /// whose container has not started.
    pub notes: Vec<String>,
}

/// The pods of the workload `gate.workload` in `namespace` created at or after
/// `applied_at` whose container has started, from `view` (the watch caches).
pub fn plan(view: &dyn WorkloadView, gate: &LogsGate, namespace: &str, applied_at: Timestamp) -> LogPlan {
    let name = gate.workload.as_str();
    let mut plan = LogPlan {
        workload: format!("workload {namespace}/{name}"),
        container: gate.container.clone(),
        ..LogPlan::default()
    };
    let found: Option<(&str, ObjectMeta, LabelSelector)> =
        if let Some(deploy) = view.deployment(namespace, name) {
            deploy
                .spec
                .as_ref()
                .map(|spec| ("Deployment", deploy.metadata.clone(), spec.selector.clone()))
        } else if let Some(sts) = view.stateful_set(namespace, name) {
            sts.spec
                .as_ref()
                .map(|spec| ("StatefulSet", sts.metadata.clone(), spec.selector.clone()))
        } else if let Some(ds) = view.daemon_set(namespace, name) {
            ds.spec
                .as_ref()
                .map(|spec| ("DaemonSet", ds.metadata.clone(), spec.selector.clone()))
        } else {
            None
        };
    let Some((kind, meta, selector)) = found else {
        plan.notes.push(format!(
            "no Deployment, StatefulSet or DaemonSet {namespace}/{name} found"
        ));
        return plan;
    };
    plan.workload = format!("{kind} {namespace}/{name}");
    let selector = match Selector::try_from(selector) {
        Ok(selector) => selector,
        Err(error) => {
            plan.notes
                .push(format!("its selector cannot select pods: {error}"));
            return plan;
        }
    };
    // The owners of the workload's pods: a Deployment's ReplicaSets, else the workload.
    let owners: HashSet<String> = if kind == "Deployment" {
        view.replica_sets(namespace, &selector)
            .iter()
            .filter(|rs| owned_by(&rs.metadata, &meta))
            .filter_map(|rs| rs.metadata.uid.clone())
            .collect()
    } else {
        meta.uid.iter().cloned().collect()
    };
    let mut pods: Vec<_> = view
        .pods(namespace, &selector)
        .into_iter()
        .filter(|pod| {
            pod.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owners.contains(&owner.uid))
        })
        .collect();
    let before = pods.len();
    // creationTimestamp has whole seconds: a pod created in the second of the apply counts.
    pods.retain(|pod| {
        pod.metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|created| created.0.as_second() >= applied_at.as_second())
    });
    if pods.is_empty() {
        let older = if before > 0 {
            format!(" ({before} older pods do not count)")
        } else {
            String::new()
        };
        plan.notes.push(format!("no pod created since the apply{older}"));
        return plan;
    }
    pods.sort_by_key(|pod| std::cmp::Reverse(pod.metadata.creation_timestamp.clone().map(|t| t.0)));
    if pods.len() > MAX_PODS {
        plan.notes
            .push(format!("read the newest {MAX_PODS} of {} pods", pods.len()));
        pods.truncate(MAX_PODS);
    }
    for pod in pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(spec) = pod.spec.as_ref() else { continue };
        let container = match &gate.container {
            Some(container) => container.clone(),
            None => match spec.containers.first() {
                Some(first) => first.name.clone(),
                None => continue,
            },
        };
        let defined = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == container);
        if !defined {
            let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            plan.notes.push(format!(
                "pod {pod_name} has no container {container} (it has {})",
                names.join(", ")
            ));
            continue;
        }
        plan.container = Some(container.clone());
        if !container_started(&pod, &container) {
            plan.notes
                .push(format!("pod {pod_name}: container {container} has not started"));
            continue;
        }
        plan.targets.push(LogTarget {
            pod: pod_name,
            container,
        });
    }
    plan
}

/// Whether `container` of `pod` has run (is running, or ran and ended): only then
/// has it a log to read.
fn container_started(pod: &Pod, container: &str) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|s| s.name == container)
        .is_some_and(|s| {
            let state = s.state.as_ref();
            state.is_some_and(|state| state.running.is_some() || state.terminated.is_some())
                || s.last_state
                    .as_ref()
                    .is_some_and(|last| last.terminated.is_some())
        })
}

fn owned_by(meta: &ObjectMeta, owner: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|reference| Some(&reference.uid) == owner.uid.as_ref())
}

/// The verdict of one probe, given what it read: `logs[i]` is the log of
/// `plan.targets[i]` (or why it could not be read). `now - applied_at` against
/// `within` decides between waiting and failing.
pub fn judge(
    gate: &LogsGate,
    pattern: &Regex,
    within: Duration,
    plan: &LogPlan,
    logs: &[Result<String, String>],
    applied_at: Timestamp,
    now: Timestamp,
) -> Observation {
    let container = match &plan.container {
        Some(container) => format!("container {container}"),
        None => "first container".to_string(),
    };
    let what = format!(
        "{}, {container}, pattern {:?}",
        plan.workload,
        truncate(&gate.pattern, MAX_QUOTED_CHARS)
    );
    let mut problems = plan.notes.clone();
    for (target, log) in plan.targets.iter().zip(logs) {
        match log {
            Ok(text) => {
                if let Some(line) = text.lines().find(|line| pattern.is_match(line)) {
                    return Observation::Probe(ProbeOutcome::passed(format!(
                        "{what}: pod {} logged {:?}",
                        target.pod,
                        truncate(line, MAX_QUOTED_CHARS)
                    )));
                }
            }
            Err(error) => problems.push(format!(
                "pod {}: {}",
                target.pod,
                truncate(error, MAX_QUOTED_CHARS)
            )),
        }
    }
    let read = plan.targets.len() - logs.iter().filter(|log| log.is_err()).count();
    let mut detail = format!("no matching line in the last {TAIL_LINES} lines of {read} pods");
    if !problems.is_empty() {
        detail.push_str("; ");
        detail.push_str(&problems.join("; "));
    }
    let waited = Duration::from_secs(u64::try_from(now.as_second() - applied_at.as_second()).unwrap_or(0));
    if waited >= within {
        Observation::Final(format!(
            "{what}: no line matched within {} of the apply ({detail})",
            seconds(within)
        ))
    } else {
        Observation::Waiting(format!(
            "{what}: waiting for a matching line, {} of {} since the apply ({detail})",
            seconds(waited),
            seconds(within)
        ))
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// How [`read_logs`] starts the error of a read the API server refused to the client's
/// identity (403): the app's identity may not read that log, which is a problem of
/// the Runbook or of the identity's rights, never a verdict on the revision.
pub const REFUSED: &str = "refused: ";

/// Reads the log of every target in `namespace`, all at once, each within `timeout`,
/// with `client`: the app's own (impersonated) client, so that a log is read only
/// where the app's identity may read it.
pub async fn read_logs(
    client: &kube::Client,
    namespace: &str,
    targets: &[LogTarget],
    timeout: Duration,
) -> Vec<Result<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let reads = targets.iter().map(|target| {
        let pods = pods.clone();
        async move {
            let params = LogParams {
                container: Some(target.container.clone()),
                tail_lines: Some(TAIL_LINES),
                limit_bytes: Some(LIMIT_BYTES),
                ..LogParams::default()
            };
            match tokio::time::timeout(timeout, pods.logs(&target.pod, &params)).await {
                Err(_) => Err(format!("no log within {}", seconds(timeout))),
                Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(format!(
                    "{REFUSED}{}",
                    crate::failure::describe_forbidden(&status.message)
                )),
                Ok(Err(kube::Error::Api(status))) => Err(status.message),
                Ok(Err(error)) => Err(error.to_string()),
                Ok(Ok(text)) => Ok(text),
            }
        }
    });
    join_all(reads).await
}

/// One probe of `gate`: finds the new pods of its workload in `view`, reads their
/// logs with `client` and judges them. Never errors: a pattern or `within` that
/// cannot be read fails the gate with a message naming the field.
pub async fn probe(
    client: &kube::Client,
    view: &(dyn WorkloadView + Sync),
    gate: &LogsGate,
    namespace: &str,
    applied_at: Timestamp,
    timeout: Duration,
) -> Observation {
    let pattern = match Regex::new(&gate.pattern) {
        Ok(pattern) => pattern,
        Err(error) => {
            return Observation::Final(format!(
                "logs.pattern {:?} is not a regular expression: {error}",
                truncate(&gate.pattern, MAX_QUOTED_CHARS)
            ));
        }
    };
    let within = match gate.within.as_deref().map(parse_duration) {
        None => DEFAULT_WITHIN,
        Some(Ok(within)) => within,
        Some(Err(error)) => return Observation::Final(format!("logs.within: {error}")),
    };
    let plan = plan(view, gate, namespace, applied_at);
    let logs = read_logs(client, namespace, &plan.targets, timeout).await;
    // A log the app may not read fails nothing: the gate waits, saying why, and the
    // controller blocks the app on its Runbook (see `controller::boundary`).
    if let Some(refused) = logs
        .iter()
        .find_map(|log| log.as_ref().err().filter(|error| error.starts_with(REFUSED)))
    {
        return Observation::Waiting(format!(
            "{}: the log cannot be read as the app's identity: {}",
            plan.workload,
            truncate(&refused[REFUSED.len()..], MAX_QUOTED_CHARS)
        ));
    }
    judge(gate, &pattern, within, &plan, &logs, applied_at, Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::workload::WorkloadObjects;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use serde_json::json;

    const PATTERN_FOR_TESTS: &str = "EnrichmentWorker started";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn gate(container: Option<&str>) -> LogsGate {
        LogsGate {
            workload: "worker".into(),
            container: container.map(Into::into),
            pattern: PATTERN_FOR_TESTS.into(),
            within: None,
        }
    }

    fn deployment() -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "worker", "namespace": "shop", "uid": "d-1" },
            "spec": {
                "selector": { "matchLabels": { "app": "worker" } },
                "template": { "metadata": { "labels": { "app": "worker" } }, "spec": { "containers": [] } }
            }
        }))
        .unwrap()
    }

    fn replica_set(uid: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("worker-{uid}"), "namespace": "shop", "uid": uid,
                "labels": { "app": "worker" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "worker", "uid": "d-1" }]
            },
            "spec": { "selector": { "matchLabels": { "app": "worker" } } }
        }))
        .unwrap()
    }

    /// A pod of ReplicaSet `owner` created at `created`, its containers `worker`
    /// (running unless `started` is false) and `proxy`.
    fn pod(name: &str, owner: &str, created: i64, started: bool) -> Pod {
        let state = if started {
            json!({ "running": { "startedAt": at(created).to_string() } })
        } else {
            json!({ "waiting": { "reason": "ContainerCreating" } })
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("p-{name}"),
                "labels": { "app": "worker" },
                "creationTimestamp": at(created).to_string(),
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner }]
            },
            "spec": { "containers": [{ "name": "worker" }, { "name": "proxy" }] },
            "status": { "containerStatuses": [
                { "name": "worker", "image": "w", "imageID": "", "ready": started, "restartCount": 0, "state": state },
                { "name": "proxy", "image": "p", "imageID": "", "ready": true, "restartCount": 0,
                  "state": { "running": {} } }
            ] }
        }))
        .unwrap()
    }

    fn view(pods: Vec<Pod>) -> WorkloadObjects {
        WorkloadObjects {
            deployments: vec![deployment()],
            replica_sets: vec![replica_set("rs-old"), replica_set("rs-new")],
            pods,
            ..WorkloadObjects::default()
        }
    }

    fn target(pod: &str, container: &str) -> LogTarget {
        LogTarget {
            pod: pod.into(),
            container: container.into(),
        }
    }

    #[test]
    fn only_pods_created_since_the_apply_are_read_newest_first() {
        let objects = view(vec![
            pod("worker-old", "rs-old", 0, true),
            pod("worker-a", "rs-new", 10, true),
            pod("worker-b", "rs-new", 12, true),
            pod("worker-c", "rs-new", 13, false),
            pod("stranger", "other-rs", 20, true),
        ]);
        let plan = plan(&objects, &gate(None), "shop", at(10));
        assert_eq!(plan.workload, "Deployment shop/worker");
        assert_eq!(plan.container.as_deref(), Some("worker"));
        assert_eq!(
            plan.targets,
            [target("worker-b", "worker"), target("worker-a", "worker")]
        );
        assert_eq!(plan.notes, ["pod worker-c: container worker has not started"]);

        let proxy = plan_for(&objects, Some("proxy"));
        assert_eq!(proxy.targets.len(), 3, "{proxy:?}");
        let missing = plan_for(&objects, Some("sidecar"));
        assert!(missing.targets.is_empty());
        assert!(
            missing.notes[0].ends_with("has no container sidecar (it has worker, proxy)"),
            "{:?}",
            missing.notes
        );
    }

    fn plan_for(objects: &WorkloadObjects, container: Option<&str>) -> LogPlan {
        plan(objects, &gate(container), "shop", at(10))
    }

    #[test]
    fn older_pods_and_missing_workloads_leave_nothing_to_read() {
        let objects = view(vec![pod("worker-old", "rs-old", 0, true)]);
        let plan_now = plan(&objects, &gate(None), "shop", at(10));
        assert!(plan_now.targets.is_empty());
        assert_eq!(
            plan_now.notes,
            ["no pod created since the apply (1 older pods do not count)"]
        );

        let other = LogsGate {
            workload: "api".into(),
            ..gate(None)
        };
        let missing = plan(&objects, &other, "shop", at(10));
        assert_eq!(missing.workload, "workload shop/api");
        let pattern = Regex::new(PATTERN_FOR_TESTS).unwrap();
        let waiting = judge(&other, &pattern, DEFAULT_WITHIN, &missing, &[], at(10), at(11));
        assert!(
            matches!(&waiting, Observation::Waiting(m) if m.starts_with(
                "workload shop/api, first container, pattern \"EnrichmentWorker started\": waiting"
            )),
            "{waiting:?}"
        );
        assert_eq!(
            missing.notes,
            ["no Deployment, StatefulSet or DaemonSet shop/api found"]
        );
    }

    fn judged(logs: &[Result<String, String>], now: Timestamp) -> Observation {
        let plan = LogPlan {
            workload: "Deployment shop/worker".into(),
            container: Some("worker".into()),
            targets: vec![target("worker-b", "worker"), target("worker-a", "worker")],
            notes: vec![],
        };
        let pattern = Regex::new("EnrichmentWorker started").unwrap();
        judge(&gate(None), &pattern, DEFAULT_WITHIN, &plan, logs, at(0), now)
    }

    #[test]
    fn a_matching_line_in_any_pod_passes() {
        let observation = judged(
            &[
                Err("container \"worker\" in pod \"worker-b\" is waiting to start".into()),
                Ok("booting\nEnrichmentWorker started (queue enrichment)\n".into()),
            ],
            at(5),
        );
        let Observation::Probe(outcome) = observation else {
            panic!("{observation:?}")
        };
        assert!(outcome.passed);
        assert_eq!(
            outcome.message,
            "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": \
             pod worker-a logged \"EnrichmentWorker started (queue enrichment)\""
        );
    }

    #[test]
    fn no_match_waits_until_within_then_fails() {
        let logs = [
            Ok("EnrichmentWorker crashed\n".to_string()),
            Err("pods \"worker-a\" not found".into()),
        ];
        let waiting = judged(&logs, at(59));
        let Observation::Waiting(message) = waiting else {
            panic!("{waiting:?}")
        };
        assert_eq!(
            message,
            "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": waiting for a \
             matching line, 59s of 60s since the apply (no matching line in the last 500 lines of 1 pods; \
             pod worker-a: pods \"worker-a\" not found)"
        );
        let failed = judged(&logs, at(60));
        let Observation::Final(message) = failed else {
            panic!("{failed:?}")
        };
        assert!(
            message.starts_with(
                "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": \
                 no line matched within 60s of the apply (no matching line"
            ),
            "{message}"
        );
    }

    #[test]
    fn patterns_are_regular_expressions_matched_per_line() {
        let pattern = Regex::new(r"^\[worker\] started in \d+ms$").unwrap();
        let plan = LogPlan {
            targets: vec![target("p", "c")],
            ..LogPlan::default()
        };
        let logs = [Ok("x\n[worker] started in 42ms\ny\n".to_string())];
        let verdict = judge(&gate(None), &pattern, DEFAULT_WITHIN, &plan, &logs, at(0), at(1));
        assert!(
            matches!(verdict, Observation::Probe(ProbeOutcome { passed: true, .. })),
            "{verdict:?}"
        );
        let logs = [Ok("x [worker] started in 42ms\n".to_string())];
        let verdict = judge(&gate(None), &pattern, DEFAULT_WITHIN, &plan, &logs, at(0), at(1));
        assert!(
            matches!(verdict, Observation::Waiting(_)),
            "anchored: {verdict:?}"
        );
    }
}
