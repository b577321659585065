//! `bosun demo`: bosun's main job on an embedded default. A local control plane,
//! an example app (modelled on the LiteVault runbook) in a local Git repository,
//! a good commit that becomes Healthy, then a bad one that bosun flips back by
//! itself; then the Runbook gains the runbook's migration step: a commit whose
//! migration Job runs before it is applied, and a bad one whose migration ran too,
//! flipped back with the schema left as it is (`Keep`). The AppDeployment's phase
//! and revisions are shown live.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::api::{AppDeployment, AppDeploymentStatus, JobKind, Phase, Runbook, short_revision};
use bosun_devenv::example::{
    ExampleRevision, app_deployment_yaml, runbook_with_migration_yaml, runbook_yaml,
};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, GitServer, HealthEndpoint, PodSimulator, WorkRepo};

const NAMESPACE: &str = "litevault";
const APP: &str = "litevault";

pub struct DemoOptions {
    /// Keep everything running after the story, until Ctrl-C.
    pub wait: bool,
    /// Where the controller's own log goes (shown at the end).
    pub log: std::path::PathBuf,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    say("starting a local Kubernetes 1.20 control plane (etcd, kube-apiserver, kube-controller-manager)");
    let env = DemoEnvironment::start().await?;
    say(&format!(
        "control plane ready in {:.1}s",
        env.control_plane.startup_duration().as_secs_f64()
    ));
    say(&format!(
        "NOTE: no Pod really runs here. A pod simulator plays the kubelet, and bosun's demo serves the example \
         app's /health itself on {}: it answers according to the backend image currently applied \
         (\"ok\" for a normal image, \"degraded\" for one tagged -unhealthy).",
        env.health.url()
    ));

    let good = env.commit(&ExampleRevision::good("1.0"), "litevault 1.0")?;
    say(&format!(
        "committed revision {} (litevault 1.0) to {}",
        short_revision(&good),
        env.git_url()
    ));
    env.install_app().await?;
    say(
        "created Runbook litevault (gate: GET /health expects {\"status\":\"ok\"}, 3 failures roll back) and AppDeployment litevault",
    );
    let controller = env.start_controller();

    env.watch_until(|s| s.phase == Phase::Healthy && s.current_revision.as_deref() == Some(good.as_str()))
        .await?;
    say(&format!("revision {} is Healthy", short_revision(&good)));

    let bad = env.commit(
        &ExampleRevision::unhealthy("2.0"),
        "litevault 2.0 (its /health answers degraded)",
    )?;
    say(&format!(
        "committed revision {} (litevault 2.0, unhealthy)",
        short_revision(&bad)
    ));
    env.watch_until(|s| s.phase == Phase::RolledBack && s.current_revision.as_deref() == Some(good.as_str()))
        .await?;
    let app = env.app().await?;
    let status = app.status.unwrap_or_default();
    say(&format!(
        "bosun flipped back to {} by itself; {} is quarantined: {}",
        short_revision(&good),
        short_revision(&bad),
        status
            .quarantined
            .first()
            .map(|q| q.reason.as_str())
            .unwrap_or("")
    ));

    // The runbook's "Run migrations" step, executed: a Job before the apply.
    env.install_runbook(true, "10s").await?;
    say(
        "added the runbook's migration step to Runbook litevault: `uv run alembic upgrade head` runs in a Job \
         made from the new revision's backend container before anything of it is applied, once per revision \
         (spec.migrate, rollback policy Keep)",
    );
    let migrated = env.commit(&ExampleRevision::good("3.0"), "litevault 3.0 (adds a column)")?;
    say(&format!(
        "committed revision {} (litevault 3.0, with a schema migration)",
        short_revision(&migrated)
    ));
    env.watch_until(|s| {
        s.phase == Phase::Healthy && s.current_revision.as_deref() == Some(migrated.as_str())
    })
    .await?;
    let status = env.app().await?.status.unwrap_or_default();
    say(&format!(
        "revision {} is Healthy; its migration ran before the apply: {}",
        short_revision(&migrated),
        migration_job_of(&status, &migrated)
    ));

