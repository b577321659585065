//! What a Job's status says, whether it is an earlier attempt's or overdue, and which
//! old Jobs may go (pure).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::{JobKind, JobRecord};

/// Lines of the pod log kept with a failed Job (in the Event and the history entry).
pub const LOG_TAIL_LINES: usize = 20;

/// Annotation bosun sets (to the time, RFC 3339) on a Job still running past its
/// `activeDeadlineSeconds`: the update makes the Job controller sync it, and so end it.
pub const DEADLINE_NUDGED_ANNOTATION: &str = "bosun.dev/deadline-nudged-at";
/// How long past its deadline a running Job is left to the Job controller alone.
const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// How often an overdue Job is touched again.
const NUDGE_EVERY: Duration = Duration::from_secs(30);

/// Where a Job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished. `since`: when the Job started (its `status.startTime`, else its
    /// creation), RFC 3339.
    Running { since: String },
    /// Every pod it needed succeeded; `finished_at` is its completion time, RFC 3339.
    Succeeded { finished_at: String },
    /// It will not succeed: `reason` is the Job controller's (`BackoffLimitExceeded`,
    /// `DeadlineExceeded`, …), `message` its words, `log_tail` the last lines of its
    /// newest pod's log (or a line saying why they could not be read).
    Failed {
        reason: String,
        message: String,
        finished_at: String,
        log_tail: Vec<String>,
    },
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        !matches!(self, JobState::Running { .. })
    }

    /// One text for a `JobRecord.message` and the Event of a failed Job: reason,
    /// message, then the log tail. `None` unless failed.
    pub fn failure_message(&self) -> Option<String> {
        let JobState::Failed {
            reason,
            message,
            log_tail,
            ..
        } = self
        else {
            return None;
        };
        let mut text = if message.is_empty() {
            reason.clone()
        } else {
            format!("{reason}: {message}")
        };
        if !log_tail.is_empty() {
            text.push_str("\nlast lines of its log:\n");
            text.push_str(&log_tail.join("\n"));
        }
        Some(text)
    }
}

/// How much earlier than an operation's start a Job must have failed to be taken for
/// one of an earlier attempt: both times are whole seconds (the operation's rounded, the
/// Job's cut), so a Job of the operation itself may read up to 1.5 s earlier.
const EARLIER_ATTEMPT_MARGIN: SignedDuration = SignedDuration::from_secs(2);

impl JobState {
    /// Whether the Job failed before `since` (RFC 3339, the start of the operation now
    /// running it): then it is the Job of an earlier attempt at the same revision (one
    /// a person retries with a pin or a spec change after its quarantine), not this
    /// attempt's. Unreadable times count as this attempt's.
    pub fn failed_before(&self, since: &str) -> bool {
        let JobState::Failed { finished_at, .. } = self else {
            return false;
        };
        match (finished_at.parse::<Timestamp>(), since.parse::<Timestamp>()) {
            (Ok(finished), Ok(since)) => finished + EARLIER_ATTEMPT_MARGIN <= since,
            _ => false,
        }
    }

    /// The status record of a finished Job (`None` while it runs): `job` its name,
    /// `revision` the one it ran for, `irreversible` what [`super::irreversible`] said of
    /// the revision's migration.
    pub fn record(&self, kind: JobKind, revision: &str, job: &str, irreversible: bool) -> Option<JobRecord> {
        let (succeeded, finished_at) = match self {
            JobState::Running { .. } => return None,
            JobState::Succeeded { finished_at } => (true, finished_at),
            JobState::Failed { finished_at, .. } => (false, finished_at),
        };
        Some(JobRecord {
            kind,
            revision: revision.to_string(),
            job: job.to_string(),
            succeeded,
            finished_at: finished_at.clone(),
            irreversible,
            message: self.failure_message(),
        })
    }
}

