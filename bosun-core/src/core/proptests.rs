//! Properties of the decision over arbitrary sequences of what the world does (new
//! commits, pins, spec changes, suspension, a broken Runbook) and of what steps report
//! (success, transient errors, refusals, any verification verdict):
//! - every pass ends, and every path ends: once the world is quiet and steps succeed,
//!   the app comes to rest;
//! - a quarantined revision is never deployed again at the generation it was
//!   quarantined at (only a later pin or spec change may try it once more);
//! - a rollback only ever targets `lastHealthyRevision`, from its snapshot;
//! - nothing is ever blamed for a transient error or a broken Runbook;
//! - a revision's migration never runs again once it succeeded, and a running Job is
//!   never abandoned for a newer commit;
//! - a revision whose irreversible migration ran is never flipped back under `Hold`;
//! - a failed rollout of a Secret change quarantines no revision;
//! - a failed Job goes on only as an optional backup;
//! - drift is repaired only at rest on the healthy revision, once per interval; a
//!   block is re-checked only when due; a rotation rolls out the data of now, never
//!   data refused before.

use proptest::prelude::*;

use super::record::{RecordInput, record};
use super::tests::{A, B, C, DIGEST, job, t0};
use super::*;
use crate::api::{InventoryEntry, JobKind, MigrationRollbackPolicy, Verdict};

const REVISIONS: [&str; 3] = [A, B, C];
/// The Git interval.
const INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What happens between two passes.
#[derive(Clone, Debug)]
struct World {
    desired: Option<(usize, bool)>,
    generation_bump: bool,
    spec_change: bool,
    suspended: bool,
    automatic_rollback: bool,
    runbook_broken: bool,
    minutes_later: u8,
    /// A Secret or ConfigMap of the target namespace changed since the last pass.
    config_change: bool,
    plan: StepPlan,
    /// A Secret the running workloads read changed (its new digest).
    secret_change: Option<u8>,
}

fn plan() -> impl Strategy<Value = StepPlan> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(MigrationRollbackPolicy::Keep),
            Just(MigrationRollbackPolicy::Downgrade),
            Just(MigrationRollbackPolicy::Hold),
        ],
    )
        .prop_map(
            |(backup, backup_optional, migrate, migration_rollback)| StepPlan {
                backup,
                backup_optional,
                migrate,
                migration_rollback,
            },
        )
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::option::weighted(0.9, (0..3usize, prop::bool::weighted(0.2))),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        0..15u8,
        any::<bool>(),
        plan(),
        prop::option::weighted(0.15, 0..3u8),
    )
        .prop_map(
            |(
                desired,
                generation_bump,
                spec_change,
                suspended,
                automatic_rollback,
                runbook_broken,
                minutes_later,
                config_change,
                plan,
                secret_change,
            )| World {
                desired,
                generation_bump,
                spec_change,
                suspended,
                automatic_rollback,
                runbook_broken,
                minutes_later,
                config_change,
                plan,
                secret_change,
            },
        )
}

/// What a step reports, chosen by index so that one strategy serves every step.
#[derive(Clone, Copy, Debug)]
enum Report {
    Succeed,
    Transient,
    Refuse(usize),
    Verdict(Verdict),
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        6 => Just(Report::Succeed),
        2 => Just(Report::Transient),
        1 => (0..3usize).prop_map(Report::Refuse),
        2 => Just(Report::Verdict(Verdict::Pending)),
        2 => Just(Report::Verdict(Verdict::Passed)),
        2 => Just(Report::Verdict(Verdict::Failed)),
    ]
}

