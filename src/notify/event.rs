//! Which change of an app's status is news for its receivers, and what the news says.
//!
//! Read from two statuses alone, the last one saved and the one just written, as
//! [`crate::core::record`] writes them: the phase, the operation, `status.blocked`, the
//! history entry of the revision concerned (its message, gate verdicts and rotation) and
//! the `Ready` condition. The status never holds a Secret's value, so neither does an
//! event.

use kube::ResourceExt;

use crate::api::{
    AppDeployment, AppDeploymentStatus, HistoryEntry, Operation, OperationKind, Phase, Verdict, condition,
    short_revision,
};
use crate::core::FailureKind;
use crate::core::record::rfc3339;
use crate::gates::truncate;

/// The phases a receiver can be told of (`spec.notify[].on` may list others; they are
/// never told).
pub(crate) const TOLD_PHASES: &[Phase] = &[
    Phase::Healthy,
    Phase::Blocked,
    Phase::Failed,
    Phase::RollingBack,
    Phase::RolledBack,
];

/// The cause quoted in a summary: its first line, at most this many characters (a
/// migration's failure carries the tail of its log; the message has all of it).
const SUMMARY_CAUSE_MAX_CHARS: usize = 200;
/// The message of an event, at most this many characters (within Slack's 2,000 per
/// field; status messages are shorter in practice).
const MESSAGE_MAX_CHARS: usize = 1_900;

/// One change of an app's phase, as told to its receivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseEvent {
    pub app: String,
    pub namespace: String,
    /// The phase entered. A rollback that finished is `RolledBack` even when the app
    /// then waits `Blocked` on a refused Git tip.
    pub phase: Phase,
    /// Full commit ids. `Healthy`: the revision healthy before → the new one.
    /// `RollingBack`/`RolledBack`: the failed revision → the last healthy one.
    /// `Failed`: the last healthy revision → the failed one. `Blocked`: the running
    /// revision → the refused one. Either may be absent (a first deploy).
    pub from: Option<String>,
    pub to: Option<String>,
    /// The gate that failed (`workload` for the workload gate), when one did.
    pub gate: Option<String>,
    /// CamelCase, as in the `Ready` condition (`GateFailed` when a gate failed and the
    /// condition only repeats the phase; a block's own reason, e.g. `PreflightFailed`).
    pub reason: String,
    /// The `Ready` condition's message (or the history entry's).
    pub message: String,
    /// One line for a chat or a pager: app, revisions, and the cause.
    pub summary: String,
    /// When the status recorded the change (RFC 3339); empty if it records no time.
    pub at: String,
    /// For a rollout of a Secret change: the Secrets whose data changed (names only).
    pub rotation: Vec<String>,
}

/// The event that the change from `before` (last saved) to `after` (just saved) is, if
/// any: the phase changed into one of [`TOLD_PHASES`], or stayed `Failed` or `Blocked`
/// for another revision (or, for `Blocked`, another reason).
///
/// Nothing new is told when the app only resumes: from `Suspended` (the user paused it,
/// and nothing happened since), or from a spec or Runbook problem, except the all-clear
/// (`Healthy`), since the problem was told as `Blocked`. A rollback started is
/// `RollingBack` once; a rollback resumed after a pause is not a new one.
pub fn event_of(
    app: &AppDeployment,
    before: &AppDeploymentStatus,
    after: &AppDeploymentStatus,
) -> Option<PhaseEvent> {
    let fact = fact_of(before, after)?;
    Some(tell(app, before, after, fact))
}

/// What happened, before it is put into words.
struct Fact<'a> {
    phase: Phase,
    from: Option<String>,
    to: Option<String>,
    /// The history entry of the revision concerned.
    entry: Option<&'a HistoryEntry>,
    /// Why, for the summary, when no failed gate says it better.
    cause: Option<String>,
    reason: Option<String>,
    at: Option<String>,
    /// A rollback finished and the revision it returned to is what Git asks for.
    after_rollback: bool,
    /// The entry's failed gate is the cause (not when a rollback failed: that gate was
    /// told with `RollingBack`; the rollback's own failure is the news now).
    gate_is_cause: bool,
}

