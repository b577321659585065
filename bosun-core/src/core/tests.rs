use super::*;
use crate::api::{HistoryEntry, Operation, Quarantine};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
const DIGEST: &str = "d1";

fn healthy_on(revision: &str) -> AppDeploymentStatus {
    AppDeploymentStatus {
        phase: Phase::Healthy,
        observed_generation: Some(1),
        current_revision: Some(revision.into()),
        current_spec_digest: Some(DIGEST.into()),
        last_healthy_revision: Some(revision.into()),
        ..Default::default()
    }
}

fn operation(kind: OperationKind, revision: &str, applied: bool) -> Option<Operation> {
    Some(Operation {
        kind,
        revision: revision.into(),
        failed_revision: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        applied_at: applied.then(|| "2026-01-01T00:00:05Z".into()),
    })
}

fn git(revision: &str) -> DesiredRevision {
    DesiredRevision::Known {
        revision: revision.into(),
        pinned: false,
    }
}

fn input<'a>(
    status: &'a AppDeploymentStatus,
    desired: DesiredRevision,
    verification: Verification,
) -> Input<'a> {
    Input {
        status,
        generation: Some(1),
        suspended: false,
        automatic_rollback: true,
        desired,
        verification,
        spec_problem: None,
        spec_digest: DIGEST,
    }
}

fn failed(message: &str) -> Verification {
    Verification::Failed {
        message: message.into(),
    }
}

#[test]
fn first_revision_is_deployed() {
    let status = AppDeploymentStatus::default();
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Deploy { revision: A.into() }
    );
}

#[test]
fn nothing_happens_while_the_source_is_unavailable() {
    let status = AppDeploymentStatus::default();
    assert_eq!(
        decide(&input(
            &status,
            DesiredRevision::Unavailable,
            Verification::NotRun
        )),
        Decision::Idle
    );
}

#[test]
fn healthy_app_on_the_git_tip_stays_idle() {
    let status = healthy_on(A);
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Idle
    );
}

#[test]
fn new_commit_on_a_healthy_app_is_deployed() {
    let status = healthy_on(A);
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::Deploy { revision: B.into() }
    );
}

#[test]
fn deploy_interrupted_before_apply_finished_is_resumed() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, false),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::Deploy { revision: B.into() }
    );
}

#[test]
fn applied_revision_keeps_verifying_while_pending() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(B), Verification::Pending)),
        Decision::KeepVerifying
    );
}

#[test]
fn applied_revision_that_passed_becomes_healthy() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(B), Verification::Passed)),
        Decision::MarkHealthy { revision: B.into() }
    );
}

#[test]
fn failed_gate_rolls_back_to_the_last_healthy_revision() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(B), failed("gate health failed"))),
        Decision::RollBack {
            failed_revision: B.into(),
            to: A.into(),
            message: "gate health failed".into()
        }
    );
}

#[test]
fn failed_first_revision_fails_with_nothing_to_flip_to() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, A, true),
        ..Default::default()
    };
    match decide(&input(&status, git(A), failed("CrashLoopBackOff"))) {
        Decision::Fail { revision, message } => {
            assert_eq!(revision, A);
            assert!(message.contains("no healthy revision"), "{message}");
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

#[test]
fn failed_gate_without_automatic_rollback_fails() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    let mut input = input(&status, git(B), failed("gate health failed"));
    input.automatic_rollback = false;
    match decide(&input) {
        Decision::Fail { revision, message } => {
            assert_eq!(revision, B);
            assert!(message.contains("automatic rollback is off"), "{message}");
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

#[test]
fn newer_commit_supersedes_a_revision_still_verifying() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(C), Verification::Pending)),
        Decision::Deploy { revision: C.into() }
    );
}

#[test]
fn rollback_interrupted_before_apply_is_resumed() {
    let status = AppDeploymentStatus {
        phase: Phase::RollingBack,
        operation: operation(OperationKind::Rollback, A, false),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::ResumeRollback { to: A.into() }
    );
}

#[test]
fn rollback_is_not_superseded_by_the_quarantined_tip() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RollingBack,
        operation: operation(OperationKind::Rollback, A, true),
        ..healthy_on(A)
    };
    status.quarantined.push(Quarantine {
        revision: B.into(),
        reason: "x".into(),
        at: "t".into(),
        generation: Some(1),
    });
    assert_eq!(
        decide(&input(&status, git(B), Verification::Pending)),
        Decision::KeepVerifying
    );
    assert_eq!(
        decide(&input(&status, git(B), Verification::Passed)),
        Decision::FinishRollback { to: A.into() }
    );
}

