//! What a pass observes before deciding: the Runbook (from the watch cache, validated),
//! the spec's own validity, and the Git tip (or pin) with its credentials.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tracing::info;

use super::{AppState, Context, ReadCredentials};
use crate::api::{
    AppDeployment, AppDeploymentStatus, RunbookKind, RunbookSpec, describe_problems, parse_duration,
};
use crate::core::{Failure, FailureKind, SourceRead};
use crate::source::{Credentials, SourceError, SourcePolicy};

/// The spec of the Runbook (or ClusterRunbook) an app deploys with, validated, and the
/// version it was read at (an edit restarts verification).
pub struct ValidatedRunbook {
    pub spec: RunbookSpec,
    pub version: String,
}

/// The app's Runbook from the cache, validated. No `runbookRef`: the defaults (the
/// workload gate alone). A Runbook that is missing or invalid is a problem that blocks
/// the app, never one that fails a revision.
pub fn runbook(context: &Context, app: &AppDeployment) -> Result<ValidatedRunbook, Failure> {
    let Some(reference) = &app.spec.runbook_ref else {
        return Ok(ValidatedRunbook {
            spec: RunbookSpec::default(),
            version: String::new(),
        });
    };
    let namespace = app.namespace().unwrap_or_default();
    let what = match reference.kind {
        RunbookKind::Runbook => format!("Runbook {namespace}/{}", reference.name),
        RunbookKind::ClusterRunbook => format!("ClusterRunbook {}", reference.name),
    };
    let Some((spec, version)) = context
        .caches
        .runbook(reference.kind, &namespace, &reference.name)
    else {
        // Left out of the watch (a field of the wrong type or range): say why.
        let message = match context
            .caches
            .unreadable_runbook(reference.kind, &namespace, &reference.name)
        {
            Some(error) => format!("spec.runbookRef: {what} cannot be read: {error}"),
            None => format!("spec.runbookRef: {what} not found"),
        };
        return Err(Failure::new(FailureKind::RunbookInvalid, message));
    };
    let mut problems = spec.validate().err().unwrap_or_default();
    if reference.kind == RunbookKind::ClusterRunbook {
        problems.extend(crate::api::cluster_credential_problems(&spec));
    }
    problems.extend(pattern_problems(&spec));
    if !problems.is_empty() {
        return Err(Failure::new(
            FailureKind::RunbookInvalid,
            format!("{what} cannot be evaluated: {}", describe_problems(&problems)),
        ));
    }
    Ok(ValidatedRunbook { spec, version })
}

/// The regular expressions of a Runbook (`logs` gates, env policies) that do not
/// compile: `bosun-core` has no regex engine, so they are checked here, before any
/// revision is judged with them.
fn pattern_problems(spec: &RunbookSpec) -> Vec<crate::api::RunbookProblem> {
    let logs = spec.gates.iter().enumerate().filter_map(|(index, gate)| {
        let pattern = &gate.logs.as_ref()?.pattern;
        Some((format!("spec.gates[{index}].logs.pattern"), pattern.clone()))
    });
    let env = spec.env.iter().enumerate().filter_map(|(index, rule)| {
        let pattern = rule.policy.as_ref()?.pattern.as_ref()?;
        Some((format!("spec.env[{index}].policy.pattern"), pattern.clone()))
    });
    logs.chain(env)
        .filter_map(|(field, pattern)| {
            let error = regex::Regex::new(&pattern).err()?;
            let reason = error
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            Some(crate::api::RunbookProblem {
                field,
                message: format!("{pattern:?} is not a regular expression ({reason})"),
            })
        })
        .collect()
}

/// Problems with the spec itself, found without I/O: what the controller will not do.
pub fn spec_problem(context: &Context, app: &AppDeployment) -> Option<Failure> {
    let git = &app.spec.source.git;
    let invalid = |message: String| Some(Failure::new(FailureKind::SpecInvalid, message));
    if let Some(interval) = &git.interval
        && let Err(e) = parse_duration(interval)
    {
        return invalid(format!("spec.source.git.interval: {e}"));
    }
    if let Some(path) = &git.path
        && let Err(e) = crate::source::validate_path(path)
    {
        return invalid(e.to_string());
    }
    if let Some(name) = &app.spec.service_account_name
        && let Some(problem) = crate::api::service_account_name_problem(name)
    {
        return invalid(problem);
    }
    if let Err(problem) = context.identity(app) {
        return Some(problem);
    }
    let policy = SourcePolicy {
        allow_file_sources: context.settings.allow_file_sources,
    };
    if let Err(e) = crate::source::check_policy(&git.url, git.secret_ref.is_some(), git.insecure, policy) {
        return invalid(e.to_string());
    }
    None
}

/// How often the app looks for a new commit (and corrects drift).
pub fn interval(app: &AppDeployment) -> Duration {
    app.spec
        .source
        .git
        .interval
        .as_deref()
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1))
}

/// What [`source`] observed: what reading the source found (written into the status
/// by [`crate::core::record::source_read`]), the credentials, and a problem that blocks
/// the app (the repository exceeds a budget: the tenant's to fix, not a reason to wait
/// silently).
pub struct Source {
    pub read: SourceRead,
    pub credentials: Option<Credentials>,
    pub problem: Option<Failure>,
}

