//! Events of real decisions: each story runs passes as the controller does (decide,
//! record, save, run the step), with [`crate::core::decide`] and
//! [`crate::core::record::record`], and looks for an event at every save.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::api::{AppDeploymentSpec, GateVerdict, Step};
use crate::core::record::{self, RecordInput};
use crate::core::{
    self, Applied, Decision, DesiredRevision, Failure, FailureKind, Input, Recheck, StepOutcome, StepResult,
    Verification,
};

/// The last healthy revision (short `0f9e8d7c6b5a`).
const GOOD: &str = "0f9e8d7c6b5a0f9e8d7c6b5a0f9e8d7c6b5a0f9e";
/// A revision that fails its gates (short `1a2b3c4d5e6f`).
const BAD: &str = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";
/// Another good revision (short `2c3d4e5f6a7b`).
const NEWER: &str = "2c3d4e5f6a7b8c9d0e1f2c3d4e5f6a7b8c9d0e1f";
const DEADLINE: Duration = Duration::from_secs(600);
const HEALTH_FAILED: &str = "3 consecutive failed probes: status 503";

fn verdict(name: &str, verdict: Verdict, message: &str) -> GateVerdict {
    GateVerdict {
        name: name.into(),
        verdict,
        message: Some(message.into()),
    }
}

fn passed() -> Verification {
    Verification::Passed {
        gates: vec![
            verdict("workload", Verdict::Passed, "1/1 pods ready"),
            verdict("health", Verdict::Passed, "status 200"),
        ],
    }
}

/// The health gate failing, worded as `controller::verify` words it.
fn health_failed() -> Verification {
    Verification::Failed {
        message: format!("gate health failed: {HEALTH_FAILED}"),
        gates: vec![
            verdict("workload", Verdict::Passed, "1/1 pods ready"),
            verdict("health", Verdict::Failed, HEALTH_FAILED),
        ],
    }
}

/// Steps that succeed, with a verification that `judge` decides per revision.
fn steps(judge: impl Fn(&str) -> Verification) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    move |status, step| {
        let revision = status
            .operation
            .as_ref()
            .map(|op| op.revision.clone())
            .unwrap_or_default();
        match step {
            Step::Render => StepOutcome::Done(StepResult::Rendered {
                render_digest: "r1".into(),
                objects: 3,
            }),
            Step::Snapshot => StepOutcome::Done(StepResult::SnapshotStored {
                name: format!("api-{}", &revision[..8]),
            }),
            Step::Preflight => StepOutcome::Done(StepResult::PreflightPassed),
            Step::Inventory => StepOutcome::Done(StepResult::Planned {
                inventory: Vec::new(),
            }),
            Step::Apply => StepOutcome::Done(StepResult::Applied(Applied::default())),
            Step::Verify => StepOutcome::Verified(judge(&revision)),
            other => StepOutcome::Transient(format!("step {other} is not part of these stories")),
        }
    }
}

fn good_unless_bad(revision: &str) -> Verification {
    if revision == BAD {
        health_failed()
    } else {
        passed()
    }
}

/// Steps where `at` refuses the revision with `failure`.
fn refusing(at: Step, failure: Failure) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    let mut rest = steps(good_unless_bad);
    move |status, step| {
        if step == at {
            StepOutcome::Refused(failure.clone())
        } else {
            rest(status, step)
        }
    }
}

/// One app's life, pass by pass.
struct Story {
    app: AppDeployment,
    status: AppDeploymentStatus,
    now: Timestamp,
    automatic_rollback: bool,
    problem: Option<Failure>,
    suspended: bool,
    /// The Git interval: a block is checked again once it has passed.
    interval: Duration,
    /// What a re-check of a blocked revision finds.
    recheck: Recheck,
    /// Every save: the status before and after it.
    saves: Vec<(AppDeploymentStatus, AppDeploymentStatus)>,
}

impl Story {
    fn new() -> Self {
        let mut app = AppDeployment::new("api", AppDeploymentSpec::default());
        app.metadata.namespace = Some("shop".into());
        app.metadata.generation = Some(1);
        Story {
            app,
            status: AppDeploymentStatus::default(),
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
            automatic_rollback: true,
            problem: None,
            suspended: false,
            interval: Duration::from_secs(3600),
            recheck: Recheck::Clear,
            saves: Vec::new(),
        }
    }