#[test]
fn rollback_whose_target_fails_ends_failed() {
    let status = AppDeploymentStatus {
        phase: Phase::RollingBack,
        operation: operation(OperationKind::Rollback, A, true),
        ..healthy_on(A)
    };
    match decide(&input(&status, git(B), failed("still crashing"))) {
        Decision::Fail { revision, message } => {
            assert_eq!(revision, A);
            assert!(message.contains("rollback target failed"), "{message}");
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

#[test]
fn quarantined_tip_is_not_applied_again() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    status.quarantined.push(Quarantine {
        revision: B.into(),
        reason: "gate".into(),
        at: "t".into(),
        generation: Some(1),
    });
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::Idle
    );
}

#[test]
fn new_commit_after_a_rollback_proceeds() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    status.quarantined.push(Quarantine {
        revision: B.into(),
        reason: "gate".into(),
        at: "t".into(),
        generation: Some(1),
    });
    assert_eq!(
        decide(&input(&status, git(C), Verification::NotRun)),
        Decision::Deploy { revision: C.into() }
    );
}

fn quarantined(status: &mut AppDeploymentStatus, revision: &str, generation: i64) {
    status.quarantined.push(Quarantine {
        revision: revision.into(),
        reason: "gate".into(),
        at: "t".into(),
        generation: Some(generation),
    });
}

#[test]
fn pin_set_after_the_quarantine_overrides_it() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    quarantined(&mut status, B, 1);
    let pinned = DesiredRevision::Known {
        revision: B.into(),
        pinned: true,
    };
    let mut pin_added = input(&status, pinned, Verification::NotRun);
    pin_added.generation = Some(2);
    assert_eq!(decide(&pin_added), Decision::Deploy { revision: B.into() });
}

#[test]
fn pinned_revision_that_failed_again_is_not_retried_in_a_loop() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    // Quarantined again at the generation that carries the pin.
    quarantined(&mut status, B, 2);
    let pinned = DesiredRevision::Known {
        revision: B.into(),
        pinned: true,
    };
    let mut same_pin = input(&status, pinned, Verification::NotRun);
    same_pin.generation = Some(2);
    assert_eq!(decide(&same_pin), Decision::Idle);
}

#[test]
fn changed_path_redeploys_the_same_commit() {
    let status = healthy_on(A);
    let mut changed = input(&status, git(A), Verification::NotRun);
    changed.spec_digest = "d2";
    changed.generation = Some(2);
    assert_eq!(decide(&changed), Decision::Deploy { revision: A.into() });
}

#[test]
fn changed_path_may_retry_a_quarantined_tip_once() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    quarantined(&mut status, B, 1);
    let mut changed = input(&status, git(B), Verification::NotRun);
    changed.spec_digest = "d2";
    changed.generation = Some(2);
    assert_eq!(decide(&changed), Decision::Deploy { revision: B.into() });
    // Unrelated spec changes (a later generation, same digest) do not.
    let mut unrelated = input(&status, git(B), Verification::NotRun);
    unrelated.generation = Some(2);
    assert_eq!(decide(&unrelated), Decision::Idle);
}

#[test]
fn quarantined_running_revision_is_not_adopted_as_healthy() {
    let mut status = AppDeploymentStatus {
        phase: Phase::Failed,
        ..healthy_on(A)
    };
    quarantined(&mut status, A, 1);
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Idle
    );
}

#[test]
fn unsuspending_restores_the_phase_that_says_what_runs() {
    let suspended_on = |status: AppDeploymentStatus| AppDeploymentStatus {
        phase: Phase::Suspended,
        ..status
    };
    let status = suspended_on(healthy_on(A));
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        // Running its healthy tip: recorded as Healthy again.
        Decision::Adopt { revision: A.into() }
    );
    let mut rolled_back = suspended_on(healthy_on(A));
    quarantined(&mut rolled_back, B, 1);
    assert_eq!(
        decide(&input(&rolled_back, git(B), Verification::NotRun)),
        Decision::Resume {
            phase: Phase::RolledBack
        }
    );
    let mut failed = suspended_on(AppDeploymentStatus {
        current_revision: Some(A.into()),
        ..Default::default()
    });
    quarantined(&mut failed, A, 1);
    assert_eq!(
        decide(&input(&failed, git(A), Verification::NotRun)),
        Decision::Resume { phase: Phase::Failed }
    );
    // A new commit after unsuspending is simply deployed.
    assert_eq!(
        decide(&input(&rolled_back, git(C), Verification::NotRun)),
        Decision::Deploy { revision: C.into() }
    );
}

