//! bosun end to end: a real control plane, a real Git server on loopback, a real
//! HTTP health endpoint, and the `bosun` binary.

mod support;

use std::time::Duration;

use bosun::api::{Phase, Verdict};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, runbook_yaml, workload_only_runbook_yaml};
use bosun_devenv::{HealthEndpoint, WorkRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use support::{Harness, status};

const NS: &str = "shop";
const APP: &str = "litevault";

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

async fn backend_image(harness: &Harness) -> String {
    harness.image_of(NS, "backend").await
}

/// The Events bosun published about the AppDeployment.
async fn bosun_events(harness: &Harness) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), NS);
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

async fn event_reasons(harness: &Harness) -> Vec<String> {
    bosun_events(harness)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// A Runbook with no gates but the workload gate and a short verify window.
async fn workload_only_runbook(harness: &Harness) {
    harness
        .apply_runbook(&workload_only_runbook_yaml(NS, "quick"))
        .await;
}

/// A namespace, a health endpoint, a Runbook and the AppDeployment on `repo`.
async fn set_up_app(harness: &Harness, repo: &WorkRepo, verify_window: &str) -> HealthEndpoint {
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
async fn good_commits_become_healthy_and_removed_objects_are_pruned() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo, "2s").await;
    harness.start_controller();

    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    // The Ready condition is what `kubectl wait` reads (checked when kubectl is here).
    if let Ok(output) = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(harness.control_plane.kubeconfig_path())
        .args([
            "-n",
            NS,
            "wait",
            "--for=condition=Ready",
            "ad/litevault",
            "--timeout=30s",
        ])
        .output()
    {
        assert!(
            output.status.success(),
            "kubectl wait: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let s = status(&app);
    assert_eq!(s.last_healthy_revision.as_deref(), Some(first.as_str()));
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].phase, Phase::Healthy);
    assert!(
        s.history[0]
            .gates
            .iter()
            .any(|g| g.name == "health" && g.verdict == Verdict::Passed),
        "{:?}",
        s.history[0].gates
    );
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    assert!(config_maps.get_opt("litevault-config").await.unwrap().is_some());
    // The healthy revision's manifests are kept in a Secret owned by the app.
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let snapshots = secrets
        .list(&ListParams::default().labels("bosun.dev/app"))
        .await
        .unwrap();
    assert!(
        snapshots.items.iter().any(|s| s
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o[0].kind == "AppDeployment")),
        "no snapshot Secret owned by the AppDeployment"
    );

    // An idle resync sends nothing: resourceVersions (the app's own too: no status
    // write) stay put across several intervals.
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), NS);
    let services: Api<Service> = Api::namespaced(harness.client.clone(), NS);
    let app_version = |app: bosun::api::AppDeployment| app.metadata.resource_version;
    let before = (
        app_version(harness.app(NS, APP).await),
        deployments.get("worker").await.unwrap().metadata.resource_version,
        services.get("backend").await.unwrap().metadata.resource_version,
        config_maps
            .get("litevault-config")
            .await
            .unwrap()
            .metadata
            .resource_version,
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = (
        app_version(harness.app(NS, APP).await),
        deployments.get("worker").await.unwrap().metadata.resource_version,
        services.get("backend").await.unwrap().metadata.resource_version,
        config_maps
            .get("litevault-config")
            .await
            .unwrap()
            .metadata
            .resource_version,
    );
    assert_eq!(
        before, after,
        "an idle resync wrote to applied objects or to status"
    );

    // Drift is corrected: a hand edit of an applied object is reverted at the next resync.
    let edit = serde_json::json!({"data": {"APP_VERSION": "hand-edited"}});
    config_maps
        .patch("litevault-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let data = config_maps
            .get("litevault-config")
            .await
            .unwrap()
            .data
            .unwrap_or_default();
        if data.get("APP_VERSION").map(String::as_str) == Some("1.0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drift not corrected: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Event follows the apply that corrected it.
    support::eventually("a DriftCorrected Event", Duration::from_secs(10), || async {
        Ok(event_reasons(&harness)
            .await
            .iter()
            .any(|r| r == "DriftCorrected")
            .then_some(()))
    })
    .await
    .unwrap();

    // Second commit drops the ConfigMap: it is pruned.
    let second = commit(
        &repo,
        &ExampleRevision {
            with_config_map: false,
            ..ExampleRevision::good("1.1")
        },
        "v1.1",
    );
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;
    assert_eq!(status(&app).history.len(), 2);
    assert!(
        config_maps.get_opt("litevault-config").await.unwrap().is_none(),
        "ConfigMap not pruned"
    );
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.1");
}

#[tokio::test]
async fn crash_looping_revision_is_rolled_back_quarantined_and_not_reapplied() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo, "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;

    let bad = commit(&repo, &ExampleRevision::crash_looping("2.0"), "v2.0 crashes");
    let app = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let s = status(&app);
    assert_eq!(s.desired_revision.as_deref(), Some(bad.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(good.as_str()));
    assert_eq!(s.quarantined.len(), 1);
    assert_eq!(s.quarantined[0].revision, bad);
    assert!(
        s.quarantined[0].reason.contains("CrashLoopBackOff"),
        "{}",
        s.quarantined[0].reason
    );
    let bad_entry = s
        .history
        .iter()
        .find(|h| h.revision == bad)
        .expect("history entry of the bad revision");
    assert_eq!(bad_entry.phase, Phase::RolledBack);
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "RolledBack" && c.status == "True")
    );
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");
    // Every transition is also an Event on the AppDeployment.
    let reasons = event_reasons(&harness).await;
    for reason in ["Applying", "Verifying", "Healthy", "RollingBack", "RolledBack"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event in {reasons:?}"
        );
    }

    // Several resyncs later the bad revision is still not applied again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.history.iter().filter(|h| h.revision == bad).count(), 1);
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");

    // A new good commit proceeds normally.
    let fixed = commit(&repo, &ExampleRevision::good("2.1"), "v2.1 fixed");
    harness.wait_for_phase(NS, APP, Phase::Healthy, &fixed).await;
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:2.1");
}

