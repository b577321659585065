//! The executor: gathers what [`core::decide`] needs, carries out its decision,
//! and persists status before each step's side effects so a restart resumes the
//! step. The steps live beside it: [`super::observe`] (Runbook, Git),
//! [`super::deploy`] (render, apply, verify, healthy) and [`super::rollback`].

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span};

use super::status;
use super::{Context, Error, events, verify};
use crate::api::{
    AppDeployment, AppDeploymentStatus, FIELD_MANAGER, OperationKind, Phase, RunbookSpec, parse_duration,
    short_revision,
};
use crate::core::{self, Decision, DesiredRevision, Verification};

pub async fn reconcile(app: Arc<AppDeployment>, context: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any());
    let span = info_span!("reconcile", app = %key, revision = tracing::field::Empty);
    async move {
        let mut run = Reconciliation::new(app, &context, key);
        let action = run.run().await;
        // Whatever happened, what was learned is written back.
        run.save().await?;
        action
    }
    .instrument(span)
    .await
}

/// One pass over one AppDeployment.
pub(super) struct Reconciliation<'a> {
    pub(super) app: Arc<AppDeployment>,
    pub(super) context: &'a Context,
    pub(super) key: String,
    pub(super) namespace: String,
    /// The status as last written; `status` is the working copy.
    pub(super) saved: AppDeploymentStatus,
    pub(super) status: AppDeploymentStatus,
    pub(super) generation: Option<i64>,
}

impl<'a> Reconciliation<'a> {
    pub(super) fn new(app: Arc<AppDeployment>, context: &'a Context, key: String) -> Self {
        let status = app.status.clone().unwrap_or_default();
        Reconciliation {
            namespace: app.namespace().unwrap_or_default(),
            generation: app.metadata.generation,
            saved: status.clone(),
            status,
            app,
            context,
            key,
        }
    }