fn outcome_of(step: Step, report: Report, status: &AppDeploymentStatus) -> StepOutcome {
    let revision = status
        .operation
        .as_ref()
        .map(|op| op.revision.clone())
        .unwrap_or_default();
    let revision = revision.as_str();
    let entry = InventoryEntry {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("shop".into()),
        name: format!("cm-{}", &revision[..1]),
        adopted: false,
    };
    let verdict = |verdict| {
        let gates = vec![GateVerdict {
            name: "health".into(),
            verdict,
            message: None,
        }];
        StepOutcome::Verified(match verdict {
            Verdict::Pending => Verification::Pending { gates },
            Verdict::Passed => Verification::Passed { gates },
            Verdict::Failed => Verification::Failed {
                message: "gate failed".into(),
                gates,
            },
        })
    };
    let job_step = matches!(step, Step::Backup | Step::Migrate | Step::Downgrade);
    match (step, report) {
        (_, Report::Transient) => StepOutcome::Transient("connection reset".into()),
        (Step::Preflight, Report::Refuse(_)) => StepOutcome::Refused(Failure::new(
            FailureKind::PreflightFailed,
            "Secret app/jwt is missing",
        )),
        // A Job that failed is reported as it ended; whether the deploy goes on is core's.
        (_, Report::Refuse(_)) if job_step => {
            let mut record = job(status, step, false);
            record.message = Some("Job failed: BackoffLimitExceeded".into());
            StepOutcome::Done(StepResult::JobFinished(record))
        }
        (_, Report::Refuse(kind)) if step != Step::Verify => StepOutcome::Refused(Failure::new(
            [
                FailureKind::RevisionInvalid,
                FailureKind::Forbidden,
                FailureKind::OwnershipConflict,
            ][kind],
            "refused",
        )),
        (_, Report::Verdict(Verdict::Pending)) if job_step => StepOutcome::Running("Job running".into()),
        (Step::Backup | Step::Migrate | Step::Downgrade, _) => {
            let mut record = job(status, step, true);
            // Revision C marks its migration irreversible.
            record.irreversible = record.kind == JobKind::Migrate && record.revision == C;
            StepOutcome::Done(StepResult::JobFinished(record))
        }
        (Step::Preflight, _) => StepOutcome::Done(StepResult::PreflightPassed),
        (Step::Verify, Report::Verdict(v)) => verdict(v),
        (Step::Verify, _) => verdict(Verdict::Passed),
        (Step::Render, _) => StepOutcome::Done(StepResult::Rendered {
            render_digest: "r".into(),
            objects: 1,
        }),
        (Step::Snapshot, _) => StepOutcome::Done(StepResult::SnapshotStored {
            name: format!("snap-{revision}"),
        }),
        (Step::Inventory, _) => StepOutcome::Done(StepResult::Planned {
            inventory: vec![entry],
        }),
        (Step::Apply, _) => StepOutcome::Done(StepResult::Applied(Applied {
            inventory: vec![entry],
            sent: 1,
            ..Default::default()
        })),
    }
}

struct Model {
    status: AppDeploymentStatus,
    generation: i64,
    digest: &'static str,
    now: Timestamp,
    block_checked_at: Option<Timestamp>,
    config_changed_at: Option<Timestamp>,
    last_resync: Option<Timestamp>,
    secret_data: BTreeMap<String, String>,
}

impl Model {
    fn new() -> Self {
        Model {
            status: AppDeploymentStatus::default(),
            generation: 1,
            digest: DIGEST,
            now: t0(),
            block_checked_at: None,
            config_changed_at: None,
            last_resync: None,
            secret_data: BTreeMap::new(),
        }
    }

    /// One pass under `world`, steps reporting from `reports` (then success). Checks the
    /// invariants at every decision; returns the decisions.
    fn pass(&mut self, world: &World, reports: &mut impl Iterator<Item = Report>) -> Vec<Decision> {
        if world.generation_bump || world.spec_change {
            self.generation += 1;
        }
        if world.spec_change {
            self.digest = if self.digest == DIGEST { "d2" } else { DIGEST };
        }
        self.now += k8s_openapi::jiff::SignedDuration::from_mins(world.minutes_later.into());
        let desired = match world.desired {
            Some((index, pinned)) => DesiredRevision::Known {
                revision: REVISIONS[index].into(),
                pinned,
            },
            None => DesiredRevision::Unavailable,
        };
        let problem = world
            .runbook_broken
            .then(|| Failure::new(FailureKind::RunbookInvalid, "spec.gates[0]: no probe"));
        if world.config_change {
            self.config_changed_at = Some(self.now);
        }
        // What the Secret the running workloads read holds now, in a pass where it
        // changed; otherwise it is not in the cache (gone, or not readable): no rotation.
        self.secret_data = world
            .secret_change
            .map(|digest| [("shop/jwt".to_string(), format!("digest-{digest}"))].into())
            .unwrap_or_default();
        // Taken once per pass, as the controller does.
        let block_checked_at = self.block_checked_at;
        let mut decisions = Vec::new();
        let mut outcome: Option<StepOutcome> = None;
        let mut recheck: Option<Recheck> = None;
        for _ in 0..40 {
            let input = Input {
                status: &self.status,
                generation: Some(self.generation),
                suspended: world.suspended,
                automatic_rollback: world.automatic_rollback,
                desired: desired.clone(),
                spec_digest: self.digest,
                problem: problem.clone(),
                outcome: outcome.take(),
                now: self.now,
                step_deadline: Duration::from_secs(600),
                interval: INTERVAL,
                block_checked_at,
                config_changed_at: self.config_changed_at,
                last_resync: self.last_resync,
                recheck: recheck.take(),
                plan: world.plan,
                rollout_on_secret_change: true,
                secret_data: self.secret_data.clone(),
                retry: None,
            };
            let reported = input.outcome.clone();
            let decision = decide(&input);
            self.check(&input, &decision, reported.as_ref());
            let before = self.status.clone();
            record(
                &mut self.status,
                &decision,
                &RecordInput {
                    now: self.now,
                    generation: Some(self.generation),
                    history_limit: 10,
                    spec_digest: self.digest,
                    desired: desired.revision(),
                },
            );
            self.check_recorded(&before, &decision);
            decisions.push(decision.clone());
            match decision {
                Decision::Run(step) => {
                    let report = reports.next().unwrap_or(Report::Succeed);
                    outcome = Some(outcome_of(step, report, &self.status));
                    // What an apply writes into the pod templates: the digests of now.
                    if let (Step::Apply, Some(StepOutcome::Done(StepResult::Applied(applied)))) =
                        (step, outcome.as_mut())
                    {
                        applied.secret_digests = self
                            .status
                            .operation
                            .as_ref()
                            .map(|op| op.rotation.clone())
                            .filter(|rotation| !rotation.is_empty())
                            .or_else(|| (!self.secret_data.is_empty()).then(|| self.secret_data.clone()))
                            .unwrap_or_else(|| self.status.secret_digests.clone());
                    }
                }
                Decision::RecheckBlock { .. } => {
                    self.block_checked_at = Some(self.now);
                    return decisions;
                }
                // Some drift repaired; one object could not be pruned.
                Decision::Resync { .. } => {
                    self.last_resync = Some(self.now);
                    let mut inventory = self.status.inventory.clone();
                    inventory.truncate(1);
                    outcome = Some(StepOutcome::Resynced(Resynced {
                        inventory,
                        sent: vec!["ConfigMap shop/cm".into()],
                        pruned: 0,
                        prune_failures: vec!["ConfigMap shop/old: forbidden".into()],
                    }));
                }
                Decision::MarkHealthy { .. } | Decision::FinishRollback => {
                    self.last_resync = Some(self.now);
                    return decisions;
                }
                ref d if d.continues() => {}
                _ => return decisions,
            }
        }
        panic!("a pass did not end: {decisions:?}");
    }

