//! Flipping back: quarantine the failed revision, apply the last healthy snapshot
//! (no Git involved), verify it; or fail when there is nothing to flip to.

use tracing::{info, warn};

use super::reconcile::Reconciliation;
use super::status::{self, now_rfc3339};
use super::{Error, verify};
use crate::api::{Operation, OperationKind, Phase, short_revision};
use crate::snapshot;

impl Reconciliation<'_> {
    /// Records the rollback before doing it: quarantine, history, operation.
    pub(super) async fn start_rollback(
        &mut self,
        failed_revision: &str,
        to: &str,
        message: &str,
    ) -> Result<(), Error> {
        warn!(failed_revision, to, message, "rolling back");
        status::quarantine(&mut self.status, failed_revision, message, self.generation);
        status::update_history(
            &mut self.status,
            failed_revision,
            Phase::RollingBack,
            Some(message),
            None,
            false,
        );
        status::set_gates_condition(&mut self.status, false, "GateFailed", message, self.generation);
        self.status.operation = Some(Operation {
            kind: OperationKind::Rollback,
            revision: to.to_string(),
            failed_revision: Some(failed_revision.to_string()),
            started_at: now_rfc3339(),
            applied_at: None,
        });
        let note = format!(
            "revision {} failed ({message}); rolling back to {}",
            short_revision(failed_revision),
            short_revision(to)
        );
        status::set_phase(&mut self.status, Phase::RollingBack, &note, self.generation);
        verify::forget(self.context, &self.key);
        self.save().await?;
        self.event(true, "RollingBack", &note).await;
        Ok(())
    }

    /// Applies the last healthy snapshot: no Git involved.
    pub(super) async fn apply_rollback(&mut self, to: &str) -> Result<(), Error> {
        let manifests = match snapshot::load(&self.context.client, &self.app, to).await {
            Ok(manifests) => manifests,
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                // Without the snapshot there is nothing to flip to.
                let message = format!("cannot roll back to {}: {error}", short_revision(to));
                return self.fail(to, &message).await;
            }
        };
        match self.apply(&manifests).await? {
            Ok(outcome) => {
                self.record_applied(to, outcome.inventory);
                self.save().await?;
                info!(to, sent = outcome.sent.len(), "last healthy revision applied");
                Ok(())
            }
            // Retried by the error policy; the operation in status keeps the intent,
            // and the condition and an Event say why it is not done yet.
            Err(error) => {
                let message = format!("rolling back to {} keeps failing: {error}", short_revision(to));
                if self.condition_message(crate::api::condition::READY) != Some(message.as_str()) {
                    status::set_phase(&mut self.status, Phase::RollingBack, &message, self.generation);
                    self.save().await?;
                    self.event(true, "RollbackFailing", &message).await;
                }
                Err(Error::Internal(message))
            }
        }
    }

    pub(super) async fn finish_rollback(&mut self, to: &str) -> Result<(), Error> {
        let failed = self
            .status
            .operation
            .as_ref()
            .and_then(|op| op.failed_revision.clone());
        self.status.operation = None;
        let message = match &failed {
            Some(failed) => format!(
                "rolled back from {} to last healthy revision {}",
                short_revision(failed),
                short_revision(to)
            ),
            None => format!("rolled back to last healthy revision {}", short_revision(to)),
        };
        if let Some(failed) = &failed {
            status::update_history(&mut self.status, failed, Phase::RolledBack, None, None, true);
        }
        status::set_phase(&mut self.status, Phase::RolledBack, &message, self.generation);
        verify::forget(self.context, &self.key);
        self.mark_resynced();
        self.save().await?;
        self.event(true, "RolledBack", &message).await;
        Ok(())
    }

    pub(super) async fn fail(&mut self, revision: &str, message: &str) -> Result<(), Error> {
        warn!(revision, message, "revision failed");
        let failed_revision = self
            .status
            .operation
            .as_ref()
            .and_then(|op| op.failed_revision.clone())
            .unwrap_or_else(|| revision.to_string());
        self.status.operation = None;
        status::quarantine(&mut self.status, &failed_revision, message, self.generation);
        status::update_history(
            &mut self.status,
            &failed_revision,
            Phase::Failed,
            Some(message),
            None,
            true,
        );
        status::set_gates_condition(&mut self.status, false, "GateFailed", message, self.generation);
        status::set_phase(&mut self.status, Phase::Failed, message, self.generation);
        verify::forget(self.context, &self.key);
        self.save().await?;
        self.event(
            true,
            "Failed",
            &format!("revision {}: {message}", short_revision(&failed_revision)),
        )
        .await;
        Ok(())
    }
}
