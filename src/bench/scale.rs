//! The scale run: N AppDeployments over ten Git repositories, each app a ConfigMap and
//! a Deployment, on a fresh local control plane, with the controller as a separate
//! process (the real binary, as its own user). Measured from the outside: the API
//! server's audit log for requests, `/proc` for CPU and memory, the git daemon's log for
//! fetches. The same manifests also go through `kubectl apply --server-side` alone, on
//! another fresh control plane, to time what the control plane can do by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::kubectl::{Kubectl, write_manifests};
use crate::api::{AppDeployment, Phase, Runbook};
use crate::render::Manifest;
use bosun_devenv::{AuditedWrite, ControlPlane, ControlPlaneOptions, GitServer, PodSimulator, WorkRepo};

const REPOSITORIES: usize = 10;
const INTERVAL: &str = "1m";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(1800);

pub async fn run(apps: usize, idle: Duration) -> anyhow::Result<()> {
    println!();
    println!(
        "scale run: {apps} AppDeployments over {REPOSITORIES} repositories (each app a ConfigMap and a Deployment)"
    );
    let kubectl_alone = kubectl_alone(apps).await?;
    match kubectl_alone {
        Some(took) => println!(
            "  kubectl apply --server-side alone: all {apps} Deployments available in {:.1}s",
            took.as_secs_f64()
        ),
        None => println!("  kubectl not found: the kubectl-alone figure is skipped"),
    }
    let figures = with_bosun(apps, idle).await?;
    let ratio = kubectl_alone
        .map(|k| {
            format!(
                " ({:.2}x kubectl alone)",
                figures.to_healthy.as_secs_f64() / k.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!(
        "  bosun: all {apps} AppDeployments Healthy in {:.1}s{ratio}",
        figures.to_healthy.as_secs_f64()
    );
    println!(
        "  bosun's requests while rolling out: {} ({:.1}/s); GET or LIST of Pods and ReplicaSets: {} (the watch caches' first lists)",
        figures.rollout_requests,
        figures.rollout_requests as f64 / figures.to_healthy.as_secs_f64(),
        figures.rollout_pod_reads
    );
    println!("    by verb and resource: {}", figures.rollout_breakdown);
    println!(
        "  while the last apps verify (from the last apply to all Healthy, {:.1}s): {} requests ({:.1}/s): {}",
        figures.verifying_for.as_secs_f64(),
        figures.verifying_requests,
        figures.verifying_requests as f64 / figures.verifying_for.as_secs_f64().max(1.0),
        figures.verifying_breakdown
    );
    println!(
        "  idle {}s after all Healthy: {:.2} CPU seconds, {} write requests, {} read requests, {} Git fetches ({REPOSITORIES} repositories, interval {INTERVAL})",
        idle.as_secs(),
        figures.idle_cpu_seconds,
        figures.idle_writes,
        figures.idle_reads,
        figures.idle_fetches
    );
    println!(
        "    besides: {} requests of the leader election (its Lease read and renewed every 2 s)",
        figures.idle_lease_requests
    );
    println!(
        "    per idle minute: {:.2} CPU seconds, {:.1} writes, {:.1} Git fetches",
        figures.idle_cpu_seconds * 60.0 / idle.as_secs_f64(),
        figures.idle_writes as f64 * 60.0 / idle.as_secs_f64(),
        figures.idle_fetches as f64 * 60.0 / idle.as_secs_f64()
    );
    println!(
        "  controller memory: RSS {:.1} MiB at the end, peak {:.1} MiB",
        figures.rss_mib, figures.peak_rss_mib
    );
    Ok(())
}

/// App `index`: its namespace, name and manifests.
struct ScaleApp {
    index: usize,
}

impl ScaleApp {
    fn repository(&self) -> usize {
        self.index % REPOSITORIES
    }

    fn namespace(&self) -> String {
        format!("scale-{}", self.repository())
    }

    fn name(&self) -> String {
        format!("app-{}", self.index)
    }

    fn manifests(&self) -> Vec<Manifest> {
        let name = self.name();
        let config = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-config")},
            "data": {"GREETING": format!("hello from {name}")}
        });
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{
                        "name": "app", "image": "example/scale-app:1",
                        "envFrom": [{"configMapRef": {"name": format!("{name}-config")}}]
                    }]}
                }
            }
        });
        [(config, "config.yaml"), (deployment, "deployment.yaml")]
            .into_iter()
            .map(|(object, file)| Manifest {
                object,
                file: format!("{name}/{file}"),
                line: 1,
            })
            .collect()
    }
}

fn all_apps(apps: usize) -> Vec<ScaleApp> {
    (0..apps).map(|index| ScaleApp { index }).collect()
}

async fn create_namespaces(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for repository in 0..REPOSITORIES {
        let name = format!("scale-{repository}");
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        api.patch(
            &name,
            &PatchParams::apply("bosun-bench"),
            &Patch::Apply(&namespace),
        )
        .await?;
    }
    Ok(())
}

