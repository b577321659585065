//! A real Kubernetes 1.20 control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, each on free ports in a directory of its own.
//!
//! No kubelet, scheduler or proxy runs: Pods stay unscheduled and the
//! [`PodSimulator`](super::PodSimulator) writes their status instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;
use tempfile::TempDir;

use super::binaries::{Binaries, find_repo_root};
use super::process::{self, ManagedProcess, ProcessGroup};

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
    /// How long to wait for the API server and the default ServiceAccount.
    pub startup_timeout: Duration,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            dir: None,
            keep_dir: std::env::var("BOSUN_KEEP_DEVENV").is_ok_and(|v| v == "1"),
            binaries: None,
            startup_timeout: Duration::from_secs(120),
        }
    }
}

/// A running control plane. Dropping it stops every process it started (SIGTERM,
/// then SIGKILL) and removes its temporary directories unless kept.
pub struct ControlPlane {
    processes: ProcessGroup,
    run_dir: PathBuf,
    server_url: String,
    token: String,
    kubeconfig_path: PathBuf,
    client: kube::Client,
    startup_duration: Duration,
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
            let layout = Layout::new(&run_dir, etcd_data.path())?;
            match start_once(&binaries, &layout, options.startup_timeout).await {
                Ok((processes, client, token)) => {
                    let startup_duration = started.elapsed();
                    tracing::info!(
                        server = %layout.server_url(),
                        dir = %run_dir.display(),
                        ?startup_duration,
                        "control plane ready"
                    );
                    return Ok(Self {
                        processes,
                        server_url: layout.server_url(),
                        token,
                        kubeconfig_path: layout.kubeconfig,
                        client,
                        startup_duration,
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
        &self.kubeconfig_path
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin bearer token (a secret: do not log it).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The directory with keys, certificates and the kubeconfig.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The directory with one log file per process (`etcd.log`,
    /// `kube-apiserver.log`, `kube-controller-manager.log`).
    pub fn log_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
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

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let stopping = Instant::now();
        self.processes.stop();
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

    fn kubeconfig_yaml(&self, token: &str) -> String {
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
             - name: admin\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: bosun-dev\n  \
               context:\n    \
                 cluster: bosun-dev\n    \
                 user: admin\n    \
                 namespace: default\n\
             current-context: bosun-dev\n",
            server = quote(&self.server_url()),
            ca = quote(&self.serving_cert().to_string_lossy()),
            token = quote(token),
        )
    }
}

/// One attempt at starting the three processes on the ports of `layout`.
async fn start_once(
    binaries: &Binaries,
    layout: &Layout,
    timeout: Duration,
) -> Result<(ProcessGroup, kube::Client, String), AttemptError> {
    let began = Instant::now();
    let deadline = began + timeout;
    // A fresh etcd for every attempt; old logs would confuse the port check.
    reset_dir(&layout.etcd_data)?;
    for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let _ = std::fs::remove_file(layout.log(name));
    }

    let mut processes = ProcessGroup::default();
    processes.push(ManagedProcess::spawn(
        "etcd",
        layout.etcd_command(binaries),
        &layout.log("etcd"),
    )?);
    let token = prepare_credentials(layout).await?;
    wait_until(
        &mut processes,
        deadline,
        "etcd accepting connections",
        async || Ok(process::port_accepts(layout.etcd_client_port)),
    )
    .await?;
    tracing::debug!(elapsed = ?began.elapsed(), "etcd ready");

    processes.push(ManagedProcess::spawn(
        "kube-apiserver",
        layout.apiserver_command(binaries),
        &layout.log("kube-apiserver"),
    )?);
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(anyhow::Error::from)?;
    let readyz = format!("{}/readyz", layout.server_url());
    wait_until(&mut processes, deadline, "kube-apiserver /readyz", async || {
        let response = http.get(&readyz).bearer_auth(&token).send().await;
        Ok(match response {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        })
    })
    .await?;
    tracing::debug!(elapsed = ?began.elapsed(), "kube-apiserver ready");

    std::fs::write(&layout.kubeconfig, layout.kubeconfig_yaml(&token))
        .with_context(|| format!("writing {}", layout.kubeconfig.display()))?;
    processes.push(ManagedProcess::spawn(
        "kube-controller-manager",
        layout.controller_manager_command(binaries),
        &layout.log("kube-controller-manager"),
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
    Ok((processes, client, token))
}

/// Generates the service-account key pair and the static token file; returns the
/// admin token.
async fn prepare_credentials(layout: &Layout) -> anyhow::Result<String> {
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
    let token: String = {
        let mut rng = rand::rng();
        (0..32)
            .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    };
    // token,user,uid,"groups"
    std::fs::write(
        &layout.token_file,
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .with_context(|| format!("writing {}", layout.token_file.display()))?;
    Ok(token)
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
        let yaml = layout.kubeconfig_yaml("abc123");
        let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kubeconfig.current_context.as_deref(), Some("bosun-dev"));
        let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some(layout.server_url().as_str()));
        let ca = cluster.certificate_authority.as_deref().unwrap();
        assert!(ca.ends_with("apiserver-certs/apiserver.crt"));
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
