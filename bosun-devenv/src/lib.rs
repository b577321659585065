//! The local development environment shared by the integration tests and the demo:
//! a real Kubernetes 1.20 control plane (etcd, kube-apiserver,
//! kube-controller-manager) on loopback, a pod simulator standing in for the
//! kubelet, and a `git daemon` serving repositories built with [`WorkRepo`]
//! (also over HTTP with Basic auth, [`GitHttpServer`], and over SSH with a key,
//! [`GitSshServer`]).
//!
//! Everything binds free ports on 127.0.0.1 and lives in its own temporary
//! directory, so independent test processes can run side by side. Every process
//! started here is stopped on drop, and by a watchdog if the owner is killed.
//!
//! The control-plane binaries are built once by `scripts/control-plane-bins.sh`
//! (see [`Binaries::locate`] for where they are looked up). Set
//! `BOSUN_KEEP_DEVENV=1` to keep the directories (logs, kubeconfig) for debugging.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use bosun_devenv::{ControlPlane, ControlPlaneOptions, GitServer, PodSimulator, WorkRepo};
//!
//! let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
//! let _pods = PodSimulator::start(control_plane.client());
//! let repos = tempfile::tempdir()?;
//! let repo = WorkRepo::init(repos.path(), "app")?;
//! repo.write("deploy/web.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n")?;
//! let sha = repo.commit("first")?;
//! let git = GitServer::start(repos.path())?;
//! println!("{} at {sha}; kubeconfig {}", git.url("app"), control_plane.kubeconfig_path().display());
//! # Ok(())
//! # }
//! ```
//!
//! For the controller's fault and load tests the control plane also has:
//! - a second identity: run the controller under test with
//!   [`ControlPlane::controller_kubeconfig_path`] (user `bosun`, group
//!   `system:masters`) and the test's own requests (user `admin`) stay apart;
//!   [`ControlPlane::token_kubeconfig`] writes a kubeconfig for any bearer token,
//!   e.g. [`ControlPlane::service_account_token`];
//! - an audit log of every write request: [`ControlPlane::controller_writes`]
//!   returns those the controller really made (dry runs left out), and
//!   [`ControlPlane::audit_writes`] all of them as [`AuditedWrite`]s;
//! - the API server's own metrics, [`ControlPlane::apiserver_metrics`], summed
//!   over labels with [`sum_samples`] (`apiserver_request_total` has no user label
//!   in 1.20);
//! - [`ControlPlane::stop_apiserver`] / [`ControlPlane::kill_apiserver`] and
//!   [`ControlPlane::start_apiserver`]: the same API server (port, certificate,
//!   tokens, etcd) goes away and comes back; clients reconnect by themselves;
//! - fake Nodes, [`ControlPlane::register_node`], so DaemonSets place Pods; their
//!   kubelet endpoint ([`KubeletEndpoint`]) serves the simulated containers' logs,
//!   so with [`PodSimulator::start_on_node`] binding Pods to a Node the real
//!   `pods/log` API (`kubectl logs`) works;
//! - a real Prometheus ([`Prometheus`], Debian's `prometheus` package) scraping
//!   targets such as a [`MetricsEndpoint`] whose error rate and latency a test sets;
//! - a validating admission webhook on loopback, [`AdmissionWebhook`], that
//!   allows, denies, fails with HTTP 500 or is unreachable, switched at runtime
//!   (its module docs list what the API server answers in each case).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use bosun_devenv::{ControlPlane, ControlPlaneOptions};
//!
//! let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
//! // ... run the controller with KUBECONFIG=control_plane.controller_kubeconfig_path() ...
//! let writes = control_plane.controller_writes().await?;
//! println!("the controller made {} writes", writes.len());
//! control_plane.stop_apiserver().await?;
//! control_plane.start_apiserver().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Known limits of this 1.20 control plane:
//! - server-side apply refuses a Service port or container port without
//!   `protocol` (set `protocol: TCP`);
//! - no scheduler runs: Pods stay unbound unless the pod simulator binds them
//!   ([`PodSimulator::start_on_node`]) or their manifest does (`spec.nodeName`);
//!   Services get no endpoints and nothing listens on a Pod's (simulated, loopback)
//!   IP; a bound Pod is deleted gracefully and the pod simulator confirms;
//! - etcd 3.4 cannot serve streaming lists: use kube's default list-then-watch;
//! - ServiceAccount tokens are Secrets made by the token controller (1.24+ no
//!   longer makes them).

mod admission;
pub mod audit;
mod binaries;
mod controlplane;
pub mod example;
mod git;
mod git_http;
mod git_ssh;
mod health;
pub mod kubelet;
pub mod metrics;
pub mod node;
mod podsim;
pub mod process;
pub mod prometheus;
pub mod script;

pub use admission::{AdmissionWebhook, ReceivedReview, WebhookBehavior, webhook_name, webhook_rule};
pub use audit::{AuditedWrite, audit_write_verb};
pub use binaries::{Binaries, find_repo_root};
pub use controlplane::{ADMIN_USER, CONTROLLER_USER, ControlPlane, ControlPlaneOptions};
pub use git::{GitServer, WorkRepo};
pub use git_http::GitHttpServer;
pub use git_ssh::GitSshServer;
pub use health::{HealthCounters, HealthEndpoint};
pub use kubelet::KubeletEndpoint;
pub use metrics::{REQUEST_TOTAL, sum_samples};
pub use podsim::{PodSimulator, container_log, simulated_status};
pub use prometheus::{MetricsEndpoint, Prometheus};