/// Waits until `ready` of the listed objects is true for all `expected`, printing
/// progress; returns how long since `started`.
async fn wait_all(
    what: &str,
    expected: usize,
    started: Instant,
    mut count_ready: impl AsyncFnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<Duration> {
    let mut last_report = Instant::now();
    loop {
        let ready = count_ready().await?;
        if ready >= expected {
            return Ok(started.elapsed());
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            println!(
                "    … {ready}/{expected} {what} after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < ROLLOUT_TIMEOUT,
            "only {ready} of {expected} {what} after {ROLLOUT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The same manifests through kubectl alone; `None` without kubectl.
async fn kubectl_alone(apps: usize) -> anyhow::Result<Option<Duration>> {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let _pods = PodSimulator::start(client.clone());
    let Some(kubectl) = Kubectl::find(control_plane.kubeconfig_path()) else {
        return Ok(None);
    };
    create_namespaces(&client).await?;
    let dir = tempfile::tempdir()?;
    for app in all_apps(apps) {
        let folder = dir.path().join(app.namespace());
        std::fs::create_dir_all(&folder)?;
        write_manifests(&folder.join(format!("{}.yaml", app.name())), &app.manifests())?;
    }
    let started = Instant::now();
    for repository in 0..REPOSITORIES {
        let namespace = format!("scale-{repository}");
        let folder = dir.path().join(&namespace);
        if folder.exists() {
            kubectl.apply_server_side(&folder, &namespace)?;
        }
    }
    let deployments: Api<Deployment> = Api::all(client.clone());
    let took = wait_all("Deployments available", apps, started, async || {
        let listed = deployments.list(&ListParams::default()).await?;
        Ok(listed
            .items
            .iter()
            .filter(|d| {
                d.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|ns| ns.starts_with("scale-"))
            })
            .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) >= 1)
            .count())
    })
    .await?;
    Ok(Some(took))
}

struct Figures {
    to_healthy: Duration,
    rollout_requests: usize,
    rollout_pod_reads: usize,
    rollout_breakdown: String,
    verifying_for: Duration,
    verifying_requests: usize,
    verifying_breakdown: String,
    idle_cpu_seconds: f64,
    idle_writes: usize,
    idle_reads: usize,
    /// The leader election's GET and update of its Lease every 2 s, counted apart.
    idle_lease_requests: usize,
    idle_fetches: usize,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// The controller process under measurement; killed on drop.
struct ControllerProcess(Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request of the leader election (its Lease), not about any app.
fn is_lease(request: &AuditedWrite) -> bool {
    request.group == "coordination.k8s.io" && request.resource == "leases"
}

async fn with_bosun(apps: usize, idle: Duration) -> anyhow::Result<Figures> {
    let control_plane = ControlPlane::start(ControlPlaneOptions {
        audit_controller_reads: true,
        ..Default::default()
    })
    .await?;
    let client = control_plane.client();
    let _pods = PodSimulator::start(client.clone());
    crate::crdgen::install(&client).await?;
    create_namespaces(&client).await?;
    let dir = tempfile::tempdir()?;
    let repos_dir = dir.path().join("repos");
    std::fs::create_dir_all(&repos_dir)?;
    let repos: Vec<WorkRepo> = (0..REPOSITORIES)
        .map(|r| WorkRepo::init(&repos_dir, &format!("repo-{r}")))
        .collect::<anyhow::Result<_>>()?;
    let all = all_apps(apps);
    for app in &all {
        for manifest in app.manifests() {
            repos[app.repository()]
                .write(&manifest.file, &serde_json::to_string_pretty(&manifest.object)?)?;
        }
    }
    for repo in &repos {
        repo.commit("scale apps")?;
    }
    let git = GitServer::start(&repos_dir)?;
    for repository in 0..REPOSITORIES {
        let runbook: Runbook = serde_saphyr::from_str(&format!(
            "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: quick\n  namespace: scale-{repository}\nspec:\n  verifyWindow: 5s\n"
        ))?;
        Api::<Runbook>::namespaced(client.clone(), &format!("scale-{repository}"))
            .patch(
                "quick",
                &PatchParams::apply("bosun-bench"),
                &Patch::Apply(&runbook),
            )
            .await?;
    }

    let log = dir.path().join("controller.log");
    let controller = ControllerProcess(
        Command::new(std::env::current_exe()?)
            .arg("controller")
            .env("KUBECONFIG", control_plane.controller_kubeconfig_path())
            .env("BOSUN_CACHE_DIR", dir.path().join("git-cache"))
            // Any free port: the default 8080 may be taken on the machine.
            .env("BOSUN_LISTEN_ADDRESS", "127.0.0.1:0")
            // The benchmark's apps name no ServiceAccount: the local admin's one tenant.
            .env("BOSUN_SINGLE_TENANT", "true")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the controller")?,
    );
    let pid = controller.0.id();
    println!("  controller pid {pid}, log {}", log.display());

    let started = Instant::now();
    let started_at = Timestamp::now();
    let admin = client.clone();
    stream::iter(all.iter().map(|app| {
        let client = admin.clone();
        let url = git.url(&format!("repo-{}", app.repository()));
        async move {
            let manifest: AppDeployment = serde_saphyr::from_str(&format!(
                "apiVersion: bosun.dev/v1alpha1\nkind: AppDeployment\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  source:\n    git:\n      url: {url}\n      path: {name}\n      interval: {INTERVAL}\n  runbookRef:\n    name: quick\n",
                name = app.name(),
                namespace = app.namespace(),
            ))?;
            Api::<AppDeployment>::namespaced(client, &app.namespace())
                .patch(&app.name(), &PatchParams::apply("bosun-bench"), &Patch::Apply(&manifest))
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await?;

    let all_apps_api: Api<AppDeployment> = Api::all(client.clone());
    let to_healthy = wait_all("AppDeployments Healthy", apps, started, async || {
        let listed = all_apps_api.list(&ListParams::default()).await?;
        let failed = listed
            .items
            .iter()
            .filter(|a| a.status.as_ref().is_some_and(|s| s.phase == Phase::Failed))
            .count();
        anyhow::ensure!(failed == 0, "{failed} AppDeployments Failed");
        Ok(listed
            .items
            .iter()
            .filter(|a| a.status.as_ref().is_some_and(|s| s.phase == Phase::Healthy))
            .count())
    })
    .await?;
    let healthy_at = Timestamp::now();

    let rollout: Vec<AuditedWrite> = control_plane
        .controller_requests()
        .await?
        .into_iter()
        .filter(|r| r.received_at >= started_at && r.received_at <= healthy_at)
        .filter(|r| !is_lease(r))
        .collect();
    let pod_reads = rollout
        .iter()
        .filter(|r| matches!(r.verb.as_str(), "get" | "list"))
        .filter(|r| {
            matches!(
                r.resource.as_str(),
                "replicasets" | "pods" | "controllerrevisions"
            )
        })
        .count();
    let rollout_breakdown = breakdown(&rollout);
    // After the last object of the last app is applied, what bosun sends is the cost of
    // verification alone (verdicts recorded, Healthy, its Event).
    let last_apply = rollout
        .iter()
        .filter(|r| {
            r.verb == "patch" && !r.dry_run && matches!(r.resource.as_str(), "deployments" | "configmaps")
        })
        .map(|r| r.received_at)
        .max()
        .unwrap_or(started_at);
    let verifying: Vec<&AuditedWrite> = rollout.iter().filter(|r| r.received_at > last_apply).collect();
    let verifying_for = Duration::try_from(healthy_at.duration_since(last_apply)).unwrap_or_default();
    let verifying_breakdown = breakdown(&verifying.iter().map(|r| (*r).clone()).collect::<Vec<_>>());

    // Idle: every app Healthy, Git unchanged. Counted over `idle`, after the first
    // resync interval has begun.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_from = Timestamp::now();
    let cpu_before = cpu_seconds(pid)?;
    let fetches_before = git.fetches();
    tokio::time::sleep(idle).await;
    let cpu_after = cpu_seconds(pid)?;
    let fetches_after = git.fetches();
    let idle_to = Timestamp::now();
    let (idle_lease_requests, idle_requests): (Vec<AuditedWrite>, Vec<AuditedWrite>) = control_plane
        .controller_requests()
        .await?
        .into_iter()
        .filter(|r| r.received_at >= idle_from && r.received_at <= idle_to)
        .partition(is_lease);
    let idle_writes = idle_requests
        .iter()
        .filter(|r| !r.dry_run && bosun_devenv::audit_write_verb(&r.verb))
        .count();
    let (rss_mib, peak_rss_mib) = memory_mib(pid)?;
    Ok(Figures {
        to_healthy,
        rollout_requests: rollout.len(),
        rollout_pod_reads: pod_reads,
        rollout_breakdown,
        verifying_for,
        verifying_requests: verifying.len(),
        verifying_breakdown,
        idle_cpu_seconds: cpu_after - cpu_before,
        idle_writes,
        idle_reads: idle_requests.len() - idle_writes,
        idle_lease_requests: idle_lease_requests.len(),
        idle_fetches: fetches_after - fetches_before,
        rss_mib,
        peak_rss_mib,
    })
}

/// Requests counted by verb and resource, most first.
fn breakdown(requests: &[AuditedWrite]) -> String {
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let dry = if request.dry_run { " (dry run)" } else { "" };
        let sub = request
            .subresource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        *by_kind
            .entry(format!("{} {}{sub}{dry}", request.verb, request.resource))
            .or_default() += 1;
    }
    let mut counted: Vec<(String, usize)> = by_kind.into_iter().collect();
    counted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    counted
        .iter()
        .map(|(what, count)| format!("{what} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// User plus system CPU time of process `pid`, in seconds (from `/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11).and_then(|t| t.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|t| t.parse().ok()).unwrap_or(0.0);
    Ok(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident and peak resident memory of `pid` in MiB (VmRSS, VmHWM).
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
