//! Unit tests of the workload gate over the plain-list view: every rule, no API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::api::core::v1::ContainerStatus;
use kube::ResourceExt;
use kube::runtime::reflector;
use kube::runtime::watcher;

use super::*;
use crate::gates::truncate;

const MAX_RESTARTS: i32 = 3;

/// No pod older than the revision, applied at the epoch: every restart and every
/// termination counts (the gate as it was before baselines).
static NO_HISTORY: RestartBaseline = RestartBaseline {
    pods: BTreeMap::new(),
    generations: BTreeMap::new(),
};

fn no_history() -> PodCriteria<'static> {
    PodCriteria {
        baseline: &NO_HISTORY,
        applied_at: Timestamp::UNIX_EPOCH,
        max_restarts: MAX_RESTARTS,
    }
}

fn at(rfc3339: &str) -> Timestamp {
    rfc3339.parse().expect("RFC 3339 timestamp")
}

fn arcs<T: Clone>(items: &[T]) -> Vec<Arc<T>> {
    items.iter().cloned().map(Arc::new).collect()
}

fn deployment_verdict(deploy: &Deployment, replica_sets: &[ReplicaSet], pods: &[Pod]) -> WorkloadVerdict {
    evaluate_deployment(deploy, &arcs(replica_sets), &arcs(pods), &no_history())
}

fn stateful_set_verdict(sts: &StatefulSet, pods: &[Pod]) -> WorkloadVerdict {
    evaluate_stateful_set(sts, &arcs(pods), &no_history())
}

fn daemon_set_verdict(ds: &DaemonSet, revisions: &[ControllerRevision], pods: &[Pod]) -> WorkloadVerdict {
    evaluate_daemon_set(ds, &arcs(revisions), &arcs(pods), &no_history())
}

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
  uid: {name}-uid
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
    format!("    restartCount: {restarts}\n    state: {{running: {{startedAt: \"2024-01-01T00:00:00Z\"}}}}")
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
    let verdict = deployment_verdict(&complete(), &replica_sets(), &pods);
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
    let verdict = deployment_verdict(&deployment(1, 2, 2, 2, 2), &replica_sets(), &pods);
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
    let verdict = deployment_verdict(&deploy, &replica_sets(), &[]);
    assert_eq!(verdict.verdict, Verdict::Pending);
}

#[test]
fn too_few_updated_replicas_is_pending() {
    let verdict = deployment_verdict(&deployment(2, 2, 1, 2, 1), &replica_sets(), &[]);
    assert_eq!(
        verdict,
        WorkloadVerdict::pending("Deployment shop/backend: 1 of 2 replicas updated")
    );
}

#[test]
fn old_replicas_left_is_pending() {
    let verdict = deployment_verdict(&deployment(2, 2, 2, 3, 2), &replica_sets(), &[]);
    assert_eq!(
        verdict,
        WorkloadVerdict::pending("Deployment shop/backend: 1 old replicas pending termination")
    );
}

#[test]
fn unavailable_updated_replicas_is_pending() {
    let pods = [pod("backend-7d9-a", "7d9", &waiting("ContainerCreating", 0))];
    let verdict = deployment_verdict(&deployment(2, 2, 2, 2, 1), &replica_sets(), &pods);
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
        deployment_verdict(&deploy, &replica_sets(), &[]).verdict,
        Verdict::Passed
    );
    deploy.status.as_mut().expect("status").available_replicas = Some(0);
    assert_eq!(
        deployment_verdict(&deploy, &replica_sets(), &[]).verdict,
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
    let verdict = deployment_verdict(&deploy, &replica_sets(), &[]);
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
        deployment_verdict(&deploy, &replica_sets(), &[]).verdict,
        Verdict::Passed
    );
}

#[test]
fn crash_loop_in_current_replica_set_fails_with_names() {
    let pods = [
        pod("backend-7d9-a", "7d9", &running(0)),
        pod("backend-7d9-abc", "7d9", &waiting("CrashLoopBackOff", 4)),
    ];
    let verdict = deployment_verdict(&deployment(2, 2, 2, 2, 1), &replica_sets(), &pods);
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
    let rolling = deployment_verdict(&deployment(2, 1, 1, 2, 1), &replica_sets(), &pods);
    assert_eq!(rolling.verdict, Verdict::Pending, "{}", rolling.message);
    let done = deployment_verdict(&deployment(2, 1, 1, 1, 1), &replica_sets(), &pods);
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
        let verdict = deployment_verdict(&deployment(2, 1, 1, 1, 0), &replica_sets(), &pods);
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
        let verdict = deployment_verdict(&deployment(2, 1, 1, 1, 0), &replica_sets(), &pods);
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
        let verdict = deployment_verdict(&complete(), &replica_sets(), &pods);
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
        deployment_verdict(&complete(), &replica_sets(), &pods).verdict,
        Verdict::Passed
    );
}