/// The state a Job's status shows, without its log (a failed Job's `log_tail` is
/// empty here; [`super::ensure`] and [`super::observe`] fill it in).
///
/// Only the terminal conditions count: `Complete` and `Failed` with status `True`.
/// Kubernetes 1.31+ also writes `SuccessCriteriaMet` / `FailureTarget` while the last
/// pods terminate; the Job is not finished until the terminal condition follows.
pub fn state_of(job: &Job) -> JobState {
    let status = job.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let at =
        |time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| time.map(|t| t.0.to_string());
    for condition in conditions {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" => {
                let finished_at = at(status.and_then(|s| s.completion_time.as_ref()))
                    .or_else(|| at(condition.last_transition_time.as_ref()))
                    .unwrap_or_default();
                return JobState::Succeeded { finished_at };
            }
            "Failed" => {
                return JobState::Failed {
                    reason: condition.reason.clone().unwrap_or_else(|| "Failed".into()),
                    message: condition.message.clone().unwrap_or_default(),
                    finished_at: at(condition.last_transition_time.as_ref()).unwrap_or_default(),
                    log_tail: Vec::new(),
                };
            }
            _ => {}
        }
    }
    let since = at(status.and_then(|s| s.start_time.as_ref()))
        .or_else(|| at(job.metadata.creation_timestamp.as_ref()))
        .unwrap_or_default();
    JobState::Running { since }
}

/// Whether `job` still runs more than a few seconds past its `activeDeadlineSeconds`
/// (counted from `status.startTime`, as the Job controller counts) and was not touched
/// for it lately ([`DEADLINE_NUDGED_ANNOTATION`]).
///
/// The Job controller of Kubernetes 1.20 to 1.24 (before kubernetes/kubernetes#110294
/// and its cherry-picks) schedules its deadline check once, when it first sets
/// `startTime`; when a sync from a stale cache sets `startTime` again, later
/// (kubernetes/kubernetes#107226), or the deadline is made longer
/// (kubernetes/kubernetes#90553), that one check comes too early and is never repeated:
/// the Job runs on until something else syncs it. On the local 1.20 control plane 2
/// Jobs of 48 created in batches with a 3 s deadline stayed running. Any update of the
/// Job makes the controller sync it and see the deadline passed; on fixed versions the
/// Job has ended before this is ever true.
pub fn deadline_overdue(job: &Job, now: Timestamp) -> bool {
    if state_of(job).is_finished() {
        return false;
    }
    let Some(deadline) = job.spec.as_ref().and_then(|spec| spec.active_deadline_seconds) else {
        return false;
    };
    let Some(started) = job.status.as_ref().and_then(|status| status.start_time.as_ref()) else {
        return false;
    };
    let overdue_from = started.0 + SignedDuration::from_secs(deadline) + DEADLINE_GRACE;
    if now < overdue_from {
        return false;
    }
    let nudged = job
        .annotations()
        .get(DEADLINE_NUDGED_ANNOTATION)
        .and_then(|at| at.parse::<Timestamp>().ok());
    nudged
        .is_none_or(|at| now.duration_since(at) >= SignedDuration::try_from(NUDGE_EVERY).unwrap_or_default())
}

