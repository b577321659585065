//! The Jobs' I/O: create or adopt ([`ensure`]), read ([`observe`]), the log tail of a
//! failed Job ([`log_tail`]), and deleting old ones ([`cleanup`]). Every call goes
//! through the client it is given: the controller passes the one it applies with (the
//! app's impersonated ServiceAccount when it has one), which then needs `create`,
//! `get`, `list` and `delete` on `jobs` (and `patch`, only to touch a Job running past
//! its deadline on Kubernetes before 1.25), `list` on `pods` and `get` on `pods/log` in
//! the Job's namespace.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::name::{JOB_KIND_LABEL, app_selector};
use super::state::{
    DEADLINE_NUDGED_ANNOTATION, JobState, LOG_TAIL_LINES, deadline_overdue, jobs_to_delete, state_of,
};
use crate::api::{APP_LABEL, OWNER_ANNOTATION};
use crate::core::record::rfc3339;
use crate::core::{Failure, FailureKind};
use crate::failure::{Classified, classify, server_message};
use crate::snapshot::{REVISION_ANNOTATION, REVISION_LABEL};

/// A log line longer than this is cut: the tail goes into Events and the status.
const MAX_LOG_LINE_CHARS: usize = 512;
/// At most this much of a log is read (a tail of 20 very long lines).
const MAX_LOG_BYTES: i64 = 64 * 1024;
/// Create, find gone, create again: a Job deleted between our create and our read.
const CREATE_ATTEMPTS: usize = 3;

/// A Job could not be started, read or deleted.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The API server refused or did not answer.
    #[error("{action} Job {namespace}/{name}: {}", server_message(source))]
    Api {
        /// `creating`, `reading`, `listing the Jobs of`, `deleting`.
        action: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    /// A Job of that name exists and is not the one this app would have started.
    #[error("Job {job} exists and is not {expected}: {found}; bosun neither adopts nor replaces it")]
    NotOurs {
        /// `namespace/name`.
        job: String,
        /// `the backup Job of revision … of AppDeployment shop/web`.
        expected: String,
        /// What the Job found says about itself.
        found: String,
    },
}

impl JobError {
    fn api(action: &'static str, namespace: &str, name: &str, source: kube::Error) -> Self {
        JobError::Api {
            action,
            namespace: namespace.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    /// What the error means for the step (see [`crate::failure`]): an API error by its
    /// answer (a Job spec the API server refuses, 422, is a refusal naming the Job and
    /// the field); another app's Job of the same name is an ownership conflict.
    pub fn classify(&self) -> Classified {
        match self {
            JobError::Api {
                action,
                namespace,
                name,
                source,
            } => classify(source, &format!("{action} Job {namespace}/{name}")),
            JobError::NotOurs { .. } => {
                Classified::Refused(Failure::new(FailureKind::OwnershipConflict, self.to_string()))
            }
        }
    }
}

/// Creates `job` (from [`super::build_job`]), or adopts the Job of that name when it
/// exists already (a restarted controller, a second pass): never a second Job. Returns
/// where the Job stands, a failed one with its log tail.
///
/// An existing Job is adopted as it is, even if the Runbook changed since it was
/// created: it is this revision's Job, and it ran (or runs) once.
///
/// The Job is read before it is created: a step looks in on its running Job many times
/// (every Job and pod event), and a create refused as `AlreadyExists` is still a write
/// request, which admission webhooks see and the audit log records.
pub async fn ensure(client: &Client, job: &Job) -> Result<JobState, JobError> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let current = match api.get_opt(&name).await {
        Ok(Some(existing)) => {
            check_ours(job, &existing)?;
            existing
        }
        Ok(None) => create(&api, job).await?,
        Err(error) => return Err(JobError::api("reading", &namespace, &name, error)),
    };
    nudge_if_overdue(&api, &current).await;
    Ok(with_log_tail(client, &current, state_of(&current)).await)
}

/// Creates `job`; one of that name that exists already (created since it was looked
/// for) is taken if it is ours.
async fn create(api: &Api<Job>, job: &Job) -> Result<Job, JobError> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api.create(&PostParams::default(), job).await {
            Ok(created) => {
                info!(job = %name, %namespace, "created Job");
                return Ok(created);
            }
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
                match api.get_opt(&name).await {
                    Ok(Some(existing)) => {
                        check_ours(job, &existing)?;
                        return Ok(existing);
                    }
                    // Deleted since our create was refused: create it again.
                    Ok(None) if attempt < CREATE_ATTEMPTS => continue,
                    Ok(None) => {
                        return Err(JobError::api(
                            "creating",
                            &namespace,
                            &name,
                            kube::Error::Api(status),
                        ));
                    }
                    Err(error) => return Err(JobError::api("reading", &namespace, &name, error)),
                }
            }
            Err(error) => return Err(JobError::api("creating", &namespace, &name, error)),
        }
    }
}