#[test]
fn restarts_above_the_limit_fail_and_at_the_limit_do_not() {
    let at_limit = [pod("backend-7d9-a", "7d9", &running(MAX_RESTARTS))];
    assert_eq!(
        deployment_verdict(&complete(), &replica_sets(), &at_limit).verdict,
        Verdict::Passed
    );
    let above = [pod("backend-7d9-a", "7d9", &running(MAX_RESTARTS + 1))];
    assert_eq!(
        deployment_verdict(&complete(), &replica_sets(), &above),
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
    let verdict = deployment_verdict(&deployment(2, 1, 1, 1, 0), &replica_sets(), &[failing]);
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
    let verdict = deployment_verdict(&complete(), &replica_sets(), &[orphan_labelled]);
    assert_eq!(verdict.verdict, Verdict::Failed);
}

#[test]
fn pods_are_matched_by_owner_reference_without_labels() {
    let mut unlabelled = pod("backend-7d9-a", "7d9", &waiting("ErrImagePull", 0));
    unlabelled.metadata.labels = None;
    let verdict = deployment_verdict(&complete(), &replica_sets(), &[unlabelled]);
    assert_eq!(verdict.verdict, Verdict::Failed);
}

#[test]
fn no_replica_set_with_the_current_revision_is_pending() {
    let only_old = [replica_set("backend-old", "old", "1")];
    let verdict = deployment_verdict(&complete(), &only_old, &[]);
    assert_eq!(verdict.verdict, Verdict::Pending);
    assert!(verdict.message.contains("new ReplicaSet"), "{}", verdict.message);
}

#[test]
fn replica_sets_of_another_deployment_are_not_current() {
    let mut foreign = replica_set("backend-7d9", "7d9", "2");
    foreign.metadata.owner_references.as_mut().expect("owners")[0].uid = "other-uid".into();
    let verdict = deployment_verdict(&complete(), &[foreign], &[]);
    assert_eq!(verdict.verdict, Verdict::Pending);
}

// --- StatefulSet ---

/// StatefulSet `shop/db` at generation 3, observed, without an update strategy
/// (as a fixture; the API server always sets `rollingUpdate: {partition: 0}`).
fn stateful_set(replicas: i32, ready: i32, updated: i32, current: &str, update: &str) -> StatefulSet {
    let current_replicas = if current == update {
        updated
    } else {
        replicas - updated
    };
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
  currentReplicas: {current_replicas}
  currentRevision: {current}
  updateRevision: {update}
"#
    ))
}

fn with_strategy(mut sts: StatefulSet, strategy: &str) -> StatefulSet {
    sts.spec.as_mut().expect("spec").update_strategy = Some(parse(strategy));
    sts
}

