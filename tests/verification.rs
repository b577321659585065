//! Gates judge the new revision, and only with a Runbook the controller can evaluate:
//! an invalid Runbook blocks the app and blames no revision; an edited Runbook restarts
//! verification with its new gates; pods with a history from before the apply do not
//! fail a revision that did not touch them; a changed path re-deploys the same commit
//! without touching the snapshot the app would roll back to.

mod support;

use std::time::Duration;

use bosun::api::{Phase, Verdict};
use bosun_devenv::example::{ExampleRevision, runbook_yaml};
use bosun_devenv::{HealthEndpoint, WorkRepo};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Harness, ready_condition, status};

const NS: &str = "shop";
const APP: &str = "litevault";
const WAIT: Duration = Duration::from_secs(120);

async fn backend_image(harness: &Harness) -> String {
    harness.image_of(NS, "backend").await
}

/// The namespace, the health endpoint, the example Runbook (`verify_window`) and the
/// AppDeployment on `repo` (interval 2s).
async fn set_up(harness: &Harness, repo: &WorkRepo, verify_window: &str) -> HealthEndpoint {
    harness.namespace(NS).await;
    let health = HealthEndpoint::start(harness.client.clone(), NS, "backend")
        .await
        .unwrap();
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health.url(), verify_window))
        .await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    health
}

#[tokio::test]
async fn an_invalid_runbook_blocks_the_app_and_blames_no_revision() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    let health = set_up(&harness, &repo, "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;

    // A window longer than the deadline: the CRD schema cannot compare two fields, the
    // controller can.
    let invalid = runbook_yaml(NS, APP, &health.url(), "20m").replace(
        "  verifyWindow: 20m\n",
        "  verifyWindow: 20m\n  progressDeadline: 10m\n",
    );
    harness.apply_runbook(&invalid).await;
    let second = ExampleRevision::good("1.1").commit_to(&repo, "v1.1").unwrap();
    let app = harness
        .wait_for_blocked_reason(NS, APP, "RunbookInvalid", WAIT)
        .await;
    let ready = ready_condition(&app);
    assert!(
        ready.message.contains("verifyWindow") && ready.message.contains("progressDeadline"),
        "{ready:?}"
    );
    assert!(
        ready.message.contains(&format!("Runbook {NS}/{APP}")),
        "{ready:?}"
    );

    // Several intervals later: the new commit was not applied, nothing was rolled back
    // or quarantined, the running revision is untouched.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Blocked);
    assert_eq!(s.current_revision.as_deref(), Some(first.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(first.as_str()));
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    assert!(!s.history.iter().any(|h| h.revision == second), "{:?}", s.history);
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");

    // Fixed: the waiting commit goes out.
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health.url(), "2s"))
        .await;
    harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.1");
}

#[tokio::test]
async fn a_runbook_edited_during_verification_restarts_it_with_the_new_gates() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    let health = set_up(&harness, &repo, "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;

    // A long window keeps the next revision in verification.
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health.url(), "5m"))
        .await;
    let second = ExampleRevision::good("1.1").commit_to(&repo, "v1.1").unwrap();
    harness.wait_for_phase(NS, APP, Phase::Verifying, &second).await;

    // While it verifies, the Runbook gets a short window and a second gate: the
    // revision is judged by the new gate list and the new window (with the old
    // window it would verify for five minutes more).
    let edited = format!(
        "{}    - name: database\n      periodSeconds: 1\n      http:\n        url: {}\n        expect:\n          json:\n            database: connected\n",
        runbook_yaml(NS, APP, &health.url(), "2s"),
        health.url()
    );
    harness.apply_runbook(&edited).await;
    let app = harness
        .wait_for(
            NS,
            APP,
            "Healthy under the edited Runbook",
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Healthy && s.current_revision.as_deref() == Some(second.as_str())
                })
            },
        )
        .await;
    let s = status(&app);
    let entry = s
        .history
        .iter()
        .find(|h| h.revision == second)
        .expect("history of the second revision");
    let database = entry
        .gates
        .iter()
        .find(|g| g.name == "database")
        .expect("the new gate judged it");
    assert_eq!(database.verdict, Verdict::Passed, "{:?}", entry.gates);
}

