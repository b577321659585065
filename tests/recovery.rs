//! Crash recovery at every step boundary (README, "The life of a revision": the controller may be killed at any
//! instant and, restarted, finishes the revision with no duplicate apply, no lost
//! history and no second rollback).
//!
//! The controller's fault switch (`BOSUN_FAULT_ABORT_AFTER`, src/controller/fault.rs; in
//! the binary only with the `fault-injection` feature, which these tests require)
//! aborts it right after a named boundary was persisted and its Events published, so
//! each test aims at exactly one moment instead of racing a poll. For every boundary of
//! a Deploy and of a Rollback, one app (in a namespace named after the boundary) is
//! taken to that boundary by an armed controller, which aborts; a controller without
//! the switch then finishes the revision. What is counted:
//!
//! - writes per object, from the API server's audit log: an object written before the
//!   abort is not written again after it (each object of the revision once in all);
//! - history: exactly one entry per revision, with its final phase and `finishedAt`;
//! - rollbacks: one quarantine entry, one RollingBack and one RolledBack;
//! - transition Events (events.k8s.io/v1): each reason once per revision, none
//!   repeated as a series;
//! - snapshot Secrets: only what can still be returned to is kept.
//!
//! One control plane serves all boundaries of an operation; the controller is
//! restarted between them and each switch is scoped to one app (`ns/name@boundary`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, AppDeploymentStatus, OperationKind, Phase, Step, short_revision};
use bosun_devenv::example::{ExampleRevision, workload_only_runbook_yaml};
use bosun_devenv::{AuditedWrite, WorkRepo};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use support::{Harness, status};

const APP: &str = "litevault";
const RUNBOOK: &str = "quick";
/// SIGABRT, what `std::process::abort` ends the process with.
const SIGABRT: i32 = 6;
/// How long an armed controller may take to reach its boundary (a bad revision must be
/// deployed and fail verification first).
const ABORT_WITHIN: Duration = Duration::from_secs(120);
/// Two resyncs of the apps' 2 s interval, the second one from warm watch caches.
const RESYNCS: Duration = Duration::from_secs(5);

const DEPLOY_STEPS: [&str; 7] = [
    "start",
    "render",
    "snapshot",
    "preflight",
    "inventory",
    "apply",
    "verify",
];
const ROLLBACK_STEPS: [&str; 4] = ["start", "inventory", "apply", "verify"];

/// The example app's objects (`resource/name`, as the audit log names them).
const BACKEND: &str = "deployments/backend";
const WORKER: &str = "deployments/worker";
const SERVICE: &str = "services/backend";
const CONFIG: &str = "configmaps/litevault-config";
const APP_OBJECTS: [&str; 4] = [BACKEND, WORKER, SERVICE, CONFIG];
/// What a revision of the example app changes from another: the Service stays as it is.
const CHANGED_OBJECTS: [&str; 3] = [BACKEND, WORKER, CONFIG];

/// One boundary under test and the app that is taken to it.
struct Case {
    /// `deploy/apply`, `rollback/start`, ...
    boundary: String,
    /// The app's namespace, named after the boundary (`deploy-apply`).
    namespace: String,
}

impl Case {
    fn new(operation: &str, step: &str) -> Self {
        Self {
            boundary: format!("{operation}/{step}"),
            namespace: format!("{operation}-{step}"),
        }
    }

    /// The fault switch's value: this boundary, this app only.
    fn switch(&self) -> String {
        format!("{}/{APP}@{}", self.namespace, self.boundary)
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.boundary)
    }
}

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

/// A namespace with a workload-only Runbook (1 s window) and the app following `repo`.
async fn set_up_app(harness: &Harness, case: &Case, repo: &WorkRepo) {
    harness.namespace(&case.namespace).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(&case.namespace, RUNBOOK))
        .await;
    harness
        .apply_example_app(&case.namespace, APP, repo.name(), Some(RUNBOOK), "2s")
        .await;
}