fn sts_pod(name: &str, revision: &str, container_status: &str) -> Pod {
    parse(&format!(
        r#"
metadata:
  name: {name}
  namespace: shop
  uid: {name}-{revision}-uid
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
        stateful_set_verdict(&done, &[]),
        WorkloadVerdict::passed("StatefulSet shop/db: rolled out (2 replicas)")
    );

    // Without a rollingUpdate block, kubectl waits for currentRevision.
    let rolling = stateful_set(2, 2, 1, "db-old", "db-new");
    assert_eq!(
        stateful_set_verdict(&rolling, &[]),
        WorkloadVerdict::pending(
            "StatefulSet shop/db: 1 of 2 replicas updated (1 still at the current revision)"
        )
    );

    let not_ready = stateful_set(2, 1, 2, "db-new", "db-new");
    assert_eq!(
        stateful_set_verdict(&not_ready, &[]),
        WorkloadVerdict::pending("StatefulSet shop/db: 1 of 2 replicas ready")
    );

    let mut unobserved = done.clone();
    unobserved.status.as_mut().expect("status").observed_generation = Some(2);
    assert_eq!(
        stateful_set_verdict(&unobserved, &[]),
        WorkloadVerdict::pending(
            "StatefulSet shop/db: waiting for the StatefulSet controller to observe generation 3"
        )
    );
    // kubectl: an observedGeneration of 0 has not been observed at all.
    let mut never_observed = done.clone();
    never_observed.metadata.generation = Some(0);
    never_observed
        .status
        .as_mut()
        .expect("status")
        .observed_generation = Some(0);
    assert_eq!(
        stateful_set_verdict(&never_observed, &[]).verdict,
        Verdict::Pending
    );

    let mut no_update_revision = done;
    no_update_revision
        .status
        .as_mut()
        .expect("status")
        .update_revision = None;
    assert_eq!(
        stateful_set_verdict(&no_update_revision, &[]).verdict,
        Verdict::Pending
    );
}

#[test]
fn stateful_set_rolling_update_counts_updated_replicas_as_kubectl_does() {
    let defaulted = "{type: RollingUpdate, rollingUpdate: {partition: 0}}";
    let rolling = with_strategy(stateful_set(2, 2, 1, "db-old", "db-new"), defaulted);
    assert_eq!(
        stateful_set_verdict(&rolling, &[]),
        WorkloadVerdict::pending("StatefulSet shop/db: 1 of 2 replicas updated")
    );
    // Every replica updated and ready: done, even before the controller moves
    // currentRevision (kubectl does not look at it on this path).
    let updated = with_strategy(stateful_set(2, 2, 2, "db-old", "db-new"), defaulted);
    assert_eq!(stateful_set_verdict(&updated, &[]).verdict, Verdict::Passed);
    // Ready is checked first: an updated pod that is not ready yet keeps it pending.
    let unready = with_strategy(stateful_set(2, 1, 2, "db-old", "db-new"), defaulted);
    assert_eq!(
        stateful_set_verdict(&unready, &[]),
        WorkloadVerdict::pending("StatefulSet shop/db: 1 of 2 replicas ready")
    );
}

#[test]
fn stateful_set_fails_only_on_pods_of_the_update_revision() {
    let rolling = stateful_set(2, 1, 1, "db-old", "db-new");
    let old_crashing = [sts_pod("db-0", "db-old", &waiting("CrashLoopBackOff", 7))];
    assert_eq!(
        stateful_set_verdict(&rolling, &old_crashing).verdict,
        Verdict::Pending
    );

    let new_crashing = [sts_pod("db-1", "db-new", &waiting("ImagePullBackOff", 0))];
    let verdict = stateful_set_verdict(&rolling, &new_crashing);
    assert_eq!(verdict.verdict, Verdict::Failed);
    assert!(
        verdict
            .message
            .starts_with("StatefulSet shop/db: pod db-1 container postgres: ImagePullBackOff (restarts 0)"),
        "{}",
        verdict.message
    );
}

#[test]
fn stateful_set_partition_waits_only_for_the_pods_above_it() {
    let partitioned = "{type: RollingUpdate, rollingUpdate: {partition: 2}}";
    let above_done = with_strategy(stateful_set(3, 3, 1, "db-old", "db-new"), partitioned);
    assert_eq!(
        stateful_set_verdict(&above_done, &[]),
        WorkloadVerdict::passed("StatefulSet shop/db: rolled out to the 1 of 3 replicas above partition 2")
    );
    let above_waiting = with_strategy(stateful_set(3, 3, 0, "db-old", "db-new"), partitioned);
    assert_eq!(
        stateful_set_verdict(&above_waiting, &[]),
        WorkloadVerdict::pending("StatefulSet shop/db: 0 of 1 replicas above partition 2 updated")
    );
    // A partition at or above the replica count updates nothing: done at once.
    let everything_held = "{type: RollingUpdate, rollingUpdate: {partition: 5}}";
    let held = with_strategy(stateful_set(3, 3, 0, "db-old", "db-new"), everything_held);
    assert_eq!(stateful_set_verdict(&held, &[]).verdict, Verdict::Passed);
    // The pods below the partition stay at the old revision and are not judged.
    let old_crashing = [sts_pod("db-0", "db-old", &waiting("CrashLoopBackOff", 9))];
    assert_eq!(
        stateful_set_verdict(&above_done, &old_crashing).verdict,
        Verdict::Passed
    );
}

#[test]
fn stateful_set_on_delete_passes_once_every_replica_is_ready() {
    let on_delete = with_strategy(stateful_set(2, 2, 0, "db-old", "db-new"), "{type: OnDelete}");
    assert_eq!(
        stateful_set_verdict(&on_delete, &[]),
        WorkloadVerdict::passed(
            "StatefulSet shop/db: 2 replicas ready, 0 at the update revision (OnDelete: pods update when deleted)"
        )
    );
    let unready = with_strategy(stateful_set(2, 1, 0, "db-old", "db-new"), "{type: OnDelete}");
    assert_eq!(stateful_set_verdict(&unready, &[]).verdict, Verdict::Pending);
    // A pod someone deleted comes back at the update revision and is judged.
    let recreated = [sts_pod("db-1", "db-new", &waiting("CrashLoopBackOff", 4))];
    assert_eq!(
        stateful_set_verdict(&on_delete, &recreated).verdict,
        Verdict::Failed
    );
}

// --- DaemonSet ---

/// DaemonSet `ops/agent` at generation 1 running image `agent:2`.
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
  numberUnavailable: {unavailable}
"#,
        unavailable = desired - available
    ))
}

