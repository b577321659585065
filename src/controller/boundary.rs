//! The tenant boundary: what an app's identity must be allowed before bosun reads or
//! writes anything on its behalf (see [`crate::access`] for why reads are authorised
//! with SubjectAccessReviews rather than made as the app).
//!
//! - [`writable`]: every namespace a revision touches (each object's namespace, the
//!   target namespace for what names none, and `spec.targetNamespace` itself) and every
//!   cluster-scoped object must be writable by the identity (`patch`, as server-side
//!   apply does, and `create`) for the object's resource. Checked right before
//!   preflight, the first step that reads the cluster: a revision reaching into another
//!   namespace is refused before anything of that namespace is read.
//! - [`lookup`]: the Secrets and ConfigMaps preflight (and the Secret digests) read,
//!   only in namespaces where the identity may `get` them; otherwise refused, naming
//!   the read, and nothing about whether the object exists.
//! - [`runbook_reads`]: what the Runbook's gates read in the target namespace (`logs`:
//!   `pods/log` and pods; `service:` probes: Services) and the Secrets of the app's
//!   namespace their `headersFrom` name must be readable by the identity, else the
//!   Runbook cannot be evaluated for this app (a Runbook problem, never a failed gate).
//!
//! Refusals are [`Failure`]s of the existing kinds (`Forbidden` blocks the revision as
//! a dry run's 403 does; `RunbookInvalid` blocks the app): what follows is decided by
//! `bosun-core`, as for any refusal.

use std::collections::BTreeSet;

use kube::ResourceExt;
use tracing::warn;

use super::Context;
use crate::access::{Identity, Permission, Refusal};
use crate::api::{AppDeployment, RunbookSpec};
use crate::core::{Failure, FailureKind, StepOutcome};
use crate::gates::SecretHeaders;
use crate::preflight::{self, GuardedLookup, LookupKind, RecordingLookup, StoreLookup};
use crate::render::Manifest;

/// An unanswered request to the API server, as a step reports it (try again later).
fn transient(error: &kube::Error, what: &str) -> StepOutcome {
    StepOutcome::Transient(format!("{what}: {}", crate::failure::server_message(error)))
}

/// Whether the identity of `app` may write every object of `manifests` where it would
/// go; `Err` is a `Forbidden` refusal naming the object (or `spec.targetNamespace`),
/// the identity, the verb, the resource and the namespace, or a transient error.
pub async fn writable(
    context: &Context,
    app: &AppDeployment,
    manifests: &[Manifest],
    target_namespace: &str,
) -> Result<(), StepOutcome> {
    let identity = context.identity(app).map_err(StepOutcome::Refused)?;
    if identity == Identity::Controller {
        return Ok(());
    }
    // (what is written, the permission), in manifest order, patch before create.
    let mut wanted: Vec<(String, Permission)> = Vec::new();
    let mut namespaced_resources: BTreeSet<(String, String)> = BTreeSet::new();
    for manifest in manifests {
        let resolved = context
            .discovery
            .resolve(&context.client, manifest.api_version(), manifest.kind())
            .await
            .map_err(|e| transient(&e, &format!("discovery of {}", manifest.api_version())))?;
        // A kind the server does not serve (yet: a CRD of the revision) is refused or
        // written by the impersonated dry run, which needs no read before it.
        let Some(resolved) = resolved else { continue };
        let (group, resource) = (resolved.resource.group.clone(), resolved.resource.plural.clone());
        let namespace = resolved
            .namespaced
            .then(|| manifest.namespace().unwrap_or(target_namespace).to_string());
        let what = match &namespace {
            Some(namespace) => format!(
                "{} {namespace}/{} ({}:{})",
                manifest.kind(),
                manifest.name(),
                manifest.file,
                manifest.line
            ),
            None => manifest.id(),
        };
        if namespace.is_some() {
            namespaced_resources.insert((group.clone(), resource.clone()));
        }
        for verb in ["patch", "create"] {
            wanted.push((
                what.clone(),
                Permission::new(verb, &group, &resource, namespace.as_deref()),
            ));
        }
    }
    // The target namespace itself: the gates and Jobs work there.
    for (group, resource) in &namespaced_resources {
        for verb in ["patch", "create"] {
            wanted.push((
                format!("spec.targetNamespace {target_namespace}"),
                Permission::new(verb, group, resource, Some(target_namespace)),
            ));
        }
    }
    let mut asked = BTreeSet::new();
    for (what, permission) in wanted {
        if !asked.insert(permission.clone()) {
            continue;
        }
        let allowed = context
            .access
            .may(&identity, &permission)
            .await
            .map_err(|e| transient(&e, "SubjectAccessReview"))?;
        if !allowed {
            let refusal = Refusal {
                identity: identity.clone(),
                permission,
            };
            return Err(StepOutcome::Refused(Failure::new(
                FailureKind::Forbidden,
                format!("{what}: {refusal}"),
            )));
        }
    }
    Ok(())
}

