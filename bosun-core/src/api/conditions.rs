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

/// How many bytes of a message the status keeps (conditions, history, a block, a
/// quarantine): a refusal can quote kilobytes of the object it refused, and the status is
/// rewritten whole on every change. The full text is in the controller's log.
pub const MESSAGE_BUDGET_BYTES: usize = 1024;

/// `message` cut to [`MESSAGE_BUDGET_BYTES`] (see [`cut_to_bytes`]).
pub fn within_budget(message: &str) -> String {
    cut_to_bytes(message, MESSAGE_BUDGET_BYTES)
}

/// `text` cut to at most `limit` bytes on a character boundary, ending in `…` when cut.
pub fn cut_to_bytes(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let ellipsis = "…";
    let mut end = limit.saturating_sub(ellipsis.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
/// The message is kept [`within_budget`]. Returns whether anything changed.
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
    let message = within_budget(message);
    let message = message.as_str();
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
