//! Scenarios of the decision, each a short story: a status, what was observed or what a
//! step reported, and the decision with the status it leads to.

use super::record::{Notice, RecordInput, record};
use super::*;
use crate::api::{
    BlockReason, InventoryEntry, JobKind, JobRecord, MigrationRollbackPolicy, Quarantine, Verdict,
};

pub(super) const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(super) const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub(super) const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
pub(super) const DIGEST: &str = "d1";
const DEADLINE: Duration = Duration::from_secs(600);
/// The Git interval.
const INTERVAL: Duration = Duration::from_secs(60);

pub(super) fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0() + k8s_openapi::jiff::SignedDuration::from_secs(seconds)
}

/// An app at rest, Healthy on `revision`.
fn healthy_on(revision: &str) -> AppDeploymentStatus {
    let mut status = AppDeploymentStatus {
        observed_generation: Some(1),
        current_spec_digest: Some(DIGEST.into()),
        ..Default::default()
    };
    record::set_current_revision(&mut status, revision);
    status.last_healthy_revision = Some(revision.into());
    status.last_healthy_snapshot = Some(format!("app-{}", &revision[..4]));
    status.last_healthy_spec_digest = Some(DIGEST.into());
    status.phase = Phase::Healthy;
    status
}

fn git(revision: &str) -> DesiredRevision {
    DesiredRevision::Known {
        revision: revision.into(),
        pinned: false,
    }
}

fn pinned(revision: &str) -> DesiredRevision {
    DesiredRevision::Known {
        revision: revision.into(),
        pinned: true,
    }
}

/// The world as one pass sees it.
#[derive(Clone)]
struct World {
    desired: DesiredRevision,
    generation: i64,
    suspended: bool,
    automatic_rollback: bool,
    problem: Option<Failure>,
    now: Timestamp,
    /// When the controller last checked the block again (what a pass that re-checks
    /// remembers for the next).
    block_checked_at: std::cell::Cell<Option<Timestamp>>,
    config_changed_at: Option<Timestamp>,
    /// When drift was last repaired (or a revision verified): a pass updates it.
    last_resync: std::cell::Cell<Option<Timestamp>>,
    spec_digest: &'static str,
    /// What a re-check of a blocked revision finds.
    recheck: Recheck,
    plan: StepPlan,
    /// What the Secrets the running workloads read hold now.
    secrets: BTreeMap<String, String>,
    retry: Option<RetryRequest>,
}

impl World {
    fn on(desired: DesiredRevision) -> Self {
        World {
            desired,
            generation: 1,
            suspended: false,
            automatic_rollback: true,
            problem: None,
            now: t0(),
            block_checked_at: Default::default(),
            config_changed_at: None,
            last_resync: std::cell::Cell::new(Some(t0())),
            spec_digest: DIGEST,
            recheck: Recheck::Clear,
            plan: StepPlan::default(),
            secrets: BTreeMap::new(),
            retry: None,
        }
    }

    fn decide(&self, status: &AppDeploymentStatus, outcome: Option<StepOutcome>) -> Decision {
        self.decide_with(status, outcome, None)
    }

    fn decide_with(
        &self,
        status: &AppDeploymentStatus,
        outcome: Option<StepOutcome>,
        recheck: Option<Recheck>,
    ) -> Decision {
        decide(&Input {
            outcome,
            recheck,
            ..self.input(status)
        })
    }

    /// What the controller gathers for a decision, nothing reported yet.
    fn input<'a>(&'a self, status: &'a AppDeploymentStatus) -> Input<'a> {
        Input {
            status,
            generation: Some(self.generation),
            suspended: self.suspended,
            automatic_rollback: self.automatic_rollback,
            desired: self.desired.clone(),
            spec_digest: self.spec_digest,
            problem: self.problem.clone(),
            outcome: None,
            now: self.now,
            step_deadline: DEADLINE,
            interval: INTERVAL,
            block_checked_at: self.block_checked_at.get(),
            config_changed_at: self.config_changed_at,
            last_resync: self.last_resync.get(),
            recheck: None,
            plan: self.plan,
            rollout_on_secret_change: true,
            secret_data: self.secrets.clone(),
            retry: self.retry.clone(),
        }
    }

    fn record(&self, status: &mut AppDeploymentStatus, decision: &Decision) -> Vec<Notice> {
        record(
            status,
            decision,
            &RecordInput {
                now: self.now,
                generation: Some(self.generation),
                history_limit: 10,
                spec_digest: self.spec_digest,
                desired: self.desired.revision(),
            },
        )
    }

    /// Decides and records once.
    fn step(&self, status: &mut AppDeploymentStatus, outcome: Option<StepOutcome>) -> Decision {
        self.step_with(status, outcome, None)
    }

    fn step_with(
        &self,
        status: &mut AppDeploymentStatus,
        outcome: Option<StepOutcome>,
        recheck: Option<Recheck>,
    ) -> Decision {
        let decision = self.decide_with(status, outcome, recheck);
        self.record(status, &decision);
        decision
    }

    /// One pass of the executor: decide, record, run what is decided with `run`,
    /// until a decision that waits. Returns every decision taken.
    fn pass(
        &self,
        status: &mut AppDeploymentStatus,
        mut run: impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut outcome = None;
        let mut recheck = None;
        let mut checked = None;
        for _ in 0..40 {
            let decision = self.step_with(status, outcome.take(), recheck.take());
            decisions.push(decision.clone());
            match decision {
                Decision::Run(step) => outcome = Some(run(status, step)),
                Decision::RecheckBlock { .. } => {
                    recheck = Some(self.recheck.clone());
                    checked = Some(self.now);
                }
                // Nothing drifted.
                Decision::Resync { .. } => {
                    self.last_resync.set(Some(self.now));
                    outcome = Some(StepOutcome::Resynced(Resynced {
                        inventory: status.inventory.clone(),
                        ..Default::default()
                    }));
                }
                ref d if d.continues() => {}
                ref end => {
                    // As the controller does: a verified revision's resync is an
                    // interval away, and the time of a check counts from the next pass.
                    if matches!(end, Decision::MarkHealthy { .. } | Decision::FinishRollback) {
                        self.last_resync.set(Some(self.now));
                    }
                    if checked.is_some() {
                        self.block_checked_at.set(checked);
                    }
                    return decisions;
                }
            }
        }
        panic!("a pass did not end: {decisions:?}");
    }
}

/// The record of the Job the operation's current `step` ran.
pub(super) fn job(status: &AppDeploymentStatus, step: Step, succeeded: bool) -> JobRecord {
    let operation = status
        .operation
        .as_ref()
        .expect("a Job step runs in an operation");
    let (kind, revision) = match step {
        Step::Backup => (JobKind::Backup, operation.revision.clone()),
        Step::Migrate => (JobKind::Migrate, operation.revision.clone()),
        _ => (
            JobKind::Downgrade,
            operation.failed_revision.clone().unwrap_or_default(),
        ),
    };
    JobRecord {
        kind,
        job: format!("app-{}-{}", kind.as_str(), &revision[..6]),
        revision,
        succeeded,
        finished_at: "2026-01-01T00:00:00Z".into(),
        irreversible: false,
        message: None,
    }
}

fn entry(name: &str) -> InventoryEntry {
    InventoryEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("shop".into()),
        name: name.into(),
        adopted: false,
    }
}

fn gate(verdict: Verdict) -> GateVerdict {
    GateVerdict {
        name: "health".into(),
        verdict,
        message: Some(format!("{verdict:?}")),
    }
}

/// Every step succeeds; verification answers `verdict`.
fn succeeding(verdict: Verdict) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    move |status, step| match step {
        Step::Render => StepOutcome::Done(StepResult::Rendered {
            render_digest: "r1".into(),
            objects: 2,
        }),
        Step::Snapshot => StepOutcome::Done(StepResult::SnapshotStored {
            name: format!("app-{}", &status.operation.as_ref().unwrap().revision[..4]),
        }),
        Step::Inventory => StepOutcome::Done(StepResult::Planned {
            inventory: vec![entry("a")],
        }),
        Step::Preflight => StepOutcome::Done(StepResult::PreflightPassed),
        Step::Backup | Step::Migrate | Step::Downgrade => {
            StepOutcome::Done(StepResult::JobFinished(job(status, step, true)))
        }
        Step::Apply => StepOutcome::Done(StepResult::Applied(Applied {
            inventory: vec![entry("a")],
            sent: 1,
            ..Default::default()
        })),
        Step::Verify => StepOutcome::Verified(match verdict {
            Verdict::Passed => Verification::Passed {
                gates: vec![gate(Verdict::Passed)],
            },
            Verdict::Pending => Verification::Pending {
                gates: vec![gate(Verdict::Pending)],
            },
            Verdict::Failed => Verification::Failed {
                message: "gate health failed: status 503".into(),
                gates: vec![gate(Verdict::Failed)],
            },
        }),
    }
}

