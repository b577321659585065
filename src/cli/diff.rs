//! `diff APP`: what deploying the Git tip (or the pin) would change. The tip is read
//! and rendered as the controller does (its credentials from `secretRef`, the
//! Runbook's transforms), each object stamped as bosun stamps it and sent as a
//! server-side apply *dry run* with the app's field manager (`bosun:<ns>/<name>`);
//! the answer is compared with the live object, line by line in YAML.
//!
//! The dry run goes as the user running the command, not as the app's
//! `serviceAccountName`: a permission the app lacks shows up at deploy time, not here.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::api::{AppDeployment, GitRef, Runbook, RunbookKind, RunbookSpec, short_revision};
use crate::apply::{DiscoveryCache, plan};
use crate::controller::AppNames;
use crate::preflight;
use crate::source::{Credentials, GitCache, SourcePolicy};

/// Prints the diff of every object the tip would change; returns whether any would.
/// The source is held to `policy` as the controller holds it: a `file://` URL reads
/// the local file system of whoever runs this, so it needs `--allow-file-sources` here
/// too.
pub async fn run(client: &Client, app: &AppDeployment, policy: SourcePolicy) -> anyhow::Result<bool> {
    let namespace = app.namespace().unwrap_or_default();
    let what = format!("AppDeployment {namespace}/{}", app.name_any());
    let git = &app.spec.source.git;
    crate::source::check_policy(&git.url, git.secret_ref.is_some(), git.insecure, policy)
        .map_err(|e| anyhow!("{what}: {e} (kubectl bosun diff takes the same flag)"))?;
    let credentials = credentials(client, app).await?;
    let cache_dir = tempfile::tempdir().context("a directory for the Git clone")?;
    let cache = GitCache::new(cache_dir.path().to_path_buf());
    let reference = match &app.spec.pin {
        Some(pin) => GitRef {
            commit: Some(pin.revision.clone()),
            ..Default::default()
        },
        None => git.reference.clone(),
    };
    let resolved = cache
        .resolve(&git.url, &reference, credentials.as_ref(), Duration::ZERO)
        .await
        .with_context(|| format!("{what}: resolving spec.source.git"))?;
    let files = cache
        .files(
            &git.url,
            &resolved.commit,
            git.path.as_deref(),
            credentials.as_ref(),
        )
        .await
        .with_context(|| format!("{what}: reading revision {}", short_revision(&resolved.commit)))?;
    let manifests = crate::render::render(&files).map_err(|e| {
        anyhow!(
            "{what}: revision {} does not render: {e}",
            short_revision(&resolved.commit)
        )
    })?;
    let names = AppNames::of(app);
    let runbook = runbook(client, app).await?;
    let lookup = super::validate::lookup_of(client, &names.target_namespace).await?;
    let digests = preflight::secret_digests(&manifests, &names.target_namespace, &lookup);
    let manifests =
        preflight::apply_transforms(&manifests, &runbook, &names.target_namespace, &lookup, &digests);

    println!(
        "# {what}: {} ({}) against the live objects",
        resolved.reference,
        short_revision(&resolved.commit)
    );
    let discovery = DiscoveryCache::new();
    let mut changed = false;
    for manifest in &manifests {
        let label = format!(
            "{} ({}:{})",
            manifest.kind_and_name(),
            manifest.file,
            manifest.line
        );
        let resolved_kind = discovery
            .resolve(client, manifest.api_version(), manifest.kind())
            .await
            .with_context(|| format!("{label}: discovery"))?
            .ok_or_else(|| {
                anyhow!(
                    "{label}: the server does not serve {} {}",
                    manifest.api_version(),
                    manifest.kind()
                )
            })?;
        let mut object = manifest.object.clone();
        let object_namespace =
            plan::place_namespace(&mut object, resolved_kind.namespaced, &names.target_namespace)
                .map_err(|e| anyhow!("{label}: {e}"))?;
        plan::strip_server_metadata(&mut object);
        plan::fold_secret_string_data(&mut object);
        // As the apply step labels it: without it the dry run would show the label removed.
        let group = manifest
            .api_version()
            .split_once('/')
            .map_or("", |(group, _)| group);
        crate::apply::label_pod_template(&mut object, group, manifest.kind(), &names.label);
        plan::stamp(&mut object, &names.owner, &names.label);
        let api: Api<DynamicObject> = match &object_namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resolved_kind.resource),
            None => Api::all_with(client.clone(), &resolved_kind.resource),
        };
        let name = manifest.name();
        let live = api
            .get_opt(name)
            .await
            .with_context(|| format!("{label}: reading the live object"))?;
        let params = PatchParams::apply(&names.field_manager).force().dry_run();
        let after = api
            .patch(name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("{label}: server-side dry run"))?;
        let before_text = live
            .map(|live| comparable(&live, manifest.kind()))
            .unwrap_or_default();
        let after_text = comparable(&after, manifest.kind());
        if before_text != after_text {
            changed = true;
            let shown = object_namespace.map_or(name.to_string(), |ns| format!("{ns}/{name}"));
            println!("--- live {} {shown}", manifest.kind());
            println!("+++ tip  {} {shown}", manifest.kind());
            print!("{}", line_diff(&before_text, &after_text));
        }
    }
    let status = app.status.clone().unwrap_or_default();
    for owned in &status.inventory {
        let in_tip = manifests.iter().any(|m| {
            m.kind() == owned.kind
                && m.name() == owned.name
                && m.namespace().or(Some(names.target_namespace.as_str()))
                    == owned.namespace.as_deref().or(m.namespace())
        });
        if !in_tip {
            changed = true;
            println!(
                "--- {owned}: no longer in the revision: pruned unless kept (found, not created; or bosun.dev/prune: \"false\")"
            );
        }
    }
    if !changed {
        println!("# no changes");
    }
    Ok(changed)
}

