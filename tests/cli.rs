//! `kubectl bosun …` against the local control plane with the controller running: the
//! `kubectl-bosun` binary is run as a user would run it (`--kubeconfig`), its output
//! read and its effects checked on the AppDeployments and what the controller does
//! with them.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bosun::api::{Phase, short_revision};
use bosun_devenv::WorkRepo;
use bosun_devenv::example::{ExampleRevision, runbook_yaml};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::{Harness, status};

const NS: &str = "shop";
const APP: &str = "litevault";

/// Runs `kubectl-bosun` with the control plane's admin kubeconfig.
fn cli(harness: &Harness, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-bosun"))
        .arg("--kubeconfig")
        .arg(harness.control_plane.kubeconfig_path())
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl-bosun runs")
}

/// [`cli`], which must succeed; its stdout.
fn cli_ok(harness: &Harness, args: &[&str]) -> String {
    let output = cli(harness, args);
    assert!(
        output.status.success(),
        "kubectl-bosun {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

async fn wait_healthy_at(harness: &Harness, namespace: &str, name: &str, revision: &str) {
    harness
        .wait_for(
            namespace,
            name,
            &format!("Healthy at {}", short_revision(revision)),
            Duration::from_secs(120),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Healthy && s.current_revision.as_deref() == Some(revision)
                })
            },
        )
        .await;
}