/// Every step succeeds; verification fails for the revisions in `bad`, stays pending
/// for those in `pending`, and passes for the others.
fn judging(
    bad: &'static [&'static str],
    pending: &'static [&'static str],
) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    move |status, step| {
        let revision = status.operation.as_ref().unwrap().revision.as_str();
        let verdict = if bad.contains(&revision) {
            Verdict::Failed
        } else if pending.contains(&revision) {
            Verdict::Pending
        } else {
            Verdict::Passed
        };
        succeeding(verdict)(status, step)
    }
}

/// Like [`judging`], but a rollback's steps fail transiently: the rollback stays at its
/// first step.
fn rollback_stuck(bad: &'static [&'static str]) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    let mut judge = judging(bad, &[]);
    move |status, step| {
        if status.operation.as_ref().unwrap().kind == OperationKind::Rollback {
            StepOutcome::Transient("connection refused".into())
        } else {
            judge(status, step)
        }
    }
}

fn refusing_at(at_step: Step, kind: FailureKind) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    let mut ok = succeeding(Verdict::Passed);
    move |status, step| {
        if step == at_step {
            StepOutcome::Refused(Failure::new(kind, "ConfigMap shop/a (deploy/a.yaml:1): refused"))
        } else {
            ok(status, step)
        }
    }
}

fn ready(status: &AppDeploymentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::READY)
        .map(|c| c.status.as_str())
}

#[test]
fn first_revision_goes_through_every_step_and_becomes_healthy() {
    let world = World::on(git(A));
    let mut status = AppDeploymentStatus::default();
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    let steps: Vec<Step> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Run(step) => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            Step::Render,
            Step::Snapshot,
            Step::Preflight,
            Step::Inventory,
            Step::Apply,
            Step::Verify
        ]
    );
    assert!(matches!(decisions.last(), Some(Decision::MarkHealthy { .. })));
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.operation, None);
    assert_eq!(status.current_revision.as_deref(), Some(A));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(A));
    assert_eq!(status.last_healthy_snapshot.as_deref(), Some("app-aaaa"));
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].phase, Phase::Healthy);
    assert_eq!(status.history[0].gates, vec![gate(Verdict::Passed)]);
    assert_eq!(ready(&status), Some("True"));
    // At rest on the tip, nothing more happens.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn each_step_is_persisted_before_the_next_runs() {
    let world = World::on(git(A));
    let mut status = AppDeploymentStatus::default();
    assert_eq!(
        world.step(&mut status, None),
        Decision::StartDeploy { revision: A.into() }
    );
    assert_eq!(status.operation.as_ref().unwrap().step, Step::Render);
    assert_eq!(world.step(&mut status, None), Decision::Run(Step::Render));
    // A restart here (outcome lost) runs the same step again.
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Render));
    let done = StepOutcome::Done(StepResult::Rendered {
        render_digest: "r1".into(),
        objects: 1,
    });
    assert!(matches!(
        world.step(&mut status, Some(done)),
        Decision::Advance(..)
    ));
    let operation = status.operation.as_ref().unwrap();
    assert_eq!(operation.step, Step::Snapshot);
    assert_eq!(operation.render_digest.as_deref(), Some("r1"));
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Snapshot));
}

#[test]
fn planned_inventory_is_recorded_ahead_of_the_apply() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    status.inventory = vec![entry("old")];
    world.step(&mut status, None);
    let planned = StepOutcome::Done(StepResult::Planned {
        inventory: vec![entry("new")],
    });
    status.operation.as_mut().unwrap().step = Step::Inventory;
    world.step(&mut status, Some(planned));
    assert_eq!(status.inventory, vec![entry("new"), entry("old")]);
    assert_eq!(status.operation.as_ref().unwrap().step, Step::Apply);
}

/// Gates judge what happened after the apply by comparing with `creationTimestamp`s,
/// which have whole seconds: `appliedAt` is when the apply step began, truncated to
/// its second, never rounded up past a pod the apply created.
#[test]
fn applied_at_is_when_the_apply_began_truncated_to_the_second() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.step(&mut status, None);
    status.operation.as_mut().unwrap().step = Step::Inventory;
    let began = at(100) + k8s_openapi::jiff::SignedDuration::from_millis(700);
    world.now = began;
    let planned = StepOutcome::Done(StepResult::Planned {
        inventory: vec![entry("a")],
    });
    world.step(&mut status, Some(planned));
    assert_eq!(status.operation.as_ref().unwrap().step, Step::Apply);
    assert_eq!(
        status.operation.as_ref().unwrap().step_started_at,
        "2026-01-01T00:01:40Z"
    );

    // The apply took 1.6 s; pods were created during it.
    world.now = began + k8s_openapi::jiff::SignedDuration::from_millis(1600);
    let applied = StepOutcome::Done(StepResult::Applied(Applied {
        inventory: vec![entry("a")],
        sent: 1,
        ..Default::default()
    }));
    world.step(&mut status, Some(applied));
    let operation = status.operation.as_ref().unwrap();
    assert_eq!(operation.step, Step::Verify);
    assert_eq!(operation.applied_at.as_deref(), Some("2026-01-01T00:01:40Z"));
    assert_eq!(operation.step_started_at, "2026-01-01T00:01:42Z");
}

#[test]
fn failed_gate_rolls_back_to_the_last_healthy_snapshot_and_quarantines() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, rollback_stuck(&[B]));
    assert!(
        decisions.iter().any(
            |d| matches!(d, Decision::RollBack { to, failed_revision, .. } if to == A && failed_revision == B)
        ),
        "{decisions:?}"
    );
    let operation = status.operation.clone().expect("rollback in progress");
    assert_eq!(operation.kind, OperationKind::Rollback);
    assert_eq!(operation.snapshot.as_deref(), Some("app-aaaa"));
    assert!(is_quarantined(&status, B));
    assert_eq!(status.phase, Phase::RollingBack);
    // The failed revision's entry keeps the verdicts that condemned it.
    assert_eq!(status.history[0].revision, B);
    assert_eq!(status.history[0].gates, vec![gate(Verdict::Failed)]);

    // The rollback applies the snapshot and verifies it.
    let decisions = world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(decisions.last(), Some(&Decision::FinishRollback));
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(status.current_revision.as_deref(), Some(A));
    assert_eq!(status.history[0].phase, Phase::RolledBack);
    assert_eq!(ready(&status), Some("False"));
    // Quarantined: resyncs do not bring it back.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn first_revision_that_fails_has_nothing_to_flip_to() {
    let world = World::on(git(A));
    let mut status = AppDeploymentStatus::default();
    let decisions = world.pass(&mut status, succeeding(Verdict::Failed));
    assert!(matches!(
        decisions.last(),
        Some(Decision::Fail { quarantine: Some(q), .. }) if q == A
    ));
    assert_eq!(status.phase, Phase::Failed);
    assert!(is_quarantined(&status, A));
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // A new commit clears the way.
    let world = World::on(git(B));
    assert_eq!(
        world.decide(&status, None),
        Decision::StartDeploy { revision: B.into() }
    );
}

#[test]
fn rollback_off_fails_instead() {
    let mut world = World::on(git(B));
    world.automatic_rollback = false;
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, judging(&[B], &[]));
    assert!(
        matches!(decisions.last(), Some(Decision::Fail { message, .. }) if message.contains("automatic rollback is off"))
    );
    assert_eq!(status.current_revision.as_deref(), Some(B));
}

#[test]
fn a_transient_error_retries_and_never_blames_the_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    let transient_at_apply = |status: &AppDeploymentStatus, step: Step| match step {
        Step::Apply => StepOutcome::Transient("connection refused".into()),
        other => succeeding(Verdict::Passed)(status, other),
    };
    let decisions = world.pass(&mut status, transient_at_apply);
    assert!(matches!(
        decisions.last(),
        Some(Decision::Retry {
            step: Step::Apply,
            ..
        })
    ));
    let operation = status.operation.as_ref().unwrap();
    assert_eq!(operation.attempt, 1);
    assert!(status.quarantined.is_empty());
    let reconciling = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::RECONCILING)
        .unwrap();
    assert_eq!(reconciling.reason, "Retrying");
    assert!(
        reconciling.message.contains("connection refused"),
        "{}",
        reconciling.message
    );

    // After the back-off the same step runs again and the revision completes.
    world.now = at(30);
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(decisions.first(), Some(&Decision::Run(Step::Apply)));
    assert_eq!(status.phase, Phase::Healthy);
    assert!(
        !status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::api::condition::RECONCILING),
        "{:?}",
        status.conditions
    );
}