    /// A story that already runs `GOOD`, healthy.
    fn healthy() -> Self {
        let mut story = Story::new();
        story.pass(GOOD, steps(good_unless_bad));
        assert_eq!(story.status.phase, Phase::Healthy);
        story
    }

    /// One pass with Git at `desired`; returns the events of its saves.
    fn pass(
        &mut self,
        desired: &str,
        mut run: impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome,
    ) -> Vec<PhaseEvent> {
        // What `controller::observe` records before deciding.
        self.status.desired_revision = Some(desired.into());
        let mut events = Vec::new();
        let mut outcome = None;
        let mut recheck = None;
        for _ in 0..40 {
            let input = Input {
                status: &self.status,
                generation: self.app.metadata.generation,
                suspended: self.suspended,
                automatic_rollback: self.automatic_rollback,
                desired: DesiredRevision::Known {
                    revision: desired.into(),
                    pinned: false,
                },
                spec_digest: "d1",
                problem: self.problem.clone(),
                outcome: outcome.take(),
                now: self.now,
                step_deadline: DEADLINE,
                interval: self.interval,
                block_checked_at: None,
                config_changed_at: None,
                // Drift was just repaired: these stories are about revisions.
                last_resync: Some(self.now),
                recheck: recheck.take(),
                plan: Default::default(),
                rollout_on_secret_change: false,
                secret_data: Default::default(),
                retry: None,
            };
            let decision = core::decide(&input);
            let before = self.status.clone();
            record::record(
                &mut self.status,
                &decision,
                &RecordInput {
                    now: self.now,
                    generation: self.app.metadata.generation,
                    history_limit: 10,
                    spec_digest: "d1",
                    desired: Some(desired),
                },
            );
            if self.status != before {
                events.extend(event_of(&self.app, &before, &self.status));
                self.saves.push((before, self.status.clone()));
            }
            self.now += SignedDuration::from_secs(1);
            match decision {
                Decision::Run(step) => outcome = Some(run(&self.status, step)),
                Decision::RecheckBlock { .. } => recheck = Some(self.recheck.clone()),
                ref continuing if continuing.continues() => {}
                _ => break,
            }
        }
        events
    }

    /// The save whose event was of `phase`, to replay with a changed status.
    fn save_told_as(&self, phase: Phase) -> (AppDeploymentStatus, AppDeploymentStatus) {
        self.saves
            .iter()
            .find(|(before, after)| event_of(&self.app, before, after).is_some_and(|e| e.phase == phase))
            .cloned()
            .unwrap_or_else(|| panic!("no save was told as {phase}"))
    }
}

fn only(events: Vec<PhaseEvent>) -> PhaseEvent {
    assert_eq!(events.len(), 1, "{events:#?}");
    events.into_iter().next().unwrap()
}

#[test]
fn a_first_revision_that_passes_is_told_healthy_once() {
    let mut story = Story::new();
    let event = only(story.pass(GOOD, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Healthy);
    assert_eq!((event.app.as_str(), event.namespace.as_str()), ("api", "shop"));
    assert_eq!((event.from, event.to.as_deref()), (None, Some(GOOD)));
    assert_eq!(event.gate, None);
    assert_eq!(event.reason, "Healthy");
    assert_eq!(event.message, "revision 0f9e8d7c6b5a passed every gate");
    assert_eq!(event.summary, "shop/api: revision 0f9e8d7c6b5a is healthy");
    assert_eq!(Some(&event.at), story.status.history[0].finished_at.as_ref());
    // At rest nothing more is told.
    assert!(story.pass(GOOD, steps(good_unless_bad)).is_empty());
}

#[test]
fn a_newer_healthy_revision_names_the_one_it_replaces() {
    let mut story = Story::healthy();
    let event = only(story.pass(NEWER, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Healthy);
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(GOOD), Some(NEWER))
    );
    assert_eq!(
        event.summary,
        "shop/api: revision 2c3d4e5f6a7b is healthy, replacing 0f9e8d7c6b5a"
    );
}

