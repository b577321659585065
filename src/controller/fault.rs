//! Deterministic fault injection for the crash tests: the process aborts right after a
//! named step boundary has been persisted (and its Events published), never by racing a
//! poll. Set at start from the environment:
//!
//! ```text
//! BOSUN_FAULT_ABORT_AFTER=deploy/apply                 # any app
//! BOSUN_FAULT_ABORT_AFTER=shop/litevault@rollback/start  # one app
//! ```
//!
//! Boundaries: `deploy/start`, `deploy/render`, `deploy/snapshot`, `deploy/preflight`,
//! `deploy/backup`, `deploy/migrate` (the Job finished and was recorded),
//! `deploy/backup-running`, `deploy/migrate-running` (the Job was created and is
//! running), `deploy/inventory`, `deploy/apply`, `deploy/verify` (recorded Healthy),
//! `rotation/start`, `rollback/start`, `rollback/downgrade-running`,
//! `rollback/downgrade`, `rollback/inventory`, `rollback/apply`, `rollback/verify`
//! (recorded RolledBack). Unset, nothing happens.
//!
//! Only with the cargo feature `fault-injection`, which the tests enable (`cargo
//! nextest run --all-features`) and the shipped build (`cargo build --release --bin
//! bosun`, the image) does not have: there the switch is never armed, its hook is an
//! empty inline function, and the variable is not read.

use crate::api::AppDeploymentStatus;
#[cfg(feature = "fault-injection")]
use crate::api::OperationKind;
use crate::core::Decision;
#[cfg(feature = "fault-injection")]
use crate::core::StepResult;

/// The variable that arms the switch (read only with the `fault-injection` feature).
pub const ENV: &str = "BOSUN_FAULT_ABORT_AFTER";

/// The shipped build's switch: never armed, and [`FaultSwitch::after`] compiles to nothing.
#[cfg(not(feature = "fault-injection"))]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultSwitch;

#[cfg(not(feature = "fault-injection"))]
impl FaultSwitch {
    pub fn from_env() -> Self {
        FaultSwitch
    }

    pub fn is_armed(&self) -> bool {
        false
    }

    #[inline(always)]
    pub fn after(&self, _app: &str, _decision: &Decision, _status: &AppDeploymentStatus) {}

    /// Never: the shipped build persists only where the pass needs to.
    #[inline(always)]
    pub fn must_persist(&self, _decision: &Decision, _status: &AppDeploymentStatus) -> bool {
        false
    }
}

#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch {
    /// (app `namespace/name` or any, boundary)
    points: Vec<(Option<String>, String)>,
}

#[cfg(feature = "fault-injection")]
impl FaultSwitch {
    pub fn from_env() -> Self {
        Self::parse(&std::env::var(ENV).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Self {
        let points = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|point| match point.split_once('@') {
                Some((app, boundary)) => (Some(app.to_string()), boundary.to_string()),
                None => (None, point.to_string()),
            })
            .collect();
        Self { points }
    }

    pub fn is_armed(&self) -> bool {
        !self.points.is_empty()
    }

    /// Whether `decision` must be persisted at once: with the switch armed, every
    /// boundary is, so that a test aims at a recorded state.
    pub fn must_persist(&self, decision: &Decision, status: &AppDeploymentStatus) -> bool {
        self.is_armed() && boundary(decision, status).is_some()
    }

    /// Aborts the process if `decision`, just persisted for `app`, ends an armed boundary.
    pub fn after(&self, app: &str, decision: &Decision, status: &AppDeploymentStatus) {
        if self.points.is_empty() {
            return;
        }
        let Some(boundary) = boundary(decision, status) else {
            return;
        };
        let armed = self
            .points
            .iter()
            .any(|(only, point)| point == &boundary && only.as_deref().is_none_or(|only| only == app));
        if armed {
            eprintln!("bosun: fault injection: aborting after {boundary} of {app}");
            std::process::abort();
        }
    }
}

/// The boundary a persisted decision ends, named `<operation>/<step>`.
#[cfg(feature = "fault-injection")]
pub fn boundary(decision: &Decision, status: &AppDeploymentStatus) -> Option<String> {
    let kind = status.operation.as_ref().map(|op| op.kind);
    let name = |kind: Option<OperationKind>, step: &str| {
        let kind = match kind {
            Some(OperationKind::Rollback) => "rollback",
            _ => "deploy",
        };
        Some(format!("{kind}/{step}"))
    };
    match decision {
        Decision::StartDeploy { .. } => name(Some(OperationKind::Deploy), "start"),
        Decision::Advance(StepResult::Rendered { .. }, _) => name(kind, "render"),
        Decision::Advance(StepResult::SnapshotStored { .. }, _) => name(kind, "snapshot"),
        Decision::Advance(StepResult::PreflightPassed, _) => name(kind, "preflight"),
        Decision::Advance(StepResult::JobFinished(job), _) => name(kind, job.kind.as_str()),
        Decision::AwaitJob { .. } => {
            let step = status.operation.as_ref().map(|op| op.step)?;
            name(kind, &format!("{step}-running"))
        }
        Decision::StartRotation { .. } => Some("rotation/start".into()),
        Decision::Advance(StepResult::Planned { .. }, _) => name(kind, "inventory"),
        Decision::Advance(StepResult::Applied(_), _) => name(kind, "apply"),
        Decision::MarkHealthy { .. } => name(Some(OperationKind::Deploy), "verify"),
        Decision::RollBack { .. } => name(Some(OperationKind::Rollback), "start"),
        Decision::FinishRollback => name(Some(OperationKind::Rollback), "verify"),
        _ => None,
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;

    #[test]
    fn parses_points_for_any_app_or_one() {
        let switch = FaultSwitch::parse(" deploy/apply, shop/app@rollback/start ,");
        assert_eq!(
            switch.points,
            vec![
                (None, "deploy/apply".to_string()),
                (Some("shop/app".to_string()), "rollback/start".to_string())
            ]
        );
        assert!(!FaultSwitch::parse("").is_armed());
    }

    #[test]
    fn boundaries_are_named_by_operation_and_step() {
        let status = AppDeploymentStatus::default();
        assert_eq!(
            boundary(&Decision::StartDeploy { revision: "a".into() }, &status).as_deref(),
            Some("deploy/start")
        );
        assert_eq!(
            boundary(&Decision::FinishRollback, &status).as_deref(),
            Some("rollback/verify")
        );
        assert_eq!(boundary(&Decision::Wait, &status), None);
    }
}