#[test]
fn a_retry_is_announced_when_its_cause_changes_not_when_it_repeats() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let decision = world.step(&mut status, None);
    assert!(matches!(decision, Decision::StartDeploy { .. }));
    // The step makes no difference: say the apply.
    status.operation.as_mut().unwrap().step = Step::Apply;
    let webhook = "dry run of ConfigMap shop/a: failed calling webhook \"guard\": HTTP 500";
    let unreachable = "applying ConfigMap shop/a: client error (Connect): Connection refused";
    let retry = |status: &mut AppDeploymentStatus, message: &str| -> Vec<Notice> {
        let decision = world.decide(status, Some(StepOutcome::Transient(message.into())));
        assert!(matches!(decision, Decision::Retry { .. }), "{decision:?}");
        world.record(status, &decision)
    };
    let announced = |notices: &[Notice]| -> Vec<String> {
        notices
            .iter()
            .filter(|n| n.reason == "Retrying")
            .map(|n| n.note.clone())
            .collect()
    };

    let first = announced(&retry(&mut status, webhook));
    assert_eq!(first.len(), 1);
    assert!(
        first[0].contains("(attempt 1)") && first[0].contains(webhook),
        "{first:?}"
    );
    assert!(
        announced(&retry(&mut status, webhook)).is_empty(),
        "the same cause again"
    );
    let changed = announced(&retry(&mut status, unreachable));
    assert_eq!(changed.len(), 1, "a new cause");
    assert!(
        changed[0].contains("(attempt 3)") && changed[0].contains(unreachable),
        "{changed:?}"
    );
    assert!(announced(&retry(&mut status, unreachable)).is_empty());
    assert_eq!(
        announced(&retry(&mut status, webhook)).len(),
        1,
        "the first cause back"
    );
    assert_eq!(status.operation.as_ref().unwrap().attempt, 5);
}

#[test]
fn a_step_past_its_deadline_gives_up_without_quarantine() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    let transient =
        |_: &AppDeploymentStatus, _: Step| StepOutcome::Transient("503 Service Unavailable".into());
    world.pass(&mut status, transient);
    world.now = at(601);
    let decisions = world.pass(&mut status, transient);
    assert!(
        matches!(decisions.last(), Some(Decision::GiveUp { step: Step::Render, message }) if message.contains("step render did not finish within 10m")),
        "{decisions:?}"
    );
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.quarantined.is_empty());
    assert_eq!(status.operation, None);
    // Not retried in a loop; checked again once the interval has passed, without
    // writing anything, and deployed when the check finds nothing in the way.
    assert_eq!(world.decide(&status, None), Decision::Wait);
    world.now = at(601 + 60);
    assert_eq!(
        world.decide(&status, None),
        Decision::RecheckBlock { revision: B.into() }
    );
    assert_eq!(
        world.decide_with(&status, None, Some(Recheck::Clear)),
        Decision::StartDeploy { revision: B.into() }
    );
}

#[test]
fn a_block_that_still_holds_costs_no_write_and_a_new_reason_is_recorded() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, refusing_at(Step::Inventory, FailureKind::Forbidden));
    let blocked = status.clone();
    world.now = at(60);
    // The same refusal: nothing changes, not even the time of the block.
    world.recheck = Recheck::Refused(Failure::new(
        FailureKind::Forbidden,
        "ConfigMap shop/a (deploy/a.yaml:1): refused",
    ));
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(
        decisions,
        vec![Decision::RecheckBlock { revision: B.into() }, Decision::Wait]
    );
    assert_eq!(status, blocked);
    // A check that cannot be made now changes nothing either.
    world.now = at(120);
    world.recheck = Recheck::Transient("connection refused".into());
    world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(status, blocked);
    // Another reason is recorded (and announced once).
    world.now = at(180);
    world.recheck = Recheck::Refused(Failure::new(
        FailureKind::OwnershipConflict,
        "ConfigMap shop/a (deploy/a.yaml:1) belongs to AppDeployment shop/other",
    ));
    world.pass(&mut status, succeeding(Verdict::Passed));
    let block = status.blocked.as_ref().unwrap();
    assert_eq!(block.reason, BlockReason::OwnershipConflict);
    // Cleared: deployed.
    world.now = at(240);
    world.recheck = Recheck::Clear;
    world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(B));
    assert_eq!(status.blocked, None);
}

#[test]
fn a_rollback_past_its_deadline_fails_and_blames_only_the_failed_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, rollback_stuck(&[B]));
    assert_eq!(status.operation.as_ref().unwrap().kind, OperationKind::Rollback);
    let transient =
        |_: &AppDeploymentStatus, _: Step| StepOutcome::Transient("etcdserver: request timed out".into());
    world.pass(&mut status, transient);
    world.now = at(601);
    world.pass(&mut status, transient);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.operation, None);
    assert!(is_quarantined(&status, B));
    assert!(!is_quarantined(&status, A));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(A));
}

#[test]
fn refused_before_any_write_blocks_and_never_rolls_back() {
    for step in [Step::Render, Step::Snapshot, Step::Inventory] {
        let world = World::on(git(B));
        let mut status = healthy_on(A);
        let decisions = world.pass(&mut status, refusing_at(step, FailureKind::RevisionInvalid));
        assert!(
            matches!(decisions.last(), Some(Decision::Wait)),
            "{step}: {decisions:?}"
        );
        assert!(decisions.iter().any(|d| matches!(d, Decision::Block { .. })));
        assert_eq!(status.phase, Phase::Blocked, "{step}");
        assert_eq!(ready(&status), Some("False"));
        assert!(status.quarantined.is_empty());
        assert_eq!(status.current_revision.as_deref(), Some(A));
        let block = status.blocked.as_ref().unwrap();
        assert_eq!(block.revision, B);
        assert_eq!(block.retry, step == Step::Inventory);
        // The blocked tip waits for a new commit or spec change.
        assert_eq!(world.decide(&status, None), Decision::Wait);
        let mut next = world.clone();
        next.generation = 2;
        assert_eq!(
            next.decide(&status, None),
            Decision::StartDeploy { revision: B.into() }
        );
    }
}

#[test]
fn forbidden_and_ownership_conflicts_block_with_their_reason() {
    for (kind, reason) in [
        (FailureKind::Forbidden, BlockReason::Forbidden),
        (FailureKind::OwnershipConflict, BlockReason::OwnershipConflict),
    ] {
        let world = World::on(git(B));
        let mut status = healthy_on(A);
        world.pass(&mut status, refusing_at(Step::Inventory, kind));
        assert_eq!(status.blocked.as_ref().unwrap().reason, reason);
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == crate::api::condition::READY)
            .unwrap();
        assert_eq!(ready.reason, reason.as_str());
    }
}

#[test]
fn refused_during_apply_is_a_failed_revision() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let refuse_b_at_apply = |status: &AppDeploymentStatus, step: Step| {
        if status.operation.as_ref().unwrap().revision == B {
            refusing_at(Step::Apply, FailureKind::RevisionInvalid)(status, step)
        } else {
            succeeding(Verdict::Passed)(status, step)
        }
    };
    let decisions = world.pass(&mut status, refuse_b_at_apply);
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::RollBack { message, .. } if message.starts_with("apply failed")))
    );
    assert_eq!(status.phase, Phase::RolledBack);
}

#[test]
fn blocked_newer_commit_lets_the_revision_under_verification_finish() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    assert_eq!(status.phase, Phase::Verifying);
    // C arrives while B verifies, and does not render.
    let world = World::on(git(C));
    let c_unusable_b_pending = |status: &AppDeploymentStatus, step: Step| {
        if status.operation.as_ref().unwrap().revision == C {
            refusing_at(Step::Render, FailureKind::RevisionInvalid)(status, step)
        } else {
            succeeding(Verdict::Pending)(status, step)
        }
    };
    let decisions = world.pass(&mut status, c_unusable_b_pending);
    assert!(decisions.contains(&Decision::StartDeploy { revision: C.into() }));
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::Block { revision, .. } if revision == C))
    );
    let operation = status.operation.clone().unwrap();
    assert_eq!((operation.revision.as_str(), operation.step), (B, Step::Verify));
    assert_eq!(status.phase, Phase::Verifying);
    // B finishes; the tip is still blocked: not Ready, phase says Blocked.
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert!(matches!(decisions.last(), Some(Decision::MarkHealthy { .. })));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(B));
    assert_eq!(status.phase, Phase::Blocked);
    assert_eq!(ready(&status), Some("False"));
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn newer_commit_supersedes_a_revision_still_verifying() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    let world = World::on(git(C));
    world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(C));
    let b = status.history.iter().find(|e| e.revision == B).unwrap();
    assert_eq!(b.phase, Phase::Failed);
    assert_eq!(b.message.as_deref(), Some("superseded by cccccccccccc"));
    assert!(!is_quarantined(&status, B));
}

