//! The executor: gathers what [`decide`] needs, carries out its decision, and
//! persists status before each step's side effects so a restart resumes the step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::status::{self, now_rfc3339};
use super::{Context, Error, events, verify};
use crate::api::{
    AppDeployment, AppDeploymentStatus, ClusterRunbook, FIELD_MANAGER, InventoryEntry, Operation,
    OperationKind, Phase, Runbook, RunbookKind, RunbookSpec, parse_duration, short_revision,
};
use crate::apply::{Applier, ApplyPlan};
use crate::core::{self, Decision, DesiredRevision, FailureResponse, Verification};
use crate::render::{self, Manifest};
use crate::snapshot;
use crate::source::Credentials;

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

/// Why a revision cannot be deployed now: retried, or held until Git or the spec
/// changes.
enum Rejection {
    Transient(String),
    Permanent(String),
}

/// API trouble that may pass (discovery, reads) is retried rather than blocking the
/// revision; what the server refused stays refused.
fn is_transient(error: &crate::apply::ApplyError) -> bool {
    matches!(
        error,
        crate::apply::ApplyError::Discovery { .. } | crate::apply::ApplyError::ReadFailed { .. }
    )
}

/// Verification undecided for longer than the Runbook's `progressDeadline` (counted
/// from the apply recorded in status, so a restart does not reset it) fails.
fn past_deadline(outcome: Verification, operation: &Operation, runbook: &RunbookSpec) -> Verification {
    let deadline = runbook.progress_deadline().unwrap_or(Duration::from_secs(600));
    let elapsed = operation
        .applied_at
        .as_deref()
        .and_then(status::parse_rfc3339)
        .and_then(|at| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(at)
                .try_into()
                .ok()
        })
        .unwrap_or(Duration::ZERO);
    match outcome {
        Verification::Pending if elapsed > deadline => Verification::Failed {
            message: format!(
                "verification did not finish within the progress deadline of {}s",
                deadline.as_secs()
            ),
        },
        other => other,
    }
}

/// Sorted union of two sorted inventories.
fn union(owned: &[InventoryEntry], planned: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let mut all: Vec<InventoryEntry> = owned.iter().chain(planned).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// One pass over one AppDeployment.
struct Reconciliation<'a> {
    app: Arc<AppDeployment>,
    context: &'a Context,
    key: String,
    namespace: String,
    /// The status as last written; `status` is the working copy.
    saved: AppDeploymentStatus,
    status: AppDeploymentStatus,
    generation: Option<i64>,
}

/// What a pass learned about the source before deciding.
struct SourceView {
    desired: DesiredRevision,
    credentials: Option<Credentials>,
}

impl<'a> Reconciliation<'a> {
    fn new(app: Arc<AppDeployment>, context: &'a Context, key: String) -> Self {
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

    fn target_namespace(&self) -> String {
        self.app
            .spec
            .target_namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone())
    }

    fn history_limit(&self) -> usize {
        self.app.spec.revision_history_limit.unwrap_or(10) as usize
    }

    fn interval(&self) -> Duration {
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

    async fn run(&mut self) -> Result<Action, Error> {
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
                past_deadline(round.outcome, &operation, &runbook_spec)
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

    fn idle_action(&self) -> Action {
        Action::requeue(self.interval())
    }

    fn condition_message(&self, type_: &str) -> Option<&str> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.as_str())
    }

    /// Problems with the spec itself, found without any I/O.
    fn spec_problem(&self) -> Option<String> {
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

    async fn load_runbook(&self) -> Result<RunbookSpec, String> {
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
    async fn observe_source(&mut self) -> SourceView {
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

    async fn source_failed(&mut self, reason: &str, message: &str) {
        let changed = status::set_source_condition(&mut self.status, false, reason, message, self.generation);
        if changed {
            warn!(reason, message, "source not ready");
            self.event(true, reason, message).await;
        }
        if self.status.phase == Phase::Fetching {
            status::set_phase(&mut self.status, Phase::Pending, message, self.generation);
        }
    }

    async fn load_credentials(&self) -> Result<Option<Credentials>, String> {
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

    /// Render and snapshot, record the attempt, apply, then start verifying.
    ///
    /// Whatever can reject the revision without touching the cluster (Git, render,
    /// snapshot, dry run) comes before the operation switches to it, so a revision
    /// still being verified keeps being verified when a newer commit is unusable.
    async fn deploy(
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
    fn switch_operation_to(&mut self, revision: &str) {
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

    async fn render(
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
    async fn apply(
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
    fn record_applied(&mut self, revision: &str, inventory: Vec<InventoryEntry>) {
        self.status.inventory = inventory;
        self.status.current_spec_digest = Some(self.app.spec.apply_digest());
        status::set_current_revision(&mut self.status, revision);
        if let Some(operation) = &mut self.status.operation {
            operation.applied_at = Some(now_rfc3339());
        }
    }

    /// Nothing of `revision` was applied: it waits for a new commit or a spec
    /// change. A different revision still being verified or rolled back carries on.
    async fn block(&mut self, revision: &str, message: &str) -> Result<(), Error> {
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

    async fn mark_healthy(&mut self, revision: &str) -> Result<(), Error> {
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

    /// Records the rollback before doing it: quarantine, history, operation.
    async fn start_rollback(&mut self, failed_revision: &str, to: &str, message: &str) -> Result<(), Error> {
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
    async fn apply_rollback(&mut self, to: &str) -> Result<(), Error> {
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

    async fn finish_rollback(&mut self, to: &str) -> Result<(), Error> {
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

    async fn fail(&mut self, revision: &str, message: &str) -> Result<(), Error> {
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

    /// Drift correction for an app at rest: re-apply its current revision from the
    /// snapshot once per interval. Unchanged objects are not sent, so an idle
    /// resync writes nothing.
    async fn resync_if_due(&mut self) -> Result<(), Error> {
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

    fn mark_resynced(&self) {
        self.context
            .last_resync
            .lock()
            .expect("resync map poisoned")
            .insert(self.key.clone(), Instant::now());
    }

    async fn retain_snapshots(&self) {
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

    async fn event(&self, warning: bool, reason: &str, note: &str) {
        events::publish(self.context, &self.app, warning, reason, note).await;
    }

    /// Writes the status when it changed (server-side apply on the status subresource).
    async fn save(&mut self) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_seconds_ago(seconds: i64) -> Operation {
        let at = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(seconds);
        Operation {
            kind: OperationKind::Deploy,
            revision: "r".into(),
            failed_revision: None,
            started_at: at.to_string(),
            applied_at: Some(at.to_string()),
        }
    }

    #[test]
    fn undecided_verification_fails_after_the_progress_deadline() {
        let runbook = RunbookSpec {
            progress_deadline: Some("30s".into()),
            ..Default::default()
        };
        let late = past_deadline(Verification::Pending, &applied_seconds_ago(31), &runbook);
        assert!(
            matches!(late, Verification::Failed { ref message } if message.contains("30s")),
            "{late:?}"
        );
        let in_time = past_deadline(Verification::Pending, &applied_seconds_ago(5), &runbook);
        assert_eq!(in_time, Verification::Pending);
        // A decided verification is never overridden.
        let passed = past_deadline(Verification::Passed, &applied_seconds_ago(31), &runbook);
        assert_eq!(passed, Verification::Passed);
    }

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
