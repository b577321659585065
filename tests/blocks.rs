//! A block is identified by what it is, and status writes are coalesced, counted from the
//! API server's own audit log:
//!
//! - a commit that edits a Job's template (immutable on 1.20, refused with a Go dump
//!   whose pointer addresses change on every request) is Blocked once: at rest, the
//!   re-checks write no status and publish no Event, and the history keeps the healthy
//!   revision's entry beside the blocked one's single entry;
//! - a Deploy that goes Healthy writes the status at most 3 times, a rollback at most
//!   4 (the bad revision from its Applying to RolledBack), each transition still
//!   announced by its Event.

mod support;

use std::time::{Duration, Instant};

use bosun::api::{BlockReason, MESSAGE_BUDGET_BYTES, Phase};
use bosun_devenv::example::ExampleRevision;
use bosun_devenv::{AuditedWrite, ControlPlaneOptions, WorkRepo};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use support::{Harness, status};

const APP: &str = "litevault";
/// The apps' Git interval: the blocked revision is checked again this often.
const INTERVAL: &str = "3s";
/// How long the blocked app is watched at rest: several intervals.
const AT_REST: Duration = Duration::from_secs(24);

/// A Job of the app: its pod template is immutable once created.
fn job(image: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: seed\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 30\n      containers:\n      - name: seed\n        image: {image}\n        command: [\"/seed\", \"--once\"]\n"
    )
}

fn commit_with_job(repo: &WorkRepo, version: &str, job_image: &str) -> String {
    let revision = ExampleRevision::good(version);
    for (path, contents) in revision.files() {
        repo.write(&path, &contents).unwrap();
    }
    repo.write("deploy/job.yaml", &job(job_image)).unwrap();
    repo.commit(&format!("v{version}")).unwrap()
}

/// The controller's status writes of the app in `namespace`.
fn status_writes(writes: &[AuditedWrite], namespace: &str) -> usize {
    writes
        .iter()
        .filter(|w| {
            w.resource == "appdeployments"
                && w.subresource.as_deref() == Some("status")
                && w.namespace.as_deref() == Some(namespace)
        })
        .count()
}

/// bosun's Events about the app in `namespace`: (reason, note, times published).
async fn app_events(harness: &Harness, namespace: &str) -> Vec<(String, String, i32)> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), namespace);
    let mut list: Vec<(String, String, i32)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
                e.series.as_ref().map_or(1, |s| s.count),
            )
        })
        .collect();
    list.sort();
    list
}

fn published(events: &[(String, String, i32)], reason: &str) -> i32 {
    events.iter().filter(|e| e.0 == reason).map(|e| e.2).sum()
}

#[tokio::test]
async fn an_immutable_job_template_edit_is_blocked_once_and_rests_without_writes() {
    let mut harness = Harness::start_with(ControlPlaneOptions {
        audit_controller_reads: true,
        ..Default::default()
    })
    .await;
    let ns = "blocked-job";
    let repo = harness.repo(ns);
    let v1 = commit_with_job(&repo, "1.0", "example/seed:1");
    harness.quick_app(ns, APP, repo.name(), INTERVAL).await;
    harness.start_controller();
    harness.wait_for_phase(ns, APP, Phase::Healthy, &v1).await;

    let v2 = commit_with_job(&repo, "2.0", "example/seed:2");
    let app = harness
        .wait_for(ns, APP, "v2 blocked", Duration::from_secs(90), |app| {
            app.status
                .as_ref()
                .and_then(|s| s.blocked.as_ref())
                .is_some_and(|b| b.revision == v2)
        })
        .await;
    let block = status(&app).blocked.clone().unwrap();
    assert_eq!(block.reason, BlockReason::RevisionInvalid, "{block:?}");
    assert!(block.message.contains("field is immutable"), "{}", block.message);
    assert!(
        block.message.len() <= MESSAGE_BUDGET_BYTES,
        "{} bytes",
        block.message.len()
    );
    // A bounded wait for the pass that recorded the block to finish its write.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let writes_before = status_writes(&harness.controller_writes().await, ns);
    let events_before = app_events(&harness, ns).await;
    let dry_runs_before = dry_runs(&harness, ns).await;
    let started = Instant::now();
    tokio::time::sleep(AT_REST).await;
    let rested = started.elapsed();
    let writes_at_rest = status_writes(&harness.controller_writes().await, ns) - writes_before;
    let events_after = app_events(&harness, ns).await;
    let dry_runs_at_rest = dry_runs(&harness, ns).await - dry_runs_before;
    println!(
        "at rest for {:.1}s (interval {INTERVAL}): {writes_at_rest} status writes, {dry_runs_at_rest} dry runs (re-checks of the blocked revision)",
        rested.as_secs_f64()
    );
    let log = harness.controller_log_text();
    let rechecks = log.matches("blocked revision checked again").count();
    assert!(rechecks >= 2, "the blocked revision was not checked again\n{log}");
    assert_eq!(
        writes_at_rest,
        0,
        "status written while the same block stood\n{}",
        harness.controller_log()
    );
    assert_eq!(
        published(&events_after, "Blocked"),
        1,
        "Blocked published more than once: {events_after:#?}"
    );
    assert_eq!(events_after, events_before, "Events at rest");
    assert!(
        !log.contains("without coming to rest"),
        "a pass did not come to rest\n{log}"
    );

    let app = harness.app(ns, APP).await;
    let s = status(&app);
    let entries = |revision: &str| s.history.iter().filter(|e| e.revision == revision).count();
    assert_eq!(entries(&v2), 1, "history: {:#?}", s.history);
    assert!(
        s.history
            .iter()
            .any(|e| e.revision == v1 && e.phase == Phase::Healthy),
        "the healthy entry is gone: {:#?}",
        s.history
    );
    assert_eq!(s.current_revision.as_deref(), Some(v1.as_str()), "v1 runs on");
    assert_eq!(s.phase, Phase::Blocked);
}

