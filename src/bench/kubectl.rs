//! kubectl, the yardstick: the same manifests through `kubectl apply --server-side`,
//! with no bosun, on the same control plane.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::render::Manifest;

pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl from `PATH`, using `kubeconfig`; `None` when it is not installed.
    pub fn find(kubeconfig: &Path) -> Option<Self> {
        let binary = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("kubectl"))
            .find(|candidate| candidate.is_file())?;
        Some(Self {
            binary,
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn create_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        self.run(&["create", "namespace", namespace]).map(|_| ())
    }

    /// `kubectl apply --server-side -f <path> -n <namespace>` (a file or a directory);
    /// returns how long it took.
    pub fn apply_server_side(&self, path: &Path, namespace: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let path = path.to_string_lossy();
        self.run(&["apply", "--server-side", "-R", "-f", &path, "-n", namespace])?;
        Ok(started.elapsed())
    }
}

/// The manifests as one multi-document YAML file.
pub fn write_manifests(file: &Path, manifests: &[Manifest]) -> anyhow::Result<()> {
    let mut text = String::new();
    for manifest in manifests {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(&manifest.object)?);
        text.push('\n');
    }
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}
