//! `validate DIR --runbook FILE`: what bosun's render and preflight steps would say of
//! a directory of manifests, before it is pushed. For CI: exit code 0 when the
//! directory renders and meets the Runbook's env contract, 1 otherwise, one miss a
//! line on stdout.
//!
//! Offline, the Secrets and ConfigMaps the manifests read from the cluster cannot be
//! looked up: misses that are about one of them (and not about one the directory
//! renders itself) are left out and counted. With a reachable cluster they are read
//! through the API, as the controller's caches would hold them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::{Api, Client};

use super::Kube;
use crate::api::{Runbook, describe_problems};
use crate::preflight::{self, InMemoryLookup, PreflightMiss};
use crate::render::{self, Manifest};
use crate::source::SourceFile;

/// What a validation found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One line each: render errors, Runbook problems, preflight misses.
    pub misses: Vec<String>,
    /// Misses about Secrets or ConfigMaps of the cluster, left out offline.
    pub unchecked: usize,
    pub objects: usize,
}

pub async fn run(
    dir: &Path,
    runbook: &Path,
    namespace: Option<&str>,
    cluster: Option<Kube>,
) -> anyhow::Result<ExitCode> {
    let files = read_dir(dir)?;
    let runbook_text =
        std::fs::read_to_string(runbook).with_context(|| format!("reading Runbook {}", runbook.display()))?;
    let runbook: Runbook = serde_saphyr::from_str(&runbook_text)
        .map_err(|e| anyhow::anyhow!("Runbook {}: {e}", runbook.display()))?;
    let namespace = namespace
        .map(str::to_string)
        .or_else(|| cluster.as_ref().map(|kube| kube.namespace.clone()))
        .unwrap_or_else(|| "default".into());
    let lookup = match &cluster {
        Some(kube) => match cluster_lookup(kube, &files, &namespace).await {
            Ok(lookup) => Some(lookup),
            Err(error) => {
                eprintln!("cluster not reachable, Secret references not checked: {error:#}");
                None
            }
        },
        None => None,
    };
    let report = validate(&files, &runbook, &namespace, lookup.as_ref());
    for miss in &report.misses {
        println!("{miss}");
    }
    if report.unchecked > 0 {
        eprintln!(
            "{} miss(es) about Secrets or ConfigMaps in the cluster not checked (offline)",
            report.unchecked
        );
    }
    if report.misses.is_empty() {
        eprintln!(
            "{}: {} object(s) render and meet the Runbook's env contract",
            dir.display(),
            report.objects
        );
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// Render and preflight of `files` with `runbook`; `cluster` is `None` offline.
pub fn validate(
    files: &[SourceFile],
    runbook: &Runbook,
    namespace: &str,
    cluster: Option<&InMemoryLookup>,
) -> Report {
    let mut report = Report::default();
    if let Err(problems) = runbook.spec.validate() {
        report.misses.push(format!(
            "Runbook {}: {}",
            runbook.metadata.name.as_deref().unwrap_or_default(),
            describe_problems(&problems)
        ));
    }
    let manifests = match render::render(files) {
        Ok(manifests) => manifests,
        Err(error) => {
            report.misses.push(error.to_string());
            return report;
        }
    };
    report.objects = manifests.len();
    let empty = InMemoryLookup::default();
    let lookup = cluster.unwrap_or(&empty);
    if let Err(misses) = preflight::check(&manifests, &runbook.spec, namespace, lookup) {
        let rendered = rendered_objects(&manifests, namespace);
        for miss in misses {
            if cluster.is_none() && about_the_cluster(&miss, &rendered) {
                report.unchecked += 1;
            } else {
                report.misses.push(miss.message);
            }
        }
    }
    report
}

/// Whether a miss is about a Secret or ConfigMap the directory does not render (one
/// only the cluster could have).
fn about_the_cluster(miss: &PreflightMiss, rendered: &BTreeSet<String>) -> bool {
    let secret = miss.secret.as_ref().map(|s| format!("Secret {s}"));
    let config_map = miss.config_map.as_ref().map(|c| format!("ConfigMap {c}"));
    secret
        .into_iter()
        .chain(config_map)
        .any(|object| !rendered.contains(&object))
}

/// `Secret ns/name` and `ConfigMap ns/name` of what the directory renders.
fn rendered_objects(manifests: &[Manifest], namespace: &str) -> BTreeSet<String> {
    manifests
        .iter()
        .filter(|m| m.api_version() == "v1" && matches!(m.kind(), "Secret" | "ConfigMap"))
        .map(|m| format!("{} {}/{}", m.kind(), m.namespace().unwrap_or(namespace), m.name()))
        .collect()
}

/// The Secrets and ConfigMaps of the namespaces the manifests land in.
async fn cluster_lookup(
    kube: &Kube,
    files: &[SourceFile],
    namespace: &str,
) -> anyhow::Result<InMemoryLookup> {
    let mut namespaces = BTreeSet::from([namespace.to_string()]);
    if let Ok(manifests) = render::render(files) {
        namespaces.extend(manifests.iter().filter_map(|m| m.namespace().map(str::to_string)));
    }
    let mut lookup = InMemoryLookup::default();
    for namespace in &namespaces {
        lookup = add_namespace(lookup, &kube.client, namespace).await?;
    }
    Ok(lookup)
}

/// The Secrets and ConfigMaps of `namespace`, as preflight looks them up.
pub(crate) async fn lookup_of(client: &Client, namespace: &str) -> anyhow::Result<InMemoryLookup> {
    add_namespace(InMemoryLookup::default(), client, namespace).await
}

async fn add_namespace(
    mut lookup: InMemoryLookup,
    client: &Client,
    namespace: &str,
) -> anyhow::Result<InMemoryLookup> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for secret in secrets
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing Secrets in namespace {namespace}"))?
    {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
        lookup = lookup.with_secret(namespace, &name, data);
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for config_map in config_maps
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing ConfigMaps in namespace {namespace}"))?
    {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        lookup = lookup.with_config_map(namespace, &name, config_map.data.unwrap_or_default());
    }
    Ok(lookup)
}

/// The manifest files (`*.yaml`, `*.yml`, `*.json`) under `dir`, by path relative to it
/// and sorted, as the controller reads a revision's directory.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<SourceFile>> {
    let mut paths = Vec::new();
    collect(dir, &mut paths).with_context(|| format!("reading {}", dir.display()))?;
    let mut files = Vec::new();
    for path in paths {
        let relative = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let content = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push(SourceFile {
            path: relative,
            content,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn collect(dir: &Path, paths: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, paths)?;
        } else {
            let name = path.to_string_lossy().to_lowercase();
            if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                paths.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
        }
    }

    const API: &str = "apiVersion: apps/v1
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
          image: api:1
          env:
            - name: LOG_LEVEL
              value: info
            - name: JWT_SECRET
              valueFrom:
                secretKeyRef: {name: jwt, key: secret}
";

    fn runbook(env: &str) -> Runbook {
        serde_saphyr::from_str(&format!(
            "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: rb\nspec:\n  env:\n{env}"
        ))
        .unwrap()
    }

    #[test]
    fn offline_the_env_contract_is_checked_and_cluster_secrets_are_left_out() {
        let files = [file("deploy/api.yaml", API)];
        let needs_db = runbook("    - name: DATABASE_URL\n      required: true\n");
        let report = validate(&files, &needs_db, "shop", None);
        assert_eq!(report.misses.len(), 1, "{report:?}");
        assert!(report.misses[0].contains("DATABASE_URL"), "{report:?}");
        // The missing Secret shop/jwt is the cluster's business: not checked offline.
        assert_eq!(report.unchecked, 1);
        let met = runbook("    - name: LOG_LEVEL\n      required: true\n");
        assert!(validate(&files, &met, "shop", None).misses.is_empty());
    }

    #[test]
    fn with_the_cluster_a_missing_secret_is_a_miss_and_a_present_one_passes() {
        let files = [file("deploy/api.yaml", API)];
        let rb = runbook("    - name: LOG_LEVEL\n      required: true\n");
        let without = InMemoryLookup::default();
        let report = validate(&files, &rb, "shop", Some(&without));
        assert_eq!(report.misses.len(), 1, "{report:?}");
        assert!(report.misses[0].contains("jwt"), "{report:?}");
        let with = InMemoryLookup::default().with_secret("shop", "jwt", [("secret", "x".repeat(40))]);
        assert!(validate(&files, &rb, "shop", Some(&with)).misses.is_empty());
    }

    #[test]
    fn a_manifest_that_does_not_render_is_a_miss_naming_the_file() {
        let files = [file("deploy/bad.yaml", "kind: ConfigMap\nmetadata: {name: x}\n")];
        let report = validate(&files, &runbook("    - name: X\n"), "shop", None);
        assert_eq!(report.misses.len(), 1, "{report:?}");
        assert!(report.misses[0].contains("deploy/bad.yaml"), "{report:?}");
    }
}
