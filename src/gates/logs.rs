//! The Runbook `logs` gate: a pod that serves the revision being verified logs a
//! line matching `pattern` within `within` (default 60s) of the apply
//! ("EnrichmentWorker started").
//!
//! - The pods read are those of the workload's current ReplicaSet (StatefulSet,
//!   DaemonSet: current controller revision), whenever created: see
//!   [`serving_pods`]. A pod of another revision proves nothing about this one.
//! - A pod created at or after the apply is read whole (the last [`TAIL_LINES`]
//!   lines); an older one only since the apply (`sinceTime`): what it logged before
//!   was logged under another revision.
//! - A revision that rolled no pod (a ConfigMap-only commit, a rollback onto pods
//!   that never went away) passes on a line its pods logged since the apply, and
//!   otherwise the gate does not apply ([`Observation::NotApplicable`]): stated in
//!   the history, never a failure.
//! - Logs are read through the `pods/log` API, at most [`LIMIT_BYTES`] each, of the
//!   gate's `container` (default: the pod's first container), pods created since the
//!   apply first, newest first, at most [`MAX_PODS`] per probe.
//! - The gate passes at the first matching line and stays passed (a line that
//!   scrolled out of the tail since is not a failure). Until `within` has passed
//!   since the apply, not matching yet is waiting, not failing; then the gate fails
//!   at once, whatever its `failureThreshold`.
//!
//! Messages name the workload, the container and the pattern. [`plan`] (which pods
//! to read, from the watch caches) and [`judge`] are pure; [`probe`] does the I/O.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::LogParams;
use regex::Regex;

use super::http::ProbeOutcome;
use super::workload::{Serving, WorkloadView, serving_pods};
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
    /// Read only the lines logged since then: set for a pod created before the apply,
    /// whose earlier lines were logged under another revision.
    pub since: Option<Timestamp>,
}

/// Which logs a probe reads, and what it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPlan {
    /// The workload as messages name it: `Deployment shop/worker`.
    pub workload: String,
    /// The container read (`None`: the gate names none and no pod was found to
    /// tell the first container's name).
    pub container: Option<String>,
    /// Pods created since the apply first, then older pods that serve the revision;
    /// newest first within each.
    pub targets: Vec<LogTarget>,
    /// The revision rolled no pod: every pod that serves it was created before the
    /// apply (a ConfigMap-only commit, a rollback onto pods that never went away).
    pub rolled_no_pod: bool,
    /// Why there is nothing (more) to read: no such workload, no new pod, a pod
    /// whose container has not started.
    pub notes: Vec<String>,
}