#[tokio::test]
async fn pods_with_a_history_do_not_fail_a_revision_that_did_not_touch_them() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    let _health = set_up(&harness, &repo, "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;

    // The running pods restarted 10 times last month and were once OOMKilled.
    let pods: Api<Pod> = Api::namespaced(harness.client.clone(), NS);
    let backend_pods = pods
        .list(&ListParams::default().labels("component=backend"))
        .await
        .unwrap()
        .items;
    assert_eq!(backend_pods.len(), 2);
    let history = json!({"metadata": {"annotations": {
        "sim.bosun.dev/restarts": "10",
        "sim.bosun.dev/last-termination": "OOMKilled@2026-01-01T00:00:00Z",
    }}});
    for pod in &backend_pods {
        pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&history))
            .await
            .unwrap();
    }
    support::eventually("the pods to show their history", WAIT, || async {
        let listed = pods
            .list(&ListParams::default().labels("component=backend"))
            .await?;
        Ok(listed
            .items
            .iter()
            .all(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| c[0].restart_count == 10)
            })
            .then_some(()))
    })
    .await
    .unwrap();

    // A commit that changes only the ConfigMap: the pods stay, and so does their history.
    let config_only = ExampleRevision {
        version: "1.0-config".into(),
        ..ExampleRevision::good("1.0")
    };
    let second = config_only.commit_to(&repo, "config only").unwrap();
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;
    let s = status(&app);
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    let after: Vec<String> = pods
        .list(&ListParams::default().labels("component=backend"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.uid())
        .collect();
    let before: Vec<String> = backend_pods.iter().filter_map(|p| p.uid()).collect();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|uid| before.contains(uid)),
        "the pods were replaced: not a config-only revision"
    );
}

#[tokio::test]
async fn a_changed_path_redeploys_the_commit_and_keeps_the_healthy_snapshot() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    // One commit, two directories: the healthy app, and a variant whose backend crashes.
    for (path, contents) in ExampleRevision::crash_looping("2.0").files() {
        repo.write(&path.replacen("deploy/", "deploy-next/", 1), &contents)
            .unwrap();
    }
    let commit = ExampleRevision::good("1.0")
        .commit_to(&repo, "both paths")
        .unwrap();
    let _health = set_up(&harness, &repo, "2s").await;
    harness.start_controller();
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &commit).await;
    let healthy_snapshot = status(&app)
        .last_healthy_snapshot
        .clone()
        .expect("a healthy snapshot");
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let version_before = secrets.get(&healthy_snapshot).await.unwrap().resource_version();

    // The path changes: the same commit is rendered again, under a snapshot of its own.
    let apps: Api<bosun::api::AppDeployment> = Api::namespaced(harness.client.clone(), NS);
    let patch = json!({"spec": {"source": {"git": {"path": "deploy-next"}}}});
    apps.patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let app = harness
        .wait_for(NS, APP, "the new render rolled back", WAIT, |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::RolledBack && s.quarantined.iter().any(|q| q.revision == commit)
            })
        })
        .await;
    let s = status(&app);
    assert_eq!(
        s.last_healthy_snapshot.as_deref(),
        Some(healthy_snapshot.as_str())
    );
    assert_eq!(s.current_snapshot.as_deref(), Some(healthy_snapshot.as_str()));
    assert_eq!(
        secrets.get(&healthy_snapshot).await.unwrap().resource_version(),
        version_before,
        "the healthy render's snapshot was overwritten"
    );
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");
    // The new render was stored under a name of its own (and deleted once it failed:
    // only the running and the last healthy snapshots are kept).
    let snapshot_writes: Vec<String> = harness
        .controller_writes()
        .await
        .into_iter()
        .filter(|write| write.resource == "secrets")
        .filter_map(|write| write.name)
        .filter(|name| name.starts_with("litevault-rev-"))
        .collect();
    assert!(
        snapshot_writes.iter().any(|name| name != &healthy_snapshot),
        "the new render had no snapshot of its own: {snapshot_writes:?}"
    );
    let ready = ready_condition(&app);
    assert_eq!(ready.status, "False", "{ready:?}");

    // The path back: what runs is that render, healthy: adopted without re-applying.
    let patch = json!({"spec": {"source": {"git": {"path": "deploy"}}}});
    apps.patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &commit).await;
    assert_eq!(ready_condition(&app).status, "True");
}