/// A revision of `ops/agent` as the DaemonSet controller stores it: the template
/// (with image `agent:{version}`) as a replacing patch.
fn controller_revision(hash: &str, revision: i64, version: u32) -> ControllerRevision {
    parse(&format!(
        r#"
metadata:
  name: agent-{hash}
  namespace: ops
  labels: {{app: agent, controller-revision-hash: "{hash}"}}
  ownerReferences: [{{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds-uid}}]
data:
  spec:
    template:
      "$patch": replace
      metadata: {{creationTimestamp: null, labels: {{app: agent}}}}
      spec: {{containers: [{{name: agent, image: "agent:{version}"}}]}}
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
  uid: {name}-uid
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
    let revisions = [controller_revision("aaa", 1, 1), controller_revision("bbb", 2, 2)];
    assert_eq!(
        daemon_set_verdict(&daemon_set(0, 0, 0), &revisions, &[]),
        WorkloadVerdict::passed("DaemonSet ops/agent: no nodes to schedule on")
    );
    assert_eq!(
        daemon_set_verdict(&daemon_set(2, 2, 2), &revisions, &[]),
        WorkloadVerdict::passed("DaemonSet ops/agent: rolled out on 2 nodes")
    );
    assert_eq!(
        daemon_set_verdict(&daemon_set(2, 1, 2), &revisions, &[]),
        WorkloadVerdict::pending("DaemonSet ops/agent: 1 of 2 updated pods scheduled")
    );
    assert_eq!(
        daemon_set_verdict(&daemon_set(2, 2, 1), &revisions, &[]),
        WorkloadVerdict::pending("DaemonSet ops/agent: 1 of 2 pods available")
    );
    let mut unavailable = daemon_set(2, 2, 2);
    unavailable.status.as_mut().expect("status").number_unavailable = Some(1);
    assert_eq!(
        daemon_set_verdict(&unavailable, &revisions, &[]).verdict,
        Verdict::Pending
    );

    let mut unobserved = daemon_set(2, 2, 2);
    unobserved.metadata.generation = Some(2);
    assert_eq!(
        daemon_set_verdict(&unobserved, &revisions, &[]),
        WorkloadVerdict::pending(
            "DaemonSet ops/agent: waiting for the DaemonSet controller to observe generation 2"
        )
    );
}

#[test]
fn daemon_set_judges_pods_of_the_current_template_only() {
    let revisions = [controller_revision("bbb", 2, 2), controller_revision("aaa", 1, 1)];
    let old = [ds_pod("agent-x", "aaa", &waiting("CrashLoopBackOff", 8))];
    assert_eq!(
        daemon_set_verdict(&daemon_set(1, 1, 1), &revisions, &old).verdict,
        Verdict::Passed
    );
    let current = [ds_pod(
        "agent-y",
        "bbb",
        &waiting("CreateContainerConfigError", 0),
    )];
    let verdict = daemon_set_verdict(&daemon_set(1, 1, 0), &revisions, &current);
    assert_eq!(verdict.verdict, Verdict::Failed);
    assert!(
        verdict
            .message
            .starts_with("DaemonSet ops/agent: pod agent-y container agent: CreateContainerConfigError"),
        "{}",
        verdict.message
    );
}

#[test]
fn daemon_set_current_revision_is_found_by_template_not_by_number() {
    // A rollback to agent:2: the controller re-numbers the old revision `aaa` above
    // `bbb` (agent:1, the failed one). Its pods are the current ones.
    let rolled_back = [controller_revision("aaa", 3, 2), controller_revision("bbb", 2, 1)];
    let failed_version = [ds_pod("agent-x", "bbb", &waiting("CrashLoopBackOff", 8))];
    assert_eq!(
        daemon_set_verdict(&daemon_set(1, 1, 1), &rolled_back, &failed_version).verdict,
        Verdict::Passed
    );
    let current = [ds_pod("agent-y", "aaa", &waiting("CrashLoopBackOff", 8))];
    assert_eq!(
        daemon_set_verdict(&daemon_set(1, 1, 1), &rolled_back, &current).verdict,
        Verdict::Failed
    );

    // A cache that has not seen the new revision yet holds only the previous
    // template: its crash-looping pods are not this template's, so wait.
    let stale = [controller_revision("bbb", 2, 1)];
    assert_eq!(
        daemon_set_verdict(&daemon_set(1, 1, 1), &stale, &failed_version),
        WorkloadVerdict::pending(
            "DaemonSet ops/agent: waiting for the DaemonSet controller to record a revision of the current template"
        )
    );
    // A revision of another DaemonSet with the same template is not ours.
    let mut foreign = controller_revision("ccc", 4, 2);
    foreign.metadata.owner_references.as_mut().expect("owners")[0].uid = "other-uid".into();
    assert_eq!(
        daemon_set_verdict(&daemon_set(1, 1, 1), &[foreign], &[]).verdict,
        Verdict::Pending
    );
}

#[test]
fn daemon_set_on_delete_waits_for_availability_not_for_updates() {
    let revisions = [controller_revision("bbb", 2, 2)];
    let mut on_delete = daemon_set(2, 0, 2);
    on_delete.spec.as_mut().expect("spec").update_strategy = Some(parse("{type: OnDelete}"));
    assert_eq!(
        daemon_set_verdict(&on_delete, &revisions, &[]),
        WorkloadVerdict::passed(
            "DaemonSet ops/agent: available on 2 nodes, 0 updated (OnDelete: pods update when deleted)"
        )
    );
    on_delete.status.as_mut().expect("status").number_available = Some(1);
    assert_eq!(
        daemon_set_verdict(&on_delete, &revisions, &[]).verdict,
        Verdict::Pending
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

// --- what happened before the apply ---

const APPLIED_AT: &str = "2026-06-01T12:00:00Z";

/// The pod `backend-7d9-a` existed before the apply with `restarts` restarts of `api`.
fn baseline_with(restarts: i32) -> RestartBaseline {
    let before = pod("backend-7d9-a", "7d9", &running(restarts));
    RestartBaseline::from_pods([&before])
}

fn verdict_since(baseline: &RestartBaseline, deploy: &Deployment, pods: &[Pod]) -> WorkloadVerdict {
    let criteria = PodCriteria {
        baseline,
        applied_at: at(APPLIED_AT),
        max_restarts: MAX_RESTARTS,
    };
    evaluate_deployment(deploy, &arcs(&replica_sets()), &arcs(pods), &criteria)
}

fn with_last_termination(status: &str, reason: &str, finished_at: &str) -> String {
    format!(
        "{status}\n    lastState: {{terminated: {{reason: {reason}, exitCode: 137, finishedAt: \"{finished_at}\"}}}}"
    )
}

#[test]
fn restarts_count_only_beyond_the_baseline() {
    let baseline = baseline_with(10);
    let same = [pod("backend-7d9-a", "7d9", &running(10))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &same).verdict,
        Verdict::Passed
    );
    let three_more = [pod("backend-7d9-a", "7d9", &running(13))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &three_more).verdict,
        Verdict::Passed
    );
    let four_more = [pod("backend-7d9-a", "7d9", &running(14))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &four_more),
        WorkloadVerdict::failed(
            "Deployment shop/backend: pod backend-7d9-a container api: restarted 4 times since the revision was applied (more than 3; 10 before)"
        )
    );
    // The same restarts on a pod the baseline does not know all count.
    let newer = [pod("backend-7d9-b", "7d9", &running(10))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &newer),
        WorkloadVerdict::failed(
            "Deployment shop/backend: pod backend-7d9-b container api: restarted 10 times (more than 3)"
        )
    );
}

