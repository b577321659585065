//! A real Kubernetes 1.20 control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, each on free ports in a directory of its own.
//!
//! No kubelet, scheduler or proxy runs: the [`PodSimulator`](super::PodSimulator)
//! writes Pod status instead (and binds Pods to a Node when started with
//! [`PodSimulator::start_on_node`](super::PodSimulator::start_on_node)); Nodes are
//! objects written by [`ControlPlane::register_node`], whose kubelet endpoint is a
//! small HTTPS server of this control plane serving the simulated containers' logs
//! ([`kubelet`](crate::kubelet)), so `kubectl logs` works for a bound Pod.
//!
//! Two static token users exist: `admin`, the tests' own, and `bosun`
//! ([`CONTROLLER_USER`]), for the controller under test; both are in the group
//! `system:masters`. The API server keeps an audit log of every write request
//! ([`ControlPlane::audit_writes`]), so a test can count what the controller wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;
use tempfile::TempDir;

use super::audit::{self, AuditedWrite};
use super::binaries::{Binaries, find_repo_root};
use super::kubelet::KubeletEndpoint;
use super::node;
use super::process::{self, ManagedProcess, ProcessGroup};

/// The user of [`ControlPlane::client`] and [`ControlPlane::kubeconfig_path`].
pub const ADMIN_USER: &str = "admin";

/// The user of [`ControlPlane::controller_kubeconfig_path`]: run the controller
/// under test as this user to tell its requests from the test's own.
pub const CONTROLLER_USER: &str = "bosun";

/// The field manager of the objects the control plane writes itself (Nodes).
const FIELD_MANAGER: &str = "bosun-devenv";

/// The process names of the API server and the controller manager in the
/// [`ProcessGroup`].
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// How long a stopping API server gets to finish the requests in flight. On
/// SIGTERM it stops listening at once, but 1.20 then waits up to 60 s for watches,
/// which never end on their own; ordinary requests take milliseconds.
const APISERVER_STOP_GRACE: Duration = Duration::from_secs(3);

/// How long [`ControlPlane::audit_writes`] waits for its barrier record.
const AUDIT_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// Controllers of kube-controller-manager that need nodes, a cloud or volumes,
/// none of which exist here.
const CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,\
                           -route,-service,-cloud-node-lifecycle";

/// How often readiness is polled while starting.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How many times start is attempted when a process lost a race for its port.
const START_ATTEMPTS: usize = 3;

/// Settings for [`ControlPlane::start`]; `Default` suits tests.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Directory for keys, certificates, kubeconfig and logs; a new temporary
    /// directory when `None`. A given directory is never deleted.
    pub dir: Option<PathBuf>,
    /// Keep the temporary directories after stopping, for debugging. Defaults to
    /// whether the environment variable `BOSUN_KEEP_DEVENV` is `1`.
    pub keep_dir: bool,
    /// The binaries to run; found with [`Binaries::locate`] when `None`.
    pub binaries: Option<Binaries>,
    /// How long to wait for the API server and the default ServiceAccount; also
    /// how long [`ControlPlane::start_apiserver`] waits.
    pub startup_timeout: Duration,
    /// Audit the reads (get, list, watch) of the controller user too, so that
    /// [`ControlPlane::controller_requests`] counts every request it sends (the
    /// benchmark's load figures). Off by default: the log stays small.
    pub audit_controller_reads: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            dir: None,
            keep_dir: std::env::var("BOSUN_KEEP_DEVENV").is_ok_and(|v| v == "1"),
            binaries: None,
            startup_timeout: Duration::from_secs(120),
            audit_controller_reads: false,
        }
    }
}