/// The object as YAML without what the server changes on every write (resourceVersion,
/// managedFields, ...) and with Secret values hidden.
fn comparable(object: &DynamicObject, kind: &str) -> String {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    plan::strip_server_metadata(&mut value);
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if kind == "Secret" {
            for field in ["data", "stringData"] {
                if let Some(Value::Object(data)) = map.get_mut(field) {
                    for (_, v) in data.iter_mut() {
                        *v = Value::String(format!("(hidden, digest {})", &plan::content_hash(v)[..12]));
                    }
                }
            }
        }
    }
    serde_saphyr::to_string(&value).unwrap_or_default()
}

/// A unified-style line diff: ` ` kept, `-` only in `before`, `+` only in `after`
/// (longest common subsequence of lines; manifests are small).
pub(crate) fn line_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut text = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            text.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            text.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            text.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    text
}

async fn credentials(client: &Client, app: &AppDeployment) -> anyhow::Result<Option<Credentials>> {
    let Some(secret_ref) = &app.spec.source.git.secret_ref else {
        return Ok(None);
    };
    let namespace = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get(&secret_ref.name).await.with_context(|| {
        format!(
            "spec.source.git.secretRef: reading Secret {namespace}/{}",
            secret_ref.name
        )
    })?;
    Ok(Some(Credentials::from_secret(&secret_ref.name, secret)?))
}

async fn runbook(client: &Client, app: &AppDeployment) -> anyhow::Result<RunbookSpec> {
    let Some(reference) = &app.spec.runbook_ref else {
        return Ok(RunbookSpec::default());
    };
    let namespace = app.namespace().unwrap_or_default();
    let spec = match reference.kind {
        RunbookKind::Runbook => {
            let api: Api<Runbook> = Api::namespaced(client.clone(), &namespace);
            api.get(&reference.name)
                .await
                .with_context(|| format!("spec.runbookRef: Runbook {namespace}/{}", reference.name))?
                .spec
        }
        RunbookKind::ClusterRunbook => {
            let api: Api<crate::api::ClusterRunbook> = Api::all(client.clone());
            api.get(&reference.name)
                .await
                .with_context(|| format!("spec.runbookRef: ClusterRunbook {}", reference.name))?
                .spec
                .runbook
        }
    };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_diff_keeps_common_lines_and_marks_the_rest() {
        let before = "a: 1\nb: 2\nc: 3\n";
        let after = "a: 1\nb: 5\nc: 3\nd: 4\n";
        assert_eq!(line_diff(before, after), " a: 1\n-b: 2\n+b: 5\n c: 3\n+d: 4\n");
        assert_eq!(line_diff("", "x: 1\n"), "+x: 1\n");
        assert_eq!(line_diff("x: 1\n", "x: 1\n"), " x: 1\n");
    }
}
