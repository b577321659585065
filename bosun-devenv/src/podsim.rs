//! A stand-in for the kubelet: nothing runs Pods on the local control plane, so
//! this writes each Pod's status by a convention on its containers' images, and
//! the real Deployment and Job controllers compute rollout and completion from it.
//!
//! | image contains      | simulated as                                                  |
//! |---------------------|---------------------------------------------------------------|
//! | `crashloop`         | Running, waiting `CrashLoopBackOff`, exit 1, restarts rising  |
//! | `errimagepull`      | Pending, waiting `ErrImagePull`                               |
//! | `imagepullbackoff`  | Pending, waiting `ImagePullBackOff`                           |
//! | `configerror`       | Pending, waiting `CreateContainerConfigError`                 |
//! | `oomkilled`         | Running but not ready, last state `OOMKilled`, restarts rising|
//! | `notready`          | Running, never ready                                          |
//! | anything else       | Running and Ready                                             |
//!
//! What a container runs, its `command` + `args`, decides what it logs and when a
//! Pod that runs to completion (a Job's, or `restartPolicy` `Never`/`OnFailure`)
//! finishes (see [`script`](crate::script) for the statements a script may use):
//!
//! | command                              | logs                                  | a Job's Pod                         | any other Pod                          |
//! |--------------------------------------|---------------------------------------|-------------------------------------|----------------------------------------|
//! | `sh -c "echo …; sleep N; exit C"`    | each `echo`, after the `sleep`s before it | ends at `exit`: `Failed` when `C` ≠ 0, else `Succeeded` | Running and Ready until `exit`, then restarts: `CrashLoopBackOff`, last exit code `C` |
//! | `sh -c` script without `exit`        | each `echo`                           | `Succeeded` after its last statement| keeps Running and Ready                |
//! | `sh -c "…; sleep infinity"`          | each `echo` before it                 | runs until the Job's deadline       | keeps Running and Ready                |
//! | anything else (or no command)        | one line: `simulated: ran <command line>` (`… the entrypoint of <image> <args>`) | `Failed` (exit 1) about a second after the start when an image contains `fail`, else `Succeeded` (exit 0) | as its image says (table above) |
//!
//! Script time counts in whole seconds from the Pod's `startTime` (the API keeps
//! whole seconds), and status is written once a second: a `sleep 2` before an
//! `exit` ends the container 1 to 3 seconds of wall time after its start.
//!
//! The image conventions above keep applying to scripts: a pull or config error
//! keeps any Pod `Pending`; in a Pod that does not run to completion a `crashloop`,
//! `oomkilled` or `notready` image wins over the script. `sh`, `bash`, `ash`, `dash`,
//! `zsh` and `ksh` (any path) with `-c` are shells; `bash -euxc` and `-o pipefail`
//! are read too. A Job Pod with `restartPolicy: OnFailure` fails instead of
//! restarting its container in place.
//!
//! The log lines are served by the control plane's kubelet endpoint, so the real
//! `pods/log` API (`kubectl logs`) returns them for a Pod bound to a registered Node
//! (see [`container_log`]).
//!
//! A Pod (usually through its template) can be given a history with annotations;
//! they apply to every container simulated as Running above (`notready` and anything
//! else), so a pod can look like one that crashed last month and is fine now:
//!
//! | annotation                          | simulated as                                      |
//! |-------------------------------------|---------------------------------------------------|
//! | `sim.bosun.dev/restarts: "10"`      | `restartCount` 10                                 |
//! | `sim.bosun.dev/last-termination: "OOMKilled@2026-01-01T00:00:00Z"` | `lastState.terminated` with that reason (exit 137 for `OOMKilled`, 0 for `Completed`, else 1), finished at that time |
//!
//! Annotating a live Pod (not its template) changes its history in place, e.g. a
//! restart after some moment without rolling the workload.
//!
//! Started with [`PodSimulator::start_on_node`], the simulator also does the
//! scheduler's part: it binds every Pod without a node (through the `pods/binding`
//! subresource, as kube-scheduler does) to its Node, or to the Node a DaemonSet
//! pinned it to, so the API server knows where the Pod's logs are.
//!
//! The API server deletes a Pod that is not bound to a node at once. A Pod bound
//! to a node (`spec.nodeName` set) it deletes gracefully: it sets
//! `deletionTimestamp` and keeps the object until the node's kubelet confirms;
//! the simulator confirms at once (a deletion with grace period 0), which keeps
//! rollouts and garbage collection moving.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::script::{Program, ScriptEnd};

/// Seconds between two simulated crashes of a crash-looping container.
const RESTART_INTERVAL_SECONDS: i64 = 2;
/// Seconds a Job's Pod runs before it finishes.
const JOB_RUN_SECONDS: i64 = 1;
/// How often time-driven changes (restarts, Job completion) are written.
const TICK: Duration = Duration::from_secs(1);
/// The address every simulated Pod reports.
const POD_IP: &str = "127.0.0.1";

/// The running simulator: a task that watches Pods in all namespaces and writes
/// their status. Dropping it (or [`PodSimulator::stop`]) aborts the task.
#[derive(Debug)]
pub struct PodSimulator {
    task: JoinHandle<()>,
}

impl PodSimulator {
    /// Starts simulating every Pod visible to `client`, leaving them unbound. Must be
    /// called inside a Tokio runtime.
    pub fn start(client: kube::Client) -> Self {
        let task = tokio::spawn(run(Api::all(client), None));
        Self { task }
    }

