//! What a pass observes before deciding: the Runbook, the spec's own validity,
//! and the Git tip (or pin) with its credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::{info, warn};

use super::reconcile::Reconciliation;
use super::status;
use crate::api::{ClusterRunbook, Phase, Runbook, RunbookKind, RunbookSpec, parse_duration, short_revision};
use crate::core::DesiredRevision;
use crate::source::Credentials;

/// What a pass learned about the source before deciding.
pub(super) struct SourceView {
    pub(super) desired: DesiredRevision,
    pub(super) credentials: Option<Credentials>,
}

impl Reconciliation<'_> {
    /// Problems with the spec itself, found without any I/O.
    pub(super) fn spec_problem(&self) -> Option<String> {
        let git = &self.app.spec.source.git;
        if let Some(interval) = &git.interval
            && let Err(e) = parse_duration(interval)
        {
            return Some(format!("spec.source.git.interval: {e}"));
        }
        if let Some(path) = &git.path
            && let Err(e) = crate::source::validate_path(path)
        {
            return Some(e.to_string());
        }
        None
    }

    pub(super) async fn load_runbook(&self) -> Result<RunbookSpec, String> {
        let Some(reference) = &self.app.spec.runbook_ref else {
            return Ok(RunbookSpec::default());
        };
        let found = match reference.kind {
            RunbookKind::Runbook => {
                let api: Api<Runbook> = Api::namespaced(self.context.client.clone(), &self.namespace);
                api.get_opt(&reference.name).await.map(|r| r.map(|r| r.spec))
            }
            RunbookKind::ClusterRunbook => {
                let api: Api<ClusterRunbook> = Api::all(self.context.client.clone());
                api.get_opt(&reference.name)
                    .await
                    .map(|r| r.map(|r| r.spec.runbook))
            }
        };
        let what = match reference.kind {
            RunbookKind::Runbook => format!("Runbook {}/{}", self.namespace, reference.name),
            RunbookKind::ClusterRunbook => format!("ClusterRunbook {}", reference.name),
        };
        match found {
            Ok(Some(spec)) => {
                spec.verify_window().map_err(|e| format!("{what}: {e}"))?;
                spec.progress_deadline().map_err(|e| format!("{what}: {e}"))?;
                Ok(spec)
            }
            Ok(None) => Err(format!("spec.runbookRef: {what} not found")),
            Err(e) => Err(format!("spec.runbookRef: reading {what}: {e}")),
        }
    }

    /// Resolves the Git tip (or the pin), recording `desiredRevision` and `SourceReady`.
    pub(super) async fn observe_source(&mut self) -> SourceView {
        // Loaded even while suspended: an operation in progress may still need Git.
        let credentials = match self.load_credentials().await {
            Ok(credentials) => credentials,
            Err(message) => {
                self.source_failed("CredentialsInvalid", &message).await;
                return SourceView {
                    desired: DesiredRevision::Unavailable,
                    credentials: None,
                };
            }
        };
        if self.app.spec.suspend {
            return SourceView {
                desired: DesiredRevision::Unavailable,
                credentials,
            };
        }
        let pinned = self.app.spec.pin.is_some();
        let reference = match &self.app.spec.pin {
            // A pin may be a short id: resolved like `ref.commit`, so status always
            // holds full ids that compare equal to history and quarantine entries.
            Some(pin) => crate::api::GitRef {
                commit: Some(pin.revision.clone()),
                ..Default::default()
            },
            None => self.app.spec.source.git.reference.clone(),
        };
        if self.status.phase == Phase::Pending && self.status.desired_revision.is_none() {
            status::set_phase(
                &mut self.status,
                Phase::Fetching,
                "fetching the Git source",
                self.generation,
            );
            let _ = self.save().await;
        }
        let git = &self.app.spec.source.git;
        // While a revision is verified the loop runs every second: reuse the last
        // fetch unless the interval has passed.
        match self
            .context
            .git
            .resolve(&git.url, &reference, credentials.as_ref(), self.interval())
            .await
        {
            Ok(resolved) => {
                let message = format!("{} at {}", resolved.reference, short_revision(&resolved.commit));
                let changed = status::set_source_condition(
                    &mut self.status,
                    true,
                    "Fetched",
                    &message,
                    self.generation,
                );
                if changed && self.status.desired_revision.as_deref() != Some(resolved.commit.as_str()) {
                    info!(revision = %resolved.commit, "new Git tip");
                }
                self.status.desired_revision = Some(resolved.commit.clone());
                SourceView {
                    desired: DesiredRevision::Known {
                        revision: resolved.commit,
                        pinned,
                    },
                    credentials,
                }
            }
            Err(error) => {
                self.source_failed(error.reason(), &error.to_string()).await;
                SourceView {
                    desired: DesiredRevision::Unavailable,
                    credentials,
                }
            }
        }
    }

    pub(super) async fn source_failed(&mut self, reason: &str, message: &str) {
        let changed = status::set_source_condition(&mut self.status, false, reason, message, self.generation);
        if changed {
            warn!(reason, message, "source not ready");
            self.event(true, reason, message).await;
        }
        if self.status.phase == Phase::Fetching {
            status::set_phase(&mut self.status, Phase::Pending, message, self.generation);
        }
    }

    pub(super) async fn load_credentials(&self) -> Result<Option<Credentials>, String> {
        let Some(secret_ref) = &self.app.spec.source.git.secret_ref else {
            return Ok(None);
        };
        let secrets: Api<Secret> = Api::namespaced(self.context.client.clone(), &self.namespace);
        let secret = secrets
            .get_opt(&secret_ref.name)
            .await
            .map_err(|e| {
                format!(
                    "spec.source.git.secretRef: reading Secret {}/{}: {e}",
                    self.namespace, secret_ref.name
                )
            })?
            .ok_or_else(|| {
                format!(
                    "spec.source.git.secretRef: Secret {}/{} not found",
                    self.namespace, secret_ref.name
                )
            })?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        Credentials::from_secret_data(&secret_ref.name, &data)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