#[tokio::test]
async fn failing_http_gate_rolls_back_after_failure_threshold() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let health = set_up_app(&harness, &repo, "3s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let failures_before = health
        .counters()
        .failures
        .load(std::sync::atomic::Ordering::Relaxed);

    let bad = commit(&repo, &ExampleRevision::unhealthy("2.0"), "v2.0 degraded");
    let app = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let failures = health
        .counters()
        .failures
        .load(std::sync::atomic::Ordering::Relaxed)
        - failures_before;
    assert!(
        failures >= 3,
        "rolled back after {failures} failed probes, threshold is 3"
    );
    let s = status(&app);
    let entry = s.history.iter().find(|h| h.revision == bad).unwrap();
    assert_eq!(entry.phase, Phase::RolledBack);
    let gate = entry
        .gates
        .iter()
        .find(|g| g.name == "health")
        .expect("health gate verdict");
    assert_eq!(gate.verdict, Verdict::Failed);
    assert!(
        s.quarantined[0].reason.contains("gate health failed"),
        "{}",
        s.quarantined[0].reason
    );
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");
}

#[tokio::test]
async fn bad_first_revision_fails_with_nothing_to_flip_to() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let bad = commit(&repo, &ExampleRevision::crash_looping("1.0"), "v1.0 crashes");
    let _health = set_up_app(&harness, &repo, "2s").await;
    harness.start_controller();
    let app = harness.wait_for_phase(NS, APP, Phase::Failed, &bad).await;
    let s = status(&app);
    assert!(s.last_healthy_revision.is_none());
    assert_eq!(s.quarantined[0].revision, bad);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("no healthy revision"), "{}", ready.message);
    // Failed stays Failed across resyncs: no second attempt.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let app = harness.app(NS, APP).await;
    assert_eq!(status(&app).phase, Phase::Failed);
    assert_eq!(status(&app).history.len(), 1);
}