    /// Starts simulating every Pod visible to `client`, and binds each Pod without
    /// a node to Node `node` (a daemon Pod to the Node it is pinned to), as a
    /// scheduler would. Register the Node with
    /// [`ControlPlane::register_node`](super::ControlPlane::register_node): its kubelet
    /// endpoint then serves the Pods' logs.
    pub fn start_on_node(client: kube::Client, node: &str) -> Self {
        let task = tokio::spawn(run(Api::all(client), Some(node.to_owned())));
        Self { task }
    }

    /// Stops the simulator; the same as dropping it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for PodSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches Pods and, on every change and every tick, writes the status that
/// [`simulated_status`] computes when it differs from what was last written.
async fn run(pods: Api<Pod>, node: Option<String>) {
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    // Pods by uid: the latest object seen, and the status last written for it (the
    // watch may not have delivered that write yet when the next tick comes).
    let mut observed: HashMap<String, Pod> = HashMap::new();
    let mut written: HashMap<String, PodStatus> = HashMap::new();
    let mut relisted: Option<HashMap<String, Pod>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else {
                    tracing::warn!("pod watch ended; pod simulator stops");
                    return;
                };
                match event {
                    Ok(Event::Apply(pod)) => {
                        let uid = pod.uid().unwrap_or_default();
                        sync(&pods, &pod, &mut written, node.as_deref()).await;
                        observed.insert(uid, pod);
                    }
                    Ok(Event::Delete(pod)) => {
                        let uid = pod.uid().unwrap_or_default();
                        observed.remove(&uid);
                        written.remove(&uid);
                    }
                    Ok(Event::Init) => relisted = Some(HashMap::new()),
                    Ok(Event::InitApply(pod)) => {
                        let uid = pod.uid().unwrap_or_default();
                        sync(&pods, &pod, &mut written, node.as_deref()).await;
                        relisted.get_or_insert_default().insert(uid, pod);
                    }
                    Ok(Event::InitDone) => {
                        // Pods deleted while the watch was down vanish here.
                        observed = relisted.take().unwrap_or_default();
                        written.retain(|uid, _| observed.contains_key(uid));
                    }
                    Err(error) => tracing::warn!(%error, "pod watch error; retrying"),
                }
            }
            _ = tick.tick() => {
                for pod in observed.values() {
                    sync(&pods, pod, &mut written, node.as_deref()).await;
                }
            }
        }
    }
}

/// Binds `pod` to a node if it has none and `node` is given, then writes its
/// simulated status if it changed. Errors are logged and the write is retried on
/// the next tick, since nothing was recorded as written.
async fn sync(pods: &Api<Pod>, pod: &Pod, written: &mut HashMap<String, PodStatus>, node: Option<&str>) {
    let Some(uid) = pod.uid() else { return };
    if awaits_kubelet_confirmation(pod) {
        confirm_deletion(pods, pod, &uid).await;
        return;
    }
    if let Some(node) = node.and_then(|node| node_to_bind(pod, node)) {
        bind(pods, pod, &node).await;
    }
    let previous = written.get(&uid).or_else(|| {
        // After a restart of the simulator, continue from what is in the cluster.
        pod.status
            .as_ref()
            .filter(|status| status.container_statuses.is_some())
    });
    let Some(status) = simulated_status(pod, Timestamp::now(), previous) else {
        return;
    };
    let Some(namespace) = pod.namespace() else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &namespace);
    // A merge patch replaces the lists (conditions, container statuses) wholesale
    // and carries no resourceVersion, so it cannot conflict with other writers.
    let patch = serde_json::json!({ "status": status });
    match api
        .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::debug!(
                pod = %pod.name_any(),
                %namespace,
                phase = status.phase.as_deref().unwrap_or_default(),
                "pod status simulated"
            );
            written.insert(uid, status);
        }
        Err(kube::Error::Api(response)) if response.code == 404 => {
            written.remove(&uid);
        }
        Err(error) => {
            tracing::warn!(%error, pod = %pod.name_any(), %namespace, "writing pod status failed; will retry");
        }
    }
}

/// The Node a scheduler would bind `pod` to: none when it is bound already or being
/// deleted; the Node a DaemonSet pinned it to (node affinity on `metadata.name`);
/// else `default_node`.
fn node_to_bind(pod: &Pod, default_node: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref().is_some_and(|node| !node.is_empty())
        || pod.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let pinned = spec
        .affinity
        .as_ref()
        .and_then(|affinity| affinity.node_affinity.as_ref())
        .and_then(|affinity| {
            affinity
                .required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flat_map(|selector| &selector.node_selector_terms)
        .flat_map(|term| term.match_fields.iter().flatten())
        .find(|field| field.key == "metadata.name" && field.operator == "In")
        .and_then(|field| field.values.as_ref()?.first().cloned());
    Some(pinned.unwrap_or_else(|| default_node.to_owned()))
}

/// Binds `pod` to `node` through the `pods/binding` subresource, as kube-scheduler
/// does: the API server sets `spec.nodeName` (and condition `PodScheduled`). A Pod
/// bound meanwhile (409) or gone (404) is left alone; other errors are logged and
/// the next tick retries.
async fn bind(pods: &Api<Pod>, pod: &Pod, node: &str) {
    let Some(namespace) = pod.namespace() else { return };
    let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &namespace);
    let binding = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": pod.name_any(), "uid": pod.uid() },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let bound: Result<serde_json::Value, _> = api
        .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await;
    match bound {
        Ok(_) => tracing::debug!(pod = %pod.name_any(), %namespace, node, "pod bound"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => {
            tracing::warn!(%error, pod = %pod.name_any(), %namespace, node, "binding pod failed; will retry");
        }
    }
}

/// Whether `pod` is being deleted gracefully and the API server waits for the
/// kubelet of its node to confirm (see the module docs).
fn awaits_kubelet_confirmation(pod: &Pod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .is_some_and(|node| !node.is_empty());
    // Grace period 0 means confirmed; the object stays only for its finalizers.
    bound
        && pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds != Some(0)
}

/// Finishes the graceful deletion of `pod` as its kubelet would, once its
/// containers stopped: a deletion with grace period 0. The uid precondition spares
/// a new Pod of the same name (a StatefulSet's). Errors are logged; the next tick
/// retries.
async fn confirm_deletion(pods: &Api<Pod>, pod: &Pod, uid: &str) {
    let Some(namespace) = pod.namespace() else { return };
    let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => tracing::debug!(pod = %pod.name_any(), %namespace, "pod deletion confirmed"),
        // Already gone, or replaced by a new Pod of the same name.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => {
            tracing::warn!(%error, pod = %pod.name_any(), %namespace, "confirming pod deletion failed; will retry");
        }
    }
}

