//! Deploying a revision: render and snapshot it, record the attempt, apply it,
//! verify it, and record it healthy; plus drift correction of an app at rest.

use std::time::Instant;

use kube::ResourceExt;
use tracing::warn;

use super::reconcile::Reconciliation;
use super::status::{self, now_rfc3339};
use super::{Error, verify};
use crate::api::{InventoryEntry, Operation, OperationKind, Phase, RunbookSpec, short_revision};
use crate::apply::{Applier, ApplyPlan};
use crate::core::{self, FailureResponse};
use crate::render::{self, Manifest};
use crate::snapshot;
use crate::source::Credentials;

/// Why a revision cannot be deployed now: retried, or held until Git or the spec
/// changes.
pub(super) enum Rejection {
    Transient(String),
    Permanent(String),
}

/// API trouble that may pass (discovery, reads) is retried rather than blocking the
/// revision; what the server refused stays refused.
pub(super) fn is_transient(error: &crate::apply::ApplyError) -> bool {
    matches!(
        error,
        crate::apply::ApplyError::Discovery { .. } | crate::apply::ApplyError::ReadFailed { .. }
    )
}

/// Sorted union of two sorted inventories.
pub(super) fn union(owned: &[InventoryEntry], planned: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let mut all: Vec<InventoryEntry> = owned.iter().chain(planned).cloned().collect();
    all.sort();
    all.dedup();
    all
}