#[test]
fn a_failed_gate_is_told_rolling_back_then_rolled_back() {
    let mut story = Story::healthy();
    let events = story.pass(BAD, steps(good_unless_bad));
    assert_eq!(story.status.phase, Phase::RolledBack);
    assert_eq!(events.len(), 2, "{events:#?}");

    let rolling = &events[0];
    assert_eq!(rolling.phase, Phase::RollingBack);
    assert_eq!(
        (rolling.from.as_deref(), rolling.to.as_deref()),
        (Some(BAD), Some(GOOD))
    );
    assert_eq!(rolling.gate.as_deref(), Some("health"));
    assert_eq!(rolling.reason, "GateFailed");
    assert_eq!(
        rolling.message,
        format!(
            "revision 1a2b3c4d5e6f failed (gate health failed: {HEALTH_FAILED}); rolling back to 0f9e8d7c6b5a"
        )
    );
    assert_eq!(
        rolling.summary,
        "shop/api: revision 1a2b3c4d5e6f failed; rolling back to 0f9e8d7c6b5a: gate health failed \
         (3 consecutive failed probes: status 503)"
    );
    let rollback = story
        .saves
        .iter()
        .find_map(|(_, after)| rollback_of(after).cloned())
        .unwrap();
    assert_eq!(rolling.at, rollback.started_at);

    let rolled = &events[1];
    assert_eq!(rolled.phase, Phase::RolledBack);
    assert_eq!(
        (rolled.from.as_deref(), rolled.to.as_deref()),
        (Some(BAD), Some(GOOD))
    );
    assert_eq!(rolled.gate.as_deref(), Some("health"));
    assert_eq!(rolled.reason, "GateFailed");
    assert_eq!(
        rolled.message,
        "rolled back from 1a2b3c4d5e6f to last healthy revision 0f9e8d7c6b5a"
    );
    assert_eq!(
        rolled.summary,
        "shop/api: revision 1a2b3c4d5e6f rolled back to 0f9e8d7c6b5a: gate health failed \
         (3 consecutive failed probes: status 503)"
    );
    let entry = story.status.history.iter().find(|e| e.revision == BAD).unwrap();
    assert_eq!(Some(&rolled.at), entry.finished_at.as_ref());
    assert!(rolled.at > rolling.at);

    // Git stays on the quarantined revision: nothing new to tell.
    assert!(story.pass(BAD, steps(good_unless_bad)).is_empty());
    // Git reverted to the running revision: adopted as Healthy, told as such.
    let adopted = only(story.pass(GOOD, steps(good_unless_bad)));
    assert_eq!(adopted.phase, Phase::Healthy);
    assert_eq!((adopted.from, adopted.to.as_deref()), (None, Some(GOOD)));
    assert_eq!(
        adopted.message,
        "Git points at the running healthy revision 0f9e8d7c6b5a"
    );
}

#[test]
fn a_failing_first_revision_is_told_failed_with_its_gate() {
    let mut story = Story::new();
    let event = only(story.pass(BAD, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Failed);
    assert_eq!((event.from, event.to.as_deref()), (None, Some(BAD)));
    assert_eq!(event.gate.as_deref(), Some("health"));
    assert_eq!(event.reason, "GateFailed");
    assert_eq!(
        event.message,
        format!("gate health failed: {HEALTH_FAILED} (no healthy revision to roll back to)")
    );
    assert_eq!(
        event.summary,
        "shop/api: revision 1a2b3c4d5e6f failed: gate health failed (3 consecutive failed probes: status 503)"
    );
    assert!(story.pass(BAD, steps(good_unless_bad)).is_empty());
}

#[test]
fn with_rollback_off_a_failure_names_the_last_healthy_revision() {
    let mut story = Story::healthy();
    story.automatic_rollback = false;
    let event = only(story.pass(BAD, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Failed);
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(GOOD), Some(BAD))
    );
    assert!(
        event
            .message
            .ends_with("(automatic rollback is off in the Runbook)"),
        "{}",
        event.message
    );
}