#[test]
fn terminations_before_the_apply_are_history() {
    let baseline = baseline_with(10);
    let old_oom = with_last_termination(&running(10), "OOMKilled", "2026-01-01T00:00:00Z");
    let pods = [pod("backend-7d9-a", "7d9", &old_oom)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &pods).verdict,
        Verdict::Passed
    );
    // Also for a pod created under the revision: only the time decides.
    assert_eq!(
        verdict_since(&NO_HISTORY, &complete(), &pods).verdict,
        Verdict::Failed,
        "10 restarts"
    );
    let fresh_old_oom = with_last_termination(&running(0), "OOMKilled", "2026-06-01T11:59:59Z");
    let fresh = [pod("backend-7d9-b", "7d9", &fresh_old_oom)];
    assert_eq!(
        verdict_since(&NO_HISTORY, &complete(), &fresh).verdict,
        Verdict::Passed
    );

    let new_oom = with_last_termination(&running(11), "OOMKilled", "2026-06-01T12:00:01Z");
    let pods = [pod("backend-7d9-a", "7d9", &new_oom)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &pods),
        WorkloadVerdict::failed(
            "Deployment shop/backend: pod backend-7d9-a container api: OOMKilled (restarts 11, 1 since the revision was applied)"
        )
    );
    // A container killed right now (in `state`, not yet restarted) counts the same.
    let killed_now = "    restartCount: 10\n    state: {terminated: {reason: OOMKilled, exitCode: 137, finishedAt: \"2026-06-01T12:05:00Z\"}}";
    let pods = [pod("backend-7d9-a", "7d9", killed_now)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &pods).verdict,
        Verdict::Failed
    );
}

#[test]
fn a_termination_of_unknown_time_counts_only_for_a_pod_newer_than_the_baseline() {
    let baseline = baseline_with(10);
    let unknown = format!(
        "{}\n    lastState: {{terminated: {{reason: OOMKilled, exitCode: 137}}}}",
        running(10)
    );
    let older = [pod("backend-7d9-a", "7d9", &unknown)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &older).verdict,
        Verdict::Passed
    );
    let newer = [pod(
        "backend-7d9-b",
        "7d9",
        &unknown.replace("restartCount: 10", "restartCount: 1"),
    )];
    assert_eq!(
        verdict_since(&baseline, &complete(), &newer).verdict,
        Verdict::Failed
    );
}