impl Reconciliation<'_> {
    /// Render and snapshot, record the attempt, apply, then start verifying.
    ///
    /// Whatever can reject the revision without touching the cluster (Git, render,
    /// snapshot, dry run) comes before the operation switches to it, so a revision
    /// still being verified keeps being verified when a newer commit is unusable.
    pub(super) async fn deploy(
        &mut self,
        revision: &str,
        credentials: Option<&Credentials>,
        runbook: &RunbookSpec,
    ) -> Result<(), Error> {
        let short = short_revision(revision);
        let manifests = match self.render(revision, credentials).await {
            Ok(manifests) => manifests,
            Err(Rejection::Transient(message)) => return Err(Error::Internal(message)),
            Err(Rejection::Permanent(message)) => return self.block(revision, &message).await,
        };
        // The snapshot is written before anything is applied: a rollback to this
        // revision later never needs Git, and a crash after apply loses nothing.
        match snapshot::store(&self.context.client, &self.app, revision, &manifests).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => return self.block(revision, &error.to_string()).await,
        }

        // One history entry per attempt, also when a restart repeats this step.
        let first_attempt = status::open_entry(&mut self.status, revision).is_none();
        if first_attempt {
            let limit = self.history_limit();
            status::open_history(&mut self.status, revision, Phase::Applying, &now_rfc3339(), limit);
        }
        status::set_phase(
            &mut self.status,
            Phase::Applying,
            &format!("applying revision {short}"),
            self.generation,
        );
        self.save().await?;
        if first_attempt {
            self.event(false, "Applying", &format!("applying revision {short}"))
                .await;
        }

        let outcome = match self.apply(&manifests).await? {
            Ok(outcome) => outcome,
            Err(error) if is_transient(&error) => return Err(Error::Internal(error.to_string())),
            Err(error) if error.before_any_write() => return self.block(revision, &error.to_string()).await,
            Err(error) => {
                // Part of the revision may be live: treat it like a failed gate.
                self.switch_operation_to(revision);
                let message = format!("apply failed: {error}");
                return match core::failure_response(
                    &self.status,
                    runbook.automatic_rollback(),
                    revision,
                    &message,
                ) {
                    FailureResponse::RollBack {
                        failed_revision,
                        to,
                        message,
                    } => {
                        self.start_rollback(&failed_revision, &to, &message).await?;
                        self.apply_rollback(&to).await
                    }
                    FailureResponse::Fail { revision, message } => self.fail(&revision, &message).await,
                };
            }
        };
        self.switch_operation_to(revision);
        self.record_applied(revision, outcome.inventory);
        let message = format!(
            "revision {short} applied ({} sent, {} unchanged, {} pruned); verifying",
            outcome.sent.len(),
            outcome.unchanged,
            outcome.pruned.len()
        );
        status::set_phase(&mut self.status, Phase::Verifying, &message, self.generation);
        status::set_gates_condition(&mut self.status, false, "Verifying", &message, self.generation);
        status::update_history(
            &mut self.status,
            revision,
            Phase::Verifying,
            Some(&message),
            None,
            false,
        );
        self.save().await?;
        self.event(false, "Verifying", &message).await;
        Ok(())
    }

    /// `revision` is now the operation in progress; a revision it replaces (one that
    /// never proved itself) is closed in history as superseded.
    pub(super) fn switch_operation_to(&mut self, revision: &str) {
        if let Some(previous) = self.status.operation.clone()
            && previous.revision != revision
        {
            let message = format!("superseded by {}", short_revision(revision));
            status::update_history(
                &mut self.status,
                &previous.revision,
                Phase::Failed,
                Some(&message),
                None,
                true,
            );
        }
        let started_at = status::open_entry(&mut self.status, revision)
            .map(|entry| entry.started_at.clone())
            .unwrap_or_else(now_rfc3339);
        self.status.operation = Some(Operation {
            kind: OperationKind::Deploy,
            revision: revision.to_string(),
            failed_revision: None,
            started_at,
            applied_at: None,
        });
        verify::forget(self.context, &self.key);
    }

    pub(super) async fn render(
        &self,
        revision: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<Manifest>, Rejection> {
        let git = &self.app.spec.source.git;
        let files = self
            .context
            .git
            .files(&git.url, revision, git.path.as_deref(), credentials)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    Rejection::Transient(e.to_string())
                } else {
                    Rejection::Permanent(e.to_string())
                }
            })?;
        if files.is_empty() {
            return Err(Rejection::Permanent(format!(
                "no *.yaml, *.yml or *.json files under {:?} at revision {}",
                git.path.as_deref().unwrap_or("."),
                short_revision(revision)
            )));
        }
        render::render(&files).map_err(|e| Rejection::Permanent(e.to_string()))
    }

    /// Applies `manifests` as this app (impersonating its ServiceAccount when set).
    /// The outer error is a failure to build the client or to save status; the inner
    /// one the apply's.
    ///
    /// Objects are recorded in `status.inventory` before they are created (written
    /// ahead, merged with what is already owned): if the apply fails half-way or the
    /// controller dies, the rollback or the next revision still prunes them.
    pub(super) async fn apply(
        &mut self,
        manifests: &[Manifest],
    ) -> Result<Result<crate::apply::ApplyOutcome, crate::apply::ApplyError>, Error> {
        let client = self
            .context
            .apply_client(&self.namespace, self.app.spec.service_account_name.as_deref())?;
        let applier = Applier::with_discovery(client, self.context.discovery.clone());
        let target_namespace = self.target_namespace();
        let app_label = snapshot::app_label_value(&self.namespace, &self.app.name_any());
        let owned_before = self.status.inventory.clone();
        let owner = self.key.clone();
        let mut plan = ApplyPlan {
            manifests,
            default_namespace: &target_namespace,
            owner: &owner,
            app_label: &app_label,
            previous_inventory: &owned_before,
        };
        let planned = match applier.inventory(&plan).await {
            Ok(planned) => planned,
            Err(error) => return Ok(Err(error)),
        };
        let owned_ahead = union(&owned_before, &planned);
        if owned_ahead != owned_before {
            self.status.inventory = owned_ahead.clone();
            self.save().await?;
        }
        plan.previous_inventory = &owned_ahead;
        let result = applier.apply(plan).await;
        if matches!(&result, Err(error) if error.before_any_write()) {
            // Nothing was created: what is owned is what was owned before.
            self.status.inventory = owned_before;
        }
        Ok(result)
    }

    /// `revision` is live: it owns `inventory`, and verification counts from now.
    pub(super) fn record_applied(&mut self, revision: &str, inventory: Vec<InventoryEntry>) {
        self.status.inventory = inventory;
        self.status.current_spec_digest = Some(self.app.spec.apply_digest());
        status::set_current_revision(&mut self.status, revision);
        if let Some(operation) = &mut self.status.operation {
            operation.applied_at = Some(now_rfc3339());
        }
    }

    /// Nothing of `revision` was applied: it waits for a new commit or a spec
    /// change. A different revision still being verified or rolled back carries on.
    pub(super) async fn block(&mut self, revision: &str, message: &str) -> Result<(), Error> {
        warn!(revision, message, "revision blocked");
        let note = format!("revision {}: {message}", short_revision(revision));
        if status::open_entry(&mut self.status, revision).is_none() {
            let limit = self.history_limit();
            status::open_history(&mut self.status, revision, Phase::Blocked, &now_rfc3339(), limit);
        }
        status::update_history(
            &mut self.status,
            revision,
            Phase::Blocked,
            Some(message),
            None,
            true,
        );
        match self.status.operation.clone() {
            Some(operation) if operation.revision != revision && operation.applied_at.is_some() => {
                let phase = match operation.kind {
                    OperationKind::Deploy => Phase::Verifying,
                    OperationKind::Rollback => Phase::RollingBack,
                };
                let message = format!("{note}; still verifying {}", short_revision(&operation.revision));
                status::set_phase(&mut self.status, phase, &message, self.generation);
            }
            _ => {
                self.status.operation = None;
                status::set_phase(&mut self.status, Phase::Blocked, &note, self.generation);
            }
        }
        self.save().await?;
        self.event(true, "Blocked", &note).await;
        Ok(())
    }

    pub(super) async fn mark_healthy(&mut self, revision: &str) -> Result<(), Error> {
        let short = short_revision(revision);
        status::set_last_healthy_revision(&mut self.status, revision);
        self.status.operation = None;
        let message = format!("revision {short} passed every gate");
        status::update_history(
            &mut self.status,
            revision,
            Phase::Healthy,
            Some(&message),
            None,
            true,
        );
        status::set_phase(&mut self.status, Phase::Healthy, &message, self.generation);
        verify::forget(self.context, &self.key);
        self.save().await?;
        self.mark_resynced();
        self.event(false, "Healthy", &message).await;
        self.retain_snapshots().await;
        Ok(())
    }

    pub(super) async fn retain_snapshots(&self) {
        let mut keep: Vec<String> = self
            .status
            .history
            .iter()
            .filter(|entry| entry.phase == Phase::Healthy)
            .map(|entry| entry.revision.clone())
            .collect();
        keep.extend(self.status.current_revision.clone());
        keep.extend(self.status.last_healthy_revision.clone());
        if let Err(error) = snapshot::retain(&self.context.client, &self.app, &keep).await {
            warn!(%error, "could not delete old snapshots");
        }
    }

    /// Drift correction for an app at rest: re-apply its current revision from the
    /// snapshot once per interval. Unchanged objects are not sent, so an idle
    /// resync writes nothing.
    pub(super) async fn resync_if_due(&mut self) -> Result<(), Error> {
        if !matches!(self.status.phase, Phase::Healthy | Phase::RolledBack) {
            return Ok(());
        }
        let Some(current) = self.status.current_revision.clone() else {
            return Ok(());
        };
        let due = self
            .context
            .last_resync
            .lock()
            .expect("resync map poisoned")
            .get(&self.key)
            .is_none_or(|at| at.elapsed() >= self.interval());
        if !due {
            return Ok(());
        }
        self.mark_resynced();
        let manifests = match snapshot::load(&self.context.client, &self.app, &current).await {
            Ok(manifests) => manifests,
            Err(error) => {
                warn!(%error, "resync skipped: no snapshot of the current revision");
                return Ok(());
            }
        };
        match self.apply(&manifests).await? {
            Ok(outcome) => {
                if !outcome.sent.is_empty() || !outcome.pruned.is_empty() {
                    let message = format!(
                        "corrected drift of revision {}: {} objects re-applied, {} pruned",
                        short_revision(&current),
                        outcome.sent.len(),
                        outcome.pruned.len()
                    );
                    self.event(false, "DriftCorrected", &message).await;
                }
                self.status.inventory = outcome.inventory;
            }
            Err(error) => warn!(%error, "resync failed"),
        }
        Ok(())
    }

    pub(super) fn mark_resynced(&self) {
        self.context
            .last_resync
            .lock()
            .expect("resync map poisoned")
            .insert(self.key.clone(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_keeps_every_entry_once_sorted() {
        let entry = |name: &str| InventoryEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        };
        assert_eq!(
            union(&[entry("a"), entry("c")], &[entry("b"), entry("c")]),
            vec![entry("a"), entry("b"), entry("c")]
        );
    }
}