/// A running control plane. Dropping it stops every process it started (SIGTERM,
/// then SIGKILL) and removes its temporary directories unless kept.
pub struct ControlPlane {
    // Behind a lock so that the API server can be stopped and started through a
    // shared reference (a test may hand `Arc<ControlPlane>` to a fault injector).
    processes: Mutex<ProcessGroup>,
    binaries: Binaries,
    layout: Layout,
    startup_timeout: Duration,
    run_dir: PathBuf,
    server_url: String,
    tokens: Tokens,
    client: kube::Client,
    /// Plain HTTPS to the API server, trusting its certificate, for what kube's
    /// client does not do: /readyz, /metrics, the audit barrier.
    http: reqwest::Client,
    startup_duration: Duration,
    /// Where the API server reads the logs of Pods bound to a registered Node.
    kubelet: KubeletEndpoint,
    // Removed after `Drop::drop` has stopped the processes.
    _etcd_data: TempDir,
    _temp_run_dir: Option<TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

/// Ports and paths of one start attempt.
struct Layout {
    etcd_data: PathBuf,
    cert_dir: PathBuf,
    log_dir: PathBuf,
    sa_key: PathBuf,
    token_file: PathBuf,
    kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    audit_policy: PathBuf,
    audit_log: PathBuf,
    audit_controller_reads: bool,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    kcm_port: u16,
}

/// Why an attempt failed, and whether another attempt with new ports may succeed.
struct AttemptError {
    error: anyhow::Error,
    port_conflict: bool,
}

/// The bearer tokens of the static users (secrets: never logged).
struct Tokens {
    admin: String,
    controller: String,
}

impl From<anyhow::Error> for AttemptError {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            port_conflict: false,
        }
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and returns once the
    /// API server is ready and the `default` ServiceAccount (with its token) exists,
    /// so Pods can be created in any namespace right away.
    pub async fn start(options: ControlPlaneOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let binaries = match options.binaries.clone() {
            Some(binaries) => binaries,
            None => Binaries::locate(default_repo_root().as_deref())?,
        };
        let (run_dir, mut temp_run_dir) = match &options.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("bosun-devenv-")
                    .tempdir()
                    .context("creating the control plane's temporary directory")?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let mut etcd_data = etcd_data_dir()?;
        if options.keep_dir {
            etcd_data.disable_cleanup(true);
            if let Some(temp) = &mut temp_run_dir {
                temp.disable_cleanup(true);
            }
            eprintln!(
                "bosun devenv: keeping {} and {}",
                run_dir.display(),
                etcd_data.path().display()
            );
        }

        let mut attempt = 1;
        loop {
            let mut layout = Layout::new(&run_dir, etcd_data.path())?;
            layout.audit_controller_reads = options.audit_controller_reads;
            match start_once(&binaries, &layout, options.startup_timeout).await {
                Ok((processes, client, tokens)) => {
                    let startup_duration = started.elapsed();
                    tracing::info!(
                        server = %layout.server_url(),
                        dir = %run_dir.display(),
                        ?startup_duration,
                        "control plane ready"
                    );
                    let http = apiserver_http_client(&layout.serving_cert())?;
                    let kubelet = KubeletEndpoint::start(client.clone()).await?;
                    return Ok(Self {
                        processes: Mutex::new(processes),
                        binaries,
                        server_url: layout.server_url(),
                        layout,
                        startup_timeout: options.startup_timeout,
                        tokens,
                        client,
                        http,
                        startup_duration,
                        kubelet,
                        run_dir,
                        _etcd_data: etcd_data,
                        _temp_run_dir: temp_run_dir,
                    });
                }
                Err(failure) if failure.port_conflict && attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, "a control-plane port was taken; retrying");
                    attempt += 1;
                }
                Err(failure) => {
                    // Keep the logs the error points to; etcd's data is of no use.
                    if let Some(temp) = &mut temp_run_dir {
                        temp.disable_cleanup(true);
                    }
                    return Err(failure
                        .error
                        .context(format!("logs kept in {}", run_dir.join("logs").display())));
                }
            }
        }
    }

    /// A client authenticated as the admin user (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig, usable by kubectl and `kube::Config::from_custom_kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.layout.kubeconfig
    }

    /// A kubeconfig for [`CONTROLLER_USER`] (`bosun`, group `system:masters`): give
    /// it to the controller under test, and its requests are told apart from the
    /// test's own in the audit log ([`ControlPlane::controller_writes`]).
    pub fn controller_kubeconfig_path(&self) -> &Path {
        &self.layout.controller_kubeconfig
    }

    /// The bearer token of [`CONTROLLER_USER`] (a secret: do not log it).
    pub fn controller_token(&self) -> &str {
        &self.tokens.controller
    }

    /// A client authenticated as [`CONTROLLER_USER`], for a controller run in the
    /// test's own process.
    pub async fn controller_client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(self.controller_kubeconfig_path()).await
    }

    /// Writes a kubeconfig for this API server that authenticates with `token`
    /// (e.g. a ServiceAccount's, see [`ControlPlane::service_account_token`]) to
    /// `<run_dir>/kubeconfig-<name>` and returns its path. `name` names the user
    /// entry and the file: letters, digits, `.`, `_` and `-` only.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            bail!("kubeconfig name {name:?}: use letters, digits, '.', '_' and '-' only");
        }
        let path = self.run_dir.join(format!("kubeconfig-{name}"));
        write_secret_file(&path, &self.layout.kubeconfig_yaml(name, token))?;
        Ok(path)
    }

    /// A client of the admin user that impersonates `user` (e.g.
    /// `system:serviceaccount:NS:NAME`, whose groups the API server then adds),
    /// so requests are authorized as that user. The audit log records both.
    pub async fn impersonating_client(&self, user: &str) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig_path())
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig_path().display()))?;
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the admin kubeconfig")?;
        config.auth_info.impersonate = Some(user.to_owned());
        kube::Client::try_from(config).context("building an impersonating kube client")
    }

    /// The token of ServiceAccount `namespace/name`, once 1.20's token controller
    /// has put it in a Secret (Kubernetes 1.24+ no longer creates such Secrets; this
    /// control plane is 1.20). Waits up to the startup timeout.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client(), namespace);
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            let account = accounts.get_opt(name).await?;
            let secret_names = account
                .and_then(|a| a.secrets)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|reference| reference.name);
            for secret_name in secret_names {
                let Some(secret) = secrets.get_opt(&secret_name).await? else {
                    continue;
                };
                if secret.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                    continue;
                }
                if let Some(token) = secret.data.and_then(|mut data| data.remove("token")) {
                    return String::from_utf8(token.0).with_context(|| {
                        format!("Secret {namespace}/{secret_name}: data.token is not UTF-8")
                    });
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "ServiceAccount {namespace}/{name} got no token Secret within {:?}",
                    self.startup_timeout
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin bearer token (a secret: do not log it).
    pub fn token(&self) -> &str {
        &self.tokens.admin
    }

    /// The directory with keys, certificates and the kubeconfig.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The directory with one log file per process (`etcd.log`,
    /// `kube-apiserver.log`, `kube-controller-manager.log`) and the audit log.
    pub fn log_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }

    /// The API server's audit log: JSON lines, one per write request (see
    /// [`audit::POLICY`](crate::audit::POLICY)).
    pub fn audit_log_path(&self) -> &Path {
        &self.layout.audit_log
    }

    /// Every write request (create, update, patch, delete, deletecollection) the
    /// API server has answered so far, oldest first, dry runs included.
    ///
    /// The API server writes a request's record as the request completes, which
    /// need not be before the client has its response; so this first sends a
    /// barrier read of its own and waits for that record: every request whose
    /// response a caller has already seen is then in the log. While the API server
    /// is stopped the log is read as it is.
    pub async fn audit_writes(&self) -> anyhow::Result<Vec<AuditedWrite>> {
        let log = if self.apiserver_running() {
            self.audit_log_after_barrier().await?
        } else {
            self.read_audit_log()?
        };
        audit::parse_writes(&log).with_context(|| format!("reading {}", self.audit_log_path().display()))
    }

    /// The write requests that `user` sent (or sent impersonating), without dry
    /// runs, oldest first; refused ones included (see [`AuditedWrite::succeeded`]).
    pub async fn writes_by(&self, user: &str) -> anyhow::Result<Vec<AuditedWrite>> {
        let mut writes = self.audit_writes().await?;
        writes.retain(|write| write.is_write_by(user));
        Ok(writes)
    }

    /// Every request of the controller user the audit log holds (reads only with
    /// [`ControlPlaneOptions::audit_controller_reads`]), dry runs included; a watch is
    /// counted when it starts.
    pub async fn controller_requests(&self) -> anyhow::Result<Vec<AuditedWrite>> {
        let log = if self.apiserver_running() {
            self.audit_log_after_barrier().await?
        } else {
            self.read_audit_log()?
        };
        let mut requests = audit::parse_requests(&log)
            .with_context(|| format!("reading {}", self.audit_log_path().display()))?;
        requests
            .retain(|request| request.effective_user() == CONTROLLER_USER || request.user == CONTROLLER_USER);
        Ok(requests)
    }

    /// The write requests of the controller under test (user [`CONTROLLER_USER`],
    /// see [`ControlPlane::controller_kubeconfig_path`]), without dry runs.
    pub async fn controller_writes(&self) -> anyhow::Result<Vec<AuditedWrite>> {
        self.writes_by(CONTROLLER_USER).await
    }

    /// The API server's own metrics: the Prometheus text of `GET /metrics`, read as
    /// admin. Sum samples with [`sum_samples`](crate::sum_samples).
    pub async fn apiserver_metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.server_url);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.tokens.admin)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        Ok(body)
    }

    /// Whether kube-apiserver is running (not stopped with
    /// [`ControlPlane::stop_apiserver`], and not exited).
    pub fn apiserver_running(&self) -> bool {
        let mut processes = self.lock_processes();
        processes.get_mut(APISERVER).is_some_and(|p| p.exited().is_none())
    }

    /// Stops kube-apiserver: SIGTERM (it stops listening at once and finishes the
    /// requests in flight), SIGKILL 3 s later if it still runs (1.20 would wait for
    /// open watches for a minute). etcd and kube-controller-manager keep running.
    /// Clients get connection errors until [`ControlPlane::start_apiserver`].
    pub async fn stop_apiserver(&self) -> anyhow::Result<()> {
        self.take_and_stop_apiserver(|mut process| process.stop(APISERVER_STOP_GRACE))
            .await
    }

    /// Kills kube-apiserver at once (SIGKILL), as a crash would: requests in
    /// flight get no response.
    pub async fn kill_apiserver(&self) -> anyhow::Result<()> {
        self.take_and_stop_apiserver(|mut process| process.kill()).await
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], on the
    /// same port with the same certificate, tokens, etcd and audit log, and waits
    /// until `/readyz` answers. Existing clients work again: they reconnect.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        let began = Instant::now();
        {
            let mut processes = self.lock_processes();
            if let Some(old) = processes.get_mut(APISERVER) {
                if old.exited().is_none() {
                    bail!("kube-apiserver is already running");
                }
                // It crashed: replace it.
                processes.take(APISERVER);
            }
            // Back in its place after etcd, so that it is stopped after
            // kube-controller-manager again (which then closes its watches first).
            processes.insert_after(
                "etcd",
                ManagedProcess::spawn(
                    APISERVER,
                    self.layout.apiserver_command(&self.binaries),
                    &self.layout.log(APISERVER),
                )?,
            );
        }
        let deadline = began + self.startup_timeout;
        let readyz = format!("{}/readyz", self.server_url);
        loop {
            let response = self
                .http
                .get(&readyz)
                .bearer_auth(&self.tokens.admin)
                .send()
                .await;
            if response.is_ok_and(|r| r.status().is_success()) {
                tracing::info!(elapsed = ?began.elapsed(), "kube-apiserver restarted");
                return Ok(());
            }
            self.fail_if_apiserver_exited()?;
            if Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready within {:?} after a restart:\n{}",
                    self.startup_timeout,
                    process::log_tail(&self.layout.log(APISERVER), 20)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Creates (or refreshes) a Node named `name` that looks like one with a
    /// healthy kubelet: Ready, untainted, labelled `kubernetes.io/hostname=<name>`
    /// and `kubernetes.io/os=linux`, its kubelet this control plane's
    /// [kubelet endpoint](crate::kubelet) (so the logs of Pods bound to it can be
    /// read). DaemonSets then place a Pod on it (see [`node`](crate::node) for what
    /// 1.20 does with it).
    pub async fn register_node(&self, name: &str) -> anyhow::Result<Node> {
        let nodes: Api<Node> = Api::all(self.client());
        let node = node::fake_node(name, Timestamp::now(), self.kubelet.port());
        nodes
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&node),
            )
            .await
            .with_context(|| format!("creating Node {name}"))?;
        // The main resource ignores status; a kubelet writes it through the status
        // subresource. A merge patch, so that no apply of another field manager
        // takes the labels away (1.20 lets a status write change metadata).
        let status = serde_json::json!({ "status": node.status });
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("writing the status of Node {name}"))?;
        // Admission (TaintNodesByCondition) taints a new Node
        // `node.kubernetes.io/not-ready:NoSchedule`; the node lifecycle controller,
        // off here, would lift it once the Node is Ready.
        let untainted = serde_json::json!({ "spec": { "taints": null } });
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&untainted))
            .await
            .with_context(|| format!("removing the taints of Node {name}"))
    }

    /// The port of the kubelet endpoint every registered Node names.
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet.port()
    }

    /// How long [`ControlPlane::start`] took.
    pub fn startup_duration(&self) -> Duration {
        self.startup_duration
    }

    /// Stops all processes and waits for them; the same as dropping it.
    pub fn stop(self) {
        drop(self);
    }
}