#[test]
fn an_older_pod_in_a_failing_wait_needs_evidence_from_after_the_apply() {
    let baseline = baseline_with(10);
    // Crash-looping since before the apply, no restart since: not this revision's doing.
    let stuck = [pod("backend-7d9-a", "7d9", &waiting("CrashLoopBackOff", 10))];
    assert_eq!(
        verdict_since(&baseline, &deployment(2, 2, 2, 2, 1), &stuck),
        WorkloadVerdict::pending("Deployment shop/backend: 1 of 2 updated replicas available")
    );
    let image = [pod("backend-7d9-a", "7d9", &waiting("ImagePullBackOff", 10))];
    assert_eq!(
        verdict_since(&baseline, &deployment(2, 2, 2, 2, 1), &image).verdict,
        Verdict::Pending
    );

    // It restarted after the apply: evidence.
    let restarted = [pod("backend-7d9-a", "7d9", &waiting("CrashLoopBackOff", 11))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &restarted),
        WorkloadVerdict::failed(
            "Deployment shop/backend: pod backend-7d9-a container api: CrashLoopBackOff (restarts 11, 1 since the revision was applied)"
        )
    );
    // It terminated after the apply (an ordinary error, restart not counted yet).
    let terminated = with_last_termination(
        &waiting("CreateContainerConfigError", 10),
        "Error",
        "2026-06-01T12:00:30Z",
    );
    let pods = [pod("backend-7d9-a", "7d9", &terminated)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &pods).verdict,
        Verdict::Failed
    );
    // An old termination is no evidence.
    let old = with_last_termination(&waiting("CrashLoopBackOff", 10), "Error", "2026-05-01T00:00:00Z");
    let pods = [pod("backend-7d9-a", "7d9", &old)];
    assert_eq!(
        verdict_since(&baseline, &complete(), &pods).verdict,
        Verdict::Passed
    );

    // A pod created under the revision fails on the wait at once.
    let newer = [pod("backend-7d9-b", "7d9", &waiting("ErrImagePull", 0))];
    assert_eq!(
        verdict_since(&baseline, &complete(), &newer).verdict,
        Verdict::Failed
    );
}

#[test]
fn init_containers_have_their_own_baseline() {
    let init = |restarts: i32| -> ContainerStatus {
        parse(&format!(
            "{{name: migrate, image: 'backend:v2', imageID: '', ready: true, restartCount: {restarts}, state: {{terminated: {{reason: Completed, exitCode: 0}}}}}}"
        ))
    };
    let mut before = pod("backend-7d9-a", "7d9", &running(0));
    before.status.as_mut().expect("status").init_container_statuses = Some(vec![init(5)]);
    let baseline = RestartBaseline::from_pods([&before]);
    let mut now = before.clone();
    assert_eq!(
        verdict_since(&baseline, &complete(), &[now.clone()]).verdict,
        Verdict::Passed
    );
    now.status.as_mut().expect("status").init_container_statuses = Some(vec![init(9)]);
    let verdict = verdict_since(&baseline, &complete(), &[now]);
    assert!(
        verdict.message.ends_with(
            "init container migrate: restarted 4 times since the revision was applied (more than 3; 5 before)"
        ),
        "{}",
        verdict.message
    );
}

// --- the whole gate over a view ---

fn entry(kind: &str, namespace: &str, name: &str) -> InventoryEntry {
    InventoryEntry {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        adopted: false,
    }
}

/// shop/backend rolled out with its two ReplicaSets; its current pod is `backend-7d9-a`.
fn shop(pod_status: &str) -> WorkloadObjects {
    WorkloadObjects {
        deployments: vec![complete()],
        replica_sets: replica_sets(),
        pods: vec![pod("backend-7d9-a", "7d9", pod_status)],
        ..WorkloadObjects::default()
    }
}

#[test]
fn evaluate_workloads_judges_the_apps_workloads_of_the_inventory() {
    let objects = shop(&running(0));
    let config_map = InventoryEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("shop".into()),
        name: "backend".into(),
        adopted: false,
    };
    let mut lookalike = entry("Deployment", "shop", "backend");
    lookalike.api_version = "example.com/v1".into();
    let inventory = [entry("Deployment", "shop", "backend"), config_map, lookalike];
    let verdict = evaluate_workloads(&objects, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS);
    assert_eq!(verdict, WorkloadVerdict::passed("1 workload rolled out"));

    let with_missing = [
        entry("Deployment", "shop", "backend"),
        entry("StatefulSet", "shop", "db"),
    ];
    assert_eq!(
        evaluate_workloads(&objects, &with_missing, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS),
        WorkloadVerdict::pending("StatefulSet shop/db: not found")
    );
    // Same name, other namespace: not found either.
    assert_eq!(
        evaluate_workloads(
            &objects,
            &[entry("Deployment", "other", "backend")],
            &NO_HISTORY,
            at(APPLIED_AT),
            MAX_RESTARTS
        ),
        WorkloadVerdict::pending("Deployment other/backend: not found")
    );
}