#[tokio::test]
async fn malformed_yaml_blocks_with_file_and_line_and_applies_nothing() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    repo.write(
        "deploy/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\ndata:\n  a: b\n",
    )
    .unwrap();
    repo.write(
        "deploy/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n data: [\n",
    )
    .unwrap();
    let broken = repo.commit("broken yaml").unwrap();
    harness.namespace(NS).await;
    workload_only_runbook(&harness).await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some("quick"), "2s")
        .await;
    harness.start_controller();

    let app = harness
        .wait_for(NS, APP, "Blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let s = status(&app);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.contains("deploy/broken.yaml:5"),
        "{}",
        ready.message
    );
    assert_eq!(s.history[0].revision, broken);
    assert!(s.current_revision.is_none());
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    assert!(
        config_maps.get_opt("fine").await.unwrap().is_none(),
        "part of a blocked revision was applied"
    );

    // Fixing the file in a new commit unblocks.
    repo.write(
        "deploy/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata: {}\n",
    )
    .unwrap();
    let fixed = repo.commit("fixed").unwrap();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &fixed).await;
    assert!(config_maps.get_opt("fine").await.unwrap().is_some());
}

#[tokio::test]
async fn paths_leaving_the_repository_are_rejected() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    repo.write(
        "deploy/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n",
    )
    .unwrap();
    repo.symlink("escape", "../../..").unwrap();
    repo.symlink("deploy/passwd.yaml", "/etc/passwd").unwrap();
    repo.commit("links").unwrap();
    harness.namespace(NS).await;
    let url = harness.git.url(repo.name());

    let dotdot = app_deployment_yaml(NS, "dotdot", &url, None, "2s").replace("path: deploy", "path: ../x");
    harness.apply_app(&dotdot).await;
    let symlinked_dir =
        app_deployment_yaml(NS, "linkdir", &url, None, "2s").replace("path: deploy", "path: escape");
    harness.apply_app(&symlinked_dir).await;
    let symlinked_file = app_deployment_yaml(NS, "linkfile", &url, None, "2s");
    harness.apply_app(&symlinked_file).await;
    harness.start_controller();

    for (name, expected) in [
        ("dotdot", "spec.source.git.path"),
        ("linkdir", "escape"),
        ("linkfile", "deploy/passwd.yaml"),
    ] {
        let app = harness
            .wait_for(NS, name, "Blocked", Duration::from_secs(60), |app| {
                app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
            })
            .await;
        let ready = status(&app)
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message
            .clone();
        assert!(ready.contains(expected), "{name}: {ready}");
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    assert!(config_maps.get_opt("fine").await.unwrap().is_none());
}

#[tokio::test]
async fn rollback_completes_from_the_snapshot_while_git_is_down() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo, "4s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;

    let bad = commit(&repo, &ExampleRevision::unhealthy("2.0"), "v2.0 degraded");
    harness
        .wait_for(
            NS,
            APP,
            "the bad revision applied",
            Duration::from_secs(60),
            |app| {
                app.status
                    .as_ref()
                    .is_some_and(|s| s.current_revision.as_deref() == Some(bad.as_str()))
            },
        )
        .await;
    // Neither the Git server nor the controller's clone is there any more: the
    // rollback can only come from the snapshot in the cluster.
    harness.git.stop();
    harness.kill_controller();
    std::fs::remove_dir_all(&harness.cache_dir).unwrap();
    harness.start_controller();
    let app = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    assert_eq!(status(&app).quarantined[0].revision, bad);
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");
    let app = harness
        .wait_for(NS, APP, "SourceReady=False", Duration::from_secs(30), |app| {
            app.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "SourceReady" && c.status == "False")
            })
        })
        .await;
    assert_eq!(status(&app).phase, Phase::RolledBack);
}