    let bad_migrated = env.commit(
        &ExampleRevision::unhealthy("4.0"),
        "litevault 4.0 (adds a table; its /health answers degraded)",
    )?;
    say(&format!(
        "committed revision {} (litevault 4.0: its migration works, its /health answers degraded)",
        short_revision(&bad_migrated)
    ));
    env.watch_until(|s| {
        s.phase == Phase::RolledBack
            && s.current_revision.as_deref() == Some(migrated.as_str())
            && s.quarantined.iter().any(|q| q.revision == bad_migrated)
    })
    .await?;
    let status = env.app().await?.status.unwrap_or_default();
    say(&format!(
        "bosun flipped back to {} by itself. {}'s migration had run ({}), and the schema stays as it left \
         it: rollback policy Keep (the runbook's migrations are additive), so {} runs on the newer schema; \
         policy Downgrade would first run the downgrade command with {}'s image",
        short_revision(&migrated),
        short_revision(&bad_migrated),
        migration_job_of(&status, &bad_migrated),
        short_revision(&migrated),
        short_revision(&bad_migrated),
    ));
    println!();
    println!("history:");
    for entry in &status.history {
        println!(
            "  {}  {:<11} {}",
            short_revision(&entry.revision),
            entry.phase.as_str(),
            entry.message.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "demo story done in {:.0}s. Look around:",
        started.elapsed().as_secs_f64()
    );
    let kubeconfig = env.control_plane.kubeconfig_path().display().to_string();
    println!("  kubectl --kubeconfig {kubeconfig} get ad -A");
    println!("  kubectl --kubeconfig {kubeconfig} -n {NAMESPACE} describe ad {APP}");
    println!("  kubectl --kubeconfig {kubeconfig} -n {NAMESPACE} get deploy,svc,jobs,events");
    println!("  git -C {} log --oneline", env.repo.path().display());
    println!("  less {}    # the controller's own log", options.log.display());
    if options.wait {
        println!("Everything keeps running until Ctrl-C.");
        tokio::signal::ctrl_c().await.ok();
    }
    controller.abort();
    Ok(())
}

fn say(text: &str) {
    println!("[bosun demo] {text}");
}

/// `Job litevault-migrate-3f2a9c1d0b7e succeeded`, from `status.jobs`.
fn migration_job_of(status: &AppDeploymentStatus, revision: &str) -> String {
    status
        .jobs
        .iter()
        .find(|job| job.kind == JobKind::Migrate && job.revision == revision)
        .map(|job| {
            let outcome = if job.succeeded { "succeeded" } else { "failed" };
            format!("Job {} {outcome}", job.job)
        })
        .unwrap_or_else(|| "no migration Job recorded".into())
}

/// Everything the demo (and the benchmark) runs locally.
/// Fields drop in order: what uses the control plane stops before it does.
pub struct DemoEnvironment {
    _pods: PodSimulator,
    pub health: HealthEndpoint,
    pub git: GitServer,
    pub repo: WorkRepo,
    pub control_plane: ControlPlane,
    _dir: tempfile::TempDir,
}

impl DemoEnvironment {
    pub async fn start() -> anyhow::Result<Self> {
        let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
        let client = control_plane.client();
        let pods = PodSimulator::start(client.clone());
        crate::crdgen::install(&client).await?;
        let dir = tempfile::tempdir()?;
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos)?;
        let git = GitServer::start(&repos)?;
        let repo = WorkRepo::init(&repos, "litevault")?;
        let namespace =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                NAMESPACE,
                &PatchParams::apply("bosun-demo"),
                &Patch::Apply(&namespace),
            )
            .await?;
        let health = HealthEndpoint::start(client, NAMESPACE, "backend").await?;
        Ok(DemoEnvironment {
            control_plane,
            git,
            repo,
            health,
            _pods: pods,
            _dir: dir,
        })
    }

    pub fn git_url(&self) -> String {
        self.git.url(self.repo.name())
    }

    pub fn commit(&self, revision: &ExampleRevision, message: &str) -> anyhow::Result<String> {
        revision.commit_to(&self.repo, message)
    }

    /// The Runbook of the example app, with or without its migration step.
    pub async fn install_runbook(&self, migrate: bool, verify_window: &str) -> anyhow::Result<()> {
        let yaml = if migrate {
            runbook_with_migration_yaml(NAMESPACE, APP, &self.health.url(), verify_window)
        } else {
            runbook_yaml(NAMESPACE, APP, &self.health.url(), verify_window)
        };
        let runbook: Runbook = serde_saphyr::from_str(&yaml)?;
        Api::<Runbook>::namespaced(self.control_plane.client(), NAMESPACE)
            .patch(
                APP,
                &PatchParams::apply("bosun-demo").force(),
                &Patch::Apply(&runbook),
            )
            .await?;
        Ok(())
    }

    /// The Runbook and AppDeployment of the example app.
    pub async fn install_app_with(&self, verify_window: &str, interval: &str) -> anyhow::Result<()> {
        let client = self.control_plane.client();
        self.install_runbook(false, verify_window).await?;
        let app: AppDeployment = serde_saphyr::from_str(&app_deployment_yaml(
            NAMESPACE,
            APP,
            &self.git_url(),
            Some(APP),
            interval,
        ))?;
        Api::<AppDeployment>::namespaced(client, NAMESPACE)
            .patch(
                &app.name_any(),
                &PatchParams::apply("bosun-demo").force(),
                &Patch::Apply(&app),
            )
            .await?;
        Ok(())
    }

    async fn install_app(&self) -> anyhow::Result<()> {
        self.install_app_with("10s", "2s").await
    }

    /// Runs the controller in this process.
    pub fn start_controller(&self) -> tokio::task::JoinHandle<()> {
        let client = self.control_plane.client();
        let kubeconfig = self.control_plane.kubeconfig_path().to_path_buf();
        let cache_dir = self._dir.path().join("git-cache");
        tokio::spawn(async move {
            let config = match kube::config::Kubeconfig::read_from(&kubeconfig) {
                Ok(kubeconfig) => kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .ok(),
                Err(_) => None,
            };
            let Some(config) = config else {
                eprintln!("[bosun demo] cannot read the local kubeconfig");
                return;
            };
            // The demo's one tenant is the local control plane's admin, and its gate is
            // the stand-in `/health` the demo serves on loopback: single-tenant, with
            // loopback allowed (a shared cluster keeps both off).
            let settings = crate::controller::Settings {
                cache_dir,
                single_tenant: true,
                egress_allow: vec!["127.0.0.0/8".parse().expect("a CIDR")],
                ..Default::default()
            };
            if let Err(error) = crate::controller::run(client, config, settings).await {
                eprintln!("[bosun demo] controller stopped: {error}");
            }
        })
    }

    pub async fn app(&self) -> anyhow::Result<AppDeployment> {
        Api::<AppDeployment>::namespaced(self.control_plane.client(), NAMESPACE)
            .get(APP)
            .await
            .context("reading AppDeployment litevault")
    }

    /// Prints each change of phase and revisions until `done` holds.
    async fn watch_until(&self, done: impl Fn(&AppDeploymentStatus) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last_line = String::new();
        loop {
            let status = self.app().await?.status.unwrap_or_default();
            let line = status_line(&status);
            if line != last_line {
                println!("  {line}");
                last_line = line;
            }
            if done(&status) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the demo app did not get there in 180s: {last_line}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `kubectl get ad`-like one-liner.
fn status_line(status: &AppDeploymentStatus) -> String {
    let short = |r: &Option<String>| r.as_deref().map(short_revision).unwrap_or_else(|| "-".into());
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    format!(
        "phase={:<11} desired={:<12} current={:<12} lastHealthy={:<12} {}",
        status.phase.as_str(),
        short(&status.desired_revision),
        short(&status.current_revision),
        short(&status.last_healthy_revision),
        message
    )
}