/// Dry-run requests of the controller in `namespace` (the re-checks' work).
async fn dry_runs(harness: &Harness, namespace: &str) -> usize {
    harness
        .control_plane
        .controller_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.dry_run && r.namespace.as_deref() == Some(namespace))
        .count()
}

#[tokio::test]
async fn a_healthy_deploy_writes_the_status_at_most_3_times_and_a_rollback_at_most_4() {
    let mut harness = Harness::start().await;
    let ns = "coalesced";
    let repo = harness.repo(ns);
    let v1 = ExampleRevision::good("1.0").commit_to(&repo, "v1").unwrap();
    harness.quick_app(ns, APP, repo.name(), "2s").await;
    harness.start_controller();
    harness.wait_for_phase(ns, APP, Phase::Healthy, &v1).await;
    // At rest: what the first deploy wrote is behind us.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = status_writes(&harness.controller_writes().await, ns);
    let events_before = app_events(&harness, ns).await;
    let v2 = ExampleRevision::good("2.0").commit_to(&repo, "v2").unwrap();
    harness.wait_for_phase(ns, APP, Phase::Healthy, &v2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy_writes = status_writes(&harness.controller_writes().await, ns) - before;
    let events = app_events(&harness, ns).await;
    let new_events: Vec<_> = events.iter().filter(|e| !events_before.contains(e)).collect();
    println!("a Deploy that went Healthy: {healthy_writes} status writes, Events {new_events:?}");
    for reason in ["Applying", "Verifying", "Healthy"] {
        assert!(
            new_events.iter().any(|e| e.0 == reason && e.1.contains(&v2[..7])),
            "no {reason} Event for v2: {new_events:#?}"
        );
    }
    assert!(
        healthy_writes <= 3,
        "{healthy_writes} status writes for a Deploy that went Healthy\n{}",
        harness.controller_log()
    );

    let before = status_writes(&harness.controller_writes().await, ns);
    let events_before = app_events(&harness, ns).await;
    let v3 = ExampleRevision::crash_looping("3.0")
        .commit_to(&repo, "v3 crashes")
        .unwrap();
    harness
        .wait_for(ns, APP, "v3 rolled back", Duration::from_secs(120), |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::RolledBack && s.quarantined.iter().any(|q| q.revision == v3)
            })
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rollback_writes = status_writes(&harness.controller_writes().await, ns) - before;
    let events = app_events(&harness, ns).await;
    let new_events: Vec<_> = events.iter().filter(|e| !events_before.contains(e)).collect();
    println!("a Deploy rolled back: {rollback_writes} status writes, Events {new_events:?}");
    for reason in [
        "Applying",
        "Verifying",
        "RollingBack",
        "RollbackApplied",
        "RolledBack",
    ] {
        assert!(
            new_events.iter().any(|e| e.0 == reason),
            "no {reason} Event: {new_events:#?}"
        );
    }
    assert!(
        rollback_writes <= 4,
        "{rollback_writes} status writes for a rollback\n{}",
        harness.controller_log()
    );
}