/// Touches a Job still running past its deadline so that the Job controller syncs it
/// and ends it (see [`deadline_overdue`]: needed on Kubernetes before 1.25). Best
/// effort: without `patch` on jobs the Job ends when the Job controller next looks.
async fn nudge_if_overdue(api: &Api<Job>, job: &Job) {
    let now = Timestamp::now();
    if !deadline_overdue(job, now) {
        return;
    }
    let name = job.name_any();
    let patch = serde_json::json!({
        "metadata": { "annotations": { DEADLINE_NUDGED_ANNOTATION: rfc3339(now) } }
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(job = %name, "the Job runs past its deadline: touched it so the Job controller ends it")
        }
        Err(error) => warn!(
            job = %name,
            error = %server_message(&error),
            "the Job runs past its deadline and could not be touched"
        ),
    }
}

/// Deletes the Job `namespace/name` if it failed before `since` (an earlier attempt's,
/// see [`JobState::failed_before`]), so that the attempt now creates it anew under its
/// name; its pods go with it. Returns whether it was deleted.
pub async fn delete_failed_before(
    client: &Client,
    namespace: &str,
    name: &str,
    since: &str,
) -> Result<bool, JobError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job = match api.get_opt(name).await {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(false),
        Err(error) => return Err(JobError::api("reading", namespace, name, error)),
    };
    if !state_of(&job).failed_before(since) {
        return Ok(false);
    }
    let params = DeleteParams {
        // Only the failed Job read: never one created again under its name since.
        preconditions: job.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(job = %name, %namespace, "deleted the failed Job of an earlier attempt");
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(error) => Err(JobError::api("deleting", namespace, name, error)),
    }
}

/// Where the Job `namespace/name` stands, without creating it: `None` when there is no
/// such Job (never created, or deleted).
pub async fn observe(client: &Client, namespace: &str, name: &str) -> Result<Option<JobState>, JobError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(job)) => Ok(Some(with_log_tail(client, &job, state_of(&job)).await)),
        Ok(None) => Ok(None),
        Err(error) => Err(JobError::api("reading", namespace, name, error)),
    }
}

async fn with_log_tail(client: &Client, job: &Job, state: JobState) -> JobState {
    match state {
        JobState::Failed {
            reason,
            message,
            finished_at,
            ..
        } => JobState::Failed {
            reason,
            message,
            finished_at,
            log_tail: log_tail(client, job).await,
        },
        other => other,
    }
}

/// The last [`LOG_TAIL_LINES`] lines of the log of the Job's newest pod (its one
/// container), read through the API server's `pods/log`. Best effort: what cannot be
/// read becomes a line saying so, never an error.
pub async fn log_tail(client: &Client, job: &Job) -> Vec<String> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = match pods.list(&ListParams::default().labels(&pod_selector(job))).await {
        Ok(list) => list.items,
        Err(error) => {
            return vec![format!(
                "the log of Job {namespace}/{name} could not be read: listing its pods: {}",
                server_message(&error)
            )];
        }
    };
    let Some(pod) = list.iter().max_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    }) else {
        return vec![format!(
            "Job {namespace}/{name} has no pod left to read a log from"
        )];
    };
    let pod_name = pod.name_any();
    let container = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .map(|c| c.name.clone());
    let params = LogParams {
        container,
        tail_lines: Some(LOG_TAIL_LINES as i64),
        limit_bytes: Some(MAX_LOG_BYTES),
        ..LogParams::default()
    };
    match pods.logs(&pod_name, &params).await {
        // An empty answer: nothing logged, or (a pod never bound to a node) nothing
        // to ask. Said, so a failure message does not end without a word on its log.
        Ok(text) if text.trim().is_empty() => vec![format!("the log of pod {namespace}/{pod_name} is empty")],
        Ok(text) => last_lines(&text),
        Err(error) => {
            let message = server_message(&error);
            warn!(job = %name, pod = %pod_name, %namespace, %message, "reading a Job's log failed");
            vec![format!(
                "the log of pod {namespace}/{pod_name} could not be read: {message}"
            )]
        }
    }
}