#[test]
fn a_rollback_that_fails_is_told_as_the_rollbacks_failure_not_the_gate_again() {
    let mut story = Story::healthy();
    // The last healthy revision fails too this time.
    let events = story.pass(BAD, steps(|_| health_failed()));
    let phases: Vec<Phase> = events.iter().map(|e| e.phase).collect();
    assert_eq!(phases, vec![Phase::RollingBack, Phase::Failed]);
    let failed = &events[1];
    assert_eq!(
        (failed.from.as_deref(), failed.to.as_deref()),
        (Some(GOOD), Some(BAD))
    );
    assert_eq!(failed.gate, None);
    assert_eq!(failed.reason, "Failed");
    assert_eq!(
        failed.summary,
        "shop/api: revision 1a2b3c4d5e6f failed: rolling back to 0f9e8d7c6b5a failed verification: \
         gate health failed: 3 consecutive failed probes: status 503"
    );
}

#[test]
fn a_refused_revision_is_told_blocked_with_its_reason_once() {
    let mut story = Story::healthy();
    let forbidden = Failure::new(
        FailureKind::Forbidden,
        "system:serviceaccount:shop:deployer cannot create deployments.apps in namespace shop",
    );
    let event = only(story.pass(BAD, refusing(Step::Inventory, forbidden.clone())));
    assert_eq!(event.phase, Phase::Blocked);
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(GOOD), Some(BAD))
    );
    assert_eq!(event.reason, "Forbidden");
    assert_eq!(event.gate, None);
    assert_eq!(
        event.summary,
        "shop/api: revision 1a2b3c4d5e6f blocked (Forbidden): system:serviceaccount:shop:deployer \
         cannot create deployments.apps in namespace shop"
    );
    assert_eq!(
        Some(event.at.as_str()),
        story.status.blocked.as_ref().map(|b| b.at.as_str())
    );
    assert!(
        story
            .pass(BAD, refusing(Step::Inventory, forbidden.clone()))
            .is_empty()
    );

    // Checked again (every pass, with no interval): still refused, in other words: not news.
    story.interval = Duration::ZERO;
    story.recheck = Recheck::Refused(Failure::new(
        FailureKind::Forbidden,
        "system:serviceaccount:shop:deployer cannot patch deployments.apps in namespace shop",
    ));
    assert!(story.pass(BAD, refusing(Step::Inventory, forbidden)).is_empty());
    assert_eq!(story.status.phase, Phase::Blocked);
    // Refused for another reason now: news, while the phase stays Blocked.
    story.recheck = Recheck::Refused(Failure::new(
        FailureKind::OwnershipConflict,
        "Deployment shop/api belongs to AppDeployment shop/legacy",
    ));
    let event = only(story.pass(BAD, steps(good_unless_bad)));
    assert_eq!(
        (event.phase, event.reason.as_str()),
        (Phase::Blocked, "OwnershipConflict")
    );
}

#[test]
fn a_blocked_newer_commit_is_told_for_that_commit() {
    let mut story = Story::new();
    let invalid = Failure::new(
        FailureKind::RevisionInvalid,
        "deploy.yaml line 3: did not find expected key",
    );
    let event = only(story.pass(BAD, refusing(Step::Render, invalid.clone())));
    assert_eq!((event.phase, event.to.as_deref()), (Phase::Blocked, Some(BAD)));
    // Another commit, refused too: the phase goes through Applying and is told again.
    let event = only(story.pass(NEWER, refusing(Step::Render, invalid)));
    assert_eq!(
        (event.phase, event.to.as_deref(), event.from),
        (Phase::Blocked, Some(NEWER), None)
    );
    assert_eq!(event.reason, "RevisionInvalid");
}