#[test]
fn a_new_commit_takes_over_from_a_rollback_after_its_current_step() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, rollback_stuck(&[B]));
    assert_eq!(status.operation.as_ref().unwrap().step, Step::Inventory);
    let world = World::on(git(C));
    assert_eq!(
        world.decide(&status, None),
        Decision::StartDeploy { revision: C.into() }
    );
    world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(status.last_healthy_revision.as_deref(), Some(C));
    let b = status.history.iter().find(|e| e.revision == B).unwrap();
    assert!(b.finished_at.is_some());
    assert!(is_quarantined(&status, B));
}

#[test]
fn a_pin_to_the_rollback_target_lets_the_rollback_finish() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, rollback_stuck(&[B]));
    let world = World::on(pinned(A));
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Inventory));
}

#[test]
fn the_quarantined_tip_does_not_supersede_its_own_rollback() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, rollback_stuck(&[B]));
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Inventory));
}

#[test]
fn a_rollback_whose_target_fails_ends_failed_blaming_only_the_failed_revision() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, judging(&[A, B], &[]));
    assert!(matches!(
        decisions.last(),
        Some(Decision::Fail { quarantine: None, .. })
    ));
    assert_eq!(status.phase, Phase::Failed);
    assert!(!is_quarantined(&status, A));
}

#[test]
fn a_pin_made_after_the_quarantine_may_try_once_more() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.phase, Phase::RolledBack);
    // The same generation: the pin written with the quarantine does not lift it.
    let same_generation = World::on(pinned(B));
    assert_eq!(same_generation.decide(&status, None), Decision::Wait);
    let mut later = World::on(pinned(B));
    later.generation = 2;
    assert_eq!(
        later.decide(&status, None),
        Decision::StartDeploy { revision: B.into() }
    );
    // Failing again quarantines it at the new generation: no loop.
    later.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.quarantined[0].generation, Some(2));
    assert_eq!(later.decide(&status, None), Decision::Wait);
}

#[test]
fn a_retry_request_lifts_the_quarantine_once_and_a_repeat_failure_stands() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(is_quarantined(&status, B));
    // A request made before the quarantine was recorded does not lift it.
    world.now = at(50);
    world.retry = Some(RetryRequest {
        revision: B.into(),
        requested_at: t0() - k8s_openapi::jiff::SignedDuration::from_secs(10),
    });
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // A request for another revision does nothing either.
    world.retry = Some(RetryRequest {
        revision: C.into(),
        requested_at: at(30),
    });
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // Asked after the quarantine: lifted, announced, and B deploys again.
    world.retry = Some(RetryRequest {
        revision: B.into(),
        requested_at: at(30),
    });
    let decisions = world.pass(&mut status, judging(&[], &[]));
    assert_eq!(decisions[0], Decision::LiftQuarantine { revision: B.into() });
    assert_eq!(decisions[1], Decision::StartDeploy { revision: B.into() });
    assert_eq!(
        decisions.last(),
        Some(&Decision::MarkHealthy {
            gates: vec![gate(Verdict::Passed)]
        })
    );
    assert!(!is_quarantined(&status, B));
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.current_revision.as_deref(), Some(B));
    // The request stays on the object: nothing more happens.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn a_retry_request_is_not_a_loop_when_the_revision_fails_again() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, judging(&[B], &[]));
    world.now = at(60);
    world.retry = Some(RetryRequest {
        revision: B.into(),
        requested_at: at(30),
    });
    let mut notices = Vec::new();
    let lift = world.decide(&status, None);
    notices.extend(world.record(&mut status, &lift));
    assert!(
        notices
            .iter()
            .any(|n| n.reason == "RetryRequested" && n.note.contains(&B[..12])),
        "{notices:?}"
    );
    // B fails again: rolled back and quarantined anew, after the request.
    world.pass(&mut status, judging(&[B], &[]));
    world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(is_quarantined(&status, B));
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn a_retry_request_redeploys_a_first_revision_that_failed_in_place() {
    let mut world = World::on(git(A));
    let mut status = AppDeploymentStatus::default();
    world.pass(&mut status, succeeding(Verdict::Failed));
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.current_revision.as_deref(), Some(A));
    world.now = at(60);
    world.retry = Some(RetryRequest {
        revision: A.into(),
        requested_at: at(30),
    });
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(decisions[0], Decision::LiftQuarantine { revision: A.into() });
    assert_eq!(decisions[1], Decision::StartDeploy { revision: A.into() });
    assert_eq!(status.phase, Phase::Healthy);
    // Started after the request: not started again.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn a_changed_path_redeploys_the_same_commit() {
    let mut world = World::on(git(A));
    world.spec_digest = "d2";
    let status = healthy_on(A);
    assert_eq!(
        world.decide(&status, None),
        Decision::StartDeploy { revision: A.into() }
    );
}

#[test]
fn a_changed_path_that_fails_rolls_back_to_the_old_render_and_reverting_it_adopts() {
    let mut world = World::on(git(A));
    world.spec_digest = "d2";
    world.generation = 2;
    let mut status = healthy_on(A);
    // The same commit, rendered from the new path, fails; the rollback returns to the
    // render of the old path, which is what runs again.
    let new_render_fails = |status: &AppDeploymentStatus, step: Step| {
        let operation = status.operation.as_ref().unwrap();
        if operation.kind == OperationKind::Deploy {
            match step {
                Step::Snapshot => StepOutcome::Done(StepResult::SnapshotStored {
                    name: "app-aaaa-d2".into(),
                }),
                other => succeeding(Verdict::Failed)(status, other),
            }
        } else {
            succeeding(Verdict::Passed)(status, step)
        }
    };
    world.pass(&mut status, new_render_fails);
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(status.last_healthy_snapshot.as_deref(), Some("app-aaaa"));
    assert_eq!(status.current_snapshot.as_deref(), Some("app-aaaa"));
    assert_eq!(status.current_spec_digest.as_deref(), Some(DIGEST));
    // The same spec again: held back (quarantined at this generation).
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // The path reverted (generation 3): what runs is that render, healthy: adopted.
    let mut reverted = World::on(git(A));
    reverted.generation = 3;
    assert_eq!(
        reverted.decide(&status, None),
        Decision::Adopt { revision: A.into() }
    );
}

#[test]
fn quarantined_running_revision_is_not_adopted_as_healthy() {
    let world = World::on(git(A));
    let mut status = healthy_on(A);
    status.phase = Phase::Failed;
    status.quarantined.push(Quarantine {
        revision: A.into(),
        reason: "gate failed".into(),
        at: "t".into(),
        generation: Some(1),
        spec_digest: None,
    });
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn git_reverted_to_the_running_healthy_revision_is_adopted() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.phase, Phase::RolledBack);
    let reverted = World::on(git(A));
    let decisions = reverted.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(decisions[0], Decision::Adopt { revision: A.into() });
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(ready(&status), Some("True"));
}

#[test]
fn suspend_is_honoured_between_any_two_steps_and_resume_continues() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.step(&mut status, None);
    world.step(&mut status, None);
    let rendered = StepOutcome::Done(StepResult::Rendered {
        render_digest: "r1".into(),
        objects: 1,
    });
    // The step that was running finishes and is recorded...
    world.suspended = true;
    assert!(matches!(
        world.step(&mut status, Some(rendered)),
        Decision::Advance(..)
    ));
    // ...but the next one does not start.
    assert_eq!(world.step(&mut status, None), Decision::Suspend);
    assert_eq!(status.phase, Phase::Suspended);
    assert_eq!(world.decide(&status, None), Decision::Wait);
    assert_eq!(status.operation.as_ref().unwrap().step, Step::Snapshot);

    world.suspended = false;
    world.now = at(5000);
    assert_eq!(
        world.step(&mut status, None),
        Decision::Resume {
            phase: Phase::Applying
        }
    );
    // A fresh deadline for the step.
    assert_eq!(
        status.operation.as_ref().unwrap().step_started_at,
        record::rfc3339(at(5000))
    );
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Snapshot));
}

#[test]
fn suspended_at_rest_records_the_phase_once_and_resumes_to_what_runs() {
    let mut world = World::on(git(B));
    world.suspended = true;
    let mut status = healthy_on(A);
    assert_eq!(world.step(&mut status, None), Decision::Suspend);
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // Ready keeps its last word while suspended.
    world.suspended = false;
    let world = World::on(git(A));
    assert_eq!(
        world.step(&mut status, None),
        Decision::Resume {
            phase: Phase::Healthy
        }
    );
}