/// Resolves the Git tip (or the pin). The fetch is this app's own, with its own
/// credentials (see `crate::source`): a clone fetched with another app's credentials
/// is never read for it. `status` is what was recorded (for the log only).
pub async fn source(
    context: &Context,
    app: &AppDeployment,
    state: &mut AppState,
    status: &AppDeploymentStatus,
) -> Source {
    let credentials = match credentials(context, app, state).await {
        Ok(credentials) => credentials,
        Err(message) => {
            return Source {
                read: SourceRead::Failed {
                    reason: "CredentialsInvalid",
                    message,
                },
                credentials: None,
                problem: None,
            };
        }
    };
    if app.spec.suspend {
        return Source {
            read: SourceRead::NotRead,
            credentials,
            problem: None,
        };
    }
    let pinned = app.spec.pin.is_some();
    let reference = match &app.spec.pin {
        // A pin may be a short id: resolved like `ref.commit`, so status always holds
        // full ids that compare equal to history and quarantine entries.
        Some(pin) => crate::api::GitRef {
            commit: Some(pin.revision.clone()),
            ..Default::default()
        },
        None => app.spec.source.git.reference.clone(),
    };
    let git = &app.spec.source.git;
    let user = super::pass::app_key(app);
    match context
        .git
        .resolve_as(&user, &git.url, &reference, credentials.as_ref(), interval(app))
        .await
    {
        Ok(resolved) => {
            if status.desired_revision.as_deref() != Some(resolved.commit.as_str()) {
                info!(revision = %resolved.commit, "new Git tip");
            }
            Source {
                read: SourceRead::Resolved {
                    reference: resolved.reference,
                    revision: resolved.commit,
                    pinned,
                },
                credentials,
                problem: None,
            }
        }
        Err(error) => {
            let message = error.to_string();
            let problem = matches!(error, SourceError::BudgetExceeded { .. }).then(|| {
                Failure::new(
                    FailureKind::SpecInvalid,
                    format!("{}: {message}", crate::source::field::URL),
                )
            });
            Source {
                read: SourceRead::Failed {
                    reason: error.reason(),
                    message,
                },
                credentials,
                problem,
            }
        }
    }
}

/// The Git credentials of `spec.source.git.secretRef`, read at most once per interval.
async fn credentials(
    context: &Context,
    app: &AppDeployment,
    state: &mut AppState,
) -> Result<Option<Credentials>, String> {
    let Some(secret_ref) = &app.spec.source.git.secret_ref else {
        return Ok(None);
    };
    if let Some(read) = &state.credentials
        && read.secret == secret_ref.name
        && read.read_at.elapsed() < interval(app)
    {
        return Ok(Some(read.credentials.clone()));
    }
    let namespace = app.namespace().unwrap_or_default();
    // Read on the app's behalf: only a Secret its identity may read.
    super::boundary::may_read_secrets(context, app, &namespace)
        .await
        .map_err(|why| {
            format!(
                "spec.source.git.secretRef: Secret {namespace}/{} is not read: {why}",
                secret_ref.name
            )
        })?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            format!(
                "spec.source.git.secretRef: reading Secret {namespace}/{}: {}",
                secret_ref.name,
                crate::failure::server_message(&e)
            )
        })?
        .ok_or_else(|| {
            format!(
                "spec.source.git.secretRef: Secret {namespace}/{} not found",
                secret_ref.name
            )
        })?;
    let credentials = Credentials::from_secret(&secret_ref.name, secret).map_err(|e| e.to_string())?;
    state.credentials = Some(ReadCredentials {
        read_at: Instant::now(),
        secret: secret_ref.name.clone(),
        credentials: credentials.clone(),
    });
    Ok(Some(credentials))
}

/// The digest of the data every Secret of `status.secretDigests` holds now, from the
/// watch cache (`namespace/name` → digest), when the Runbook rolls on a change; which
/// changes count as a rotation is [`crate::core`]'s to decide. A Secret that is gone
/// is left out. Only Secrets of `readable` namespaces are looked at (`None`: every
/// one, for the controller's own identity): the app's identity may read them (see
/// `boundary`).
pub fn secret_data(
    context: &Context,
    status: &crate::api::AppDeploymentStatus,
    readable: Option<&std::collections::BTreeSet<String>>,
) -> std::collections::BTreeMap<String, String> {
    status
        .secret_digests
        .keys()
        .filter_map(|key| {
            let (namespace, name) = key.split_once('/')?;
            if readable.is_some_and(|readable| !readable.contains(namespace)) {
                return None;
            }
            let secret = context.caches.secret(namespace, name)?;
            let data = secret
                .data
                .iter()
                .flatten()
                .map(|(key, value)| (key.clone(), value.0.clone()))
                .collect();
            Some((key.clone(), crate::preflight::secret_data_digest(&data)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_do_not_compile_are_runbook_problems_naming_the_field() {
        let spec: RunbookSpec = serde_json::from_value(serde_json::json!({
            "gates": [{"name": "worker", "logs": {"workload": "worker", "pattern": "EnrichmentWorker (started"}}],
            "env": [
                {"name": "A", "policy": {"pattern": "^[a-z]+$"}},
                {"name": "B", "policy": {"pattern": "[unclosed"}},
            ],
        }))
        .unwrap();
        let problems = pattern_problems(&spec);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.gates[0].logs.pattern", "spec.env[1].policy.pattern"]
        );
        assert!(
            problems[0].message.contains("is not a regular expression"),
            "{problems:?}"
        );
    }
}