#[test]
fn a_runbook_problem_is_told_blocked_and_its_fix_healthy() {
    let mut story = Story::healthy();
    story.problem = Some(Failure::new(
        FailureKind::RunbookInvalid,
        "Runbook shop/api: spec.verifyWindow: \"1x\" is not a duration",
    ));
    let event = only(story.pass(GOOD, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Blocked);
    assert_eq!(event.reason, "RunbookInvalid");
    assert_eq!((event.from, event.to.as_deref()), (None, Some(GOOD)));
    assert_eq!(
        event.summary,
        "shop/api: revision 0f9e8d7c6b5a blocked (RunbookInvalid): Runbook shop/api: spec.verifyWindow: \
         \"1x\" is not a duration"
    );
    // Another problem of the same kind: the same news.
    story.problem = Some(Failure::new(
        FailureKind::RunbookInvalid,
        "Runbook shop/api: not found",
    ));
    assert!(story.pass(GOOD, steps(good_unless_bad)).is_empty());
    // Fixed: the all-clear.
    story.problem = None;
    let event = only(story.pass(GOOD, steps(good_unless_bad)));
    assert_eq!((event.phase, event.to.as_deref()), (Phase::Healthy, Some(GOOD)));
}

#[test]
fn a_problem_cleared_on_a_rolled_back_app_tells_nothing_again() {
    let mut story = Story::healthy();
    story.pass(BAD, steps(good_unless_bad));
    assert_eq!(story.status.phase, Phase::RolledBack);
    story.problem = Some(Failure::new(
        FailureKind::SpecInvalid,
        "spec.source.git.url: not a URL",
    ));
    assert_eq!(
        only(story.pass(BAD, steps(good_unless_bad))).phase,
        Phase::Blocked
    );
    story.problem = None;
    assert!(story.pass(BAD, steps(good_unless_bad)).is_empty());
    assert_eq!(story.status.phase, Phase::RolledBack);
}

#[test]
fn suspending_and_resuming_tell_nothing() {
    let mut story = Story::healthy();
    story.suspended = true;
    assert!(story.pass(GOOD, steps(good_unless_bad)).is_empty());
    assert_eq!(story.status.phase, Phase::Suspended);
    story.suspended = false;
    assert!(story.pass(GOOD, steps(good_unless_bad)).is_empty());
    assert_eq!(story.status.phase, Phase::Healthy);
}

#[test]
fn a_step_past_its_deadline_is_told_failed_with_that_reason() {
    let mut story = Story::healthy();
    let start = story.now;
    let mut stuck = steps(good_unless_bad);
    let mut late = |status: &AppDeploymentStatus, step: Step| match step {
        Step::Apply => StepOutcome::Transient("the API server did not answer".into()),
        other => stuck(status, other),
    };
    // First attempt: retried, nothing told.
    assert!(story.pass(NEWER, &mut late).is_empty());
    story.now = start + SignedDuration::from_secs(700);
    let event = only(story.pass(NEWER, &mut late));
    assert_eq!(event.phase, Phase::Failed);
    assert_eq!(event.reason, "DeadlineExceeded");
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(GOOD), Some(NEWER))
    );
    assert_eq!(
        event.summary,
        "shop/api: revision 2c3d4e5f6a7b failed: step apply did not finish within 10m: the API server \
         did not answer"
    );
}

#[test]
fn a_failed_rollout_of_a_secret_change_names_the_secret() {
    // The core records a rollout of a Secret change as its own history entry with
    // `rotation`; replay the save of a real failure with such an entry.
    let mut story = Story::new();
    story.app.spec.target_namespace = Some("prod".into());
    story.pass(BAD, steps(good_unless_bad));
    let (mut before, mut after) = story.save_told_as(Phase::Failed);
    before.history[0].rotation = vec!["jwt".into()];
    after.history[0].rotation = vec!["jwt".into()];
    let event = event_of(&story.app, &before, &after).unwrap();
    assert_eq!(event.rotation, vec!["jwt"]);
    assert_eq!(
        event.summary,
        "shop/api: Secret prod/jwt changed; the rollout failed on revision 1a2b3c4d5e6f: gate health failed \
         (3 consecutive failed probes: status 503)"
    );
    // Two Secrets, one named with its namespace.
    after.history[0].rotation = vec!["jwt".into(), "other/db".into()];
    let event = event_of(&story.app, &before, &after).unwrap();
    assert!(
        event
            .summary
            .starts_with("shop/api: Secrets prod/jwt, other/db changed;"),
        "{}",
        event.summary
    );
    // An old rotation entry is not news when nothing was rolled out now (a resumed app).
    let mut story = Story::healthy();
    story.status.history[0].rotation = vec!["jwt".into()];
    story.problem = Some(Failure::new(
        FailureKind::SpecInvalid,
        "spec.source.git.url: not a URL",
    ));
    story.pass(GOOD, steps(good_unless_bad));
    story.problem = None;
    let event = only(story.pass(GOOD, steps(good_unless_bad)));
    assert!(event.rotation.is_empty());
    assert_eq!(event.summary, "shop/api: revision 0f9e8d7c6b5a is healthy");
}