impl ControlPlane {
    fn lock_processes(&self) -> MutexGuard<'_, ProcessGroup> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An error with the log's tail if kube-apiserver has exited or is gone.
    fn fail_if_apiserver_exited(&self) -> anyhow::Result<()> {
        let mut processes = self.lock_processes();
        let process = processes
            .get_mut(APISERVER)
            .context("kube-apiserver is not running")?;
        match process.exited() {
            Some(status) => bail!("kube-apiserver exited ({status}):\n{}", process.log_tail(20)),
            None => Ok(()),
        }
    }

    /// Takes kube-apiserver out of the group and stops it with `stop`.
    async fn take_and_stop_apiserver(
        &self,
        stop: impl FnOnce(ManagedProcess) + Send + 'static,
    ) -> anyhow::Result<()> {
        let stopping = Instant::now();
        let process = self
            .lock_processes()
            .take(APISERVER)
            .context("kube-apiserver is not running")?;
        // Stopping blocks while the API server drains; other tasks go on meanwhile.
        tokio::task::spawn_blocking(move || stop(process))
            .await
            .context("stopping kube-apiserver")?;
        tracing::info!(elapsed = ?stopping.elapsed(), "kube-apiserver stopped");
        Ok(())
    }

    fn read_audit_log(&self) -> anyhow::Result<String> {
        match std::fs::read_to_string(self.audit_log_path()) {
            Ok(log) => Ok(log),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(error).with_context(|| format!("reading {}", self.audit_log_path().display())),
        }
    }