/// How one container behaves, from its image reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Ready,
    NotReady,
    /// Restarted again and again, each run ending with this exit code.
    CrashLoop {
        exit_code: i32,
    },
    OomKilled,
    /// Never starts; waiting with this reason.
    Waiting(&'static str),
}

fn behavior(image: &str) -> Behavior {
    let image = image.to_ascii_lowercase();
    if image.contains("crashloop") {
        Behavior::CrashLoop { exit_code: 1 }
    } else if image.contains("errimagepull") {
        Behavior::Waiting("ErrImagePull")
    } else if image.contains("imagepullbackoff") {
        Behavior::Waiting("ImagePullBackOff")
    } else if image.contains("configerror") {
        Behavior::Waiting("CreateContainerConfigError")
    } else if image.contains("oomkilled") {
        Behavior::OomKilled
    } else if image.contains("notready") {
        Behavior::NotReady
    } else {
        Behavior::Ready
    }
}

/// The status the simulated kubelet gives `pod` at time `now`, given the status it
/// wrote last (`previous`, `None` for a new Pod). `None` when nothing needs writing:
/// the status is unchanged, the Pod is being deleted, or it already finished.
pub fn simulated_status(pod: &Pod, now: Timestamp, previous: Option<&PodStatus>) -> Option<PodStatus> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    if previous.is_some_and(|p| matches!(p.phase.as_deref(), Some("Succeeded" | "Failed"))) {
        return None;
    }
    // The API stores whole seconds; comparing at that precision keeps results stable.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let start_time = previous.and_then(|p| p.start_time.as_ref()).map_or(now, |t| t.0);
    let previous_container = |name: &str| {
        previous
            .and_then(|p| p.container_statuses.as_ref())
            .and_then(|statuses| statuses.iter().find(|s| s.name == name))
    };
    let runs_to_completion =
        is_owned_by_job(pod) || matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure"));
    let elapsed = now.as_second() - start_time.as_second();
    let programs: Vec<Program> = spec.containers.iter().map(Program::of).collect();
    let behaviors: Vec<Behavior> = spec
        .containers
        .iter()
        .zip(&programs)
        .map(|(c, program)| {
            let by_image = behavior(&c.image.clone().unwrap_or_default());
            match (by_image, script_exit(program)) {
                // A container that is restarted when it ends crash-loops once its script exits.
                (Behavior::Ready | Behavior::NotReady, Some((at, exit_code)))
                    if !runs_to_completion && elapsed >= at =>
                {
                    Behavior::CrashLoop { exit_code }
                }
                (by_image, _) => by_image,
            }
        })
        .collect();
    let any_waiting = behaviors.iter().any(|b| matches!(b, Behavior::Waiting(_)));
    // When each container of a Pod that runs to completion ends: (seconds after the
    // start, exit code); `None` for one that never ends.
    let completions: Vec<Option<(i64, i32)>> = spec
        .containers
        .iter()
        .zip(&programs)
        .map(|(c, program)| completion(c, program))
        .collect();
    let ended = |completion: &Option<(i64, i32)>| completion.is_some_and(|(at, _)| elapsed >= at);
    let finished = runs_to_completion && !any_waiting && completions.iter().all(ended);
    let at_second = |offset: i64| Timestamp::from_second(start_time.as_second() + offset).unwrap_or(now);

    let (phase, container_statuses): (&str, Vec<ContainerStatus>) = if finished {
        let (statuses, exit_codes): (Vec<ContainerStatus>, Vec<i32>) = spec
            .containers
            .iter()
            .zip(&completions)
            .map(|(c, completion)| {
                let (at, exit_code) = completion.expect("finished: every container ended");
                (
                    finished_container(pod, c, start_time, at_second(at), exit_code),
                    exit_code,
                )
            })
            .unzip();
        let failed = exit_codes.iter().any(|&code| code != 0);
        (if failed { "Failed" } else { "Succeeded" }, statuses)
    } else {
        let statuses = spec
            .containers
            .iter()
            .zip(behaviors.iter().zip(&completions))
            .map(|(c, (&b, completion))| match completion {
                // One container of a Job's Pod done while another still runs.
                Some((at, exit_code))
                    if runs_to_completion && !matches!(b, Behavior::Waiting(_)) && elapsed >= *at =>
                {
                    finished_container(pod, c, start_time, at_second(*at), *exit_code)
                }
                _ => container_status(pod, c, b, start_time, now, previous_container(&c.name)),
            })
            .collect();
        (if any_waiting { "Pending" } else { "Running" }, statuses)
    };

    let init_container_statuses = spec.init_containers.as_ref().map(|init| {
        init.iter()
            .map(|c| completed_init_container(pod, c, start_time))
            .collect::<Vec<_>>()
    });
    let all_ready = container_statuses.iter().all(|s| s.ready);
    let unready: Vec<&str> = container_statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let not_ready_reason = if finished {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let condition = |type_: &str, ready: bool| {
        let status = if ready { "True" } else { "False" };
        let since = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(since),
            reason: (!ready).then(|| not_ready_reason.to_owned()),
            message: (!ready && !finished).then(|| not_ready_message.clone()),
            ..Default::default()
        }
    };
    let conditions = vec![
        condition("Initialized", true),
        condition("Ready", all_ready),
        condition("ContainersReady", all_ready),
        condition("PodScheduled", true),
    ];

    let status = PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(POD_IP.to_owned()),
        pod_ip: Some(POD_IP.to_owned()),
        pod_ips: Some(vec![PodIP {
            ip: POD_IP.to_owned(),
        }]),
        start_time: Some(Time(start_time)),
        container_statuses: Some(container_statuses),
        init_container_statuses,
        // Kept as the API server set it at creation.
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        ..Default::default()
    };
    (previous != Some(&status)).then_some(status)
}