/// Runs a controller armed for `case`'s boundary until it aborts; returns the app as
/// the abort left it. Fails unless the process died of the switch, at that boundary.
async fn abort_at(harness: &mut Harness, case: &Case) -> AppDeployment {
    harness.start_controller_with(&[], &[(bosun::controller::fault::ENV, &case.switch())]);
    let exit = harness.wait_for_controller_exit(ABORT_WITHIN).await;
    let log = harness.controller_log();
    assert_eq!(
        exit.signal(),
        Some(SIGABRT),
        "{case} the armed controller did not abort: {exit:?}\n{log}"
    );
    let announced = format!("aborting after {} of {}/{APP}", case.boundary, case.namespace);
    assert!(
        log.contains(&announced),
        "{case} the abort was not the switch's (no \"{announced}\")\n{log}"
    );
    harness.app(&case.namespace, APP).await
}

/// Writes of objects in `namespace` (applies and snapshots; not the AppDeployment's
/// own status or finalizer, not Events), as `resource/name` → how many.
fn object_writes<'a>(
    writes: impl IntoIterator<Item = &'a AuditedWrite>,
    namespace: &str,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for write in writes {
        let applies = matches!(write.verb.as_str(), "create" | "update" | "patch");
        let own = matches!(write.resource.as_str(), "appdeployments" | "events");
        if !applies || own || write.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let subresource = write
            .subresource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let name = write.name.as_deref().unwrap_or("?");
        *counts
            .entry(format!("{}{subresource}/{name}", write.resource))
            .or_insert(0) += 1;
    }
    counts
}

/// The audit ids of every controller write so far.
async fn audit_ids(harness: &Harness) -> BTreeSet<String> {
    harness
        .controller_writes()
        .await
        .into_iter()
        .map(|w| w.audit_id)
        .collect()
}

/// Object writes in `case`'s namespace of the requests whose audit id `select` picks.
async fn writes_where(
    harness: &Harness,
    case: &Case,
    select: impl Fn(&str) -> bool,
) -> BTreeMap<String, usize> {
    let all = harness.controller_writes().await;
    object_writes(all.iter().filter(|w| select(&w.audit_id)), &case.namespace)
}

/// Fails with every object write in `case`'s namespace (when, what, answer) and the
/// controller's log unless `actual` is `expected`.
async fn assert_writes(
    harness: &Harness,
    case: &Case,
    actual: &BTreeMap<String, usize>,
    expected: &BTreeMap<String, usize>,
    what: &str,
) {
    if actual == expected {
        return;
    }
    let writes = harness.controller_writes().await;
    let mut log = String::new();
    for write in &writes {
        if !object_writes([write], &case.namespace).is_empty() {
            log.push_str(&format!(
                "  {} {} {}/{} -> {:?}\n",
                write.received_at,
                write.verb,
                write.resource,
                write.name.as_deref().unwrap_or("?"),
                write.code
            ));
        }
    }
    panic!(
        "{case} {what}:\n  written:  {actual:?}\n  expected: {expected:?}\nobject writes in {}:\n{log}{}",
        case.namespace,
        harness.controller_log()
    );
}

fn counts(objects: &[&str], times: usize) -> BTreeMap<String, usize> {
    objects.iter().map(|o| (o.to_string(), times)).collect()
}

fn snapshot_key(name: &str) -> String {
    format!("secrets/{name}")
}

/// bosun's Events about the app in `case`'s namespace.
async fn app_events(harness: &Harness, case: &Case) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), &case.namespace);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .collect()
}