/// The watch caches of Secrets and ConfigMaps as `app`'s identity may read them for
/// `manifests`: every read preflight (and the Secret digests, and the injected
/// defaults) would make is listed first, without reading, and must be a `get` the
/// identity may make; `Err` is a `Forbidden` refusal naming the read, never whether
/// what it names exists.
pub async fn lookup(
    context: &Context,
    app: &AppDeployment,
    manifests: &[Manifest],
    runbook: &RunbookSpec,
    target_namespace: &str,
) -> Result<GuardedLookup<StoreLookup>, StepOutcome> {
    let identity = context.identity(app).map_err(StepOutcome::Refused)?;
    let store = context.caches.lookup();
    if identity == Identity::Controller {
        return Ok(GuardedLookup::unguarded(store));
    }
    let recording = RecordingLookup::default();
    let _ = preflight::check(manifests, runbook, target_namespace, &recording);
    let _ = preflight::secret_digests(manifests, target_namespace, &recording);
    let mut allowed = BTreeSet::new();
    for (kind, namespace, name) in recording.asked() {
        if allowed.contains(&(kind, namespace.clone())) {
            continue;
        }
        let permission = Permission::new("get", "", kind.resource(), Some(&namespace));
        let may = context
            .access
            .may(&identity, &permission)
            .await
            .map_err(|e| transient(&e, "SubjectAccessReview"))?;
        if !may {
            let refusal = Refusal {
                identity: identity.clone(),
                permission,
            };
            return Err(StepOutcome::Refused(Failure::new(
                FailureKind::Forbidden,
                format!(
                    "the revision reads {} {namespace}/{name}, which preflight would read on the app's behalf: {refusal}",
                    kind.kind()
                ),
            )));
        }
        allowed.insert((kind, namespace));
    }
    Ok(GuardedLookup::new(store, allowed))
}

/// The permissions the Runbook's gates need, each with the field that needs it: reads
/// in `target` (the target namespace) and, for `headersFrom`, Secrets of `own` (the
/// app's namespace).
pub fn runbook_permissions(runbook: &RunbookSpec, target: &str, own: &str) -> Vec<(String, Permission)> {
    let mut wanted = Vec::new();
    let service = |field: String| (field, Permission::new("get", "", "services", Some(target)));
    let secrets = |field: String| {
        (
            field,
            Permission::new("get", "", LookupKind::Secret.resource(), Some(own)),
        )
    };
    for (index, gate) in runbook.gates.iter().enumerate() {
        let at = format!("spec.gates[{index}]");
        if gate.logs.is_some() {
            wanted.push((
                format!("{at}.logs"),
                Permission::new("get", "", "pods", Some(target)).with_subresource("log"),
            ));
            wanted.push((
                format!("{at}.logs"),
                Permission::new("list", "", "pods", Some(target)),
            ));
        }
        if let Some(http) = &gate.http {
            if http.service.is_some() {
                wanted.push(service(format!("{at}.http.service")));
            }
            if !http.headers_from.is_empty() {
                wanted.push(secrets(format!("{at}.http.headersFrom")));
            }
        }
        if let Some(smoke) = &gate.smoke {
            for (step, smoke_step) in smoke.steps.iter().enumerate() {
                if smoke_step.request.service.is_some() {
                    wanted.push(service(format!("{at}.smoke.steps[{step}].service")));
                }
                if !smoke_step.request.headers_from.is_empty() {
                    wanted.push(secrets(format!("{at}.smoke.steps[{step}].headersFrom")));
                }
            }
        }
    }
    wanted
}