#[test]
fn an_invalid_runbook_blocks_and_holds_nothing_against_the_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    world.problem = Some(Failure::new(
        FailureKind::RunbookInvalid,
        "Runbook shop/app: spec.gates[0]: no probe this controller can evaluate",
    ));
    let decisions = world.pass(&mut status, succeeding(Verdict::Failed));
    assert!(matches!(decisions.as_slice(), [Decision::BlockOnProblem(_)]));
    assert_eq!(status.phase, Phase::Blocked);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::READY)
        .unwrap();
    assert_eq!(ready.reason, "RunbookInvalid");
    assert!(status.quarantined.is_empty());
    assert_eq!(status.operation.as_ref().unwrap().revision, B);
    // Fixed: verification starts over.
    world.problem = None;
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert!(matches!(
        decisions[0],
        Decision::Resume {
            phase: Phase::Verifying
        }
    ));
    assert_eq!(status.phase, Phase::Healthy);
}

#[test]
fn a_gate_refused_by_the_egress_policy_blocks_and_never_rolls_back() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    let problem = Failure::new(
        FailureKind::RunbookInvalid,
        "gate health: GET http://169.254.169.254: host 169.254.169.254 is refused by the egress policy",
    );
    // Even past the progress deadline: the Runbook is to blame, not the revision.
    world.now = at(601);
    let refused = problem.clone();
    let decisions = world.pass(&mut status, move |_, step| match step {
        Step::Verify => StepOutcome::Verified(Verification::Refused {
            problem: refused.clone(),
            gates: vec![gate(Verdict::Pending)],
        }),
        other => panic!("only verification runs, not {other:?}"),
    });
    assert_eq!(
        decisions.last(),
        Some(&Decision::BlockOnProblem(problem.clone())),
        "{decisions:?}"
    );
    assert!(
        !decisions
            .iter()
            .any(|d| matches!(d, Decision::RollBack { .. } | Decision::Fail { .. })),
        "{decisions:?}"
    );
    assert_eq!(status.phase, Phase::Blocked);
    assert_eq!(ready(&status), Some("False"));
    assert!(status.quarantined.is_empty());
    assert_eq!(
        status.current_revision.as_deref(),
        Some(B),
        "the revision stays applied"
    );
    assert_eq!(status.last_healthy_revision.as_deref(), Some(A));
    // The controller reports the refusal as a Runbook problem until the Runbook changes.
    world.problem = Some(problem);
    let decisions = world.pass(&mut status, succeeding(Verdict::Failed));
    assert!(
        matches!(decisions.as_slice(), [Decision::BlockOnProblem(_)]),
        "{decisions:?}"
    );
    assert!(status.quarantined.is_empty());
}

#[test]
fn verification_past_its_deadline_fails_the_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    world.now = at(601);
    let decisions = world.pass(&mut status, judging(&[], &[B]));
    assert!(decisions.iter().any(
        |d| matches!(d, Decision::RollBack { message, .. } if message.contains("progress deadline of 10m"))
    ));
}

#[test]
fn nothing_happens_while_the_source_is_unavailable() {
    let world = World::on(DesiredRevision::Unavailable);
    let mut status = AppDeploymentStatus::default();
    assert_eq!(world.step(&mut status, None), Decision::Wait);
}

#[test]
fn only_gate_verdict_changes_are_written_while_verifying() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    world.pass(&mut status, succeeding(Verdict::Pending));
    let before = status.clone();
    let mut other_message = gate(Verdict::Pending);
    other_message.message = Some("failed 1 of 3 probes in a row".into());
    world.step(
        &mut status,
        Some(StepOutcome::Verified(Verification::Pending {
            gates: vec![other_message],
        })),
    );
    assert_eq!(status, before, "a new message alone must not rewrite the status");
}

#[test]
fn prune_failures_are_a_warning_not_a_verdict() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let run = |status: &AppDeploymentStatus, step: Step| match step {
        Step::Apply => StepOutcome::Done(StepResult::Applied(Applied {
            inventory: vec![entry("a"), entry("kept")],
            prune_failures: vec!["ConfigMap shop/kept: forbidden".into()],
            ..Default::default()
        })),
        other => succeeding(Verdict::Passed)(status, other),
    };
    let decisions = world.pass(&mut status, run);
    assert!(matches!(decisions.last(), Some(Decision::MarkHealthy { .. })));
    let pruned = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::condition::PRUNED)
        .unwrap();
    assert_eq!(pruned.status, "False");
    assert!(status.inventory.contains(&entry("kept")));
}

#[test]
fn events_name_the_revision_and_are_not_repeated_on_a_repeated_block() {
    let world = World::on(git(B));
    let mut status = healthy_on(A);
    let decision = world.step(&mut status, None);
    let notices = world.record(&mut status.clone(), &decision);
    assert!(
        notices.iter().all(|n| n.note.contains("bbbbbbbbbbbb")),
        "{notices:?}"
    );
    let block = Decision::Block {
        revision: B.into(),
        reason: BlockReason::RevisionInvalid,
        message: "a.yaml:3: bad".into(),
        retry: false,
    };
    let first = world.record(&mut status, &block);
    assert_eq!(first.len(), 1);
    assert!(first[0].note.contains("bbbbbbbbbbbb"));
    let again = world.record(&mut status, &block);
    assert!(again.is_empty(), "{again:?}");
}

fn steps_run(decisions: &[Decision]) -> Vec<Step> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Run(step) => Some(*step),
            _ => None,
        })
        .collect()
}

fn condition_status<'a>(status: &'a AppDeploymentStatus, type_: &str) -> Option<&'a str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn with_jobs(policy: MigrationRollbackPolicy) -> StepPlan {
    StepPlan {
        backup: true,
        backup_optional: false,
        migrate: true,
        migration_rollback: policy,
    }
}

#[test]
fn backup_then_migration_run_before_the_apply_and_never_again_for_the_revision() {
    let mut world = World::on(git(A));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = AppDeploymentStatus::default();
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(
        steps_run(&decisions),
        [
            Step::Render,
            Step::Snapshot,
            Step::Preflight,
            Step::Backup,
            Step::Migrate,
            Step::Inventory,
            Step::Apply,
            Step::Verify
        ]
    );
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.jobs.len(), 2);
    assert!(migration_of(&status, A).is_some());
    assert_eq!(
        condition_status(&status, crate::api::condition::MIGRATION_SUCCEEDED),
        Some("True")
    );
    assert_eq!(
        condition_status(&status, crate::api::condition::PREFLIGHT_PASSED),
        Some("True")
    );

    // The same commit deployed again (a spec change): neither Job runs again.
    world.spec_digest = "d2";
    world.generation = 2;
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert_eq!(
        steps_run(&decisions),
        [
            Step::Render,
            Step::Snapshot,
            Step::Preflight,
            Step::Inventory,
            Step::Apply,
            Step::Verify
        ]
    );
    assert_eq!(status.jobs.len(), 2);
}

#[test]
fn the_phase_says_backing_up_then_migrating_and_a_running_job_is_awaited_not_abandoned() {
    let mut world = World::on(git(A));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = AppDeploymentStatus::default();
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Backup => StepOutcome::Running("Job app-backup-aaaaaa running".into()),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert_eq!(
        decisions.last(),
        Some(&Decision::AwaitJob {
            message: "Job app-backup-aaaaaa running".into()
        })
    );
    assert_eq!(status.phase, Phase::BackingUp);
    // A newer commit waits for the Job to end.
    world.desired = git(B);
    assert_eq!(world.decide(&status, None), Decision::Run(Step::Backup));
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Migrate => StepOutcome::Running("Job app-migrate-aaaaaa running".into()),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert!(matches!(decisions.last(), Some(Decision::AwaitJob { .. })));
    assert_eq!(status.phase, Phase::Migrating);
    // Once the migration is done, B takes over before A's workloads are applied.
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert!(
        decisions.contains(&Decision::StartDeploy { revision: B.into() }),
        "{decisions:?}"
    );
    assert!(migration_of(&status, A).is_some());
}