#[tokio::test]
async fn two_apps_on_one_repository_share_one_clone() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("mono");
    repo.write(
        "one/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    )
    .unwrap();
    repo.write(
        "two/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n",
    )
    .unwrap();
    let revision = repo.commit("two apps").unwrap();
    harness.namespace(NS).await;
    workload_only_runbook(&harness).await;
    let url = harness.git.url(repo.name());
    for name in ["one", "two"] {
        let yaml = app_deployment_yaml(NS, name, &url, Some("quick"), "2s")
            .replace("path: deploy", &format!("path: {name}"));
        harness.apply_app(&yaml).await;
    }
    harness.start_controller();
    for name in ["one", "two"] {
        harness.wait_for_phase(NS, name, Phase::Healthy, &revision).await;
    }
    let clones: Vec<_> = std::fs::read_dir(&harness.cache_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(
        clones.len(),
        1,
        "expected one clone, found {:?}",
        clones.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn blocked_newer_commit_lets_the_revision_under_verification_finish() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo, "8s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;

    let second = commit(&repo, &ExampleRevision::good("1.1"), "v1.1");
    harness.wait_for_phase(NS, APP, Phase::Verifying, &second).await;
    repo.write("deploy/broken.yaml", "kind: [\n").unwrap();
    let broken = repo.commit("broken").unwrap();

    // The second revision finishes verifying and is healthy, but the Git tip is
    // blocked: the phase and Ready say that the latest commit did not go out.
    let app = harness
        .wait_for(
            NS,
            APP,
            "the second revision healthy, the tip blocked",
            Duration::from_secs(120),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked && s.last_healthy_revision.as_deref() == Some(second.as_str())
                })
            },
        )
        .await;
    let s = status(&app);
    assert_eq!(s.current_revision.as_deref(), Some(second.as_str()));
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.status, "False", "{ready:?}");
    assert!(ready.message.contains("deploy/broken.yaml:1"), "{ready:?}");
    assert_eq!(
        s.blocked.as_ref().map(|b| b.revision.as_str()),
        Some(broken.as_str())
    );
    let blocked = s
        .history
        .iter()
        .find(|h| h.revision == broken)
        .expect("history entry of the blocked commit");
    assert_eq!(blocked.phase, Phase::Blocked);
    assert!(
        blocked
            .message
            .as_deref()
            .unwrap_or("")
            .contains("deploy/broken.yaml:1"),
        "{blocked:?}"
    );
    let verified = s.history.iter().find(|h| h.revision == second).unwrap();
    assert_eq!(verified.phase, Phase::Healthy, "{:?}", s.history);
    assert_eq!(s.last_healthy_revision.as_deref(), Some(second.as_str()));
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.1");
    assert!(event_reasons(&harness).await.iter().any(|r| r == "Blocked"));
}

#[tokio::test]
async fn half_applied_revision_is_rolled_back_and_its_new_objects_pruned() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let _health = set_up_app(&harness, &repo, "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;

    // The dry run cannot check a custom resource whose CRD arrives in the same
    // revision; the real apply creates the ConfigMap and the CRD, then the API
    // server refuses the Widget: a partial apply.
    repo.write(
        "deploy/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata:\n  a: b\n",
    )
    .unwrap();
    repo.write(
        "deploy/widgets.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
  annotations:
    # A CRD is never pruned (its objects would go with it) unless its manifest opts in.
    bosun.dev/prune: "true"
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer}
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: big
spec:
  size: "not a number"
"#,
    )
    .unwrap();
    let half = repo.commit("widgets").unwrap();

    let app = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let s = status(&app);
    assert_eq!(s.quarantined[0].revision, half);
    assert!(
        s.quarantined[0].reason.contains("Widget"),
        "{}",
        s.quarantined[0].reason
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    assert!(
        config_maps.get_opt("extra").await.unwrap().is_none(),
        "object of the failed revision left behind"
    );
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(harness.client.clone());
    let crd = crds.get_opt("widgets.example.com").await.unwrap();
    assert!(
        crd.is_none() || crd.unwrap().metadata.deletion_timestamp.is_some(),
        "CRD of the failed revision left behind"
    );
    assert!(
        !s.inventory.iter().any(|e| e.name == "extra"),
        "{:?}",
        s.inventory
    );
}