#[test]
fn new_commit_does_not_interrupt_a_rollback() {
    let status = AppDeploymentStatus {
        phase: Phase::RollingBack,
        operation: operation(OperationKind::Rollback, A, true),
        ..healthy_on(A)
    };
    assert_eq!(
        decide(&input(&status, git(C), Verification::Pending)),
        Decision::KeepVerifying
    );
}

#[test]
fn git_reverted_to_the_running_healthy_revision_is_adopted() {
    let mut status = AppDeploymentStatus {
        phase: Phase::RolledBack,
        ..healthy_on(A)
    };
    status.quarantined.push(Quarantine {
        revision: B.into(),
        reason: "gate".into(),
        at: "t".into(),
        generation: Some(1),
    });
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Adopt { revision: A.into() }
    );
}

#[test]
fn failed_first_revision_stays_failed_until_a_new_commit() {
    let mut status = AppDeploymentStatus {
        phase: Phase::Failed,
        ..Default::default()
    };
    status.quarantined.push(Quarantine {
        revision: A.into(),
        reason: "crash".into(),
        at: "t".into(),
        generation: Some(1),
    });
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Idle
    );
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::Deploy { revision: B.into() }
    );
}

#[test]
fn blocked_revision_waits_for_a_new_commit_or_spec_change() {
    let mut status = AppDeploymentStatus {
        phase: Phase::Blocked,
        observed_generation: Some(1),
        ..Default::default()
    };
    status.history.push(HistoryEntry {
        revision: A.into(),
        phase: Phase::Blocked,
        started_at: "t".into(),
        ..Default::default()
    });
    assert_eq!(
        decide(&input(&status, git(A), Verification::NotRun)),
        Decision::Idle
    );
    assert_eq!(
        decide(&input(&status, git(B), Verification::NotRun)),
        Decision::Deploy { revision: B.into() }
    );
    let mut changed_spec = input(&status, git(A), Verification::NotRun);
    changed_spec.generation = Some(2);
    assert_eq!(decide(&changed_spec), Decision::Deploy { revision: A.into() });
}

#[test]
fn suspended_app_records_the_phase_once() {
    let status = healthy_on(A);
    let mut suspended = input(&status, git(B), Verification::NotRun);
    suspended.suspended = true;
    assert_eq!(decide(&suspended), Decision::Suspend);
    let status = AppDeploymentStatus {
        phase: Phase::Suspended,
        ..healthy_on(A)
    };
    let mut again = input(&status, git(B), Verification::NotRun);
    again.suspended = true;
    assert_eq!(decide(&again), Decision::Idle);
}

#[test]
fn suspension_lets_an_applied_revision_finish_verifying() {
    let status = AppDeploymentStatus {
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    let mut suspended = input(&status, git(C), Verification::Pending);
    suspended.suspended = true;
    assert_eq!(decide(&suspended), Decision::KeepVerifying);
}

#[test]
fn unusable_spec_blocks() {
    let status = AppDeploymentStatus::default();
    let mut bad = input(&status, DesiredRevision::Unavailable, Verification::NotRun);
    bad.spec_problem = Some("Runbook shop/missing not found".into());
    assert_eq!(
        decide(&bad),
        Decision::BlockOnSpec {
            message: "Runbook shop/missing not found".into()
        }
    );
}

#[test]
fn blocked_newer_commit_does_not_interrupt_a_revision_being_verified() {
    let mut status = AppDeploymentStatus {
        phase: Phase::Verifying,
        operation: operation(OperationKind::Deploy, B, true),
        ..healthy_on(A)
    };
    status.history.push(HistoryEntry {
        revision: C.into(),
        phase: Phase::Blocked,
        started_at: "t".into(),
        ..Default::default()
    });
    assert_eq!(
        decide(&input(&status, git(C), Verification::Pending)),
        Decision::KeepVerifying
    );
    assert_eq!(
        decide(&input(&status, git(C), Verification::Passed)),
        Decision::MarkHealthy { revision: B.into() }
    );
}