    /// Sends a read that the audit policy logs, with a unique User-Agent, and
    /// returns the log once it holds that read's record.
    async fn audit_log_after_barrier(&self) -> anyhow::Result<String> {
        let user_agent = format!("{}/{}", audit::BARRIER_USER_AGENT, rand::rng().random::<u64>());
        let url = format!(
            "{}/api/v1/namespaces/{}",
            self.server_url,
            audit::BARRIER_NAMESPACE
        );
        self.http
            .get(&url)
            .bearer_auth(&self.tokens.admin)
            .header(reqwest::header::USER_AGENT, &user_agent)
            .send()
            .await
            .context("sending the audit barrier read")?;
        let deadline = Instant::now() + AUDIT_BARRIER_TIMEOUT;
        loop {
            let log = self.read_audit_log()?;
            if audit::has_barrier(&log, &user_agent) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the audit barrier read did not reach {} within {AUDIT_BARRIER_TIMEOUT:?}",
                    self.audit_log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let stopping = Instant::now();
        let processes = self.processes.get_mut().unwrap_or_else(PoisonError::into_inner);
        // kube-controller-manager first, then the API server, which may wait for
        // the watches of clients the test still holds: not longer than when
        // stopped alone. etcd last.
        if let Some(mut controller_manager) = processes.take(CONTROLLER_MANAGER) {
            controller_manager.stop(Duration::from_secs(10));
        }
        if let Some(mut apiserver) = processes.take(APISERVER) {
            apiserver.stop(APISERVER_STOP_GRACE);
        }
        processes.stop();
        tracing::debug!(elapsed = ?stopping.elapsed(), "control plane stopped");
    }
}

impl Layout {
    fn new(run_dir: &Path, etcd_data: &Path) -> anyhow::Result<Self> {
        let ports = process::free_ports(4)?;
        let log_dir = run_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        Ok(Self {
            etcd_data: etcd_data.to_owned(),
            cert_dir: run_dir.join("apiserver-certs"),
            log_dir,
            sa_key: run_dir.join("service-account.key"),
            token_file: run_dir.join("tokens.csv"),
            kubeconfig: run_dir.join("kubeconfig"),
            controller_kubeconfig: run_dir.join("kubeconfig-bosun"),
            audit_policy: run_dir.join("audit-policy.yaml"),
            audit_log: run_dir.join("logs").join("audit.log"),
            audit_controller_reads: false,
            etcd_client_port: ports[0],
            etcd_peer_port: ports[1],
            apiserver_port: ports[2],
            kcm_port: ports[3],
        })
    }

    fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    fn etcd_command(&self, binaries: &Binaries) -> Command {
        let client = format!("http://127.0.0.1:{}", self.etcd_client_port);
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let mut command = Command::new(&binaries.etcd);
        command
            .arg("--name=bosun")
            .arg(format!("--data-dir={}", self.etcd_data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bosun={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn");
        command
    }

    fn apiserver_command(&self, binaries: &Binaries) -> Command {
        let sa_key = self.sa_key.display();
        let mut command = Command::new(&binaries.kube_apiserver);
        command
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_client_port
            ))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.apiserver_port))
            .arg(format!("--cert-dir={}", self.cert_dir.display()))
            .arg(format!("--token-auth-file={}", self.token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-key-file={sa_key}"))
            .arg(format!("--service-account-signing-key-file={sa_key}"))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            // Nodes name their kubelet by address 127.0.0.1 (`InternalIP`); the
            // default order would try their `Hostname` first, which does not resolve.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!("--audit-policy-file={}", self.audit_policy.display()))
            .arg(format!("--audit-log-path={}", self.audit_log.display()))
            .arg("--audit-log-format=json")
            // Never rotate: a test reads the whole history from one file.
            .arg("--audit-log-maxsize=0")
            .arg("--profiling=false");
        command
    }

    fn controller_manager_command(&self, binaries: &Binaries) -> Command {
        let kubeconfig = self.kubeconfig.display();
        let mut command = Command::new(&binaries.kube_controller_manager);
        command
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--leader-elect=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.serving_cert().display()))
            .arg("--use-service-account-credentials=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.kcm_port))
            // The insecure port (default 10252) would clash between instances.
            .arg("--port=0")
            .arg("--profiling=false");
        command
    }