/// The log of container `container` (or init container) of `pod` at `now`, as
/// its kubelet would serve it: the lines its program (see the module docs) wrote
/// since the container started (the last run, for one that crash-loops), each
/// with the time it was written. `Err` says why there is none, as the kubelet
/// says it.
pub fn container_log(pod: &Pod, container: &str, now: Timestamp) -> Result<Vec<(Timestamp, String)>, String> {
    let pod_name = pod.name_any();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| format!("pod {pod_name:?} has no spec"))?;
    let definition = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container {container:?} is not valid for pod {pod_name:?}"))?;
    let status = pod.status.as_ref().and_then(|status| {
        status
            .container_statuses
            .iter()
            .chain(status.init_container_statuses.iter())
            .flatten()
            .find(|s| s.name == container)
    });
    let waiting = |reason: Option<&str>| {
        format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {}",
            reason.unwrap_or("ContainerCreating")
        )
    };
    let Some(status) = status else {
        return Err(waiting(None));
    };
    let state = status.state.as_ref();
    let started_at = state
        .and_then(|s| s.running.as_ref())
        .and_then(|running| running.started_at.as_ref())
        .or_else(|| state.and_then(|s| s.terminated.as_ref())?.started_at.as_ref())
        // Waiting to restart: the log of the run that ended.
        .or_else(|| {
            status
                .last_state
                .as_ref()?
                .terminated
                .as_ref()?
                .started_at
                .as_ref()
        })
        .ok_or_else(|| {
            let reason = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|waiting| waiting.reason.as_deref());
            waiting(reason)
        })?
        .0;
    Ok(Program::of(definition)
        .log()
        .into_iter()
        .filter_map(|(offset, line)| {
            let at = started_at
                .checked_add(SignedDuration::try_from(offset).ok()?)
                .ok()?;
            (at <= now).then_some((at, line))
        })
        .collect())
}

/// When a script's `exit` comes, in whole seconds after the start, and its code.
fn script_exit(program: &Program) -> Option<(i64, i32)> {
    match program {
        Program::Script(script) => match script.end {
            ScriptEnd::Exit { after, code } => Some((whole_seconds(after), code)),
            _ => None,
        },
        Program::Other { .. } => None,
    }
}

/// When `container` of a Pod that runs to completion ends, in whole seconds after
/// the start, and its exit code; `None` if it never ends. A script ends at its
/// `exit` or after its last statement (code 0); anything else after
/// [`JOB_RUN_SECONDS`], failing when its image contains `fail`.
fn completion(container: &Container, program: &Program) -> Option<(i64, i32)> {
    match program {
        Program::Script(script) => match script.end {
            ScriptEnd::Exit { after, code } => Some((whole_seconds(after), code)),
            ScriptEnd::Done { after } => Some((whole_seconds(after), 0)),
            ScriptEnd::Never => None,
        },
        Program::Other { .. } => {
            let failed = container.image.as_deref().unwrap_or_default().contains("fail");
            Some((JOB_RUN_SECONDS, i32::from(failed)))
        }
    }
}

/// `duration` rounded up to whole seconds, the precision of the API's timestamps.
fn whole_seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs())
        .unwrap_or(i64::MAX / 2)
        .saturating_add(i64::from(duration.subsec_nanos() > 0))
}

fn is_owned_by_job(pod: &Pod) -> bool {
    pod.owner_references()
        .iter()
        .any(|owner| owner.kind == "Job" && owner.api_version.starts_with("batch/"))
}