#[tokio::test]
async fn status_history_pin_unpin_suspend_diff_and_the_kubectl_plugin() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let v1 = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness.quick_app(NS, APP, repo.name(), "2s").await;
    harness.start_controller();
    wait_healthy_at(&harness, NS, APP, &v1).await;
    let v2 = commit(&repo, &ExampleRevision::good("2.0"), "v2.0");
    wait_healthy_at(&harness, NS, APP, &v2).await;

    // status: a table with the short revisions and what became of the tip.
    let table = cli_ok(&harness, &["status", "-n", NS]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "CURRENT",
        "LAST HEALTHY",
        "AGE",
        "TIP",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = lines.next().expect("one row");
    assert!(row.starts_with("shop"), "{table}");
    for cell in [APP, "Healthy", &short_revision(&v2), "running"] {
        assert!(row.contains(cell), "{cell} missing: {table}");
    }
    // Every namespace: the same app; a context by name, and one the kubeconfig lacks.
    assert!(cli_ok(&harness, &["status", "-A"]).contains(APP));
    assert!(cli_ok(&harness, &["status", "-n", NS, "--context", "bosun-dev"]).contains(APP));
    let unknown = cli(&harness, &["status", "-n", NS, "--context", "elsewhere"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("elsewhere"));
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&harness, &["status", APP, "-n", NS, "-o", "json"])).unwrap();
    assert_eq!(json["currentRevision"], v2.as_str());
    assert_eq!(json["lastHealthyRevision"], v2.as_str());
    assert_eq!(json["tip"], "running");
    let yaml = cli_ok(&harness, &["status", "-n", NS, "-o", "yaml"]);
    assert!(yaml.contains(&format!("currentRevision: {v2}")), "{yaml}");

    // history: newest first, with the gates' verdicts.
    let history = cli_ok(&harness, &["history", APP, "-n", NS]);
    let rows: Vec<&str> = history.lines().filter(|l| !l.starts_with(' ')).collect();
    assert!(rows[0].starts_with("REVISION"), "{history}");
    assert!(rows[1].starts_with(&short_revision(&v2)), "{history}");
    assert!(rows[2].starts_with(&short_revision(&v1)), "{history}");
    assert!(history.contains("    gate workload: Passed"), "{history}");
    let entries: serde_json::Value =
        serde_json::from_str(&cli_ok(&harness, &["history", APP, "-n", NS, "-o", "json"])).unwrap();
    assert_eq!(entries[0]["revision"], v2.as_str());
    assert_eq!(entries[1]["revision"], v1.as_str());
    assert_eq!(entries[0]["phase"], "Healthy");

    // rollback --to a short id: pinned (full id), and the controller goes back to v1.
    let said = cli_ok(&harness, &["rollback", APP, "-n", NS, "--to", &v1[..8]]);
    assert!(said.contains("pinned to revision"), "{said}");
    let app = harness.app(NS, APP).await;
    assert_eq!(
        app.spec.pin.as_ref().map(|p| p.revision.as_str()),
        Some(v1.as_str())
    );
    wait_healthy_at(&harness, NS, APP, &v1).await;
    assert_eq!(
        harness.image_of(NS, "backend").await,
        "example/litevault-backend:1.0"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&harness, &["status", APP, "-n", NS, "-o", "json"])).unwrap();
    assert_eq!(json["tip"], "running (pinned)");

    // --unpin: back to the Git tip.
    cli_ok(&harness, &["rollback", APP, "-n", NS, "--unpin"]);
    assert!(harness.app(NS, APP).await.spec.pin.is_none());
    wait_healthy_at(&harness, NS, APP, &v2).await;

    // suspend: Git is not followed; diff shows what the new tip would change.
    cli_ok(&harness, &["suspend", APP, "-n", NS]);
    harness
        .wait_for(NS, APP, "Suspended", Duration::from_secs(30), |app| {
            app.spec.suspend && app.status.as_ref().is_some_and(|s| s.phase == Phase::Suspended)
        })
        .await;
    let v3 = commit(&repo, &ExampleRevision::good("3.0"), "v3.0");
    let diff = cli(&harness, &["diff", APP, "-n", NS]);
    let diff_text = String::from_utf8_lossy(&diff.stdout).to_string();
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff exits 1 when something changes: {diff_text}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(diff_text.contains(&short_revision(&v3)), "{diff_text}");
    assert!(
        diff_text.contains("--- live Deployment shop/backend"),
        "{diff_text}"
    );
    assert!(
        diff_text.contains("-        image: example/litevault-backend:2.0"),
        "{diff_text}"
    );
    assert!(
        diff_text.contains("+        image: example/litevault-backend:3.0"),
        "{diff_text}"
    );
    // A dry run: nothing changed.
    assert_eq!(
        harness.image_of(NS, "backend").await,
        "example/litevault-backend:2.0"
    );
    assert_eq!(
        status(&harness.app(NS, APP).await).current_revision.as_deref(),
        Some(v2.as_str())
    );

    // Through kubectl, as a plugin found on PATH.
    let kubectl = Path::new("/usr/bin/kubectl");
    if kubectl.exists() {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-bosun")).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new(kubectl)
            .args(["bosun", "resume", APP, "-n", NS, "--kubeconfig"])
            .arg(harness.control_plane.kubeconfig_path())
            .env("PATH", path)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl bosun resume: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("resumed"));
    } else {
        eprintln!("/usr/bin/kubectl not installed: resuming without it");
        cli_ok(&harness, &["resume", APP, "-n", NS]);
    }
    assert!(!harness.app(NS, APP).await.spec.suspend);
    wait_healthy_at(&harness, NS, APP, &v3).await;
    let diff = cli(&harness, &["diff", APP, "-n", NS]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "nothing to change once the tip runs: {}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // A file:// source reads the local disk of whoever runs diff: refused unless the
    // CLI is given --allow-file-sources, as the controller is.
    let local = format!("file://{}", repo.path().display());
    harness
        .apply_app(&bosun_devenv::example::app_deployment_yaml(
            NS, "local", &local, None, "10m",
        ))
        .await;
    let refused = cli(&harness, &["diff", "local", "-n", NS]);
    let refused_text = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{refused_text}");
    assert!(refused_text.contains("--allow-file-sources"), "{refused_text}");
    assert!(refused.stdout.is_empty(), "nothing diffed");
    let allowed = cli(&harness, &["diff", "local", "-n", NS, "--allow-file-sources"]);
    let allowed_text = String::from_utf8_lossy(&allowed.stdout).to_string();
    assert!(
        allowed_text.contains("against the live objects"),
        "{allowed_text}{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

/// A health endpoint the test turns good or bad.
async fn switchable_health() -> (String, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let state = healthy.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let healthy = state.load(Ordering::SeqCst);
            async move {
                if healthy {
                    (axum::http::StatusCode::OK, r#"{"status":"ok"}"#)
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"status":"down"}"#,
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, healthy)
}

#[tokio::test]
async fn retry_lets_a_quarantined_revision_deploy_again() {
    let mut harness = Harness::start().await;
    let (health_url, healthy) = switchable_health().await;
    let repo = harness.repo("app");
    let v1 = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness.namespace(NS).await;
    harness
        .apply_runbook(&runbook_yaml(NS, APP, &health_url, "3s"))
        .await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.start_controller();
    wait_healthy_at(&harness, NS, APP, &v1).await;

    // v2 meets a dependency that is down: rolled back, quarantined.
    healthy.store(false, Ordering::SeqCst);
    let v2 = commit(&repo, &ExampleRevision::good("2.0"), "v2.0");
    harness
        .wait_for(NS, APP, "v2 quarantined", Duration::from_secs(120), |app| {
            app.status
                .as_ref()
                .is_some_and(|s| s.quarantined.iter().any(|q| q.revision == v2))
        })
        .await;
    // The dependency is back (in time for the rollback to verify).
    healthy.store(true, Ordering::SeqCst);
    harness.wait_for_phase(NS, APP, Phase::RolledBack, &v1).await;
    let table = cli_ok(&harness, &["status", "-n", NS]);
    assert!(table.contains("quarantined"), "{table}");
    // Without a controller action nothing happens: still rolled back a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&harness.app(NS, APP).await).phase, Phase::RolledBack);

    // A revision that is not quarantined is refused by the CLI.
    let refused = cli(&harness, &["retry", APP, "-n", NS, "--revision", &v1[..8]]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not quarantined"));

    let said = cli_ok(&harness, &["retry", APP, "-n", NS]);
    assert!(said.contains(&short_revision(&v2)), "{said}");
    let app = harness.app(NS, APP).await;
    assert_eq!(
        app.annotations().get("bosun.dev/retry").map(String::as_str),
        Some(v2.as_str())
    );
    let app = harness
        .wait_for(
            NS,
            APP,
            "v2 Healthy after the retry",
            Duration::from_secs(120),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Healthy && s.current_revision.as_deref() == Some(v2.as_str())
                })
            },
        )
        .await;
    let s = status(&app);
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    // Two attempts of v2 in the history, the newest healthy.
    let attempts: Vec<_> = s.history.iter().filter(|h| h.revision == v2).collect();
    assert_eq!(attempts.len(), 2, "{:?}", s.history);
    assert_eq!(attempts[0].phase, Phase::Healthy);
    assert_eq!(attempts[1].phase, Phase::RolledBack);
    // The CLI patched the AppDeployment (its annotations) and never its status.
    let writes = harness.control_plane.audit_writes().await.unwrap();
    let by_others: Vec<_> = writes
        .iter()
        .filter(|w| w.resource == "appdeployments" && w.user != "bosun" && !w.dry_run)
        .collect();
    assert!(
        by_others
            .iter()
            .any(|w| w.verb == "patch" && w.name.as_deref() == Some(APP))
    );
    assert!(
        by_others.iter().all(|w| w.subresource.is_none()),
        "a status write by someone else than the controller: {by_others:?}"
    );
}

use kube::ResourceExt;

#[tokio::test]
async fn incident_rollback_lists_then_pins_every_app_changed_in_the_window() {
    let mut harness = Harness::start().await;
    let web_repo = harness.repo("web");
    let api_repo = harness.repo("api");
    let web_v1 = commit(&web_repo, &ExampleRevision::good("1.0"), "web v1.0");
    let api_v1 = commit(&api_repo, &ExampleRevision::good("1.0"), "api v1.0");
    harness.quick_app("front", "web", web_repo.name(), "2s").await;
    harness.quick_app("back", "api", api_repo.name(), "2s").await;
    harness.start_controller();
    wait_healthy_at(&harness, "front", "web", &web_v1).await;
    wait_healthy_at(&harness, "back", "api", &api_v1).await;

    // The incident starts: only web changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let incident_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web_v2 = commit(&web_repo, &ExampleRevision::good("2.0"), "web v2.0");
    wait_healthy_at(&harness, "front", "web", &web_v2).await;
    // A window that starts a second after the incident began.
    let since = format!("{}s", incident_start.elapsed().as_secs().saturating_sub(1));

    let listed = cli_ok(&harness, &["rollback", "-A", "--since", &since, "--dry-run"]);
    assert!(listed.contains("dry run"), "{listed}");
    let rows: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("front") || l.starts_with("back"))
        .collect();
    assert_eq!(rows.len(), 1, "only web changed: {listed}");
    assert!(
        rows[0].contains("web") && rows[0].contains(&format!("pin {}", short_revision(&web_v1))),
        "{listed}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli_ok(
        &harness,
        &["rollback", "-A", "--since", &since, "--dry-run", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["target"], web_v1.as_str());
    assert_eq!(json[0]["changed"][0], web_v2.as_str());
    // The dry run changed nothing.
    assert!(harness.app("front", "web").await.spec.pin.is_none());

    cli_ok(&harness, &["rollback", "-A", "--since", &since]);
    let web = harness.app("front", "web").await;
    assert_eq!(
        web.spec.pin.as_ref().map(|p| p.revision.as_str()),
        Some(web_v1.as_str())
    );
    assert!(harness.app("back", "api").await.spec.pin.is_none());
    wait_healthy_at(&harness, "front", "web", &web_v1).await;
    assert_eq!(
        harness.image_of("front", "backend").await,
        "example/litevault-backend:1.0"
    );
    assert_eq!(
        status(&harness.app("back", "api").await)
            .current_revision
            .as_deref(),
        Some(api_v1.as_str())
    );
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: api
          image: example/api:1
          env:
            - name: LOG_LEVEL
              value: info
            - name: JWT_SECRET
              valueFrom:
                secretKeyRef: {name: jwt, key: secret}
";

fn runbook_requiring(variable: &str) -> String {
    format!(
        "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: rb\nspec:\n  env:\n    - name: {variable}\n      required: true\n"
    )
}

#[tokio::test]
async fn validate_gives_ci_an_exit_code_and_checks_secrets_when_a_cluster_answers() {
    let harness = Harness::start().await;
    harness.namespace(NS).await;
    let dir = tempfile::tempdir().unwrap();
    let manifests_dir = dir.path().join("manifests");
    std::fs::create_dir_all(manifests_dir.join("deploy")).unwrap();
    std::fs::write(manifests_dir.join("deploy/api.yaml"), DEPLOYMENT).unwrap();
    std::fs::write(manifests_dir.join("README.md"), "not a manifest").unwrap();
    let good = dir.path().join("good-runbook.yaml");
    std::fs::write(&good, runbook_requiring("LOG_LEVEL")).unwrap();
    let strict = dir.path().join("strict-runbook.yaml");
    std::fs::write(&strict, runbook_requiring("DATABASE_URL")).unwrap();
    let manifests = manifests_dir.to_str().unwrap();
    let run = |runbook: &Path, extra: &[&str]| {
        let mut args = vec![
            "validate",
            manifests,
            "--runbook",
            runbook.to_str().unwrap(),
            "-n",
            NS,
        ];
        args.extend_from_slice(extra);
        cli(&harness, &args)
    };

    // Offline: the contract holds; the Secret is the cluster's business.
    let offline = run(&good, &["--offline"]);
    assert_eq!(
        offline.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&offline.stdout),
        String::from_utf8_lossy(&offline.stderr)
    );
    // A variable the contract requires is missing: exit 1, the miss on its own line.
    let missing = run(&strict, &["--offline"]);
    assert_eq!(missing.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("DATABASE_URL"), "{stdout}");

    // With the cluster: Secret shop/jwt does not exist yet.
    let online = run(&good, &[]);
    assert_eq!(online.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&online.stdout);
    assert!(stdout.contains("jwt"), "{stdout}");
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "jwt", "namespace": NS},
        "stringData": {"secret": "s3cr3t-value-that-is-long-enough-for-any-rule"}
    }))
    .unwrap();
    secrets
        .patch("jwt", &PatchParams::apply("bosun-test"), &Patch::Apply(&secret))
        .await
        .unwrap();
    let online = run(&good, &[]);
    assert_eq!(
        online.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&online.stdout),
        String::from_utf8_lossy(&online.stderr)
    );
    // The Secret's value is never printed.
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&online.stdout),
        String::from_utf8_lossy(&online.stderr)
    );
    assert!(!everything.contains("s3cr3t"), "{everything}");

    // A manifest that does not render: exit 1 naming the file.
    std::fs::write(
        manifests_dir.join("deploy/broken.yaml"),
        "kind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let broken = run(&good, &["--offline"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("deploy/broken.yaml"));
}