#[test]
fn a_failed_migration_leaves_the_workloads_alone_fails_and_holds_the_revision_out() {
    let mut world = World::on(git(B));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Migrate => StepOutcome::Refused(Failure::new(
            FailureKind::JobFailed,
            "migration Job app-migrate-bbbbbb failed (BackoffLimitExceeded); last lines: relation \"users\" already exists",
        )),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert!(!steps_run(&decisions).contains(&Step::Apply), "{decisions:?}");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.current_revision.as_deref(), Some(A), "A still runs");
    assert!(is_quarantined(&status, B));
    assert_eq!(
        condition_status(&status, crate::api::condition::MIGRATION_SUCCEEDED),
        Some("False")
    );
    assert!(
        status.history[0]
            .message
            .as_deref()
            .unwrap()
            .contains("already exists")
    );
    // Not tried again while Git stays on B.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn an_optional_backup_that_fails_is_a_warning_and_the_revision_goes_on() {
    let mut world = World::on(git(A));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    world.plan.backup_optional = true;
    let mut status = AppDeploymentStatus::default();
    let mut notices = Vec::new();
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Backup => StepOutcome::Done(StepResult::JobFinished(job(status, step, false))),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert!(steps_run(&decisions).contains(&Step::Migrate));
    assert_eq!(status.phase, Phase::Healthy);
    // Replay the backup's result to see its Event.
    let mut replay = AppDeploymentStatus::default();
    for decision in &decisions {
        notices.extend(world.record(&mut replay, decision));
    }
    assert!(
        notices.iter().any(|n| n.reason == "BackupFailed" && n.warning),
        "{notices:?}"
    );
}

/// B deployed over healthy A with a migration, then failing its gates.
fn migrated_and_failing(
    policy: MigrationRollbackPolicy,
    irreversible: bool,
) -> (World, AppDeploymentStatus, Vec<Decision>) {
    let mut world = World::on(git(B));
    world.plan = with_jobs(policy);
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    let decisions = world.pass(&mut status, move |status, step| match step {
        Step::Migrate => {
            let mut record = job(status, step, true);
            record.irreversible = irreversible;
            StepOutcome::Done(StepResult::JobFinished(record))
        }
        other => succeeding(Verdict::Failed)(status, other),
    });
    (world, status, decisions)
}

#[test]
fn keep_rolls_back_without_touching_the_schema() {
    let (_, status, decisions) = migrated_and_failing(MigrationRollbackPolicy::Keep, true);
    let steps = steps_run(&decisions);
    assert!(!steps.contains(&Step::Downgrade), "{steps:?}");
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::RollBack { downgrade: false, .. }))
    );
    assert_eq!(status.current_revision.as_deref(), Some(A));
}

#[test]
fn downgrade_runs_the_failed_revisions_downgrade_before_the_workloads_flip_back() {
    let (_, status, decisions) = migrated_and_failing(MigrationRollbackPolicy::Downgrade, false);
    let steps = steps_run(&decisions);
    let downgrade = steps
        .iter()
        .position(|s| *s == Step::Downgrade)
        .expect("a downgrade");
    let flip = steps.iter().rposition(|s| *s == Step::Apply).unwrap();
    assert!(downgrade < flip, "{steps:?}");
    assert_eq!(status.current_revision.as_deref(), Some(A));
    assert!(
        status
            .jobs
            .iter()
            .any(|j| j.kind == JobKind::Downgrade && j.revision == B)
    );
}

#[test]
fn a_failed_downgrade_leaves_the_workloads_of_the_failed_revision_and_fails() {
    let mut world = World::on(git(B));
    world.plan = with_jobs(MigrationRollbackPolicy::Downgrade);
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Downgrade => StepOutcome::Refused(Failure::new(FailureKind::JobFailed, "downgrade Job failed")),
        other => succeeding(Verdict::Failed)(status, other),
    });
    let steps = steps_run(&decisions);
    assert_eq!(
        steps.iter().filter(|s| **s == Step::Apply).count(),
        1,
        "{steps:?}"
    );
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.current_revision.as_deref(), Some(B), "workloads untouched");
}

#[test]
fn hold_keeps_an_irreversibly_migrated_revision_for_a_person_to_decide() {
    let (world, status, decisions) = migrated_and_failing(MigrationRollbackPolicy::Hold, true);
    assert!(
        !decisions.iter().any(|d| matches!(d, Decision::RollBack { .. })),
        "{decisions:?}"
    );
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.current_revision.as_deref(), Some(B));
    let message = &status.history[0].message.clone().unwrap();
    assert!(
        message.contains("irreversible") && message.contains("Hold"),
        "{message}"
    );
    assert_eq!(world.decide(&status, None), Decision::Wait, "held, not retried");
    // A revision that did not mark its migration irreversible rolls back under Hold.
    let (_, status, _) = migrated_and_failing(MigrationRollbackPolicy::Hold, false);
    assert_eq!(status.current_revision.as_deref(), Some(A));
}

#[test]
fn a_preflight_miss_blocks_before_any_job_or_write_and_a_recheck_clears_it() {
    let mut world = World::on(git(B));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = healthy_on(A);
    let miss = "Deployment app/api container api: env JWT_SECRET reads key secret of Secret app/jwt, which does not exist";
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Preflight => StepOutcome::Refused(Failure::new(FailureKind::PreflightFailed, miss)),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert_eq!(
        steps_run(&decisions),
        [Step::Render, Step::Snapshot, Step::Preflight]
    );
    assert_eq!(status.phase, Phase::Blocked);
    let block = status.blocked.clone().unwrap();
    assert_eq!(block.reason, BlockReason::PreflightFailed);
    assert!(block.retry);
    assert_eq!(
        condition_status(&status, crate::api::condition::PREFLIGHT_PASSED),
        Some("False")
    );
    assert_eq!(
        status.current_revision.as_deref(),
        Some(A),
        "the running revision untouched"
    );
    assert!(!is_quarantined(&status, B));
    // The Secret is created: the re-check finds nothing in the way and B deploys.
    world.now = at(5);
    world.config_changed_at = Some(at(4));
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    assert!(decisions.contains(&Decision::StartDeploy { revision: B.into() }));
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.current_revision.as_deref(), Some(B));
}

fn rotation(digest: &str) -> BTreeMap<String, String> {
    [("app/jwt".to_string(), digest.to_string())].into()
}

#[test]
fn a_secret_change_rolls_the_running_revision_through_preflight_and_the_gates() {
    let mut world = World::on(git(A));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("old");
    world.secrets = rotation("new");
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Apply => StepOutcome::Done(StepResult::Applied(Applied {
            inventory: vec![entry("a")],
            secret_digests: rotation("new"),
            ..Default::default()
        })),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert_eq!(
        decisions[0],
        Decision::StartRotation {
            secrets: rotation("new")
        }
    );
    assert_eq!(
        steps_run(&decisions),
        [Step::Preflight, Step::Inventory, Step::Apply, Step::Verify],
        "no render and no Job for a Secret change"
    );
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.secret_digests, rotation("new"));
    assert_eq!(status.history.len(), 1, "the rotation is its own entry");
    assert_eq!(status.history[0].rotation, ["app/jwt"]);
}

#[test]
fn a_secret_change_that_fails_the_gates_fails_the_app_quarantines_nothing_and_is_not_retried() {
    let mut world = World::on(git(A));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("old");
    world.secrets = rotation("new");
    let mut notices = Vec::new();
    let decisions = world.pass(&mut status, succeeding(Verdict::Failed));
    let mut replay = healthy_on(A);
    replay.current_snapshot = Some("app-aaaa".into());
    for decision in &decisions {
        notices.extend(world.record(&mut replay, decision));
    }
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::RejectRotation { .. })),
        "{decisions:?}"
    );
    assert!(!decisions.iter().any(|d| matches!(d, Decision::RollBack { .. })));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.quarantined.is_empty());
    assert_eq!(status.rejected_secret_digests, rotation("new"));
    let warning = notices
        .iter()
        .find(|n| n.reason == "RotationFailed")
        .expect("a warning");
    assert!(warning.note.contains("app/jwt"), "{}", warning.note);
    // The refused data stays in the Secret: it is not rolled out again.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

/// Runs every step; Apply records `applied` as the digests given to the pods,
/// verification answers `verdict`, and preflight refuses when `preflight` is `Err`.
fn rolling_out(
    applied: &'static str,
    preflight: Result<(), &'static str>,
    verdict: Verdict,
) -> impl FnMut(&AppDeploymentStatus, Step) -> StepOutcome {
    let mut rest = succeeding(verdict);
    move |status, step| match step {
        Step::Preflight => match preflight {
            Ok(()) => StepOutcome::Done(StepResult::PreflightPassed),
            Err(message) => StepOutcome::Refused(Failure::new(FailureKind::PreflightFailed, message)),
        },
        Step::Apply => StepOutcome::Done(StepResult::Applied(Applied {
            inventory: vec![entry("a")],
            secret_digests: rotation(applied),
            ..Default::default()
        })),
        other => rest(status, other),
    }
}