/// The transitions the app's Events announce: every Event published once (no note
/// twice, no series), and exactly the transitions `expected`, each (reason, revision)
/// one Event whose note names that revision.
async fn check_events(harness: &Harness, case: &Case, when: &str, expected: &[(&str, String)]) {
    let events = app_events(harness, case).await;
    let described: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {:?} (series {:?})",
                e.reason.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or(""),
                e.series.as_ref().map(|s| s.count)
            )
        })
        .collect();
    for event in &events {
        let count = event.series.as_ref().map_or(1, |s| s.count);
        assert!(
            count <= 1,
            "{case} {when}: an Event was published {count} times: {described:#?}"
        );
    }
    let notes: BTreeSet<(&str, &str)> = events
        .iter()
        .map(|e| (e.reason.as_deref().unwrap_or(""), e.note.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        notes.len(),
        events.len(),
        "{case} {when}: the same Event was published twice: {described:#?}"
    );
    // Each expected transition is one Event whose note names its revision.
    let mut unexplained: Vec<&Event> = events.iter().collect();
    for (reason, revision) in expected {
        let short = short_revision(revision);
        let found = unexplained.iter().position(|e| {
            e.reason.as_deref() == Some(*reason) && e.note.as_deref().unwrap_or("").contains(&short)
        });
        match found {
            Some(index) => {
                unexplained.remove(index);
            }
            None => panic!("{case} {when}: no {reason} Event naming {short}: {described:#?}"),
        }
    }
    assert!(
        unexplained.is_empty(),
        "{case} {when}: Events beyond the expected transitions {expected:?}: {described:#?}"
    );
}

/// The snapshot Secrets kept for the app in `case`'s namespace.
async fn snapshot_secrets(harness: &Harness, case: &Case) -> BTreeSet<String> {
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), &case.namespace);
    secrets
        .list(&ListParams::default().labels(bosun::api::APP_LABEL))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

async fn backend_image(harness: &Harness, case: &Case) -> String {
    harness.image_of(&case.namespace, "backend").await
}

/// After the last boundary of an operation the abort has left the final phase already:
/// the restarted controller is given two resyncs to pass over the app (and undo it, if it
/// were to) before the app is judged.
async fn settle_after_final_boundary(step: &str) {
    if step == "verify" {
        tokio::time::sleep(RESYNCS).await;
    }
}