/// The pods that serve the current revision of the workload `gate.workload` in
/// `namespace` (whenever created) whose container has started, from `view` (the
/// watch caches): those created at or after `applied_at` first, newest first.
pub fn plan(view: &dyn WorkloadView, gate: &LogsGate, namespace: &str, applied_at: Timestamp) -> LogPlan {
    let name = gate.workload.as_str();
    let mut plan = LogPlan {
        workload: format!("workload {namespace}/{name}"),
        container: gate.container.clone(),
        ..LogPlan::default()
    };
    let serving = match serving_pods(view, namespace, name) {
        Serving::NotFound => {
            plan.notes.push(format!(
                "no Deployment, StatefulSet or DaemonSet {namespace}/{name} found"
            ));
            return plan;
        }
        Serving::Unknown { workload, why } => {
            plan.workload = workload;
            plan.notes.push(why);
            return plan;
        }
        Serving::Found(serving) => serving,
    };
    plan.workload = serving.workload;
    // creationTimestamp has whole seconds: a pod created in the second of the apply counts.
    let since_apply = |pod: &Pod| {
        pod.metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|created| created.0.as_second() >= applied_at.as_second())
    };
    let mut pods = serving.pods;
    let new = pods.iter().filter(|pod| since_apply(pod)).count();
    if new == 0 {
        let older = serving.others + pods.len();
        let older = if older > 0 {
            format!(" ({older} older pods do not count)")
        } else {
            String::new()
        };
        plan.notes.push(format!("no pod created since the apply{older}"));
        // Fewer pods than the controller wants: the view has not seen them all, and
        // those it lacks may be new.
        if pods.is_empty() || i32::try_from(pods.len()).unwrap_or(i32::MAX) < serving.expected {
            return plan;
        }
        plan.rolled_no_pod = true;
    }
    // Pods created for the revision first (their whole log is the revision's), then
    // the older ones that serve it; newest first within each.
    pods.sort_by_key(|pod| {
        (
            !since_apply(pod),
            std::cmp::Reverse(pod.metadata.creation_timestamp.clone().map(|t| t.0)),
        )
    });
    if pods.len() > MAX_PODS {
        plan.notes
            .push(format!("read the newest {MAX_PODS} of {} pods", pods.len()));
        pods.truncate(MAX_PODS);
    }
    // `sinceTime` has whole seconds too: from the second of the apply.
    let apply_second = Timestamp::from_second(applied_at.as_second()).unwrap_or(applied_at);
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
            since: (!since_apply(&pod)).then_some(apply_second),
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
                    let since = if target.since.is_some() {
                        " since the apply"
                    } else {
                        ""
                    };
                    return Observation::Probe(ProbeOutcome::passed(format!(
                        "{what}: pod {} logged {:?}{since}",
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
    // The pods that serve a revision that rolled no pod started under an earlier
    // revision and logged what they log at start then; their lines since the apply
    // hold no such line unless the app logs it again (e.g. on reload). With no line,
    // there is nothing here to judge the revision by: the gate does not apply, at
    // once rather than after `within`, since waiting would not bring a start-up line
    // from pods that do not start. A rollback onto pods that never went away is the
    // same case: they are the pods of the revision returned to, judged as already
    // proven (it passed its gates when it was deployed); the workload gate still
    // judges what happened to them since the apply.
    if plan.rolled_no_pod {
        problems.push(format!(
            "the {read} pods serving it logged no matching line since the apply"
        ));
        return Observation::NotApplicable(format!(
            "{what}: the gate does not apply, the revision rolled no pod: {}",
            problems.join("; ")
        ));
    }
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
                since_time: target.since,
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

/// One probe of `gate`: finds the pods serving the revision in `view`, reads their
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

    /// Deployment `shop/worker` at revision `revision` (its controller has observed
    /// the latest generation).
    fn deployment_at(revision: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {
                "name": "worker", "namespace": "shop", "uid": "d-1", "generation": 2,
                "annotations": { "deployment.kubernetes.io/revision": revision }
            },
            "spec": {
                "selector": { "matchLabels": { "app": "worker" } },
                "template": { "metadata": { "labels": { "app": "worker" } }, "spec": { "containers": [] } }
            },
            "status": { "observedGeneration": 2 }
        }))
        .unwrap()
    }

    fn deployment() -> Deployment {
        deployment_at("2")
    }

    /// ReplicaSet `uid` of the Deployment at `revision`, wanting `replicas` pods.
    fn replica_set_at(uid: &str, revision: &str, replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("worker-{uid}"), "namespace": "shop", "uid": uid,
                "labels": { "app": "worker" },
                "annotations": { "deployment.kubernetes.io/revision": revision },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "worker", "uid": "d-1" }]
            },
            "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": "worker" } } }
        }))
        .unwrap()
    }

    /// `rs-old` is revision 1, `rs-new` revision 2 (the current one: see [`deployment`]).
    fn replica_set(uid: &str) -> ReplicaSet {
        let revision = if uid == "rs-old" { "1" } else { "2" };
        replica_set_at(uid, revision, 3)
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
            since: None,
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
            rolled_no_pod: false,
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

    fn since(pod: &str, applied: i64) -> LogTarget {
        LogTarget {
            since: Some(at(applied)),
            ..target(pod, "worker")
        }
    }

    #[test]
    fn a_revision_that_rolled_no_pod_reads_its_serving_pods_since_the_apply() {
        // A ConfigMap-only commit: the current ReplicaSet is the one the pods were
        // made for, before the apply.
        let objects = view(vec![
            pod("worker-old", "rs-old", 0, true),
            pod("worker-a", "rs-new", 3, true),
            pod("worker-b", "rs-new", 5, true),
            pod("worker-c", "rs-new", 4, true),
        ]);
        let plan = plan(&objects, &gate(None), "shop", at(10));
        assert!(plan.rolled_no_pod);
        assert_eq!(
            plan.targets,
            [
                since("worker-b", 10),
                since("worker-c", 10),
                since("worker-a", 10)
            ]
        );
        assert_eq!(
            plan.notes,
            ["no pod created since the apply (4 older pods do not count)"]
        );

        // A rollback onto the ReplicaSet whose pod never went away: it is current again.
        let rolled_back = WorkloadObjects {
            deployments: vec![deployment_at("3")],
            replica_sets: vec![replica_set_at("rs-old", "3", 1), replica_set_at("rs-new", "2", 0)],
            pods: vec![pod("worker-old", "rs-old", 0, true)],
            ..WorkloadObjects::default()
        };
        let plan = plan_for(&rolled_back, Some("worker"));
        assert!(plan.rolled_no_pod);
        assert_eq!(plan.targets, [since("worker-old", 10)]);
    }

    #[test]
    fn pods_of_the_revision_come_first_then_older_ones_read_since_the_apply() {
        // A rollback that scales the returned-to ReplicaSet up: one pod survived, one is new.
        let objects = WorkloadObjects {
            deployments: vec![deployment_at("3")],
            replica_sets: vec![replica_set_at("rs-old", "3", 2), replica_set_at("rs-new", "2", 0)],
            pods: vec![
                pod("worker-survivor", "rs-old", 0, true),
                pod("worker-new", "rs-old", 11, true),
                pod("worker-crashing", "rs-new", 5, true),
            ],
            ..WorkloadObjects::default()
        };
        let plan = plan_for(&objects, None);
        assert!(!plan.rolled_no_pod, "a pod was created for it");
        assert_eq!(
            plan.targets,
            [target("worker-new", "worker"), since("worker-survivor", 10)]
        );
    }

    #[test]
    fn serving_pods_are_waited_for_until_the_view_shows_them() {
        // The controller has not observed the apply: its revision annotation still
        // names the previous ReplicaSet, whose pods prove nothing.
        let mut stale = deployment();
        stale.metadata.generation = Some(3);
        let objects = WorkloadObjects {
            deployments: vec![stale],
            ..view(vec![pod("worker-a", "rs-new", 0, true)])
        };
        let plan_now = plan_for(&objects, None);
        assert!(!plan_now.rolled_no_pod && plan_now.targets.is_empty());
        assert_eq!(
            plan_now.notes,
            ["waiting for the Deployment controller to observe the latest generation"]
        );

        // Fewer older pods than the ReplicaSet wants: the others may be new ones the
        // view does not show yet.
        let objects = view(vec![pod("worker-a", "rs-new", 0, true)]);
        let plan_now = plan_for(&objects, None);
        assert!(!plan_now.rolled_no_pod && plan_now.targets.is_empty());
    }

    fn rolled_no_pod_plan() -> LogPlan {
        LogPlan {
            workload: "Deployment shop/worker".into(),
            container: Some("worker".into()),
            targets: vec![since("worker-a", 0)],
            rolled_no_pod: true,
            notes: vec!["no pod created since the apply (1 older pods do not count)".into()],
        }
    }

    #[test]
    fn a_revision_that_rolled_no_pod_passes_on_a_line_since_or_the_gate_does_not_apply() {
        let pattern = Regex::new(PATTERN_FOR_TESTS).unwrap();
        let plan = rolled_no_pod_plan();
        let judge_now = |logs: &[Result<String, String>]| {
            judge(&gate(None), &pattern, DEFAULT_WITHIN, &plan, logs, at(0), at(1))
        };
        let reloaded = judge_now(&[Ok("config reloaded; EnrichmentWorker started\n".into())]);
        let Observation::Probe(outcome) = reloaded else {
            panic!("{reloaded:?}")
        };
        assert!(outcome.passed);
        assert!(
            outcome.message.ends_with(
                "pod worker-a logged \"config reloaded; EnrichmentWorker started\" since the apply"
            ),
            "{outcome:?}"
        );

        // Nothing since the apply: not applicable at once, long before `within`.
        let quiet = judge_now(&[Ok(String::new())]);
        assert_eq!(
            quiet,
            Observation::NotApplicable(
                "Deployment shop/worker, container worker, pattern \"EnrichmentWorker started\": the gate \
                 does not apply, the revision rolled no pod: no pod created since the apply (1 older pods \
                 do not count); the 1 pods serving it logged no matching line since the apply"
                    .into()
            )
        );
        // A log that cannot be read leaves nothing to judge either: never a failure.
        let unreadable = judge(
            &gate(None),
            &pattern,
            DEFAULT_WITHIN,
            &plan,
            &[Err("pods \"worker-a\" not found".into())],
            at(0),
            at(600),
        );
        assert!(
            matches!(&unreadable, Observation::NotApplicable(m) if m.contains("pod worker-a: pods \"worker-a\" not found")),
            "{unreadable:?}"
        );
    }
}
