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

/// Sets the phase and the kstatus conditions that follow from it: `Ready` says
/// whether the desired revision runs healthy; `Reconciling` (work under way) and
/// `Stalled` (nothing will change without a new commit or spec) are present only
/// while true, as kstatus expects.
pub fn set_phase(status: &mut AppDeploymentStatus, phase: Phase, message: &str, generation: Option<i64>) {
    status.phase = phase;
    let (ready, reconciling, stalled) = match phase {
        Phase::Healthy => (Some(true), false, false),
        Phase::Pending
        | Phase::Fetching
        | Phase::BackingUp
        | Phase::Migrating
        | Phase::Applying
        | Phase::Verifying
        | Phase::RollingBack => (Some(false), true, false),
        Phase::RolledBack | Phase::Blocked | Phase::Failed => (Some(false), false, true),
        // Suspension changes nothing about what runs: Ready keeps its last word.
        Phase::Suspended => (None, false, false),
    };
    let reason = match phase {
        Phase::Pending
        | Phase::Fetching
        | Phase::BackingUp
        | Phase::Migrating
        | Phase::Applying
        | Phase::Verifying => "Progressing",
        _ => phase.as_str(),
    };
    let now = Time(Timestamp::now());
    let conditions = &mut status.conditions;
    let mut set = |type_: &str, value: bool, reason: &str| {
        set_condition(conditions, type_, value, reason, message, generation, &now);
    };
    if let Some(ready) = ready {
        set(condition::READY, ready, reason);
    }
    if reconciling {
        set(condition::RECONCILING, true, phase.as_str());
    }
    if stalled {
        set(condition::STALLED, true, phase.as_str());
    }
    match phase {
        Phase::Healthy => set(condition::GATES_PASSED, true, "GatesPassed"),
        Phase::RolledBack => set(condition::ROLLED_BACK, true, phase.as_str()),
        _ => {}
    }
    if !reconciling {
        remove_condition(conditions, condition::RECONCILING);
    }
    if !stalled {
        remove_condition(conditions, condition::STALLED);
    }
    if phase == Phase::Healthy {
        remove_condition(conditions, condition::ROLLED_BACK);
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

/// Quarantines `revision` at `generation`; a repeat failure refreshes the entry.
pub fn quarantine(status: &mut AppDeploymentStatus, revision: &str, reason: &str, generation: Option<i64>) {
    status.quarantined.retain(|q| q.revision != revision);
    status.quarantined.insert(
        0,
        Quarantine {
            revision: revision.to_string(),
            reason: reason.to_string(),
            at: now_rfc3339(),
            generation,
        },
    );
    // Quarantine only matters while Git points at the revision; keep a bounded list.
    status.quarantined.truncate(20);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition_status(status: &AppDeploymentStatus, type_: &str) -> Option<String> {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    }

    #[test]
    fn phases_map_to_kstatus_conditions() {
        let mut status = AppDeploymentStatus::default();
        set_phase(&mut status, Phase::Verifying, "verifying", Some(1));
        assert_eq!(
            condition_status(&status, condition::READY).as_deref(),
            Some("False")
        );
        assert_eq!(
            condition_status(&status, condition::RECONCILING).as_deref(),
            Some("True")
        );
        assert_eq!(condition_status(&status, condition::STALLED), None);

        set_phase(&mut status, Phase::RolledBack, "rolled back", Some(1));
        assert_eq!(condition_status(&status, condition::RECONCILING), None);
        assert_eq!(
            condition_status(&status, condition::STALLED).as_deref(),
            Some("True")
        );
        assert_eq!(
            condition_status(&status, condition::ROLLED_BACK).as_deref(),
            Some("True")
        );

        set_phase(&mut status, Phase::Healthy, "healthy", Some(2));
        assert_eq!(
            condition_status(&status, condition::READY).as_deref(),
            Some("True")
        );
        assert_eq!(condition_status(&status, condition::STALLED), None);
        assert_eq!(condition_status(&status, condition::ROLLED_BACK), None);
        assert_eq!(
            condition_status(&status, condition::GATES_PASSED).as_deref(),
            Some("True")
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .unwrap();
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn suspension_keeps_ready_as_it_was() {
        let mut status = AppDeploymentStatus::default();
        set_phase(&mut status, Phase::Healthy, "healthy", Some(1));
        set_phase(&mut status, Phase::Suspended, "suspended", Some(2));
        assert_eq!(
            condition_status(&status, condition::READY).as_deref(),
            Some("True")
        );
        assert_eq!(status.phase, Phase::Suspended);
    }

    #[test]
    fn history_is_bounded_and_quarantine_not_duplicated() {
        let mut status = AppDeploymentStatus::default();
        for i in 0..5 {
            open_history(&mut status, &format!("rev{i}"), Phase::Applying, "t", 3);
        }
        assert_eq!(status.history.len(), 3);
        assert_eq!(status.history[0].revision, "rev4");
        update_history(&mut status, "rev4", Phase::Healthy, Some("ok"), None, true);
        assert_eq!(status.history[0].phase, Phase::Healthy);
        assert!(status.history[0].finished_at.is_some());
        quarantine(&mut status, "bad", "gate failed", Some(1));
        quarantine(&mut status, "bad", "gate failed again", Some(2));
        assert_eq!(status.quarantined.len(), 1);
        assert_eq!(status.quarantined[0].generation, Some(2));
    }
}