/// The status of a container of a Pod that has not finished.
fn container_status(
    pod: &Pod,
    container: &Container,
    behavior: Behavior,
    start_time: Timestamp,
    now: Timestamp,
    previous: Option<&ContainerStatus>,
) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    let running = |since: Timestamp| ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(Time(since)),
        }),
        ..Default::default()
    };
    let base = ContainerStatus {
        name: container.name.clone(),
        image_id: image_id(&image),
        image: image.clone(),
        ..Default::default()
    };
    match behavior {
        Behavior::Ready | Behavior::NotReady => {
            let (restart_count, last_state) = simulated_history(pod, start_time);
            ContainerStatus {
                state: Some(running(start_time)),
                last_state,
                ready: behavior == Behavior::Ready,
                started: Some(true),
                restart_count,
                container_id: Some(container_id(pod, &container.name, restart_count)),
                ..base
            }
        }
        Behavior::Waiting(reason) => ContainerStatus {
            state: Some(waiting(reason, &waiting_message(reason, &image))),
            image_id: String::new(),
            ready: false,
            started: Some(false),
            ..base
        },
        Behavior::CrashLoop { .. } | Behavior::OomKilled => {
            // One crash at start, then one more every RESTART_INTERVAL_SECONDS.
            let (restart_count, crashed_at) = match previous.and_then(last_termination) {
                Some((count, at)) if now.as_second() - at.as_second() >= RESTART_INTERVAL_SECONDS => {
                    (count + 1, now)
                }
                Some((count, at)) => (count, at),
                None => (1, now),
            };
            let (reason, exit_code) = match behavior {
                Behavior::CrashLoop { exit_code: 0 } => ("Completed", 0),
                Behavior::CrashLoop { exit_code } => ("Error", exit_code),
                _ => ("OOMKilled", 137),
            };
            let last_state = ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(reason.to_owned()),
                    started_at: Some(Time(start_time)),
                    finished_at: Some(Time(crashed_at)),
                    container_id: Some(container_id(pod, &container.name, restart_count - 1)),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let state = if behavior == Behavior::OomKilled {
                // Restarted and running again until the next kill.
                running(crashed_at)
            } else {
                let message = format!(
                    "back-off 10s restarting failed container={} pod={}",
                    container.name,
                    pod.name_any()
                );
                waiting("CrashLoopBackOff", &message)
            };
            ContainerStatus {
                state: Some(state),
                last_state: Some(last_state),
                ready: false,
                started: Some(behavior == Behavior::OomKilled),
                restart_count,
                container_id: Some(container_id(pod, &container.name, restart_count)),
                ..base
            }
        }
    }
}

/// Annotation giving every running container of a Pod this `restartCount`.
pub const RESTARTS_ANNOTATION: &str = "sim.bosun.dev/restarts";
/// Annotation giving every running container of a Pod a `lastState.terminated`:
/// `REASON@RFC3339` (when it finished).
pub const LAST_TERMINATION_ANNOTATION: &str = "sim.bosun.dev/last-termination";

/// The restart count and last state the Pod's history annotations ask for (0 and
/// none without them; an annotation that does not parse is ignored with a warning).
fn simulated_history(pod: &Pod, start_time: Timestamp) -> (i32, Option<ContainerState>) {
    let annotations = pod.annotations();
    let restarts = annotations.get(RESTARTS_ANNOTATION).and_then(|value| {
        let parsed = value.parse::<i32>().ok().filter(|n| *n >= 0);
        if parsed.is_none() {
            tracing::warn!(pod = %pod.name_any(), %value, "{RESTARTS_ANNOTATION} is not a count; ignored");
        }
        parsed
    });
    let last_termination = annotations.get(LAST_TERMINATION_ANNOTATION).and_then(|value| {
        let parsed = value
            .split_once('@')
            .and_then(|(reason, at)| Some((reason, at.parse::<Timestamp>().ok()?)));
        if parsed.is_none() {
            tracing::warn!(pod = %pod.name_any(), %value, "{LAST_TERMINATION_ANNOTATION} is not REASON@RFC3339; ignored");
        }
        parsed
    });
    let last_state = last_termination.map(|(reason, finished_at)| {
        let exit_code = match reason {
            "OOMKilled" => 137,
            "Completed" => 0,
            _ => 1,
        };
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_owned()),
                started_at: Some(Time(finished_at.min(start_time))),
                finished_at: Some(Time(finished_at)),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    (restarts.unwrap_or(0), last_state)
}

/// Restart count and time of the last simulated crash, from a previous status.
fn last_termination(previous: &ContainerStatus) -> Option<(i32, Timestamp)> {
    let finished_at = previous
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .finished_at
        .as_ref()?;
    Some((previous.restart_count, finished_at.0))
}

/// The status of a container of a Job's Pod that ran to completion.
fn finished_container(
    pod: &Pod,
    container: &Container,
    start_time: Timestamp,
    finished_at: Timestamp,
    exit_code: i32,
) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    ContainerStatus {
        name: container.name.clone(),
        image_id: image_id(&image),
        image,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_owned()),
                started_at: Some(Time(start_time)),
                finished_at: Some(Time(finished_at)),
                container_id: Some(container_id(pod, &container.name, 0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ready: false,
        started: Some(false),
        container_id: Some(container_id(pod, &container.name, 0)),
        ..Default::default()
    }
}

/// Init containers always complete at once.
fn completed_init_container(pod: &Pod, container: &Container, start_time: Timestamp) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    ContainerStatus {
        name: container.name.clone(),
        image_id: image_id(&image),
        image,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 0,
                reason: Some("Completed".to_owned()),
                started_at: Some(Time(start_time)),
                finished_at: Some(Time(start_time)),
                container_id: Some(container_id(pod, &container.name, 0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ready: true,
        container_id: Some(container_id(pod, &container.name, 0)),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
        }),
        ..Default::default()
    }
}

fn waiting_message(reason: &str, image: &str) -> String {
    match reason {
        "ErrImagePull" => format!("rpc error: pull access denied for {image} (simulated)"),
        "ImagePullBackOff" => format!("Back-off pulling image \"{image}\" (simulated)"),
        _ => "couldn't find key in ConfigMap (simulated)".to_owned(),
    }
}

fn image_id(image: &str) -> String {
    format!("{image}@sha256:{}", hex_sha256(image))
}