#[test]
fn a_refused_secret_change_no_longer_stands_once_other_data_is_verified() {
    let mut world = World::on(git(A));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("first");
    // "second" fails the gates: refused.
    world.secrets = rotation("second");
    world.pass(&mut status, rolling_out("second", Ok(()), Verdict::Failed));
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.rejected_secret_digests, rotation("second"));
    // "third" passes: what runs is verified, the refusal of "second" is history.
    world.secrets = rotation("third");
    world.pass(&mut status, rolling_out("third", Ok(()), Verdict::Passed));
    assert_eq!(status.phase, Phase::Healthy);
    assert_eq!(status.secret_digests, rotation("third"));
    assert!(
        status.rejected_secret_digests.is_empty(),
        "a stale refusal would keep \"second\" from ever rolling out again: {:?}",
        status.rejected_secret_digests
    );
    // "second" comes back: rolled out like any change.
    world.secrets = rotation("second");
    assert_eq!(
        world.decide(&status, None),
        Decision::StartRotation {
            secrets: rotation("second")
        }
    );
}

#[test]
fn a_secret_change_refused_at_preflight_ends_when_the_data_is_put_back() {
    let mut world = World::on(git(A));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("first");
    world.secrets = rotation("default");
    let decisions = world.pass(
        &mut status,
        rolling_out(
            "default",
            Err("JWT_SECRET (Secret app/jwt, key secret) still has a value the Runbook forbids"),
            Verdict::Passed,
        ),
    );
    assert_eq!(steps_run(&decisions), [Step::Preflight], "nothing applied");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.secret_digests,
        rotation("first"),
        "the pods keep their data"
    );
    assert_eq!(status.rejected_secret_digests, rotation("default"));
    // Nothing changes while the refused data stays.
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // The data is put back: the controller lists it (it is what runs, and a refusal of
    // other data is recorded); its rollout is verified and the app is Healthy again.
    world.secrets = rotation("first");
    let decisions = world.pass(&mut status, rolling_out("first", Ok(()), Verdict::Passed));
    assert!(decisions.contains(&Decision::StartRotation {
        secrets: rotation("first")
    }));
    assert_eq!(status.phase, Phase::Healthy);
    assert!(status.rejected_secret_digests.is_empty());
    assert_eq!(status.history[0].rotation, ["app/jwt"]);
    assert_eq!(status.history[0].phase, Phase::Healthy);
}

#[test]
fn the_running_revision_rolls_on_a_secret_change_while_git_points_at_a_blocked_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("old");
    // B is refused by preflight (a Secret it reads is missing).
    world.pass(&mut status, |status, step| match step {
        Step::Preflight => StepOutcome::Refused(Failure::new(
            FailureKind::PreflightFailed,
            "Deployment app/api container api: env DB_URL reads key url of Secret app/db, which does not exist",
        )),
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert_eq!(status.phase, Phase::Blocked);
    // A Secret A reads changes; the Secret change makes the block due for a re-check,
    // which still refuses B: A rolls out the new data meanwhile.
    world.secrets = rotation("new");
    world.now = at(5);
    world.config_changed_at = Some(at(4));
    world.recheck = Recheck::Refused(Failure::new(
        FailureKind::PreflightFailed,
        status.blocked.as_ref().unwrap().message.clone(),
    ));
    let decisions = world.pass(&mut status, rolling_out("new", Ok(()), Verdict::Passed));
    assert!(
        decisions.contains(&Decision::StartRotation {
            secrets: rotation("new")
        }),
        "{decisions:?}"
    );
    assert_eq!(status.current_revision.as_deref(), Some(A));
    assert_eq!(status.secret_digests, rotation("new"));
    assert_eq!(status.history[0].rotation, ["app/jwt"]);
    assert_eq!(status.history[0].phase, Phase::Healthy);
    assert_eq!(
        status.phase,
        Phase::Blocked,
        "B is still what Git asks for, and blocked"
    );
    assert_eq!(status.blocked.as_ref().map(|b| b.revision.as_str()), Some(B));
    // Nothing more: the data rolled out is recorded, and the block was just checked.
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn the_running_revision_rolls_on_a_secret_change_while_git_points_at_a_quarantined_revision() {
    let mut world = World::on(git(B));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("old");
    world.pass(&mut status, judging(&[B], &[]));
    assert_eq!(status.phase, Phase::RolledBack);
    assert!(is_quarantined(&status, B));
    // What the rollback wrote into A's pod templates (the stub's apply reports none).
    status.secret_digests = rotation("old");
    world.secrets = rotation("new");
    let decisions = world.pass(&mut status, rolling_out("new", Ok(()), Verdict::Passed));
    assert_eq!(
        decisions[0],
        Decision::StartRotation {
            secrets: rotation("new")
        }
    );
    assert_eq!(status.current_revision.as_deref(), Some(A));
    assert_eq!(status.history[0].rotation, ["app/jwt"]);
    assert_eq!(status.history[0].phase, Phase::Healthy);
    assert_eq!(
        status.phase,
        Phase::RolledBack,
        "Git still points at the quarantined B"
    );
    // A rotation that fails while held there: Failed, no rollback, B still out.
    world.secrets = rotation("newer");
    let decisions = world.pass(&mut status, rolling_out("newer", Ok(()), Verdict::Failed));
    assert!(
        decisions
            .iter()
            .any(|d| matches!(d, Decision::RejectRotation { .. }))
    );
    assert!(
        !decisions
            .iter()
            .any(|d| matches!(d, Decision::RollBack { .. } | Decision::StartDeploy { .. }))
    );
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn a_block_is_due_one_interval_after_it_was_recorded_whatever_the_rounding() {
    let interval = Duration::from_secs(5);
    let blocked: Timestamp = "2026-01-01T00:00:10.6Z".parse().unwrap();
    // Recorded as 00:00:10 (truncated, as metav1.Time is); the pass requeued 5 s later runs at 15.6 s.
    let at = record::rfc3339(blocked);
    assert_eq!(at, "2026-01-01T00:00:10Z");
    let requeued = blocked + k8s_openapi::jiff::SignedDuration::from_millis(5_010);
    assert!(interval_passed_since(requeued, &at, interval));
    // Well before the interval: not yet.
    let early = blocked + k8s_openapi::jiff::SignedDuration::from_millis(3_000);
    assert!(!interval_passed_since(early, &at, interval));
}

/// A block of B recorded at t0 for `reason`, A running healthy.
fn blocked_on_b(reason: BlockReason) -> AppDeploymentStatus {
    let mut status = healthy_on(A);
    status.blocked = Some(crate::api::BlockedRevision {
        revision: B.into(),
        reason,
        message: "refused".into(),
        generation: Some(1),
        at: record::rfc3339(t0()),
        retry: true,
    });
    status.phase = Phase::Blocked;
    status
}

#[test]
fn a_block_is_checked_again_an_interval_after_it_was_recorded_and_after_the_last_check() {
    let mut world = World::on(git(B));
    let status = blocked_on_b(BlockReason::Forbidden);
    let recheck = Decision::RecheckBlock { revision: B.into() };
    // (A second of slack: status times are truncated to the second.)
    world.now = at(58);
    assert_eq!(world.decide(&status, None), Decision::Wait, "within the interval");
    world.now = at(60);
    assert_eq!(world.decide(&status, None), recheck);
    // Checked 30 s ago: the next check is 30 s away.
    world.block_checked_at.set(Some(at(30)));
    assert_eq!(world.decide(&status, None), Decision::Wait);
    world.now = at(90);
    assert_eq!(world.decide(&status, None), recheck);
    // A change of a Secret or ConfigMap does not hurry a block that no Secret can lift.
    world.now = at(70);
    world.config_changed_at = Some(at(65));
    assert_eq!(world.decide(&status, None), Decision::Wait);
}

#[test]
fn a_preflight_block_is_checked_again_as_soon_as_a_secret_or_configmap_changed_since_the_last_check() {
    let mut world = World::on(git(B));
    let status = blocked_on_b(BlockReason::PreflightFailed);
    let recheck = Decision::RecheckBlock { revision: B.into() };
    world.now = at(10);
    assert_eq!(world.decide(&status, None), Decision::Wait, "nothing changed");
    world.config_changed_at = Some(at(5));
    assert_eq!(world.decide(&status, None), recheck, "never checked since");
    world.block_checked_at.set(Some(at(8)));
    assert_eq!(
        world.decide(&status, None),
        Decision::Wait,
        "checked after the change"
    );
    world.config_changed_at = Some(at(9));
    assert_eq!(world.decide(&status, None), recheck, "changed after the check");
}

#[test]
fn which_secret_changes_count_as_a_rotation() {
    let mut world = World::on(git(A));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    status.secret_digests = rotation("old");
    let rotate = |digest: &str| Decision::StartRotation {
        secrets: rotation(digest),
    };
    // The data that runs: nothing to roll.
    world.secrets = rotation("old");
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // A Secret that is gone is preflight's business, not a rotation.
    world.secrets = BTreeMap::new();
    assert_eq!(world.decide(&status, None), Decision::Wait);
    // New data rolls out, unless the Runbook says not to.
    world.secrets = rotation("new");
    assert_eq!(world.decide(&status, None), rotate("new"));
    let input = Input {
        rollout_on_secret_change: false,
        ..world.input(&status)
    };
    assert_eq!(decide(&input), Decision::Wait);
    // Data refused before is not offered again; data put back after a refusal is, so
    // that verifying what runs ends the failure the refusal left.
    status.rejected_secret_digests = rotation("new");
    assert_eq!(world.decide(&status, None), Decision::Wait);
    world.secrets = rotation("old");
    assert_eq!(world.decide(&status, None), rotate("old"));
    // Only the running healthy revision rolls.
    status.last_healthy_revision = Some(C.into());
    world.secrets = rotation("newer");
    assert_ne!(world.decide(&status, None), rotate("newer"));
}

#[test]
fn drift_is_repaired_once_per_interval_and_only_on_a_healthy_revision_at_rest() {
    let mut world = World::on(git(A));
    let mut status = healthy_on(A);
    status.current_snapshot = Some("app-aaaa".into());
    let resync = Decision::Resync {
        revision: A.into(),
        snapshot: "app-aaaa".into(),
    };
    // Verified at t0: an interval later, not before.
    world.now = at(59);
    assert_eq!(world.decide(&status, None), Decision::Wait);
    world.now = at(60);
    assert_eq!(world.decide(&status, None), resync);
    // Never since the controller took the app over: at once.
    world.now = at(1);
    world.last_resync.set(None);
    assert_eq!(world.decide(&status, None), resync);
    // Suspended: left as it is.
    world.suspended = true;
    status.phase = Phase::Suspended;
    assert_eq!(world.decide(&status, None), Decision::Wait);
    world.suspended = false;
    status.phase = Phase::Healthy;
    // A failed revision is not reasserted.
    let mut failed = status.clone();
    failed.last_healthy_revision = Some(C.into());
    failed.phase = Phase::Failed;
    assert!(!matches!(world.decide(&failed, None), Decision::Resync { .. }));
    // No snapshot to apply: nothing.
    let mut bare = status.clone();
    bare.current_snapshot = None;
    assert_eq!(world.decide(&bare, None), Decision::Wait);
    // An operation in progress is never interrupted by a drift repair.
    let mut deploying = status.clone();
    world.desired = git(B);
    world.step(&mut deploying, None);
    assert!(deploying.operation.is_some());
    assert!(!matches!(world.decide(&deploying, None), Decision::Resync { .. }));
}

#[test]
fn a_drift_repair_is_recorded_by_record_with_its_inventory_its_prune_failures_and_an_event() {
    let world = World::on(git(A));
    let mut status = healthy_on(A);
    status.inventory = vec![entry("a"), entry("old")];
    let repaired = Resynced {
        inventory: vec![entry("a"), entry("old")],
        sent: vec!["ConfigMap shop/a".into()],
        pruned: 0,
        prune_failures: vec!["ConfigMap shop/old: forbidden".into()],
    };
    let decision = world.decide(&status, Some(StepOutcome::Resynced(repaired.clone())));
    assert_eq!(decision, Decision::DriftRepaired(repaired));
    assert!(decision.continues());
    let notices = world.record(&mut status, &decision);
    assert_eq!(
        condition_status(&status, crate::api::condition::PRUNED),
        Some("False")
    );
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].reason, "DriftCorrected");
    assert!(
        notices[0]
            .note
            .contains("1 re-applied (ConfigMap shop/a), 0 pruned"),
        "{}",
        notices[0].note
    );
    // The next repair prunes it: the inventory shrinks, the condition goes, nothing
    // drifted is announced only when something was corrected.
    let pruned = Resynced {
        inventory: vec![entry("a")],
        pruned: 1,
        ..Default::default()
    };
    let notices = world.record(&mut status, &Decision::DriftRepaired(pruned));
    assert_eq!(status.inventory, vec![entry("a")]);
    assert_eq!(condition_status(&status, crate::api::condition::PRUNED), None);
    assert_eq!(notices.len(), 1);
    let quiet = world.record(
        &mut status,
        &Decision::DriftRepaired(Resynced {
            inventory: vec![entry("a")],
            ..Default::default()
        }),
    );
    assert!(quiet.is_empty(), "{quiet:?}");
    assert_eq!(status.phase, Phase::Healthy, "a drift repair is no phase change");
}

#[test]
fn a_required_backup_that_fails_fails_the_revision_and_quarantines_it() {
    let mut world = World::on(git(B));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, |status, step| match step {
        Step::Backup => {
            let mut record = job(status, step, false);
            record.message = Some("backup Job shop/app-backup failed: BackoffLimitExceeded".into());
            StepOutcome::Done(StepResult::JobFinished(record))
        }
        other => succeeding(Verdict::Passed)(status, other),
    });
    assert!(
        matches!(decisions.last(), Some(Decision::Fail { message, quarantine: Some(q), .. })
            if q == B && message.contains("BackoffLimitExceeded")),
        "{decisions:?}"
    );
    assert!(!steps_run(&decisions).contains(&Step::Migrate));
    assert!(
        status.jobs.is_empty(),
        "a failed required Job is not recorded as done"
    );
}