#[test]
fn a_summary_quotes_the_first_line_of_a_long_cause() {
    assert_eq!(one_line("job failed\nline 1\nline 2"), "job failed …");
    assert_eq!(one_line("short"), "short");
    let long = "x".repeat(500);
    let cut = one_line(&long);
    assert_eq!(cut.chars().count(), SUMMARY_CAUSE_MAX_CHARS + 1);
    assert!(cut.ends_with('…'));
}

#[test]
fn a_tip_refused_while_another_revision_verifies_is_told_when_that_one_ends() {
    let mut story = Story::healthy();
    let pending = || Verification::Pending {
        gates: vec![verdict("health", Verdict::Pending, "1 of 1 probes passed")],
    };
    // NEWER is applied and still verifying.
    assert!(story.pass(NEWER, steps(|_| pending())).is_empty());
    assert_eq!(story.status.phase, Phase::Verifying);
    // Git moves on to BAD, which does not render: NEWER's verification goes on, the
    // phase stays Verifying, nothing is told yet.
    let invalid = Failure::new(
        FailureKind::RevisionInvalid,
        "deploy.yaml line 3: did not find expected key",
    );
    let mut still_pending = steps(|_| pending());
    let refused_then_pending = |status: &AppDeploymentStatus, step: Step| match step {
        Step::Render => StepOutcome::Refused(invalid.clone()),
        other => still_pending(status, other),
    };
    assert!(story.pass(BAD, refused_then_pending).is_empty());
    assert_eq!(story.status.phase, Phase::Verifying);
    // NEWER passes: the app rests Blocked on BAD, and that is told.
    let event = only(story.pass(BAD, steps(|_| passed())));
    assert_eq!(event.phase, Phase::Blocked);
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(NEWER), Some(BAD))
    );
    assert_eq!(event.reason, "RevisionInvalid");
    assert_eq!(
        event.message,
        "revision 2c3d4e5f6a7b passed every gate; Git tip 1a2b3c4d5e6f is blocked: deploy.yaml line 3: \
         did not find expected key"
    );
    assert_eq!(
        event.summary,
        "shop/api: revision 1a2b3c4d5e6f blocked (RevisionInvalid): deploy.yaml line 3: did not find expected key"
    );
}

#[test]
fn git_reverted_during_a_rollback_is_told_healthy_again() {
    let mut story = Story::healthy();
    let pending = || Verification::Pending {
        gates: vec![verdict("health", Verdict::Pending, "0 of 1 probes passed")],
    };
    // BAD fails; the rollback to GOOD is still verifying when the pass ends.
    let events = story.pass(
        BAD,
        steps(|revision| {
            if revision == BAD {
                health_failed()
            } else {
                pending()
            }
        }),
    );
    assert_eq!(
        events.iter().map(|e| e.phase).collect::<Vec<_>>(),
        vec![Phase::RollingBack]
    );
    // Git is reverted to GOOD: the rollback finishes on what Git asks for.
    let event = only(story.pass(GOOD, steps(good_unless_bad)));
    assert_eq!(event.phase, Phase::Healthy);
    assert_eq!(
        (event.from.as_deref(), event.to.as_deref()),
        (Some(BAD), Some(GOOD))
    );
    assert_eq!(event.gate, None);
    assert_eq!(
        event.summary,
        "shop/api: revision 0f9e8d7c6b5a is healthy again (rolled back from 1a2b3c4d5e6f)"
    );
}