/// The Job's pods: its selector (the Job controller's `controller-uid` label, named
/// `batch.kubernetes.io/controller-uid` on 1.27+), else the `job-name` label.
fn pod_selector(job: &Job) -> String {
    let match_labels = job
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .and_then(|selector| selector.match_labels.as_ref())
        .filter(|labels| !labels.is_empty());
    match match_labels {
        Some(labels) => labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(","),
        None => format!("job-name={}", job.name_any()),
    }
}

fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|line| {
            let line = line.trim_end_matches('\r');
            match line.char_indices().nth(MAX_LOG_LINE_CHARS) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line.to_string(),
            }
        })
        .collect()
}

/// Deletes the app's Jobs in `namespace` but the `keep` newest (by creation time),
/// never one still running; their pods go with them (background propagation).
/// `app_label` is the app's `bosun.dev/app` value. Returns the names deleted.
pub async fn cleanup(
    client: &Client,
    namespace: &str,
    app_label: &str,
    keep: usize,
) -> Result<Vec<String>, JobError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let jobs = api
        .list(&ListParams::default().labels(&app_selector(app_label)))
        .await
        .map_err(|error| JobError::api("listing the Jobs of", namespace, app_label, error))?
        .items;
    let mut deleted = Vec::new();
    for job in jobs_to_delete(&jobs, keep) {
        let name = job.name_any();
        let params = DeleteParams {
            // Only the Job listed: not one created again under its name since.
            preconditions: job.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                info!(job = %name, %namespace, "deleted old Job");
                deleted.push(name);
            }
            // Gone already, or replaced by a newer Job of that name: nothing to do.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => return Err(JobError::api("deleting", namespace, &name, error)),
        }
    }
    Ok(deleted)
}

/// Refuses to adopt a Job that is not the one `wanted` describes: another app's, or
/// another kind or revision (names are shortened with a hash, so only a Job made by
/// hand, or by an app of another namespace with the same name, can get here).
fn check_ours(wanted: &Job, existing: &Job) -> Result<(), JobError> {
    let keys = [APP_LABEL, JOB_KIND_LABEL, REVISION_LABEL];
    let labels_match = keys
        .iter()
        .all(|key| wanted.labels().get(*key) == existing.labels().get(*key));
    let annotations_match = [OWNER_ANNOTATION, REVISION_ANNOTATION]
        .iter()
        .all(|key| wanted.annotations().get(*key) == existing.annotations().get(*key));
    if labels_match && annotations_match {
        return Ok(());
    }
    let wanted_label = |key: &str| wanted.labels().get(key).cloned().unwrap_or_default();
    let revision = wanted
        .annotations()
        .get(REVISION_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| wanted_label(REVISION_LABEL));
    let owner = wanted
        .annotations()
        .get(OWNER_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let found: Vec<String> = keys
        .iter()
        .filter_map(|key| existing.labels().get(*key).map(|value| format!("{key}={value}")))
        .chain(
            existing
                .annotations()
                .get(OWNER_ANNOTATION)
                .map(|owner| format!("owner {owner}")),
        )
        .collect();
    Err(JobError::NotOurs {
        job: format!(
            "{}/{}",
            existing.namespace().unwrap_or_default(),
            existing.name_any()
        ),
        expected: format!(
            "the {} Job of revision {revision} of AppDeployment {owner}",
            wanted_label(JOB_KIND_LABEL)
        ),
        found: if found.is_empty() {
            "it has none of bosun's labels".to_string()
        } else {
            format!("it has {}", found.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_each_cut_to_a_readable_length() {
        let text: String = (1..=30).map(|i| format!("line {i}\r\n")).collect();
        let tail = last_lines(&text);
        assert_eq!(tail.len(), LOG_TAIL_LINES);
        assert_eq!(tail.first().unwrap(), "line 11");
        assert_eq!(tail.last().unwrap(), "line 30");
        let long = "x".repeat(2000);
        let cut = last_lines(&long);
        assert_eq!(cut[0].chars().count(), MAX_LOG_LINE_CHARS + 1);
        assert!(last_lines("").is_empty());
    }

    #[test]
    fn pods_are_found_by_the_jobs_selector_or_its_name() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web-migrate-0123456789ab" },
            "spec": {
                "selector": { "matchLabels": { "controller-uid": "u-1" } },
                "template": {},
            },
        }))
        .unwrap();
        assert_eq!(pod_selector(&job), "controller-uid=u-1");
        let bare: Job = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web-migrate-0123456789ab" },
        }))
        .unwrap();
        assert_eq!(pod_selector(&bare), "job-name=web-migrate-0123456789ab");
    }
}