    /// The self-signed serving certificate kube-apiserver writes into `--cert-dir`,
    /// followed by the CA that signed it.
    fn serving_cert(&self) -> PathBuf {
        self.cert_dir.join("apiserver.crt")
    }

    /// A kubeconfig whose user `user` authenticates with `token`.
    fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        // JSON strings are valid YAML scalars and quote paths safely.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: bosun-dev\n  \
               cluster:\n    \
                 server: {server}\n    \
                 certificate-authority: {ca}\n\
             users:\n\
             - name: {user}\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: bosun-dev\n  \
               context:\n    \
                 cluster: bosun-dev\n    \
                 user: {user}\n    \
                 namespace: default\n\
             current-context: bosun-dev\n",
            server = quote(&self.server_url()),
            ca = quote(&self.serving_cert().to_string_lossy()),
            user = quote(user),
            token = quote(token),
        )
    }
}

/// One attempt at starting the three processes on the ports of `layout`.
async fn start_once(
    binaries: &Binaries,
    layout: &Layout,
    timeout: Duration,
) -> Result<(ProcessGroup, kube::Client, Tokens), AttemptError> {
    let began = Instant::now();
    let deadline = began + timeout;
    // A fresh etcd for every attempt; old logs would confuse the port check.
    reset_dir(&layout.etcd_data)?;
    for name in ["etcd", APISERVER, CONTROLLER_MANAGER, "audit"] {
        let _ = std::fs::remove_file(layout.log(name));
    }

    let mut processes = ProcessGroup::default();
    processes.push(ManagedProcess::spawn(
        "etcd",
        layout.etcd_command(binaries),
        &layout.log("etcd"),
    )?);
    let tokens = prepare_credentials(layout).await?;
    wait_until(
        &mut processes,
        deadline,
        "etcd accepting connections",
        async || Ok(process::port_accepts(layout.etcd_client_port)),
    )
    .await?;
    tracing::debug!(elapsed = ?began.elapsed(), "etcd ready");

    processes.push(ManagedProcess::spawn(
        APISERVER,
        layout.apiserver_command(binaries),
        &layout.log(APISERVER),
    )?);
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(anyhow::Error::from)?;
    let readyz = format!("{}/readyz", layout.server_url());
    wait_until(&mut processes, deadline, "kube-apiserver /readyz", async || {
        let response = http.get(&readyz).bearer_auth(&tokens.admin).send().await;
        Ok(match response {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        })
    })
    .await?;
    tracing::debug!(elapsed = ?began.elapsed(), "kube-apiserver ready");

    write_secret_file(
        &layout.kubeconfig,
        &layout.kubeconfig_yaml(ADMIN_USER, &tokens.admin),
    )?;
    write_secret_file(
        &layout.controller_kubeconfig,
        &layout.kubeconfig_yaml(CONTROLLER_USER, &tokens.controller),
    )?;
    processes.push(ManagedProcess::spawn(
        CONTROLLER_MANAGER,
        layout.controller_manager_command(binaries),
        &layout.log(CONTROLLER_MANAGER),
    )?);
    let client = client_from_kubeconfig(&layout.kubeconfig).await?;

    // Pod creation is refused until the namespace's ServiceAccount has a token
    // (1.20's ServiceAccount admission), so wait for the token controller too.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_until(
        &mut processes,
        deadline,
        "namespace default and its ServiceAccount token",
        async || {
            if namespaces.get_opt("default").await?.is_none() {
                return Ok(false);
            }
            let account = service_accounts.get_opt("default").await?;
            Ok(account.is_some_and(|sa| sa.secrets.is_some_and(|s| !s.is_empty())))
        },
    )
    .await?;
    // kube-controller-manager exits (klog.Fatalf "error starting controllers") when
    // the API server goes away while it is still starting its controllers, which it
    // goes on doing after the token controller above is up; a test that stops the API
    // server right after start would lose it. Its shared informers are started once
    // every controller is: their first "Caches are synced" line marks the end of that
    // window.
    let log = layout.log(CONTROLLER_MANAGER);
    wait_until(
        &mut processes,
        deadline,
        "kube-controller-manager's controllers started",
        async || {
            Ok(std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("Caches are synced for deployment")))
        },
    )
    .await?;
    Ok((processes, client, tokens))
}

