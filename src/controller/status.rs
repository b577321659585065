//! Bookkeeping on `AppDeployment.status`: phase, conditions, history and
//! quarantine. Plain functions on the status value; the executor persists it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, Unit};

use crate::api::{
    AppDeploymentStatus, GateVerdict, HistoryEntry, Phase, Quarantine, condition, remove_condition,
    set_condition, short_revision,
};

/// Now, to the second, as RFC 3339 (what status fields hold).
pub fn now_rfc3339() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// Sets the phase and the kstatus conditions that follow from it.
pub fn set_phase(status: &mut AppDeploymentStatus, phase: Phase, message: &str, generation: Option<i64>) {
    status.phase = phase;
    let now = Time(Timestamp::now());
    let conditions = &mut status.conditions;
    let reason = phase.as_str();
    match phase {
        Phase::Healthy => {
            set_condition(
                conditions,
                condition::READY,
                true,
                reason,
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::RECONCILING);
            remove_condition(conditions, condition::STALLED);
            set_condition(
                conditions,
                condition::GATES_PASSED,
                true,
                "GatesPassed",
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::ROLLED_BACK);
        }
        Phase::Pending
        | Phase::Fetching
        | Phase::BackingUp
        | Phase::Migrating
        | Phase::Applying
        | Phase::Verifying => {
            set_condition(
                conditions,
                condition::READY,
                false,
                "Progressing",
                message,
                generation,
                &now,
            );
            set_condition(
                conditions,
                condition::RECONCILING,
                true,
                reason,
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::STALLED);
        }
        Phase::RollingBack => {
            set_condition(
                conditions,
                condition::READY,
                false,
                reason,
                message,
                generation,
                &now,
            );
            set_condition(
                conditions,
                condition::RECONCILING,
                true,
                reason,
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::STALLED);
        }
        Phase::RolledBack => {
            set_condition(
                conditions,
                condition::READY,
                false,
                reason,
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::RECONCILING);
            set_condition(
                conditions,
                condition::STALLED,
                true,
                reason,
                message,
                generation,
                &now,
            );
            set_condition(
                conditions,
                condition::ROLLED_BACK,
                true,
                reason,
                message,
                generation,
                &now,
            );
        }
        Phase::Blocked | Phase::Failed => {
            set_condition(
                conditions,
                condition::READY,
                false,
                reason,
                message,
                generation,
                &now,
            );
            remove_condition(conditions, condition::RECONCILING);
            set_condition(
                conditions,
                condition::STALLED,
                true,
                reason,
                message,
                generation,
                &now,
            );
        }
        Phase::Suspended => {
            remove_condition(conditions, condition::RECONCILING);
            remove_condition(conditions, condition::STALLED);
        }
    }
}

pub fn set_source_condition(
    status: &mut AppDeploymentStatus,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> bool {
    let now = Time(Timestamp::now());
    set_condition(
        &mut status.conditions,
        condition::SOURCE_READY,
        ready,
        reason,
        message,
        generation,
        &now,
    )
}

pub fn set_gates_condition(
    status: &mut AppDeploymentStatus,
    passed: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let now = Time(Timestamp::now());
    set_condition(
        &mut status.conditions,
        condition::GATES_PASSED,
        passed,
        reason,
        message,
        generation,
        &now,
    );
}

pub fn set_current_revision(status: &mut AppDeploymentStatus, revision: &str) {
    status.current_revision = Some(revision.to_string());
    status.current_revision_short = Some(short_revision(revision));
}

pub fn set_last_healthy_revision(status: &mut AppDeploymentStatus, revision: &str) {
    status.last_healthy_revision = Some(revision.to_string());
    status.last_healthy_revision_short = Some(short_revision(revision));
}

/// Opens a history entry for `revision`, newest first, bounded by `limit`.
pub fn open_history(
    status: &mut AppDeploymentStatus,
    revision: &str,
    phase: Phase,
    started_at: &str,
    limit: usize,
) {
    status.history.insert(
        0,
        HistoryEntry {
            revision: revision.to_string(),
            phase,
            started_at: started_at.to_string(),
            ..Default::default()
        },
    );
    status.history.truncate(limit.max(1));
}

/// The unfinished history entry of `revision`, if any.
pub fn open_entry<'a>(status: &'a mut AppDeploymentStatus, revision: &str) -> Option<&'a mut HistoryEntry> {
    status
        .history
        .iter_mut()
        .find(|entry| entry.revision == revision && entry.finished_at.is_none())
}

/// Updates the open entry of `revision`; `finished` closes it.
pub fn update_history(
    status: &mut AppDeploymentStatus,
    revision: &str,
    phase: Phase,
    message: Option<&str>,
    gates: Option<Vec<GateVerdict>>,
    finished: bool,
) {
    if let Some(entry) = open_entry(status, revision) {
        entry.phase = phase;
        if let Some(message) = message {
            entry.message = Some(message.to_string());
        }
        if let Some(gates) = gates {
            entry.gates = gates;
        }
        if finished {
            entry.finished_at = Some(now_rfc3339());
        }
    }
}

pub fn quarantine(status: &mut AppDeploymentStatus, revision: &str, reason: &str) {
    if status.quarantined.iter().any(|q| q.revision == revision) {
        return;
    }
    status.quarantined.insert(
        0,
        Quarantine {
            revision: revision.to_string(),
            reason: reason.to_string(),
            at: now_rfc3339(),
        },
    );
    // Quarantine only matters while Git points at the revision; keep a bounded list.
    status.quarantined.truncate(20);
}
