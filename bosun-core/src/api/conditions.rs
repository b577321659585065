use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types an AppDeployment reports (kstatus plus bosun's own).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const SOURCE_READY: &str = "SourceReady";
    pub const GATES_PASSED: &str = "GatesPassed";
    pub const PREFLIGHT_PASSED: &str = "PreflightPassed";
    pub const MIGRATION_SUCCEEDED: &str = "MigrationSucceeded";
    pub const ROLLED_BACK: &str = "RolledBack";
    /// False while objects that should have been pruned could not be (retried).
    pub const PRUNED: &str = "Pruned";
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
/// Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = if status { "True" } else { "False" };
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let unchanged = existing.status == status
            && existing.reason == reason
            && existing.message == message
            && existing.observed_generation == observed_generation;
        if unchanged {
            return false;
        }
        if existing.status != status {
            existing.last_transition_time = now.clone();
        }
        existing.status = status.into();
        existing.reason = reason.into();
        existing.message = message.into();
        existing.observed_generation = observed_generation;
        return true;
    }
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation,
        last_transition_time: now.clone(),
    });
    true
}

/// Removes a condition; returns whether it was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}