#[test]
fn a_rollback_verifies_without_a_window_and_a_deploy_waits_the_runbooks() {
    let window = Duration::from_secs(300);
    assert_eq!(verify_window(OperationKind::Rollback, window), Duration::ZERO);
    assert_eq!(verify_window(OperationKind::Deploy, window), window);
}

#[test]
fn record_writes_what_reading_the_source_found_and_announces_a_failure_once() {
    let world = World::on(git(A));
    let mut status = AppDeploymentStatus::default();
    let ctx = RecordInput {
        now: world.now,
        generation: Some(1),
        history_limit: 10,
        spec_digest: DIGEST,
        desired: Some(A),
    };
    let resolved = SourceRead::Resolved {
        revision: A.into(),
        pinned: false,
        reference: "branch main".into(),
    };
    assert_eq!(resolved.desired(), git(A));
    assert_eq!(record::source_read(&mut status, &resolved, &ctx), None);
    assert_eq!(status.desired_revision.as_deref(), Some(A));
    assert_eq!(
        condition_status(&status, crate::api::condition::SOURCE_READY),
        Some("True")
    );
    let failed = SourceRead::Failed {
        reason: "FetchFailed",
        message: "connection refused".into(),
    };
    assert_eq!(failed.desired(), DesiredRevision::Unavailable);
    let notice = record::source_read(&mut status, &failed, &ctx).expect("announced");
    assert_eq!((notice.reason, notice.warning), ("FetchFailed", true));
    assert_eq!(notice.note, "Git source: connection refused");
    assert_eq!(
        condition_status(&status, crate::api::condition::SOURCE_READY),
        Some("False")
    );
    assert_eq!(
        status.desired_revision.as_deref(),
        Some(A),
        "the last tip known stays"
    );
    assert_eq!(record::source_read(&mut status, &failed, &ctx), None, "not news");
    let before = status.clone();
    assert_eq!(record::source_read(&mut status, &SourceRead::NotRead, &ctx), None);
    assert_eq!(status, before);
}

#[test]
fn advance_names_the_next_step_and_its_phase_and_record_only_writes_them() {
    let mut world = World::on(git(B));
    world.plan = with_jobs(MigrationRollbackPolicy::Keep);
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, succeeding(Verdict::Passed));
    let nexts: Vec<(Step, Phase)> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Advance(_, next) => Some((next.step, next.phase)),
            _ => None,
        })
        .collect();
    assert_eq!(
        nexts,
        [
            (Step::Snapshot, Phase::Applying),
            (Step::Preflight, Phase::Applying),
            (Step::Backup, Phase::BackingUp),
            (Step::Migrate, Phase::Migrating),
            (Step::Inventory, Phase::Applying),
            (Step::Apply, Phase::Applying),
            (Step::Verify, Phase::Verifying),
        ]
    );
    // A rollback's steps all say RollingBack.
    let world = World::on(git(C));
    let mut status = healthy_on(A);
    let decisions = world.pass(&mut status, judging(&[C], &[]));
    let rollback_nexts: Vec<Next> = decisions
        .iter()
        .skip_while(|d| !matches!(d, Decision::RollBack { .. }))
        .filter_map(|d| match d {
            Decision::Advance(_, next) => Some(*next),
            _ => None,
        })
        .collect();
    assert!(!rollback_nexts.is_empty());
    assert!(
        rollback_nexts.iter().all(|next| next.phase == Phase::RollingBack),
        "{rollback_nexts:?}"
    );
}