fn fact_of<'a>(before: &AppDeploymentStatus, after: &'a AppDeploymentStatus) -> Option<Fact<'a>> {
    if before.phase == Phase::Suspended {
        return None;
    }
    let resumed_from_problem = blocked_by_problem(before);
    if let Some(rollback) = finished_rollback(before, after) {
        let failed = rollback.failed_revision.clone();
        let entry = failed.as_deref().and_then(|r| newest_entry(after, r));
        let phase = if after.phase == Phase::Healthy {
            Phase::Healthy
        } else {
            Phase::RolledBack
        };
        return Some(Fact {
            phase,
            from: failed,
            to: Some(rollback.revision.clone()),
            entry,
            cause: entry.and_then(|e| e.message.clone()),
            reason: (phase == Phase::RolledBack).then(|| Phase::RolledBack.as_str().to_string()),
            at: entry.and_then(|e| e.finished_at.clone()),
            after_rollback: true,
            gate_is_cause: phase == Phase::RolledBack,
        });
    }
    match after.phase {
        Phase::RollingBack => {
            let rollback = rollback_of(after)?;
            let same_rollback = rollback_of(before).is_some_and(|earlier| {
                earlier.failed_revision == rollback.failed_revision && earlier.revision == rollback.revision
            });
            if same_rollback {
                return None;
            }
            let entry = rollback
                .failed_revision
                .as_deref()
                .and_then(|r| newest_entry(after, r));
            Some(Fact {
                phase: Phase::RollingBack,
                from: rollback.failed_revision.clone(),
                to: Some(rollback.revision.clone()),
                entry,
                cause: entry.and_then(|e| e.message.clone()),
                reason: None,
                at: Some(rollback.started_at.clone()),
                after_rollback: false,
                gate_is_cause: true,
            })
        }
        Phase::Healthy => {
            if before.phase == Phase::Healthy {
                return None;
            }
            let to = after
                .last_healthy_revision
                .clone()
                .or_else(|| after.current_revision.clone());
            let from = before
                .last_healthy_revision
                .clone()
                .filter(|from| Some(from) != to.as_ref());
            let entry = to.as_deref().and_then(|r| newest_entry(after, r));
            Some(Fact {
                phase: Phase::Healthy,
                from,
                to,
                entry,
                cause: None,
                reason: None,
                // Only a deploy that ended now closed the entry now (an adopted revision's
                // entry is as old as its deploy).
                at: entry
                    .filter(|e| before.operation.is_some() && e.phase == Phase::Healthy)
                    .and_then(|e| e.finished_at.clone()),
                after_rollback: false,
                gate_is_cause: false,
            })
        }
        Phase::Failed => {
            if resumed_from_problem {
                return None;
            }
            let failed = failed_revision(before, after)?;
            if before.phase == Phase::Failed && newest_failed(before) == Some(failed.as_str()) {
                return None;
            }
            let entry = newest_entry(after, &failed);
            Some(Fact {
                phase: Phase::Failed,
                from: after.last_healthy_revision.clone().filter(|from| *from != failed),
                to: Some(failed),
                entry,
                cause: entry.and_then(|e| e.message.clone()),
                reason: None,
                at: entry.and_then(|e| e.finished_at.clone()),
                after_rollback: false,
                gate_is_cause: rollback_of(before).is_none(),
            })
        }
        Phase::Blocked => {
            let block = block_of(after);
            if before.phase == Phase::Blocked {
                let earlier = block_of(before);
                if earlier.revision == block.revision && earlier.reason == block.reason {
                    return None;
                }
            }
            let entry = block.revision.as_deref().and_then(|r| newest_entry(after, r));
            Some(Fact {
                phase: Phase::Blocked,
                from: after
                    .current_revision
                    .clone()
                    .filter(|running| Some(running) != block.revision.as_ref()),
                to: block.revision,
                entry,
                cause: Some(block.message),
                reason: Some(block.reason),
                at: block.at,
                after_rollback: false,
                gate_is_cause: false,
            })
        }
        _ => None,
    }
}

