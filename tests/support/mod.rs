//! Shared set-up of the end-to-end tests: a real control plane with the pod
//! simulator, a `git daemon` on loopback, bosun's CRDs, and the real `bosun`
//! binary run as a separate process (so a test can SIGKILL it).
//!
//! Every harness registers one Node, [`NODE`], and the pod simulator binds every
//! Pod to it as a scheduler would: the Pods' logs can be read through the real
//! `pods/log` API (`kubectl logs`), and deleting a Pod is graceful, confirmed by
//! the simulator. A DaemonSet places one Pod on it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, Phase, Runbook};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, GitServer, PodSimulator, WorkRepo};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// The address space the attack tests give the controller (`prlimit --as`): a normal run
/// stays far below it (about 45 MiB resident), a budget that does not hold aborts it.
pub const ATTACK_ADDRESS_SPACE: u64 = 3 * 1024 * 1024 * 1024;

/// The Node every harness registers and binds Pods to.
pub const NODE: &str = "devenv-node";

pub mod chart;

pub struct Harness {
    pub control_plane: ControlPlane,
    pub client: Client,
    pub git: GitServer,
    pub dir: tempfile::TempDir,
    pub cache_dir: PathBuf,
    _pods: PodSimulator,
    controller: Option<Child>,
    controller_starts: u32,
    /// Set by [`Harness::run_as_chart_account`]: the controller's credentials and
    /// environment are the chart's.
    account: Option<ChartAccount>,
    /// Set by [`Harness::limit_controller_address_space`]: the controller runs under
    /// `prlimit --as=BYTES`.
    address_space_limit: Option<u64>,
}