/// The Jobs cleanup deletes: all but the `keep` newest (by creation time, then name),
/// and of those never one still running.
pub fn jobs_to_delete(jobs: &[Job], keep: usize) -> Vec<&Job> {
    let mut newest_first: Vec<&Job> = jobs.iter().collect();
    newest_first.sort_by(|a, b| {
        let created = |job: &Job| job.metadata.creation_timestamp.clone();
        created(b)
            .cmp(&created(a))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    newest_first
        .into_iter()
        .skip(keep)
        .filter(|job| state_of(job).is_finished())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(name: &str, created: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": { "name": name, "namespace": "shop", "creationTimestamp": created },
            "status": status,
        }))
        .expect("job")
    }

    fn complete(at: &str) -> serde_json::Value {
        json!({
            "startTime": "2024-05-01T10:00:00Z",
            "completionTime": at,
            "succeeded": 1,
            "conditions": [{ "type": "Complete", "status": "True", "lastTransitionTime": at }],
        })
    }

    #[test]
    fn a_job_without_terminal_condition_runs_since_it_started() {
        let running = job(
            "a",
            "2024-05-01T09:59:59Z",
            json!({ "startTime": "2024-05-01T10:00:00Z", "active": 1 }),
        );
        assert_eq!(
            state_of(&running),
            JobState::Running {
                since: "2024-05-01T10:00:00Z".into()
            }
        );
        let unstarted = job("a", "2024-05-01T09:59:59Z", json!({}));
        assert_eq!(
            state_of(&unstarted),
            JobState::Running {
                since: "2024-05-01T09:59:59Z".into()
            }
        );
    }

    #[test]
    fn complete_is_success_with_its_completion_time() {
        let done = job("a", "2024-05-01T09:59:59Z", complete("2024-05-01T10:00:02Z"));
        assert_eq!(
            state_of(&done),
            JobState::Succeeded {
                finished_at: "2024-05-01T10:00:02Z".into()
            }
        );
    }

    #[test]
    fn failed_carries_the_job_controllers_reason_and_message() {
        let failed = job(
            "a",
            "2024-05-01T09:59:59Z",
            json!({
                "startTime": "2024-05-01T10:00:00Z",
                "failed": 1,
                "conditions": [
                    { "type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded" },
                    {
                        "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                        "lastTransitionTime": "2024-05-01T10:10:00Z",
                    },
                ],
            }),
        );
        let state = state_of(&failed);
        assert_eq!(
            state,
            JobState::Failed {
                reason: "DeadlineExceeded".into(),
                message: "Job was active longer than specified deadline".into(),
                finished_at: "2024-05-01T10:10:00Z".into(),
                log_tail: vec![],
            }
        );
        assert_eq!(
            state.failure_message().as_deref(),
            Some("DeadlineExceeded: Job was active longer than specified deadline")
        );
    }

    #[test]
    fn a_failure_target_alone_is_still_running() {
        // Kubernetes 1.31+: pods still terminating after the Job was judged failed.
        let terminating = job(
            "a",
            "2024-05-01T09:59:59Z",
            json!({
                "startTime": "2024-05-01T10:00:00Z",
                "conditions": [{ "type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded" }],
            }),
        );
        assert!(!state_of(&terminating).is_finished());
    }

    #[test]
    fn the_failure_message_ends_with_the_log_tail() {
        let state = JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "Job has reached the specified backoff limit".into(),
            finished_at: String::new(),
            log_tail: vec!["migrating".into(), "error: relation exists".into()],
        };
        assert_eq!(
            state.failure_message().unwrap(),
            "BackoffLimitExceeded: Job has reached the specified backoff limit\n\
             last lines of its log:\nmigrating\nerror: relation exists"
        );
        assert_eq!(
            JobState::Succeeded {
                finished_at: String::new()
            }
            .failure_message(),
            None
        );
    }

    #[test]
    fn a_finished_job_becomes_a_status_record() {
        let failed = JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "Job has reached the specified backoff limit".into(),
            finished_at: "2024-05-01T10:00:03Z".into(),
            log_tail: vec!["migrating".into()],
        };
        let record = failed
            .record(JobKind::Migrate, "abc", "web-migrate-abc", true)
            .unwrap();
        assert_eq!(
            record,
            JobRecord {
                kind: JobKind::Migrate,
                revision: "abc".into(),
                job: "web-migrate-abc".into(),
                succeeded: false,
                finished_at: "2024-05-01T10:00:03Z".into(),
                irreversible: true,
                message: failed.failure_message(),
            }
        );
        let done = JobState::Succeeded {
            finished_at: "2024-05-01T10:00:03Z".into(),
        };
        let record = done
            .record(JobKind::Backup, "abc", "web-backup-abc", false)
            .unwrap();
        assert!(record.succeeded && record.message.is_none());
        let running = JobState::Running { since: String::new() };
        assert_eq!(
            running.record(JobKind::Backup, "abc", "web-backup-abc", false),
            None
        );
    }

    #[test]
    fn a_job_that_failed_before_the_operation_started_is_an_earlier_attempts() {
        let failed = |at: &str| JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: String::new(),
            finished_at: at.into(),
            log_tail: vec![],
        };
        let started = "2024-05-01T10:00:10Z";
        assert!(failed("2024-05-01T09:50:00Z").failed_before(started));
        assert!(failed("2024-05-01T10:00:08Z").failed_before(started));
        // Within the rounding of the two times: this operation's own failure.
        assert!(!failed("2024-05-01T10:00:09Z").failed_before(started));
        assert!(!failed("2024-05-01T10:00:30Z").failed_before(started));
        assert!(!failed("").failed_before(started));
        assert!(!failed("2024-05-01T09:50:00Z").failed_before(""));
        let succeeded = JobState::Succeeded {
            finished_at: "2024-05-01T09:50:00Z".into(),
        };
        assert!(!succeeded.failed_before(started));
    }

    #[test]
    fn a_job_running_past_its_deadline_is_overdue_once_in_a_while() {
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let mut running = job(
            "a",
            "2024-05-01T09:59:59Z",
            json!({ "startTime": "2024-05-01T10:00:00Z", "active": 1 }),
        );
        // No deadline: never overdue.
        assert!(!deadline_overdue(&running, at("2024-05-01T11:00:00Z")));
        running.spec = Some(
            serde_json::from_value(json!({
                "activeDeadlineSeconds": 3,
                "template": {},
            }))
            .unwrap(),
        );
        // The Job controller's own moment, and a grace after it: left alone.
        assert!(!deadline_overdue(&running, at("2024-05-01T10:00:03Z")));
        assert!(!deadline_overdue(&running, at("2024-05-01T10:00:07Z")));
        assert!(deadline_overdue(&running, at("2024-05-01T10:00:08Z")));
        // Touched: not again for a while.
        running
            .annotations_mut()
            .insert(DEADLINE_NUDGED_ANNOTATION.into(), "2024-05-01T10:00:08Z".into());
        assert!(!deadline_overdue(&running, at("2024-05-01T10:00:20Z")));
        assert!(deadline_overdue(&running, at("2024-05-01T10:00:38Z")));
        // Not started yet (the controller never synced it), or finished: never.
        let mut unstarted = running.clone();
        unstarted.status = None;
        assert!(!deadline_overdue(&unstarted, at("2024-05-01T11:00:00Z")));
        let mut failed = running.clone();
        failed.status = Some(
            serde_json::from_value(json!({
                "startTime": "2024-05-01T10:00:00Z",
                "conditions": [{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded" }],
            }))
            .unwrap(),
        );
        assert!(!deadline_overdue(&failed, at("2024-05-01T11:00:00Z")));
    }

    #[test]
    fn cleanup_keeps_the_newest_and_every_running_job() {
        let jobs = vec![
            job("oldest", "2024-05-01T10:00:00Z", complete("2024-05-01T10:00:05Z")),
            job(
                "old-running",
                "2024-05-01T10:01:00Z",
                json!({ "startTime": "2024-05-01T10:01:00Z", "active": 1 }),
            ),
            job("old", "2024-05-01T10:02:00Z", complete("2024-05-01T10:02:05Z")),
            job("new", "2024-05-01T10:03:00Z", complete("2024-05-01T10:03:05Z")),
            job("newest", "2024-05-01T10:04:00Z", complete("2024-05-01T10:04:05Z")),
        ];
        let names = |keep| -> Vec<String> {
            jobs_to_delete(&jobs, keep)
                .into_iter()
                .map(|j| j.name_any())
                .collect()
        };
        assert_eq!(names(2), ["old", "oldest"]);
        assert_eq!(names(0), ["newest", "new", "old", "oldest"]);
        assert!(names(5).is_empty());
        assert!(names(10).is_empty());
    }

    #[test]
    fn jobs_created_in_the_same_second_are_ordered_by_name() {
        let jobs = vec![
            job("b", "2024-05-01T10:00:00Z", complete("2024-05-01T10:00:05Z")),
            job("a", "2024-05-01T10:00:00Z", complete("2024-05-01T10:00:05Z")),
        ];
        let deleted: Vec<String> = jobs_to_delete(&jobs, 1).iter().map(|j| j.name_any()).collect();
        assert_eq!(deleted, ["a"]);
    }
}