    fn check(&self, input: &Input<'_>, decision: &Decision, reported: Option<&StepOutcome>) {
        let status = input.status;
        match decision {
            Decision::StartDeploy { revision } => {
                let held_at_this_generation = status
                    .quarantined
                    .iter()
                    .any(|q| &q.revision == revision && q.generation == input.generation);
                assert!(
                    !held_at_this_generation,
                    "quarantined revision {revision} deployed again at generation {:?}: {status:#?}",
                    input.generation
                );
                assert!(!input.suspended, "a deploy started while suspended");
                assert!(input.problem.is_none(), "a deploy started with a broken Runbook");
            }
            Decision::RollBack {
                to, failed_revision, ..
            } => {
                assert_eq!(Some(to), status.last_healthy_revision.as_ref(), "rollback target");
                assert!(status.last_healthy_snapshot.is_some());
                let irreversible = migration_of(status, failed_revision).is_some_and(|job| job.irreversible);
                assert!(
                    !(irreversible && input.plan.migration_rollback == MigrationRollbackPolicy::Hold),
                    "{failed_revision} ran an irreversible migration and was flipped back under Hold"
                );
            }
            Decision::Run(_) | Decision::RecheckBlock { .. } => {
                assert!(!input.suspended, "a step ran while suspended");
                assert!(input.problem.is_none(), "a step ran with a broken Runbook");
            }
            _ => {}
        }
        if let Some(operation) = &status.operation {
            if matches!(operation.step, Step::Backup | Step::Migrate | Step::Downgrade) && reported.is_none()
            {
                assert!(
                    !matches!(decision, Decision::StartDeploy { .. }),
                    "a running {} Job was abandoned for {decision:?}",
                    operation.step
                );
            }
            if operation.step == Step::Migrate && matches!(decision, Decision::Run(Step::Migrate)) {
                assert!(
                    migration_of(status, &operation.revision).is_none(),
                    "the migration of {} ran again after it succeeded",
                    operation.revision
                );
            }
        }
        if let Decision::RecheckBlock { revision } = decision {
            assert!(
                status
                    .blocked
                    .as_ref()
                    .is_some_and(|b| &b.revision == revision && b.retry),
                "a re-check of {revision} without a block that may pass"
            );
        }
        // A failed Job goes on only when it is a backup the Runbook does not require.
        if let Some(StepOutcome::Done(StepResult::JobFinished(job))) = reported
            && !job.succeeded
        {
            let goes_on = matches!(decision, Decision::Advance(..));
            let optional = job.kind == JobKind::Backup && input.plan.backup_optional;
            assert_eq!(goes_on, optional, "failed {:?} Job led to {decision:?}", job.kind);
        }
        // Drift is repaired only at rest, on the healthy revision, once per interval.
        if let Decision::Resync { revision, snapshot } = decision {
            assert!(
                status.operation.is_none() && !input.suspended,
                "{decision:?} while busy"
            );
            assert_eq!(Some(revision), status.last_healthy_revision.as_ref());
            assert_eq!(Some(revision), status.current_revision.as_ref());
            assert_eq!(Some(snapshot), status.current_snapshot.as_ref());
            assert!(
                input
                    .last_resync
                    .is_none_or(|last| input.now.duration_since(last).unsigned_abs() >= input.interval),
                "a drift repair within the interval"
            );
        }
        // A block is re-checked only when its time came (or a Secret changed for a
        // preflight miss), never in the same pass twice as a new block.
        if let Decision::RecheckBlock { .. } = decision {
            let block = status.blocked.as_ref().expect("checked above");
            assert!(block_check_due(input, block), "a re-check not due");
        }
        // A rotation rolls out exactly the data the Secrets hold now, and only when the
        // Runbook asks for it.
        if let Decision::StartRotation { secrets } = decision {
            assert!(input.rollout_on_secret_change);
            for (key, digest) in secrets {
                assert_eq!(input.secret_data.get(key), Some(digest));
                assert_ne!(
                    status.rejected_secret_digests.get(key),
                    Some(digest),
                    "refused data again"
                );
            }
        }
        // A transient error is never a verdict.
        if matches!(reported, Some(StepOutcome::Transient(_))) {
            assert!(
                matches!(decision, Decision::Retry { .. } | Decision::GiveUp { .. }),
                "transient error led to {decision:?}"
            );
        }
    }