/// The controller as the chart installs it: its ServiceAccount's token, its user name
/// in the audit log, and the literal environment of its container.
pub struct ChartAccount {
    pub kubeconfig: PathBuf,
    pub user: String,
    pub env: Vec<(String, String)>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(ControlPlaneOptions::default()).await
    }

    /// [`Harness::start`] with a control plane of `options` (e.g. the controller's
    /// reads in the audit log too).
    pub async fn start_with(options: ControlPlaneOptions) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,kube=warn")
            .try_init();
        let control_plane = ControlPlane::start(options).await.expect("control plane starts");
        let client = control_plane.client();
        control_plane.register_node(NODE).await.expect("Node registered");
        let pods = PodSimulator::start_on_node(client.clone(), NODE);
        let dir = tempfile::tempdir().expect("temp dir");
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        let git = GitServer::start(&repos).expect("git daemon starts");
        install_crds(&client).await;
        let cache_dir = dir.path().join("git-cache");
        Harness {
            control_plane,
            client,
            git,
            dir,
            cache_dir,
            _pods: pods,
            controller: None,
            controller_starts: 0,
            account: None,
            address_space_limit: None,
        }
    }

    /// Controllers started from now on run with their address space limited to
    /// `bytes` (`prlimit --as`, which then execs the controller: same process id). Any
    /// allocation past it fails, and the Rust runtime aborts the process: a budget
    /// that does not hold shows as a dead controller.
    pub fn limit_controller_address_space(&mut self, bytes: u64) {
        self.address_space_limit = Some(bytes);
    }

    /// The process id of the running controller.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    /// The controller's resident set size (`VmRSS` of /proc/PID/status), in KiB.
    pub fn controller_rss_kib(&self) -> Option<u64> {
        let pid = self.controller_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn repo(&self, name: &str) -> WorkRepo {
        WorkRepo::init(&self.dir.path().join("repos"), name).expect("work repo")
    }

    /// Starts `bosun controller` as a child process, authenticated as its own user
    /// (`bosun`), so the API server's audit log tells its requests from the test's.
    pub fn start_controller(&mut self) {
        self.start_controller_with(&[], &[]);
    }

    /// [`Harness::start_controller`] with extra arguments and environment (e.g. the
    /// fault switch `BOSUN_FAULT_ABORT_AFTER`).
    pub fn start_controller_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let (kubeconfig, env) = self.controller_credentials(env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.start_controller_as(&kubeconfig, args, &env);
    }

    /// From now on the controller runs as the Helm chart installs it: the chart is
    /// rendered with `sets` (Helm's library) and applied into `bosun-system`, and the
    /// controller authenticates with its ServiceAccount's token and gets its
    /// container's environment, so the API server grants it exactly the chart's RBAC.
    pub async fn run_as_chart_account(&mut self, sets: &[&str]) {
        const RELEASE_NS: &str = "bosun-system";
        chart::create_namespace(&self.client, RELEASE_NS).await;
        let objects = chart::template(RELEASE_NS, sets);
        chart::apply_rendered(&self.client, &objects).await;
        let (kubeconfig, _) = chart::account_credentials(self, RELEASE_NS, chart::CONTROLLER_ACCOUNT).await;
        self.account = Some(ChartAccount {
            kubeconfig,
            user: format!("system:serviceaccount:{RELEASE_NS}:{}", chart::CONTROLLER_ACCOUNT),
            env: chart::controller_env(&objects, RELEASE_NS),
        });
    }

    /// The kubeconfig the controller runs with, and its environment (`extra` last, so
    /// it wins).
    fn controller_credentials(&self, extra: &[(&str, &str)]) -> (PathBuf, Vec<(String, String)>) {
        let (kubeconfig, mut env) = match &self.account {
            Some(account) => (account.kubeconfig.clone(), account.env.clone()),
            None => (
                self.control_plane.controller_kubeconfig_path().to_path_buf(),
                Vec::new(),
            ),
        };
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (kubeconfig, env)
    }

    /// Starts the controller with the credentials of `kubeconfig`.
    pub fn start_controller_as(&mut self, kubeconfig: &std::path::Path, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.controller.is_none(), "controller already running");
        self.controller_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("controller-{}.log", self.controller_starts));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut command = controller_command(kubeconfig, &self.cache_dir, args, &env);
        if let Some(bytes) = self.address_space_limit {
            command = address_space_limited(&command, bytes);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err.log")).unwrap())
            .spawn()
            .expect("bosun controller starts");
        self.controller = Some(child);
    }

    /// Waits for the controller to exit by itself (an armed fault switch aborts it);
    /// panics with its log after `timeout`.
    pub async fn wait_for_controller_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.controller.as_mut().expect("controller running");
            if let Some(status) = child.try_wait().expect("controller status") {
                self.controller = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the controller did not exit within {timeout:?}\n{}",
                    self.controller_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Write requests the controller sent (dry runs excluded), from the API server's
    /// audit log, less the Lease writes of its leader election: a renewal every 2 s is
    /// the election's heartbeat, not a write about any app.
    pub async fn controller_writes(&self) -> Vec<bosun_devenv::AuditedWrite> {
        self.controller_writes_with_leases()
            .await
            .into_iter()
            .filter(|write| !(write.group == "coordination.k8s.io" && write.resource == "leases"))
            .collect()
    }

    /// Every write request the controller sent (dry runs excluded), Lease writes too.
    pub async fn controller_writes_with_leases(&self) -> Vec<bosun_devenv::AuditedWrite> {
        match &self.account {
            Some(account) => self.control_plane.writes_by(&account.user).await,
            None => self.control_plane.controller_writes().await,
        }
        .expect("audit log readable")
    }

    /// SIGKILL: the controller gets no chance to clean up.
    pub fn kill_controller(&mut self) {
        if let Some(mut child) = self.controller.take() {
            child.kill().expect("SIGKILL controller");
            child.wait().ok();
        }
    }

    /// Whether the controller process is still running (it may exit by itself: an
    /// armed fault switch, or an error at start).
    pub fn controller_running(&mut self) -> bool {
        match self.controller.as_mut() {
            Some(child) => child.try_wait().expect("controller status").is_none(),
            None => false,
        }
    }

    /// The controller's whole log (stderr of every run, oldest first), to look for
    /// what it said.
    pub fn controller_log_text(&self) -> String {
        (1..=self.controller_starts)
            .map(|run| {
                let path = self.dir.path().join(format!("controller-{run}.err.log"));
                std::fs::read_to_string(path).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The controller's log so far (all runs), for failure messages.
    pub fn controller_log(&self) -> String {
        let mut text = String::new();
        for run in 1..=self.controller_starts {
            let path = self.dir.path().join(format!("controller-{run}.err.log"));
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- controller run {run} (last lines)\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Starts the controller with its webhook receiver on a free loopback port, the
    /// receiver's token `token` in the Secret `bosun-system/bosun-webhook`; returns the
    /// receiver's base URL.
    pub async fn start_controller_with_webhook_receiver(&mut self, token: &str) -> String {
        self.namespace("bosun-system").await;
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bosun-webhook", "namespace": "bosun-system"},
            "stringData": {"token": token},
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), "bosun-system")
            .patch(
                "bosun-webhook",
                &PatchParams::apply("bosun-test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("webhook Secret");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        self.start_controller_with(
            &[
                "--webhook-secret-name",
                "bosun-webhook",
                "--webhook-secret-namespace",
                "bosun-system",
                "--listen-address",
                &address,
            ],
            &[],
        );
        format!("http://{address}")
    }

    pub async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        api.patch(name, &PatchParams::apply("bosun-test"), &Patch::Apply(&ns))
            .await
            .expect("namespace");
    }

    pub async fn apply_app(&self, yaml: &str) {
        let app: AppDeployment = serde_saphyr::from_str(yaml).expect("AppDeployment YAML");
        let api: Api<AppDeployment> = Api::namespaced(self.client.clone(), &app.namespace().unwrap());
        api.patch(
            &app.name_any(),
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(&app),
        )
        .await
        .expect("apply AppDeployment");
    }

    /// The example AppDeployment `namespace/name` following the repository `repo` (a
    /// name on the harness's Git server) with Runbook `runbook`.
    pub async fn apply_example_app(
        &self,
        namespace: &str,
        name: &str,
        repo: &str,
        runbook: Option<&str>,
        interval: &str,
    ) {
        self.apply_app(&bosun_devenv::example::app_deployment_yaml(
            namespace,
            name,
            &self.git.url(repo),
            runbook,
            interval,
        ))
        .await;
    }

    /// The example app in a namespace of its own, gated by the workload alone
    /// (Runbook `quick`): what tests of the controller's surroundings need.
    pub async fn quick_app(&self, namespace: &str, name: &str, repo: &str, interval: &str) {
        self.namespace(namespace).await;
        self.apply_runbook(&bosun_devenv::example::workload_only_runbook_yaml(
            namespace, "quick",
        ))
        .await;
        self.apply_example_app(namespace, name, repo, Some("quick"), interval)
            .await;
    }

    pub async fn apply_runbook(&self, yaml: &str) {
        let runbook: Runbook = serde_saphyr::from_str(yaml).expect("Runbook YAML");
        let api: Api<Runbook> = Api::namespaced(self.client.clone(), &runbook.namespace().unwrap());
        api.patch(
            &runbook.name_any(),
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(&runbook),
        )
        .await
        .expect("apply Runbook");
    }

    /// The image of the first container of Deployment `namespace/name`.
    pub async fn image_of(&self, namespace: &str, name: &str) -> String {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), namespace);
        let deployment = api.get(name).await.expect("the Deployment exists");
        deployment.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    pub async fn app(&self, namespace: &str, name: &str) -> AppDeployment {
        let api: Api<AppDeployment> = Api::namespaced(self.client.clone(), namespace);
        api.get(name).await.expect("get AppDeployment")
    }

    /// Polls the AppDeployment until `done` holds; panics with its status and the
    /// controller log after `timeout`.
    pub async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&AppDeployment) -> bool,
    ) -> AppDeployment {
        let api: Api<AppDeployment> = Api::namespaced(self.client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(app) = api.get(name).await
                && done(&app)
            {
                return app;
            }
            if Instant::now() > deadline {
                let status = api.get(name).await.ok().and_then(|a| a.status);
                panic!(
                    "timed out waiting for {what} on {namespace}/{name}\nstatus: {}\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    self.controller_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the app is Blocked with `reason` on its `Ready` condition.
    pub async fn wait_for_blocked_reason(
        &self,
        namespace: &str,
        name: &str,
        reason: &str,
        timeout: Duration,
    ) -> AppDeployment {
        self.wait_for(namespace, name, &format!("Blocked by {reason}"), timeout, |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Blocked
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == reason)
            })
        })
        .await
    }

    pub async fn wait_for_phase(
        &self,
        namespace: &str,
        name: &str,
        phase: Phase,
        revision: &str,
    ) -> AppDeployment {
        self.wait_for(
            namespace,
            name,
            &format!("phase {phase} at {revision}"),
            Duration::from_secs(120),
            |app| {
                app.status
                    .as_ref()
                    .is_some_and(|s| s.phase == phase && s.current_revision.as_deref() == Some(revision))
            },
        )
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_controller();
    }
}