    pub(super) fn target_namespace(&self) -> String {
        self.app
            .spec
            .target_namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone())
    }

    pub(super) fn history_limit(&self) -> usize {
        self.app.spec.revision_history_limit.unwrap_or(10) as usize
    }

    pub(super) fn interval(&self) -> Duration {
        self.app
            .spec
            .source
            .git
            .interval
            .as_deref()
            .and_then(|text| parse_duration(text).ok())
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_secs(1))
    }

    pub(super) async fn run(&mut self) -> Result<Action, Error> {
        let runbook = self.load_runbook().await;
        let source = self.observe_source().await;
        let (runbook_spec, runbook_problem) = match runbook {
            Ok(spec) => (spec, None),
            Err(message) => (RunbookSpec::default(), Some(message)),
        };

        let mut next = self.interval();
        let verification = match (self.status.operation.clone(), &runbook_problem) {
            // Never verify against defaults: a revision must not pass without the
            // gates its Runbook asks for. It waits until the Runbook is readable.
            (Some(operation), Some(problem)) if operation.applied_at.is_some() => {
                let message = format!("verification paused: {problem}");
                if self.condition_message(crate::api::condition::GATES_PASSED) != Some(message.as_str()) {
                    status::set_gates_condition(
                        &mut self.status,
                        false,
                        "RunbookUnavailable",
                        &message,
                        self.generation,
                    );
                    self.event(true, "RunbookUnavailable", &message).await;
                }
                Verification::Pending
            }
            (Some(operation), None) if operation.applied_at.is_some() => {
                let round = verify::run_round(
                    self.context,
                    &self.key,
                    operation.kind,
                    &operation.revision,
                    &runbook_spec,
                    &self.status.inventory,
                    &self.target_namespace(),
                )
                .await;
                // The verdicts belong to the revision under test. A rollback's own
                // round is not recorded there: the failed revision's entry keeps the
                // verdicts that condemned it.
                if operation.kind == OperationKind::Deploy {
                    let phase = self.status.phase;
                    let gates = Some(round.gates);
                    status::update_history(&mut self.status, &operation.revision, phase, None, gates, false);
                }
                next = round.next;
                verify::past_deadline(round.outcome, &operation, &runbook_spec)
            }
            _ => Verification::NotRun,
        };
        let spec_problem = runbook_problem.or_else(|| self.spec_problem());

        // Every log line of this pass names the revision it is about.
        let revision_in_play = match (&self.status.operation, &source.desired) {
            (Some(operation), _) => Some(operation.revision.clone()),
            (None, DesiredRevision::Known { revision, .. }) => Some(revision.clone()),
            (None, DesiredRevision::Unavailable) => self.status.current_revision.clone(),
        };
        if let Some(revision) = revision_in_play {
            tracing::Span::current().record("revision", short_revision(&revision).as_str());
        }
        let spec_digest = self.app.spec.apply_digest();
        let decision = core::decide(&core::Input {
            spec_digest: &spec_digest,
            status: &self.status,
            generation: self.generation,
            suspended: self.app.spec.suspend,
            automatic_rollback: runbook_spec.automatic_rollback(),
            desired: source.desired.clone(),
            verification,
            spec_problem,
        });
        if decision != Decision::KeepVerifying && decision != Decision::Idle {
            info!(?decision, "decided");
        }
        self.status.observed_generation = self.generation;

        match decision {
            Decision::Idle => {
                self.resync_if_due().await?;
                Ok(self.idle_action())
            }
            Decision::Suspend => {
                status::set_phase(
                    &mut self.status,
                    Phase::Suspended,
                    "spec.suspend is set",
                    self.generation,
                );
                self.event(false, "Suspended", "spec.suspend is set: Git is not followed")
                    .await;
                Ok(Action::await_change())
            }
            Decision::BlockOnSpec { message } => {
                if self.status.phase != Phase::Blocked
                    || self.condition_message(crate::api::condition::READY) != Some(message.as_str())
                {
                    status::set_phase(&mut self.status, Phase::Blocked, &message, self.generation);
                    self.event(true, "Blocked", &message).await;
                }
                Ok(Action::requeue(self.interval()))
            }
            Decision::KeepVerifying => Ok(Action::requeue(next)),
            Decision::Deploy { revision } => {
                self.deploy(&revision, source.credentials.as_ref(), &runbook_spec)
                    .await?;
                Ok(Action::requeue(self.context.settings.verify_tick))
            }
            Decision::MarkHealthy { revision } => {
                self.mark_healthy(&revision).await?;
                Ok(Action::requeue(self.interval()))
            }
            Decision::RollBack {
                failed_revision,
                to,
                message,
            } => {
                self.start_rollback(&failed_revision, &to, &message).await?;
                self.apply_rollback(&to).await?;
                Ok(Action::requeue(self.context.settings.verify_tick))
            }
            Decision::ResumeRollback { to } => {
                self.apply_rollback(&to).await?;
                Ok(Action::requeue(self.context.settings.verify_tick))
            }
            Decision::FinishRollback { to } => {
                self.finish_rollback(&to).await?;
                Ok(Action::requeue(self.interval()))
            }
            Decision::Fail { revision, message } => {
                self.fail(&revision, &message).await?;
                Ok(Action::requeue(self.interval()))
            }
            Decision::Resume { phase } => {
                let message = format!("spec.suspend removed; {phase}");
                status::set_phase(&mut self.status, phase, &message, self.generation);
                self.save().await?;
                self.event(false, "Resumed", "spec.suspend removed: following Git again")
                    .await;
                Ok(Action::requeue(self.context.settings.verify_tick))
            }
            Decision::Adopt { revision } => {
                let message = format!("revision {} is running and healthy", short_revision(&revision));
                status::set_phase(&mut self.status, Phase::Healthy, &message, self.generation);
                self.save().await?;
                let note = format!(
                    "Git points at the running healthy revision {}",
                    short_revision(&revision)
                );
                self.event(false, "Healthy", &note).await;
                Ok(Action::requeue(self.interval()))
            }
        }
    }

    pub(super) fn idle_action(&self) -> Action {
        Action::requeue(self.interval())
    }

    pub(super) fn condition_message(&self, type_: &str) -> Option<&str> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.as_str())
    }

    pub(super) async fn event(&self, warning: bool, reason: &str, note: &str) {
        events::publish(self.context, &self.app, warning, reason, note).await;
    }

    /// Writes the status when it changed (server-side apply on the status subresource).
    pub(super) async fn save(&mut self) -> Result<(), Error> {
        if self.status == self.saved {
            return Ok(());
        }
        let api: Api<AppDeployment> = Api::namespaced(self.context.client.clone(), &self.namespace);
        let patch = json!({
            "apiVersion": AppDeployment::api_version(&()),
            "kind": AppDeployment::kind(&()),
            "status": self.status,
        });
        api.patch_status(
            &self.app.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.saved = self.status.clone();
        Ok(())
    }
}
