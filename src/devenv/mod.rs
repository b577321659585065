//! The local development environment shared by the integration tests and the demo:
//! a real Kubernetes 1.20 control plane (etcd, kube-apiserver,
//! kube-controller-manager) on loopback, a pod simulator standing in for the
//! kubelet, and a `git daemon` serving repositories built with [`WorkRepo`].
//!
//! Everything binds free ports on 127.0.0.1 and lives in its own temporary
//! directory, so independent test processes can run side by side. Every process
//! started here is stopped on drop, and by a watchdog if the owner is killed.
//!
//! The control-plane binaries are built once by `scripts/control-plane-bins.sh`.

mod binaries;
mod controlplane;
pub mod example;
mod git;
mod health;
mod podsim;
pub mod process;

pub use binaries::{Binaries, find_repo_root};
pub use controlplane::{ControlPlane, ControlPlaneOptions};
pub use git::{GitServer, WorkRepo};
pub use health::{HealthCounters, HealthEndpoint};
pub use podsim::{PodSimulator, simulated_status};