#[test]
fn evaluate_workloads_reads_pods_by_namespace_and_selector() {
    let mut objects = shop(&running(0));
    // A crash-looping pod with the same labels in another namespace, and one of
    // another app in the same namespace: neither is backend's.
    let mut elsewhere = pod("backend-7d9-z", "7d9", &waiting("CrashLoopBackOff", 9));
    elsewhere.metadata.namespace = Some("other".into());
    let mut other_app = pod("backend-7d9-y", "7d9", &waiting("CrashLoopBackOff", 9));
    other_app.metadata.labels = Some(BTreeMap::from([
        ("app".to_string(), "frontend".to_string()),
        ("pod-template-hash".to_string(), "7d9".to_string()),
    ]));
    objects.pods.extend([elsewhere, other_app]);
    let inventory = [entry("Deployment", "shop", "backend")];
    let verdict = evaluate_workloads(&objects, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS);
    assert_eq!(verdict.verdict, Verdict::Passed, "{}", verdict.message);

    let crashing = shop(&waiting("CrashLoopBackOff", 4));
    let verdict = evaluate_workloads(&crashing, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS);
    assert_eq!(verdict.verdict, Verdict::Failed, "{}", verdict.message);
}

#[test]
fn capture_then_evaluate_ignores_history_and_catches_new_restarts() {
    let inventory = [entry("Deployment", "shop", "backend")];
    let before = shop(&with_last_termination(
        &running(10),
        "OOMKilled",
        "2026-01-01T00:00:00Z",
    ));
    let baseline = capture_baseline(&before, &inventory);
    assert_eq!(baseline.restarts("backend-7d9-a-uid", "api"), 10);
    assert_eq!(
        evaluate_workloads(&before, &inventory, &baseline, at(APPLIED_AT), MAX_RESTARTS),
        WorkloadVerdict::passed("1 workload rolled out")
    );
    // Without the baseline the old restarts fail the gate: what the baseline is for.
    assert_eq!(
        evaluate_workloads(&before, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS).verdict,
        Verdict::Failed
    );
    let later = shop(&with_last_termination(
        &running(14),
        "Error",
        "2026-06-01T12:03:00Z",
    ));
    let verdict = evaluate_workloads(&later, &inventory, &baseline, at(APPLIED_AT), MAX_RESTARTS);
    assert_eq!(verdict.verdict, Verdict::Failed, "{}", verdict.message);

    // Workloads that do not exist yet, and pods of other namespaces, add nothing.
    let mut elsewhere = pod("backend-7d9-z", "7d9", &running(3));
    elsewhere.metadata.namespace = Some("other".into());
    let mut objects = before.clone();
    objects.pods.push(elsewhere);
    let baseline = capture_baseline(
        &objects,
        &[
            entry("Deployment", "shop", "backend"),
            entry("DaemonSet", "shop", "new"),
        ],
    );
    assert_eq!(baseline.pods.keys().collect::<Vec<_>>(), ["backend-7d9-a-uid"]);
}

#[test]
fn a_cache_behind_the_applied_generation_is_pending() {
    let objects = shop(&running(0));
    let backend = entry("Deployment", "shop", "backend");
    let mut baseline = RestartBaseline::default();
    baseline.record_generation(&backend, 3);
    assert_eq!(
        evaluate_workloads(
            &objects,
            std::slice::from_ref(&backend),
            &baseline,
            at(APPLIED_AT),
            MAX_RESTARTS
        ),
        WorkloadVerdict::pending(
            "Deployment shop/backend: waiting for the watch cache to show generation 3 (it shows 2)"
        )
    );
    baseline.record_generation(&backend, 2);
    assert_eq!(
        evaluate_workloads(&objects, &[backend], &baseline, at(APPLIED_AT), MAX_RESTARTS).verdict,
        Verdict::Passed
    );
}

/// A reflector store holding `objects`, as a watcher would fill it.
fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