/// Generates the service-account key pair, the static token file and the audit
/// policy; returns the tokens.
async fn prepare_credentials(layout: &Layout) -> anyhow::Result<Tokens> {
    if !layout.sa_key.exists() {
        let output = tokio::process::Command::new("openssl")
            .arg("genrsa")
            .arg("-out")
            .arg(&layout.sa_key)
            .arg("2048")
            .output()
            .await
            .context("running openssl genrsa (is openssl installed?)")?;
        if !output.status.success() {
            bail!(
                "openssl genrsa failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let tokens = Tokens {
        admin: random_token(),
        controller: random_token(),
    };
    // token,user,uid,"groups"
    let token_file = format!(
        "{admin},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
         {controller},{CONTROLLER_USER},{CONTROLLER_USER},\"system:masters\"\n",
        admin = tokens.admin,
        controller = tokens.controller,
    );
    write_secret_file(&layout.token_file, &token_file)?;
    let policy = if layout.audit_controller_reads {
        audit::policy_with_reads_of(CONTROLLER_USER)
    } else {
        audit::POLICY.to_string()
    };
    std::fs::write(&layout.audit_policy, policy)
        .with_context(|| format!("writing {}", layout.audit_policy.display()))?;
    Ok(tokens)
}

/// 32 random hexadecimal digits.
fn random_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Writes `contents` to `path`, readable by its owner only (it holds a token).
fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))
}

