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
//! Known limits of this 1.20 control plane:
//! - server-side apply refuses a Service port or container port without
//!   `protocol` (set `protocol: TCP`);
//! - Pods are never bound to a node, so Services get no endpoints and nothing
//!   listens on a Pod's (simulated, loopback) IP;
//! - etcd 3.4 cannot serve streaming lists: use kube's default list-then-watch.

mod binaries;
mod controlplane;
pub mod example;
mod git;
mod git_http;
mod git_ssh;
mod health;
mod podsim;
pub mod process;

pub use binaries::{Binaries, find_repo_root};
pub use controlplane::{ControlPlane, ControlPlaneOptions};
pub use git::{GitServer, WorkRepo};
pub use git_http::GitHttpServer;
pub use git_ssh::GitSshServer;
pub use health::{HealthCounters, HealthEndpoint};
pub use podsim::{PodSimulator, simulated_status};