#[test]
fn watch_caches_are_a_view_too() {
    let mut crashing_elsewhere = pod("backend-7d9-z", "7d9", &waiting("CrashLoopBackOff", 9));
    crashing_elsewhere.metadata.namespace = Some("other".into());
    let mut objects = shop(&running(0));
    objects.pods.push(crashing_elsewhere);
    let stores = WorkloadStores {
        deployments: store_of(objects.deployments.clone()),
        stateful_sets: store_of(Vec::new()),
        daemon_sets: store_of(Vec::new()),
        replica_sets: store_of(objects.replica_sets.clone()),
        controller_revisions: store_of(Vec::new()),
        pods: store_of(objects.pods.clone()),
    };
    assert!(stores.deployment("shop", "backend").is_some());
    assert!(stores.deployment("other", "backend").is_none());
    let selector = Selector::try_from(complete().spec.expect("spec").selector).expect("selector");
    assert_eq!(stores.pods("shop", &selector).len(), 1);
    assert_eq!(stores.pods("other", &selector).len(), 1);
    assert_eq!(stores.replica_sets("shop", &selector).len(), 2);

    let inventory = [entry("Deployment", "shop", "backend")];
    assert_eq!(
        evaluate_workloads(&stores, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS),
        evaluate_workloads(&objects, &inventory, &NO_HISTORY, at(APPLIED_AT), MAX_RESTARTS),
    );
    assert_eq!(
        capture_baseline(&stores, &inventory),
        capture_baseline(&objects, &inventory)
    );
}

// --- a rollback onto pods that never went away ---

#[test]
fn a_rollback_onto_a_surviving_pod_waits_for_the_crashing_one_to_go_then_passes() {
    // A 1-replica rollout of revision 2 crash-loops and keeps the revision 1 pod; the
    // rollback makes revision 1's ReplicaSet current again (as revision 3).
    let mut deploy = deployment(2, 1, 1, 2, 1);
    let annotations = deploy.metadata.annotations.as_mut().expect("annotations");
    annotations.insert("deployment.kubernetes.io/revision".into(), "3".into());
    let replica_sets = [
        replica_set("backend-old", "old", "3"),
        replica_set("backend-7d9", "7d9", "2"),
    ];
    let survivor = pod("backend-old-a", "old", &running(0));
    let crashing = pod("backend-7d9-a", "7d9", &waiting("CrashLoopBackOff", 4));
    // Taken before the rollback's apply: both pods are older than it.
    let baseline = RestartBaseline::from_pods([&survivor, &crashing]);
    let criteria = PodCriteria {
        baseline: &baseline,
        applied_at: at(APPLIED_AT),
        max_restarts: MAX_RESTARTS,
    };
    let verdict = evaluate_deployment(
        &deploy,
        &arcs(&replica_sets),
        &arcs(&[survivor.clone(), crashing]),
        &criteria,
    );
    assert_eq!(
        verdict,
        WorkloadVerdict::pending("Deployment shop/backend: 1 old replicas pending termination")
    );
    let done = deployment(2, 1, 1, 1, 1);
    let mut done_deploy = done.clone();
    done_deploy.metadata.annotations = deploy.metadata.annotations.clone();
    let verdict = evaluate_deployment(&done_deploy, &arcs(&replica_sets), &arcs(&[survivor]), &criteria);
    assert_eq!(
        verdict,
        WorkloadVerdict::passed("Deployment shop/backend: rolled out (1 replicas)")
    );
}

#[test]
fn serving_pods_are_the_current_revisions_whenever_created() {
    // Deployment: the current ReplicaSet's pods, not the old one's, nor one being deleted.
    let mut leaving = pod("backend-7d9-b", "7d9", &running(0));
    leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
        APPLIED_AT,
    )));
    let objects = WorkloadObjects {
        deployments: vec![complete()],
        replica_sets: replica_sets(),
        pods: vec![
            pod("backend-old-a", "old", &running(0)),
            pod("backend-7d9-a", "7d9", &running(0)),
            leaving,
        ],
        ..WorkloadObjects::default()
    };
    let Serving::Found(serving) = serving_pods(&objects, "shop", "backend") else {
        panic!("found")
    };
    let names: Vec<_> = serving.pods.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["backend-7d9-a"]);
    assert_eq!(
        (serving.workload.as_str(), serving.others),
        ("Deployment shop/backend", 2)
    );

    // StatefulSet: the update revision's pods.
    let objects = WorkloadObjects {
        stateful_sets: vec![stateful_set(2, 2, 1, "db-1", "db-2")],
        pods: vec![
            sts_pod("db-0", "db-1", &running(0)),
            sts_pod("db-1", "db-2", &running(0)),
        ],
        ..WorkloadObjects::default()
    };
    let Serving::Found(serving) = serving_pods(&objects, "shop", "db") else {
        panic!("found")
    };
    let names: Vec<_> = serving.pods.iter().map(|p| p.name_any()).collect();
    assert_eq!((names, serving.expected), (vec!["db-1".to_string()], 1));

    // Not observed yet: which revision is current cannot be told.
    let objects = WorkloadObjects {
        deployments: vec![deployment(1, 2, 2, 2, 2)],
        replica_sets: replica_sets(),
        ..WorkloadObjects::default()
    };
    assert!(matches!(
        serving_pods(&objects, "shop", "backend"),
        Serving::Unknown { .. }
    ));
    assert!(matches!(serving_pods(&objects, "shop", "api"), Serving::NotFound));
}