/// Puts a fact into words.
fn tell(
    app: &AppDeployment,
    before: &AppDeploymentStatus,
    after: &AppDeploymentStatus,
    fact: Fact<'_>,
) -> PhaseEvent {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let failed_gate = fact
        .entry
        .filter(|_| fact.gate_is_cause)
        .and_then(|entry| entry.gates.iter().find(|g| g.verdict == Verdict::Failed));
    // A rotation is news only from the operation that rolled it out (an older entry of
    // the same revision may be a rotation long past).
    let rotation = match (&before.operation, fact.entry) {
        (Some(_), Some(entry)) => entry.rotation.clone(),
        _ => Vec::new(),
    };
    let (ready_reason, ready_message) = ready(after);
    let mut reason = fact
        .reason
        .clone()
        .or(ready_reason)
        .unwrap_or_else(|| fact.phase.as_str().to_string());
    if failed_gate.is_some() && reason == fact.phase.as_str() {
        reason = "GateFailed".into();
    }
    let message = ready_message
        .or_else(|| fact.entry.and_then(|e| e.message.clone()))
        .unwrap_or_default();
    let cause = match failed_gate {
        Some(gate) => match gate.message.as_deref().filter(|m| !m.is_empty()) {
            Some(detail) => format!("gate {} failed ({detail})", gate.name),
            None => format!("gate {} failed", gate.name),
        },
        None => fact.cause.clone().unwrap_or_else(|| message.clone()),
    };
    let target_namespace = app
        .spec
        .target_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let summary = summary(
        &format!("{namespace}/{name}"),
        &fact,
        &reason,
        &one_line(&cause),
        &secrets_named(&rotation, &target_namespace),
    );
    PhaseEvent {
        app: name,
        namespace,
        phase: fact.phase,
        from: fact.from,
        to: fact.to,
        gate: failed_gate.map(|g| g.name.clone()),
        reason,
        message: truncate(&message, MESSAGE_MAX_CHARS),
        summary,
        at: fact.at.or_else(|| newest_transition(after)).unwrap_or_default(),
        rotation,
    }
}

fn summary(app: &str, fact: &Fact<'_>, reason: &str, cause: &str, secrets: &str) -> String {
    let short = |revision: &Option<String>| revision.as_deref().map(short_revision);
    let (from, to) = (short(&fact.from), short(&fact.to));
    let rotated = !secrets.is_empty();
    let text = match fact.phase {
        Phase::Healthy => {
            let to = to.unwrap_or_default();
            match (&from, rotated, fact.after_rollback) {
                (_, true, _) => format!("revision {to} is healthy with the new data of {secrets}"),
                (Some(from), _, true) => format!("revision {to} is healthy again (rolled back from {from})"),
                (Some(from), _, false) => format!("revision {to} is healthy, replacing {from}"),
                (None, _, _) => format!("revision {to} is healthy"),
            }
        }
        Phase::RollingBack => {
            let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
            if rotated {
                format!("{secrets} changed and revision {from} failed; rolling back to {to}: {cause}")
            } else {
                format!("revision {from} failed; rolling back to {to}: {cause}")
            }
        }
        Phase::RolledBack => {
            let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
            if rotated {
                format!("{secrets} changed; revision {from} rolled back to {to}: {cause}")
            } else {
                format!("revision {from} rolled back to {to}: {cause}")
            }
        }
        Phase::Failed => {
            let to = to.unwrap_or_default();
            if rotated {
                format!("{secrets} changed; the rollout failed on revision {to}: {cause}")
            } else {
                format!("revision {to} failed: {cause}")
            }
        }
        _ => match (to, rotated) {
            (_, true) => format!("{secrets} changed; the rollout is blocked ({reason}): {cause}"),
            (Some(to), false) => format!("revision {to} blocked ({reason}): {cause}"),
            (None, false) => format!("blocked ({reason}): {cause}"),
        },
    };
    format!("{app}: {text}")
}

/// `Secret shop/jwt` or `Secrets shop/jwt, shop/db`: names as the status records them,
/// in the namespace the app's objects live in unless they name one.
fn secrets_named(rotation: &[String], namespace: &str) -> String {
    let names: Vec<String> = rotation
        .iter()
        .map(|name| {
            if name.contains('/') {
                name.clone()
            } else {
                format!("{namespace}/{name}")
            }
        })
        .collect();
    match names.len() {
        0 => String::new(),
        1 => format!("Secret {}", names[0]),
        _ => format!("Secrets {}", names.join(", ")),
    }
}

/// The first line of `text`, cut short for a summary.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default().trim_end();
    let cut = truncate(first, SUMMARY_CAUSE_MAX_CHARS);
    if first.len() < text.trim_end().len() && !cut.ends_with('…') {
        format!("{cut} …")
    } else {
        cut
    }
}