    fn check_recorded(&self, before: &AppDeploymentStatus, decision: &Decision) {
        let after = &self.status;
        // Only a failed verification or apply quarantines, and only one revision.
        let newly_quarantined: Vec<&str> = after
            .quarantined
            .iter()
            .filter(|q| {
                !before
                    .quarantined
                    .iter()
                    .any(|b| b.revision == q.revision && b.at == q.at)
            })
            .map(|q| q.revision.as_str())
            .collect();
        if !newly_quarantined.is_empty() {
            assert!(
                matches!(decision, Decision::RollBack { .. } | Decision::Fail { .. }),
                "{decision:?} quarantined {newly_quarantined:?}"
            );
        }
        // The rollback target is never the one quarantined by its own failure.
        if let Some(operation) = &after.operation
            && operation.kind == OperationKind::Rollback
        {
            assert_eq!(Some(&operation.revision), after.last_healthy_revision.as_ref());
            assert_eq!(operation.snapshot, after.last_healthy_snapshot, "rollback source");
        }
        // The step and phase an Advance names are what the status says after it.
        if let (Decision::Advance(result, next), Some(operation)) = (decision, &after.operation) {
            assert_eq!(operation.step, next.step, "{decision:?}");
            if !matches!(result, StepResult::Applied(_)) {
                assert_eq!(after.phase, next.phase, "{decision:?}");
            }
        }
        // History stays bounded; one open entry per revision at most.
        assert!(after.history.len() <= 10);
        for revision in REVISIONS {
            let open = after
                .history
                .iter()
                .filter(|e| e.revision == revision && e.finished_at.is_none())
                .count();
            assert!(
                open <= 1,
                "{open} open history entries for {revision}: {:#?}",
                after.history
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_path_ends_and_the_invariants_hold(
        worlds in prop::collection::vec(world(), 1..12),
        reports in prop::collection::vec(report(), 0..60),
        settle_on in 0..3usize,
    ) {
        let mut model = Model::new();
        let mut reports = reports.into_iter();
        for world in &worlds {
            model.pass(world, &mut reports);
        }
        // The world goes quiet and every step succeeds: within a few passes the app is
        // at rest (no operation), whatever happened before.
        let quiet = World {
            desired: Some((settle_on, false)),
            generation_bump: false,
            spec_change: false,
            suspended: false,
            automatic_rollback: true,
            runbook_broken: false,
            minutes_later: 1,
            config_change: false,
            plan: StepPlan::default(),
            secret_change: None,
        };
        let mut succeed = std::iter::repeat(Report::Verdict(Verdict::Passed));
        for _ in 0..6 {
            model.pass(&quiet, &mut succeed);
        }
        prop_assert!(model.status.operation.is_none(), "still in an operation: {:#?}", model.status);
        // Decided again at once (no time for a drift repair to fall due): nothing more.
        let again = World { minutes_later: 0, ..quiet };
        let last = model.pass(&again, &mut succeed);
        prop_assert_eq!(last, vec![Decision::Wait]);
    }
}

proptest! {
    #[test]
    fn a_rollback_never_waits_a_verify_window(seconds in 0..100_000u64) {
        let window = Duration::from_secs(seconds);
        prop_assert_eq!(verify_window(OperationKind::Rollback, window), Duration::ZERO);
        prop_assert_eq!(verify_window(OperationKind::Deploy, window), window);
    }
}