/// What the Runbook's gates read on the app's behalf, checked and read: a Runbook
/// problem when a gate reads what the app's identity may not read (a `logs` gate's
/// `pods/log`, a `service:` probe's Service in the target namespace, a `headersFrom`
/// Secret in the app's namespace); otherwise the `headersFrom` values, from the Secret
/// cache (a missing Secret or key is a Runbook problem too, fixed by creating it).
/// A review left unanswered (the API server unreachable) is no problem for what is read
/// with the app's own client anyway (logs), but nothing is read from a Secret on it.
pub async fn runbook_reads(
    context: &Context,
    app: &AppDeployment,
    runbook: &RunbookSpec,
) -> Result<SecretHeaders, Failure> {
    let namespace = app.namespace().unwrap_or_default();
    let runbook_name = app
        .spec
        .runbook_ref
        .as_ref()
        .map_or_else(|| "the Runbook".to_string(), |r| format!("Runbook {}", r.name));
    let problem = |what: String| {
        Failure::new(
            FailureKind::RunbookInvalid,
            format!(
                "{runbook_name} cannot be evaluated for {namespace}/{}: {what}",
                app.name_any()
            ),
        )
    };
    let identity = context
        .identity(app)
        .map_err(|failure| problem(failure.message))?;
    if identity != Identity::Controller {
        let target = super::AppNames::of(app).target_namespace;
        for (field, permission) in runbook_permissions(runbook, &target, &namespace) {
            let reads_secret = permission.resource == LookupKind::Secret.resource();
            match context.access.may(&identity, &permission).await {
                Ok(true) => {}
                Ok(false) => {
                    let refusal = Refusal { identity, permission };
                    return Err(problem(format!("{field} reads what the app may not: {refusal}")));
                }
                Err(error) if reads_secret => {
                    return Err(problem(format!(
                        "{field}: SubjectAccessReview unanswered: {}",
                        crate::failure::server_message(&error)
                    )));
                }
                Err(error) => {
                    warn!(error = %crate::failure::server_message(&error), "SubjectAccessReview for the Runbook's gates unanswered");
                }
            }
        }
    }
    if !crate::gates::secret_headers::reads_secrets(&runbook.gates) {
        return Ok(SecretHeaders::default());
    }
    SecretHeaders::read(&runbook.gates, &namespace, |name| {
        context.caches.secret(&namespace, name).map(|secret| {
            secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, value.0))
                .collect()
        })
    })
    .map_err(problem)
}

/// The namespaces of `keys` (`namespace/name`) whose Secrets the identity of `app`
/// may read: only those are looked at for a rotation. Unanswered: none.
pub async fn readable_secret_namespaces<'k>(
    context: &Context,
    app: &AppDeployment,
    keys: impl IntoIterator<Item = &'k String>,
) -> Option<BTreeSet<String>> {
    let identity = context.identity(app).ok()?;
    if identity == Identity::Controller {
        return None;
    }
    let namespaces: BTreeSet<&str> = keys
        .into_iter()
        .filter_map(|k| k.split_once('/').map(|(ns, _)| ns))
        .collect();
    let mut readable = BTreeSet::new();
    for namespace in namespaces {
        let permission = Permission::new("get", "", LookupKind::Secret.resource(), Some(namespace));
        if context.access.may(&identity, &permission).await.unwrap_or(false) {
            readable.insert(namespace.to_string());
        }
    }
    Some(readable)
}

/// Whether the identity of `app` may `get` Secrets in `namespace` (the controller: yes);
/// `Err` says why not, naming identity, verb, resource and namespace.
pub async fn may_read_secrets(context: &Context, app: &AppDeployment, namespace: &str) -> Result<(), String> {
    let identity = context.identity(app).map_err(|f| f.message)?;
    let permission = Permission::new("get", "", LookupKind::Secret.resource(), Some(namespace));
    match context.access.may(&identity, &permission).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal { identity, permission }.to_string()),
        Err(error) => Err(format!(
            "SubjectAccessReview unanswered: {}",
            crate::failure::server_message(&error)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_need_to_read_what_they_read_in_the_target_namespace() {
        let runbook: RunbookSpec = serde_json::from_value(serde_json::json!({
            "gates": [
                {"name": "up", "http": {"url": "http://example.com/"}},
                {"name": "svc", "http": {"service": "backend", "port": 80}},
                {"name": "worker", "logs": {"workload": "worker", "pattern": "started"}},
                {"name": "smoke", "smoke": {"steps": [
                    {"name": "a", "url": "http://example.com/"},
                    {"name": "b", "service": "backend", "port": 80}
                ]}},
            ],
        }))
        .unwrap();
        let wanted: Vec<(String, String)> = runbook_permissions(&runbook, "victim", "mine")
            .into_iter()
            .map(|(field, permission)| (field, permission.describe()))
            .collect();
        let expected = [
            ("spec.gates[1].http.service", "get services in namespace victim"),
            ("spec.gates[2].logs", "get pods/log in namespace victim"),
            ("spec.gates[2].logs", "list pods in namespace victim"),
            (
                "spec.gates[3].smoke.steps[1].service",
                "get services in namespace victim",
            ),
        ];
        assert_eq!(
            wanted,
            expected
                .iter()
                .map(|(f, p)| (f.to_string(), p.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(runbook_permissions(&RunbookSpec::default(), "victim", "mine").is_empty());
    }
}