/// Installs bosun's CRDs (identical to `crds/`, which `tests/crds.rs` checks).
pub async fn install_crds(client: &Client) {
    bosun::crdgen::install(client)
        .await
        .expect("CRDs installed and established");
}

pub fn status(app: &AppDeployment) -> &bosun::api::AppDeploymentStatus {
    app.status.as_ref().expect("status")
}

/// The app's `Ready` condition.
pub fn ready_condition(app: &AppDeployment) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status(app)
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
        .expect("Ready condition")
}

/// Logs of the code under test, shown for a failing test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "bosun=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it yields `Some`. After `wait` it fails naming `what`, with
/// the check's last error if it kept failing.
pub async fn eventually<T, F, Fut>(what: &str, wait: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + wait;
    loop {
        let last_error = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        if Instant::now() >= deadline {
            return Err(match last_error {
                Some(error) => error.context(format!("waiting for {what}")),
                None => anyhow::anyhow!("timed out after {wait:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A `bosun controller` process of its own, beside the harness's (the leader election
/// and sharding tests run several at once). SIGKILLed when dropped.
pub struct ControllerProcess {
    /// Names its log and Git cache.
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Harness {
    /// Starts another controller process as user `bosun` with its own Git cache and log
    /// (`controller-<name>.err.log`); `args` and `env` as for
    /// [`Harness::start_controller_with`].
    pub fn spawn_controller(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> ControllerProcess {
        let log = self.dir.path().join(format!("controller-{name}.err.log"));
        let (kubeconfig, env) = self.controller_credentials(env);
        let cache_dir = self.dir.path().join(format!("git-cache-{name}"));
        let child = controller_command(&kubeconfig, &cache_dir, args, &env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("bosun controller starts");
        ControllerProcess {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }
}

/// `bosun controller` with `args`, credentials from `kubeconfig`, its own Git cache,
/// `--single-tenant` unless `env` says `BOSUN_SINGLE_TENANT=false`, and `env` last (it
/// wins). Any free port for its endpoints: tests and replicas run side by side, and the
/// default (8080) would clash. Gates and webhooks of the tests listen on loopback, so the
/// egress policy allows it (`BOSUN_EGRESS_ALLOW`); the API server and the controller's
/// own listener on loopback stay refused all the same.
fn controller_command(
    kubeconfig: &std::path::Path,
    cache_dir: &std::path::Path,
    args: &[&str],
    env: &[(String, String)],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bosun"));
    command
        .arg("controller")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("BOSUN_CACHE_DIR", cache_dir)
        .env("RUST_LOG", "info,kube=warn")
        .env("BOSUN_LISTEN_ADDRESS", "127.0.0.1:0")
        // Most tests apply apps that name no ServiceAccount, as the controller; the
        // tenancy and attack tests pass `BOSUN_SINGLE_TENANT=false` (env wins).
        .env("BOSUN_SINGLE_TENANT", "true")
        .env("BOSUN_EGRESS_ALLOW", "127.0.0.0/8")
        .env_remove(bosun::controller::fault::ENV);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// `command` run by `prlimit --as=BYTES`, which sets the limit and execs it.
fn address_space_limited(command: &Command, bytes: u64) -> Command {
    let mut limited = Command::new("prlimit");
    limited
        .arg(format!("--as={bytes}"))
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    limited
}

impl ControllerProcess {
    /// SIGKILL: no chance to clean up (nor to release its Lease).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL controller");
            child.wait().ok();
        }
    }

    /// SIGTERM: a clean shutdown (it finishes its passes and releases its Lease).
    pub fn terminate(&mut self) {
        if let Some(child) = self.child.as_ref() {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(sent.success(), "SIGTERM to controller {}", self.name);
        }
    }

    /// Its exit status once it has exited by itself, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().expect("controller status")
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