/// A rollback that ended with this change without failing: the operation before was a
/// Rollback and none is left.
fn finished_rollback<'a>(
    before: &'a AppDeploymentStatus,
    after: &AppDeploymentStatus,
) -> Option<&'a Operation> {
    let rollback = rollback_of(before)?;
    let ended = after.operation.is_none()
        && matches!(after.phase, Phase::RolledBack | Phase::Healthy | Phase::Blocked)
        && before.phase == Phase::RollingBack;
    ended.then_some(rollback)
}

fn rollback_of(status: &AppDeploymentStatus) -> Option<&Operation> {
    status
        .operation
        .as_ref()
        .filter(|op| op.kind == OperationKind::Rollback)
}

/// The revision a `Failed` phase is about: the one the operation that ended was
/// deploying (or, for a rollback, had failed), else the newest failed entry.
fn failed_revision(before: &AppDeploymentStatus, after: &AppDeploymentStatus) -> Option<String> {
    let from_operation = before
        .operation
        .as_ref()
        .and_then(|op| match op.kind {
            OperationKind::Deploy => Some(op.revision.clone()),
            OperationKind::Rollback => op.failed_revision.clone(),
        })
        // Its entry says it failed (the operation may also have ended well while the
        // phase at rest says Failed about another revision).
        .filter(|revision| newest_entry(after, revision).is_some_and(|e| e.phase == Phase::Failed));
    from_operation.or_else(|| newest_failed(after).map(str::to_string))
}

fn newest_failed(status: &AppDeploymentStatus) -> Option<&str> {
    status
        .history
        .iter()
        .find(|entry| entry.phase == Phase::Failed)
        .map(|entry| entry.revision.as_str())
}

/// The newest history entry of `revision` (a rotation has its own entry, newer than
/// the deploy of the same revision).
fn newest_entry<'a>(status: &'a AppDeploymentStatus, revision: &str) -> Option<&'a HistoryEntry> {
    status.history.iter().find(|entry| entry.revision == revision)
}

/// What a `Blocked` phase is about.
struct Block {
    revision: Option<String>,
    reason: String,
    message: String,
    at: Option<String>,
}

fn block_of(status: &AppDeploymentStatus) -> Block {
    let (ready_reason, ready_message) = ready(status);
    if blocked_by_problem(status) {
        // The spec or the Runbook cannot be acted on: about whatever is under way or
        // asked for, not a refusal of that revision.
        return Block {
            revision: status
                .operation
                .as_ref()
                .map(|op| op.revision.clone())
                .or_else(|| status.desired_revision.clone()),
            reason: ready_reason.unwrap_or_else(|| Phase::Blocked.as_str().into()),
            message: ready_message.unwrap_or_default(),
            at: None,
        };
    }
    match &status.blocked {
        Some(block) => Block {
            revision: Some(block.revision.clone()),
            reason: block.reason.as_str().to_string(),
            message: block.message.clone(),
            at: Some(block.at.clone()),
        },
        None => Block {
            revision: status.desired_revision.clone(),
            reason: ready_reason.unwrap_or_else(|| Phase::Blocked.as_str().into()),
            message: ready_message.unwrap_or_default(),
            at: None,
        },
    }
}

/// Blocked by the spec or the Runbook (`Decision::BlockOnProblem`), not by a revision.
fn blocked_by_problem(status: &AppDeploymentStatus) -> bool {
    let problems = [
        FailureKind::SpecInvalid.reason(),
        FailureKind::RunbookInvalid.reason(),
    ];
    status.phase == Phase::Blocked
        && ready(status)
            .0
            .is_some_and(|reason| problems.contains(&reason.as_str()))
}

/// The `Ready` condition's reason and message.
fn ready(status: &AppDeploymentStatus) -> (Option<String>, Option<String>) {
    match status.conditions.iter().find(|c| c.type_ == condition::READY) {
        Some(ready) => (
            Some(ready.reason.clone()).filter(|r| !r.is_empty()),
            Some(ready.message.clone()).filter(|m| !m.is_empty()),
        ),
        None => (None, None),
    }
}

/// The newest transition any condition records: when the status last changed state.
fn newest_transition(status: &AppDeploymentStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .map(|c| c.last_transition_time.0)
        .max()
        .map(rfc3339)
}

#[cfg(test)]
mod tests;