/// An HTTPS client for the API server that trusts only its serving certificate
/// chain (written by kube-apiserver into `--cert-dir`, kept across restarts).
fn apiserver_http_client(serving_cert: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(serving_cert).with_context(|| format!("reading {}", serving_cert.display()))?;
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30));
    for certificate in reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("parsing {}", serving_cert.display()))?
    {
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .context("building an HTTPS client for the API server")
}

/// Polls `ready` until it returns true, failing when the deadline passes or a
/// process exits; the error includes the tail of every process's log.
async fn wait_until(
    processes: &mut ProcessGroup,
    deadline: Instant,
    what: &str,
    mut ready: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> Result<(), AttemptError> {
    let mut last_error = None;
    loop {
        if let Some((name, status)) = processes.first_exited() {
            let port_conflict = processes
                .processes()
                .iter()
                .any(|p| p.log_tail(40).contains("address already in use"));
            let message = format!("{name} exited ({status}) while waiting for {what}");
            return Err(AttemptError {
                error: failure(processes, &message),
                port_conflict,
            });
        }
        match ready().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            let detail = last_error.map_or_else(String::new, |e| format!(" (last error: {e:#})"));
            return Err(failure(processes, &format!("timed out waiting for {what}{detail}")).into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// An error naming what failed, followed by the last lines of each log.
fn failure(processes: &ProcessGroup, message: &str) -> anyhow::Error {
    let mut text = format!("control plane failed to start: {message}");
    for process in processes.processes() {
        text.push_str(&format!(
            "\n--- {} ({}) ---\n{}",
            process.name(),
            process.log_path().display(),
            process.log_tail(15)
        ));
    }
    anyhow!(text)
}

/// A kube client for the kubeconfig at `path`.
pub(crate) async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building a kube client")
}

/// The repository root used to find cached binaries: `BOSUN_REPO_ROOT`, else
/// upwards from `CARGO_MANIFEST_DIR` (set by cargo when running tests), else
/// upwards from the current directory.
fn default_repo_root() -> Option<PathBuf> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    manifest_dir
        .and_then(|dir| find_repo_root(&dir))
        .or_else(|| find_repo_root(&std::env::current_dir().ok()?))
}

/// A directory for etcd's data, on tmpfs when there is one: etcd syncs every
/// write, and the API server's bootstrap makes hundreds of them.
fn etcd_data_dir() -> anyhow::Result<TempDir> {
    let shm = Path::new("/dev/shm");
    let prefix = format!("bosun-etcd-{}-", std::process::id());
    if shm.is_dir() {
        remove_stale_etcd_dirs(shm);
        if let Ok(dir) = tempfile::Builder::new().prefix(&prefix).tempdir_in(shm) {
            return Ok(dir);
        }
    }
    tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir()
        .context("creating etcd's data directory")
}

/// Removes etcd directories left in `dir` by processes that no longer exist (a
/// test run killed hard cannot clean up after itself).
fn remove_stale_etcd_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("bosun-etcd-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if owner.parse::<u32>().is_ok() && !Path::new("/proc").join(owner).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Empties `dir` (creating it if needed), readable by its owner only as etcd wants.
fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_parsed_by_kube() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), &dir.path().join("etcd")).unwrap();
        let yaml = layout.kubeconfig_yaml("bosun", "abc123");
        let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kubeconfig.current_context.as_deref(), Some("bosun-dev"));
        let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some(layout.server_url().as_str()));
        let ca = cluster.certificate_authority.as_deref().unwrap();
        assert!(ca.ends_with("apiserver-certs/apiserver.crt"));
        let user = &kubeconfig.auth_infos[0];
        assert_eq!(user.name, "bosun");
        let context = kubeconfig.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.user.as_deref(), Some("bosun"));
    }

    #[test]
    fn stale_etcd_dirs_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0 is never a user process, and /proc/0 does not exist.
        let stale = dir.path().join("bosun-etcd-0-abc");
        let live = dir.path().join(format!("bosun-etcd-{}-abc", std::process::id()));
        let other = dir.path().join("something-else");
        for d in [&stale, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        remove_stale_etcd_dirs(dir.path());
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(other.exists());
    }
}
