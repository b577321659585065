//! Judging the pods of the revision under test: what happened to them since the
//! revision was applied, not what they went through before.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::api::RestartBaseline;

use super::super::truncate;

/// Waiting reasons that do not resolve by waiting: the pod will not start as it is.
const FAILING_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// Longest kubelet message quoted in a verdict (image pull messages can be long).
const MAX_DETAIL_CHARS: usize = 160;

/// What the pods of the revision under test are judged against.
#[derive(Clone, Copy, Debug)]
pub struct PodCriteria<'a> {
    /// Restart counts of the pods that existed before the revision was applied.
    pub baseline: &'a RestartBaseline,
    /// When the revision was applied: terminations that finished earlier are history.
    pub applied_at: Timestamp,
    /// Restarts since the apply that one container may have before the gate fails.
    pub max_restarts: i32,
}

/// The failure of the first pod (by name, so each round reports the same one) that
/// will not become healthy by waiting.
pub fn first_pod_failure<'a>(pods: impl Iterator<Item = &'a Pod>, criteria: &PodCriteria) -> Option<String> {
    let mut pods: Vec<&Pod> = pods.collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods.into_iter().find_map(|pod| pod_failure(pod, criteria))
}

/// Why this pod of the current revision will not become healthy by waiting, if so:
/// e.g. `pod backend-7d9-abc container api: CrashLoopBackOff (restarts 4)`.
///
/// - Restarts count beyond the pod's [`RestartBaseline`] (all of them for a pod
///   created after it was taken).
/// - A termination (in `state` or `lastState`) counts only if it finished after
///   `applied_at`: an OOM kill last month is not this revision's doing.
/// - A failing waiting reason (CrashLoopBackOff, ErrImagePull, ...) of a pod older
///   than the revision fails only with evidence that it failed under this revision:
///   a restart beyond its baseline or a termination after `applied_at`. A pod created
///   under the revision fails on it at once.
pub fn pod_failure(pod: &Pod, criteria: &PodCriteria) -> Option<String> {
    let status = pod.status.as_ref()?;
    let pod_name = pod.metadata.name.as_deref().unwrap_or("<unnamed>");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|c| ("init container", c));
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| ("container", c));
    init.chain(main).find_map(|(what, container)| {
        container_failure(uid, container, criteria)
            .map(|failure| format!("pod {pod_name} {what} {}: {failure}", container.name))
    })
}

fn container_failure(uid: &str, container: &ContainerStatus, criteria: &PodCriteria) -> Option<String> {
    let older_than_revision = criteria.baseline.has_pod(uid);
    let restarts_before = criteria.baseline.restarts(uid, &container.name);
    // A container's count only grows; `max` guards against a baseline of another pod.
    let restarts_since = (container.restart_count - restarts_before).max(0);
    let restarts = restarts_text(container.restart_count, restarts_before, restarts_since);

    let terminations_since: Vec<&ContainerStateTerminated> =
        [container.state.as_ref(), container.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|state| state.terminated.as_ref())
            .filter(|terminated| match &terminated.finished_at {
                Some(finished) => finished.0 > criteria.applied_at,
                // When is unknown: a pod made under this revision has no older history;
                // for an older pod nothing shows it happened under this revision.
                None => !older_than_revision,
            })
            .collect();

    let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
    if let Some(waiting) = waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let under_this_revision =
            !older_than_revision || restarts_since > 0 || !terminations_since.is_empty();
        if FAILING_WAITING_REASONS.contains(&reason) && under_this_revision {
            // The back-off message only repeats the reason; the others (image name,
            // missing Secret or key) say what to fix.
            let detail = match waiting.message.as_deref() {
                Some(message) if reason != "CrashLoopBackOff" && !message.is_empty() => {
                    format!(": {}", truncate(message, MAX_DETAIL_CHARS))
                }
                _ => String::new(),
            };
            return Some(format!("{reason} ({restarts}){detail}"));
        }
    }
    if terminations_since
        .iter()
        .any(|terminated| terminated.reason.as_deref() == Some("OOMKilled"))
    {
        return Some(format!("OOMKilled ({restarts})"));
    }
    if restarts_since > criteria.max_restarts {
        let max_restarts = criteria.max_restarts;
        return Some(if restarts_before == 0 {
            format!("restarted {restarts_since} times (more than {max_restarts})")
        } else {
            format!(
                "restarted {restarts_since} times since the revision was applied (more than {max_restarts}; {restarts_before} before)"
            )
        });
    }
    None
}

/// `restarts 4`, or `restarts 14, 4 since the revision was applied` when the
/// container had restarted before.
fn restarts_text(total: i32, before: i32, since: i32) -> String {
    if before == 0 {
        format!("restarts {total}")
    } else {
        format!("restarts {total}, {since} since the revision was applied")
    }
}