fn describe(status: &AppDeploymentStatus) -> String {
    serde_json::to_string_pretty(status).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Deploy

/// What a Deploy of the first revision has persisted at `step`'s boundary.
fn check_deploy_at_abort(case: &Case, step: &str, status: &AppDeploymentStatus, revision: &str) {
    let context = describe(status);
    assert_eq!(status.history.len(), 1, "{case} history at abort: {context}");
    let entry = &status.history[0];
    assert_eq!(entry.revision, revision, "{case} {context}");
    if step == "verify" {
        // MarkHealthy is the last of the operation: nothing left in progress.
        assert!(status.operation.is_none(), "{case} {context}");
        assert_eq!(status.phase, Phase::Healthy, "{case} {context}");
        assert_eq!(
            status.last_healthy_revision.as_deref(),
            Some(revision),
            "{case} {context}"
        );
        assert_eq!(entry.phase, Phase::Healthy, "{case} {context}");
        assert!(entry.finished_at.is_some(), "{case} {context}");
        return;
    }
    let operation = status
        .operation
        .as_ref()
        .unwrap_or_else(|| panic!("{case} no operation: {context}"));
    assert_eq!(operation.kind, OperationKind::Deploy, "{case} {context}");
    assert_eq!(operation.revision, revision, "{case} {context}");
    assert!(entry.finished_at.is_none(), "{case} {context}");
    assert!(status.last_healthy_revision.is_none(), "{case} {context}");
    // The step recorded is the one after the boundary, not yet begun.
    let (next, rendered, snapshot, planned, applied) = match step {
        "start" => (Step::Render, false, false, false, false),
        "render" => (Step::Snapshot, true, false, false, false),
        "snapshot" => (Step::Preflight, true, true, false, false),
        "preflight" => (Step::Inventory, true, true, false, false),
        "inventory" => (Step::Apply, true, true, true, false),
        "apply" => (Step::Verify, true, true, true, true),
        other => unreachable!("deploy step {other}"),
    };
    assert_eq!(operation.step, next, "{case} operation.step: {context}");
    assert_eq!(
        operation.render_digest.is_some(),
        rendered,
        "{case} renderDigest: {context}"
    );
    assert_eq!(
        operation.snapshot.is_some(),
        snapshot,
        "{case} snapshot: {context}"
    );
    assert_eq!(
        status.inventory.len(),
        if planned { APP_OBJECTS.len() } else { 0 },
        "{case} inventory: {context}"
    );
    assert_eq!(
        operation.applied_at.is_some(),
        applied,
        "{case} appliedAt: {context}"
    );
    assert_eq!(
        status.current_revision.as_deref(),
        applied.then_some(revision),
        "{case} currentRevision: {context}"
    );
    let phase = if applied {
        Phase::Verifying
    } else {
        Phase::Applying
    };
    assert_eq!(status.phase, phase, "{case} {context}");
    assert_eq!(entry.phase, phase, "{case} {context}");
}

/// The Events a first Deploy has published by `step`'s boundary.
fn deploy_events_by(step: &str, revision: &str) -> Vec<(&'static str, String)> {
    let mut events = vec![("Applying", revision.to_string())];
    if matches!(step, "apply" | "verify") {
        events.push(("Verifying", revision.to_string()));
    }
    if step == "verify" {
        events.push(("Healthy", revision.to_string()));
    }
    events
}

/// The final word on a deployed app: one Healthy history entry, every object and the
/// snapshot written once in all.
async fn check_deployed_once(harness: &Harness, case: &Case, revision: &str, when: &str) {
    let app = harness.app(&case.namespace, APP).await;
    let s = status(&app);
    let context = describe(s);
    assert_eq!(s.phase, Phase::Healthy, "{case} {when}: {context}");
    assert!(s.operation.is_none(), "{case} {when}: {context}");
    assert_eq!(s.history.len(), 1, "{case} {when}: history: {context}");
    assert_eq!(s.history[0].revision, revision, "{case} {when}: {context}");
    assert_eq!(s.history[0].phase, Phase::Healthy, "{case} {when}: {context}");
    assert!(s.history[0].finished_at.is_some(), "{case} {when}: {context}");
    assert!(s.quarantined.is_empty(), "{case} {when}: {context}");
    let snapshot = s.last_healthy_snapshot.clone().expect("last healthy snapshot");
    assert_eq!(
        snapshot_secrets(harness, case).await,
        BTreeSet::from([snapshot.clone()]),
        "{case} {when}: snapshot Secrets"
    );
    let mut expected = counts(&APP_OBJECTS, 1);
    expected.insert(snapshot_key(&snapshot), 1);
    let all = object_writes(&harness.controller_writes().await, &case.namespace);
    assert_writes(
        harness,
        case,
        &all,
        &expected,
        &format!("{when}: writes per object (each exactly once)"),
    )
    .await;
    check_events(harness, case, when, &deploy_events_by("verify", revision)).await;
}

#[tokio::test]
async fn deploy_finishes_once_after_an_abort_at_each_step_boundary() {
    let started = Instant::now();
    let mut harness = Harness::start().await;
    let mut finished: Vec<(Case, String)> = Vec::new();
    for step in DEPLOY_STEPS {
        let case = Case::new("deploy", step);
        let case_started = Instant::now();
        let repo = harness.repo(&case.namespace);
        let revision = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
        set_up_app(&harness, &case, &repo).await;

        let app = abort_at(&mut harness, &case).await;
        let at_abort = status(&app);
        check_deploy_at_abort(&case, step, at_abort, &revision);
        check_events(
            &harness,
            &case,
            "at the abort",
            &deploy_events_by(step, &revision),
        )
        .await;
        // What the steps up to the boundary wrote, and nothing of the steps after it.
        let before = audit_ids(&harness).await;
        let written = writes_where(&harness, &case, |id| before.contains(id)).await;
        let snapshot = at_abort
            .operation
            .as_ref()
            .and_then(|op| op.snapshot.clone())
            .or_else(|| at_abort.last_healthy_snapshot.clone());
        let mut expected_before = BTreeMap::new();
        if let Some(snapshot) = &snapshot {
            expected_before.insert(snapshot_key(snapshot), 1);
        }
        if matches!(step, "apply" | "verify") {
            expected_before.extend(counts(&APP_OBJECTS, 1));
        }
        assert_writes(
            &harness,
            &case,
            &written,
            &expected_before,
            "writes before the abort",
        )
        .await;

        harness.start_controller();
        harness
            .wait_for_phase(&case.namespace, APP, Phase::Healthy, &revision)
            .await;
        settle_after_final_boundary(step).await;
        let after = writes_where(&harness, &case, |id| !before.contains(id)).await;
        for object in written.keys() {
            assert!(
                !after.contains_key(object),
                "{case} {object} was written before the abort and again after it: {after:?}"
            );
        }
        check_deployed_once(&harness, &case, &revision, "after the restart").await;
        harness.kill_controller();
        eprintln!("{case} done in {:?}", case_started.elapsed());
        finished.push((case, revision));
    }
    // The later restarts (and the resyncs they start with) wrote nothing more to the
    // apps finished before; the last one gets a resync interval of its own.
    harness.start_controller();
    tokio::time::sleep(RESYNCS).await;
    for (case, revision) in &finished {
        check_deployed_once(&harness, case, revision, "at the end").await;
    }
    eprintln!("deploy boundaries: {:?} in all", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Rollback

/// What a Rollback from `bad` to `good` has persisted at `step`'s boundary.
fn check_rollback_at_abort(case: &Case, step: &str, status: &AppDeploymentStatus, good: &str, bad: &str) {
    let context = describe(status);
    assert_eq!(status.quarantined.len(), 1, "{case} quarantine: {context}");
    assert_eq!(status.quarantined[0].revision, bad, "{case} {context}");
    assert_eq!(
        status.last_healthy_revision.as_deref(),
        Some(good),
        "{case} {context}"
    );
    assert_eq!(status.history.len(), 2, "{case} history: {context}");
    let (failed, healthy) = (&status.history[0], &status.history[1]);
    assert_eq!(failed.revision, bad, "{case} {context}");
    assert_eq!(healthy.revision, good, "{case} {context}");
    assert_eq!(healthy.phase, Phase::Healthy, "{case} {context}");
    if step == "verify" {
        assert!(status.operation.is_none(), "{case} {context}");
        assert_eq!(status.phase, Phase::RolledBack, "{case} {context}");
        assert_eq!(status.current_revision.as_deref(), Some(good), "{case} {context}");
        assert_eq!(failed.phase, Phase::RolledBack, "{case} {context}");
        assert!(failed.finished_at.is_some(), "{case} {context}");
        return;
    }
    let operation = status
        .operation
        .as_ref()
        .unwrap_or_else(|| panic!("{case} no operation: {context}"));
    assert_eq!(operation.kind, OperationKind::Rollback, "{case} {context}");
    assert_eq!(operation.revision, good, "{case} {context}");
    assert_eq!(
        operation.failed_revision.as_deref(),
        Some(bad),
        "{case} {context}"
    );
    assert_eq!(
        operation.snapshot, status.last_healthy_snapshot,
        "{case} the rollback applies the last healthy snapshot: {context}"
    );
    assert_eq!(status.phase, Phase::RollingBack, "{case} {context}");
    assert_eq!(failed.phase, Phase::RollingBack, "{case} {context}");
    assert!(failed.finished_at.is_none(), "{case} {context}");
    let (next, applied) = match step {
        "start" => (Step::Inventory, false),
        "inventory" => (Step::Apply, false),
        "apply" => (Step::Verify, true),
        other => unreachable!("rollback step {other}"),
    };
    assert_eq!(operation.step, next, "{case} operation.step: {context}");
    assert_eq!(
        operation.applied_at.is_some(),
        applied,
        "{case} appliedAt: {context}"
    );
    let running = if applied { good } else { bad };
    assert_eq!(
        status.current_revision.as_deref(),
        Some(running),
        "{case} currentRevision: {context}"
    );
}

/// The Events of the app's life by `step`'s boundary of the rollback: the good
/// revision's deploy, the bad one's, the rollback so far.
fn rollback_events_by(step: &str, good: &str, bad: &str) -> Vec<(&'static str, String)> {
    let mut events = deploy_events_by("verify", good);
    events.push(("Applying", bad.to_string()));
    events.push(("Verifying", bad.to_string()));
    events.push(("RollingBack", bad.to_string()));
    if matches!(step, "apply" | "verify") {
        events.push(("RollbackApplied", good.to_string()));
    }
    if step == "verify" {
        events.push(("RolledBack", bad.to_string()));
    }
    events
}

/// The final word on a rolled-back app: back on the good revision, the bad one
/// quarantined once, one history entry each, the rollback applied once.
async fn check_rolled_back_once(
    harness: &Harness,
    case: &Case,
    good: &str,
    bad: &str,
    good_snapshot: &str,
    bad_snapshot: &str,
    when: &str,
) {
    let app = harness.app(&case.namespace, APP).await;
    let s = status(&app);
    let context = describe(s);
    assert_eq!(s.phase, Phase::RolledBack, "{case} {when}: {context}");
    assert!(s.operation.is_none(), "{case} {when}: {context}");
    assert_eq!(
        s.current_revision.as_deref(),
        Some(good),
        "{case} {when}: {context}"
    );
    assert_eq!(
        s.desired_revision.as_deref(),
        Some(bad),
        "{case} {when}: {context}"
    );
    assert_eq!(s.quarantined.len(), 1, "{case} {when}: quarantine: {context}");
    assert_eq!(s.quarantined[0].revision, bad, "{case} {when}: {context}");
    assert_eq!(s.history.len(), 2, "{case} {when}: history: {context}");
    for (entry, revision, phase) in [
        (&s.history[0], bad, Phase::RolledBack),
        (&s.history[1], good, Phase::Healthy),
    ] {
        assert_eq!(entry.revision, revision, "{case} {when}: {context}");
        assert_eq!(entry.phase, phase, "{case} {when}: {context}");
        assert!(entry.finished_at.is_some(), "{case} {when}: {context}");
    }
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "RolledBack" && c.status == "True"),
        "{case} {when}: {context}"
    );
    assert_eq!(
        backend_image(harness, case).await,
        "example/litevault-backend:1.0",
        "{case} {when}"
    );
    assert!(
        s.quarantined[0].reason.contains("CrashLoopBackOff"),
        "{case} {when}: the bad revision failed for another reason: {context}"
    );
    // Only the rollback target's snapshot is kept.
    assert_eq!(
        snapshot_secrets(harness, case).await,
        BTreeSet::from([good_snapshot.to_string()]),
        "{case} {when}: snapshot Secrets"
    );
    // Good revision: everything once. Bad revision: its snapshot and what it changed.
    // Rollback: what the bad revision changed, once more.
    let mut expected = counts(&APP_OBJECTS, 1);
    expected.extend(counts(&CHANGED_OBJECTS, 3));
    expected.insert(snapshot_key(good_snapshot), 1);
    expected.insert(snapshot_key(bad_snapshot), 1);
    let all = object_writes(&harness.controller_writes().await, &case.namespace);
    assert_writes(
        harness,
        case,
        &all,
        &expected,
        &format!("{when}: writes per object (good deploy, bad deploy, one rollback)"),
    )
    .await;
    check_events(harness, case, when, &rollback_events_by("verify", good, bad)).await;
}

#[tokio::test]
async fn rollback_finishes_once_after_an_abort_at_each_step_boundary() {
    let started = Instant::now();
    let mut harness = Harness::start().await;
    let cases: Vec<Case> = ROLLBACK_STEPS
        .iter()
        .map(|step| Case::new("rollback", step))
        .collect();

    // Every app healthy on its good revision first, all at once.
    let mut apps = Vec::new();
    for case in &cases {
        let repo = harness.repo(&case.namespace);
        let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
        set_up_app(&harness, case, &repo).await;
        apps.push((repo, good));
    }
    harness.start_controller();
    let mut good_snapshots = Vec::new();
    for (case, (_, good)) in cases.iter().zip(&apps) {
        let app = harness
            .wait_for_phase(&case.namespace, APP, Phase::Healthy, good)
            .await;
        good_snapshots.push(status(&app).last_healthy_snapshot.clone().unwrap());
    }
    // The Healthy Event follows the status write that records it: let the last one go
    // out before the controller is killed (a kill in between loses it; it is never
    // published twice).
    for (case, (_, good)) in cases.iter().zip(&apps) {
        let short = short_revision(good);
        support::eventually(
            "the Healthy Event of the good revision",
            Duration::from_secs(30),
            || async {
                Ok(app_events(&harness, case)
                    .await
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("Healthy")
                            && e.note.as_deref().unwrap_or("").contains(&short)
                    })
                    .then_some(()))
            },
        )
        .await
        .unwrap();
    }
    harness.kill_controller();
    eprintln!("good revisions healthy after {:?}", started.elapsed());

    let mut finished = Vec::new();
    for ((case, (repo, good)), good_snapshot) in cases.iter().zip(&apps).zip(&good_snapshots) {
        let step = case.boundary.trim_start_matches("rollback/");
        let case_started = Instant::now();
        let baseline = audit_ids(&harness).await;
        let bad = commit(repo, &ExampleRevision::crash_looping("2.0"), "v2.0 crashes");

        let app = abort_at(&mut harness, case).await;
        let at_abort = status(&app);
        check_rollback_at_abort(case, step, at_abort, good, &bad);
        check_events(
            &harness,
            case,
            "at the abort",
            &rollback_events_by(step, good, &bad),
        )
        .await;
        // Named from the revision and the render digest (the spec did not change).
        let bad_snapshot = bosun::snapshot::secret_name(APP, &bad, &app.spec.render_digest());

        // Since the good revision: the bad one's snapshot and changes; the rollback's
        // writes only once its apply step has run.
        let before = audit_ids(&harness).await;
        let written = writes_where(&harness, case, |id| before.contains(id) && !baseline.contains(id)).await;
        let rollback_applied = matches!(step, "apply" | "verify");
        let mut expected_before = counts(&CHANGED_OBJECTS, if rollback_applied { 2 } else { 1 });
        expected_before.insert(snapshot_key(&bad_snapshot), 1);
        assert_writes(
            &harness,
            case,
            &written,
            &expected_before,
            "writes of the bad revision and the rollback before the abort",
        )
        .await;

        harness.start_controller();
        harness
            .wait_for_phase(&case.namespace, APP, Phase::RolledBack, good)
            .await;
        settle_after_final_boundary(step).await;
        let after = writes_where(&harness, case, |id| !before.contains(id)).await;
        // The last healthy manifests are applied once: by the aborted controller if it
        // got to the apply, else by the restarted one.
        let expected_after = if rollback_applied {
            BTreeMap::new()
        } else {
            counts(&CHANGED_OBJECTS, 1)
        };
        assert_writes(
            &harness,
            case,
            &after,
            &expected_after,
            "writes after the restart",
        )
        .await;
        check_rolled_back_once(
            &harness,
            case,
            good,
            &bad,
            good_snapshot,
            &bad_snapshot,
            "after the restart",
        )
        .await;
        harness.kill_controller();
        eprintln!("{case} done in {:?}", case_started.elapsed());
        finished.push((case, good.clone(), bad, good_snapshot.clone(), bad_snapshot));
    }
    // Later restarts did not flip anything again.
    harness.start_controller();
    tokio::time::sleep(RESYNCS).await;
    for (case, good, bad, good_snapshot, bad_snapshot) in &finished {
        check_rolled_back_once(
            &harness,
            case,
            good,
            bad,
            good_snapshot,
            bad_snapshot,
            "at the end",
        )
        .await;
    }
    eprintln!("rollback boundaries: {:?} in all", started.elapsed());
}