/// A stable, distinct container id per Pod, container and restart.
fn container_id(pod: &Pod, container: &str, restart: i32) -> String {
    let uid = pod.uid().unwrap_or_else(|| pod.name_any());
    format!(
        "containerd://{}",
        hex_sha256(&format!("{uid}/{container}/{restart}"))
    )
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(images: &[&str]) -> Pod {
        let containers: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| serde_json::json!({ "name": format!("c{i}"), "image": image }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web-1", "namespace": "ns", "uid": "u-1" },
            "spec": { "containers": containers }
        }))
        .unwrap()
    }

    fn job_pod(image: &str) -> Pod {
        let mut pod = pod(&[image]);
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "migrate".into(),
            uid: "j-1".into(),
            ..Default::default()
        }]);
        pod.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        pod
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn condition<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    fn container(status: &PodStatus) -> &ContainerStatus {
        &status.container_statuses.as_ref().unwrap()[0]
    }

    fn waiting_reason(status: &PodStatus) -> Option<&str> {
        container(status)
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .as_deref()
    }

    #[test]
    fn ordinary_image_runs_ready() {
        let status = simulated_status(&pod(&["example/ok:1"]), at(0), None).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        for type_ in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
            assert_eq!(condition(&status, type_).status, "True", "{type_}");
        }
        let c = container(&status);
        assert!(c.ready);
        assert!(c.state.as_ref().unwrap().running.is_some());
        assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
        assert_eq!(status.start_time, Some(Time(at(0))));
    }

    #[test]
    fn history_annotations_give_a_ready_pod_restarts_and_a_last_termination() {
        let mut p = pod(&["example/ok:1", "example/notready:1"]);
        p.metadata.annotations = Some(
            [
                (RESTARTS_ANNOTATION.to_owned(), "10".to_owned()),
                (
                    LAST_TERMINATION_ANNOTATION.to_owned(),
                    "OOMKilled@2026-01-01T00:00:00Z".to_owned(),
                ),
            ]
            .into(),
        );
        let status = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(condition(&status, "Ready").status, "False", "c1 is notready");
        for c in status.container_statuses.as_ref().unwrap() {
            assert_eq!(c.restart_count, 10, "{}", c.name);
            assert!(c.state.as_ref().unwrap().running.is_some(), "{}", c.name);
            let terminated = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
            assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
            assert_eq!(terminated.exit_code, 137);
            assert_eq!(
                terminated.finished_at,
                Some(Time("2026-01-01T00:00:00Z".parse().unwrap()))
            );
        }
        assert!(container(&status).ready);

        // Annotating the live pod again is a new restart, written on the next sync.
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(RESTARTS_ANNOTATION.to_owned(), "11".to_owned());
        let next = simulated_status(&p, at(5), Some(&status)).unwrap();
        assert_eq!(container(&next).restart_count, 11);

        // Unparsable values are ignored.
        p.metadata.annotations = Some(
            [
                (RESTARTS_ANNOTATION.to_owned(), "many".to_owned()),
                (LAST_TERMINATION_ANNOTATION.to_owned(), "OOMKilled".to_owned()),
            ]
            .into(),
        );
        let plain = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(container(&plain).restart_count, 0);
        assert!(container(&plain).last_state.is_none());
    }

    #[test]
    fn unchanged_status_is_not_rewritten() {
        let p = pod(&["example/ok:1"]);
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(simulated_status(&p, at(5), Some(&first)), None);
    }

    #[test]
    fn crashloop_restarts_rise_every_interval() {
        let p = pod(&["example/crashloop:1"]);
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(waiting_reason(&first), Some("CrashLoopBackOff"));
        assert_eq!(container(&first).restart_count, 1);
        assert!(!container(&first).ready);
        let terminated = container(&first)
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(terminated.exit_code, 1);
        assert_eq!(condition(&first, "Ready").status, "False");

        // Too early: nothing to write.
        assert_eq!(simulated_status(&p, at(1), Some(&first)), None);
        let second = simulated_status(&p, at(2), Some(&first)).unwrap();
        assert_eq!(container(&second).restart_count, 2);
        let third = simulated_status(&p, at(4), Some(&second)).unwrap();
        assert_eq!(container(&third).restart_count, 3);
        // The Ready condition did not change, so its transition time did not either.
        assert_eq!(condition(&third, "Ready").last_transition_time, Some(Time(at(0))));
    }

    #[test]
    fn pull_and_config_errors_wait_in_pending() {
        for (image, reason) in [
            ("example/errimagepull:1", "ErrImagePull"),
            ("example/imagepullbackoff:1", "ImagePullBackOff"),
            ("example/configerror:1", "CreateContainerConfigError"),
        ] {
            let status = simulated_status(&pod(&[image]), at(0), None).unwrap();
            assert_eq!(status.phase.as_deref(), Some("Pending"), "{image}");
            assert_eq!(waiting_reason(&status), Some(reason), "{image}");
            assert_eq!(container(&status).restart_count, 0);
        }
    }

    #[test]
    fn oomkilled_has_last_state_and_rising_restarts() {
        let p = pod(&["example/oomkilled:1"]);
        let first = simulated_status(&p, at(0), None).unwrap();
        let c = container(&first);
        let terminated = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
        assert!(!c.ready);
        let later = simulated_status(&p, at(3), Some(&first)).unwrap();
        assert_eq!(container(&later).restart_count, 2);
    }

    #[test]
    fn notready_runs_but_is_never_ready() {
        let status = simulated_status(&pod(&["example/notready:1"]), at(0), None).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(container(&status).state.as_ref().unwrap().running.is_some());
        assert!(!container(&status).ready);
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn one_bad_container_makes_the_pod_unready() {
        let status = simulated_status(&pod(&["example/ok:1", "example/notready:1"]), at(0), None).unwrap();
        assert_eq!(condition(&status, "Ready").status, "False");
        let message = condition(&status, "Ready").message.clone().unwrap();
        assert!(message.contains("c1"), "{message}");
        assert!(!message.contains("c0"), "{message}");
    }

    #[test]
    fn job_pod_succeeds_after_running_a_second() {
        let p = job_pod("example/job:1");
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Running"));
        let done = simulated_status(&p, at(1), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        let terminated = container(&done)
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!(terminated.exit_code, 0);
        // Finished Pods are left alone.
        assert_eq!(simulated_status(&p, at(10), Some(&done)), None);
    }

    #[test]
    fn job_pod_with_fail_image_fails() {
        let p = job_pod("example/fail-migration:1");
        let first = simulated_status(&p, at(0), None).unwrap();
        let done = simulated_status(&p, at(2), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Failed"));
        let terminated = container(&done)
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!(terminated.exit_code, 1);
    }

    #[test]
    fn restart_policy_never_without_job_also_completes() {
        let mut p = pod(&["example/task:1"]);
        p.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        let first = simulated_status(&p, at(0), None).unwrap();
        let done = simulated_status(&p, at(1), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn job_pod_with_pull_error_never_finishes() {
        let p = job_pod("example/errimagepull:1");
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Pending"));
        assert_eq!(simulated_status(&p, at(30), Some(&first)), None);
    }

    #[test]
    fn deleting_pod_is_left_alone() {
        let mut p = pod(&["example/ok:1"]);
        p.metadata.deletion_timestamp = Some(Time(at(0)));
        assert_eq!(simulated_status(&p, at(0), None), None);
    }

    #[test]
    fn only_a_bound_pod_in_graceful_deletion_awaits_its_kubelet() {
        let mut p = pod(&["example/ok:1"]);
        p.metadata.deletion_timestamp = Some(Time(at(0)));
        p.metadata.deletion_grace_period_seconds = Some(30);
        assert!(
            !awaits_kubelet_confirmation(&p),
            "not bound: deleted at once by the API server"
        );
        p.spec.as_mut().unwrap().node_name = Some("node-1".into());
        assert!(awaits_kubelet_confirmation(&p));
        p.metadata.deletion_grace_period_seconds = Some(0);
        assert!(!awaits_kubelet_confirmation(&p), "already confirmed");
        p.metadata.deletion_timestamp = None;
        p.metadata.deletion_grace_period_seconds = None;
        assert!(!awaits_kubelet_confirmation(&p), "not being deleted");
    }

    fn with_command(mut pod: Pod, command: &[&str]) -> Pod {
        pod.spec.as_mut().unwrap().containers[0].command =
            Some(command.iter().map(|s| s.to_string()).collect());
        pod
    }

    fn terminated(status: &PodStatus) -> ContainerStateTerminated {
        container(status)
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap()
    }

    #[test]
    fn a_job_script_ends_at_its_exit_with_its_code() {
        let p = with_command(
            job_pod("example/migrate:1"),
            &[
                "sh",
                "-c",
                "echo migrating; sleep 2; echo 'relation users does not exist'; exit 3",
            ],
        );
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(simulated_status(&p, at(1), Some(&first)), None, "still sleeping");
        let done = simulated_status(&p, at(2), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Failed"));
        let ended = terminated(&done);
        assert_eq!(ended.exit_code, 3);
        assert_eq!(ended.reason.as_deref(), Some("Error"));
        assert_eq!(ended.finished_at, Some(Time(at(2))));

        // exit 0 succeeds, and so does a script that runs out of statements.
        for script in ["echo ok; exit 0", "echo ok; sleep 1"] {
            let p = with_command(job_pod("example/fail-image-ignored:1"), &["bash", "-c", script]);
            let first = simulated_status(&p, at(0), None).unwrap();
            let done = simulated_status(&p, at(1), Some(&first)).unwrap_or(first);
            assert_eq!(done.phase.as_deref(), Some("Succeeded"), "{script}");
            assert_eq!(terminated(&done).exit_code, 0, "{script}");
        }
    }

    #[test]
    fn a_job_script_that_sleeps_forever_keeps_running() {
        let p = with_command(
            job_pod("example/backup:1"),
            &["/bin/sh", "-c", "echo start; sleep infinity"],
        );
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(simulated_status(&p, at(3600), Some(&first)), None);
    }

    #[test]
    fn a_job_command_that_is_no_script_follows_the_image() {
        let p = with_command(
            job_pod("example/fail-migration:1"),
            &["uv", "run", "alembic", "upgrade", "head"],
        );
        let first = simulated_status(&p, at(0), None).unwrap();
        let done = simulated_status(&p, at(1), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Failed"));
        assert_eq!(terminated(&done).exit_code, 1);
    }

    #[test]
    fn a_job_pod_ends_when_its_last_container_does() {
        let mut p = with_command(job_pod("example/a:1"), &["sh", "-c", "exit 0"]);
        p.spec.as_mut().unwrap().containers.push(Container {
            name: "slow".into(),
            image: Some("example/b:1".into()),
            command: Some(vec!["sh".into(), "-c".into(), "sleep 3; exit 2".into()]),
            ..Container::default()
        });
        let first = simulated_status(&p, at(0), None).unwrap();
        assert_eq!(first.phase.as_deref(), Some("Running"));
        let statuses = first.container_statuses.as_ref().unwrap();
        assert!(
            statuses[0].state.as_ref().unwrap().terminated.is_some(),
            "c0 done"
        );
        assert!(
            statuses[1].state.as_ref().unwrap().running.is_some(),
            "slow still runs"
        );
        let done = simulated_status(&p, at(3), Some(&first)).unwrap();
        assert_eq!(done.phase.as_deref(), Some("Failed"));
        let codes: Vec<i32> = done
            .container_statuses
            .unwrap()
            .iter()
            .map(|s| s.state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code)
            .collect();
        assert_eq!(codes, [0, 2]);
    }

    #[test]
    fn a_long_running_script_stays_ready_until_it_exits_then_crash_loops() {
        let worker = with_command(
            pod(&["example/worker:1"]),
            &["sh", "-c", "echo EnrichmentWorker started; sleep infinity"],
        );
        let status = simulated_status(&worker, at(0), None).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(container(&status).ready);
        assert_eq!(simulated_status(&worker, at(600), Some(&status)), None);

        // A script without exit keeps running too.
        let echo = with_command(pod(&["example/worker:1"]), &["sh", "-c", "echo hello"]);
        let status = simulated_status(&echo, at(0), None).unwrap();
        assert_eq!(simulated_status(&echo, at(600), Some(&status)), None);

        let crashing = with_command(
            pod(&["example/worker:1"]),
            &["sh", "-c", "echo starting; sleep 5; exit 4"],
        );
        let first = simulated_status(&crashing, at(0), None).unwrap();
        assert!(container(&first).ready);
        let crashed = simulated_status(&crashing, at(5), Some(&first)).unwrap();
        assert_eq!(waiting_reason(&crashed), Some("CrashLoopBackOff"));
        let last = container(&crashed)
            .last_state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(last.exit_code, 4);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(condition(&crashed, "Ready").status, "False");
    }

    #[test]
    fn the_log_is_what_the_script_wrote_so_far() {
        let p = with_command(
            job_pod("example/migrate:1"),
            &[
                "sh",
                "-c",
                "echo one; sleep 2; echo two; sleep 0.5; echo three; exit 1",
            ],
        );
        assert_eq!(
            container_log(&p, "c0", at(0)),
            Err("container \"c0\" in pod \"web-1\" is waiting to start: ContainerCreating".into())
        );
        let mut p = p;
        p.status = simulated_status(&p, at(0), None);
        let lines = |now| -> Vec<String> {
            container_log(&p, "c0", now)
                .unwrap()
                .into_iter()
                .map(|(_, line)| line)
                .collect()
        };
        assert_eq!(lines(at(0)), ["one"]);
        assert_eq!(lines(at(2)), ["one", "two"]);
        assert_eq!(lines(at(3)), ["one", "two", "three"]);
        let timed = container_log(&p, "c0", at(3)).unwrap();
        assert_eq!(timed[2].0, at(2) + SignedDuration::from_millis(500));
        assert!(
            container_log(&p, "nope", at(3))
                .unwrap_err()
                .contains("not valid")
        );

        // Not a script: one line naming what ran.
        let mut other = pod(&["example/web:1"]);
        other.status = simulated_status(&other, at(0), None);
        let log = container_log(&other, "c0", at(9)).unwrap();
        assert_eq!(
            log,
            [(
                at(0),
                "simulated: ran the entrypoint of example/web:1".to_string()
            )]
        );

        // Never started: the kubelet's waiting message.
        let mut pulling = pod(&["example/errimagepull:1"]);
        pulling.status = simulated_status(&pulling, at(0), None);
        assert!(
            container_log(&pulling, "c0", at(9))
                .unwrap_err()
                .ends_with("is waiting to start: ErrImagePull")
        );
    }

    #[test]
    fn a_pod_is_bound_to_the_node_a_daemon_set_pinned_it_to_else_the_default() {
        let mut p = pod(&["example/ok:1"]);
        assert_eq!(node_to_bind(&p, "devenv").as_deref(), Some("devenv"));
        p.spec.as_mut().unwrap().affinity = serde_json::from_value(serde_json::json!({
            "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                { "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["node-b"] }] }
            ] } }
        }))
        .unwrap();
        assert_eq!(node_to_bind(&p, "devenv").as_deref(), Some("node-b"));
        p.spec.as_mut().unwrap().node_name = Some("node-a".into());
        assert_eq!(node_to_bind(&p, "devenv"), None, "bound already");
        p.spec.as_mut().unwrap().node_name = None;
        p.metadata.deletion_timestamp = Some(Time(at(0)));
        assert_eq!(node_to_bind(&p, "devenv"), None, "being deleted");
    }

    #[test]
    fn init_containers_complete() {
        let mut p = pod(&["example/ok:1"]);
        p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "init".into(),
            image: Some("example/init:1".into()),
            ..Default::default()
        }]);
        let status = simulated_status(&p, at(0), None).unwrap();
        let init = &status.init_container_statuses.unwrap()[0];
        let terminated = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn a_restarted_simulator_continues_from_cluster_status() {
        let p = pod(&["example/crashloop:1"]);
        let first = simulated_status(&p, at(0), None).unwrap();
        let mut from_cluster = first.clone();
        from_cluster.qos_class = Some("BestEffort".into());
        let next = simulated_status(&p, at(2), Some(&from_cluster)).unwrap();
        assert_eq!(container(&next).restart_count, 2);
        assert_eq!(next.qos_class.as_deref(), Some("BestEffort"));
    }
}
