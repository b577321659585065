//! One pass over one AppDeployment: observe, then decide, record, persist and act, step
//! by step, until the decision is to wait.
//!
//! The order inside the loop is what makes every step resumable: a decision is written
//! into the status and persisted (with the `resourceVersion` it was computed from)
//! before a step that changes the cluster runs (an apply, a Job); the Events announcing
//! it follow; only then does the fault switch get its chance to stop the process, and
//! only then is the step run. Steps that only read (render, preflight, the inventory's
//! dry run, a verification round) are not preceded by a write: what one pass learns goes
//! out in one write when the pass ends, or before the next step that writes ([`persists_before`]).
//! A verification round that changes nothing a reader acts on (same operation, phase
//! and condition reasons) is carried to the next pass in memory ([`Unsaved`]) and goes
//! out with the write that ends the verification; lost with the process, it is taken
//! again from the last write (the step before it is repeated, and finds nothing to do).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use rand::Rng;
use tracing::{Instrument, info, info_span, warn};

use super::observe::{self, ValidatedRunbook};
use super::status_writer::{self, FINALIZER};
use super::steps::{self, StepInput};
use super::{AppNames, AppState, Context, Error, boundary, cleanup, job_steps, resync, verify};
use crate::api::{AppDeployment, AppDeploymentStatus, JobKind, RunbookSpec, Step, short_revision};
use crate::core::record::{self, Notice};
use crate::core::{self, Decision, DesiredRevision, Failure, Recheck, SourceRead, StepOutcome};
use crate::failure::{self, ApiErrorClass};
use crate::source::Credentials;

/// Decisions one pass may take before it yields (a safety net: a pass ends long before).
const MAX_DECISIONS: usize = 40;
/// How often a conflicting status write is re-read and decided again within one pass.
const CONFLICT_RETRIES: usize = 3;
/// How long a pass waits before looking at a running Job again if no watch event came.
const JOB_RECHECK: Duration = Duration::from_secs(10);
/// How soon a pass skipped for a lapsed leader claim is tried again (the Lease's
/// retry period).
const LEADER_LAPSED_REQUEUE: Duration = Duration::from_secs(2);

pub async fn reconcile(app: Arc<AppDeployment>, context: Arc<Context>) -> Result<Action, Error> {
    let key = app_key(&app);
    // Every log line of the pass names the app; the revision is recorded once known.
    let span = info_span!(
        "reconcile",
        namespace = %app.namespace().unwrap_or_default(),
        app = %app.name_any(),
        revision = tracing::field::Empty,
    );
    async move {
        let mut state = context.take_state(&key);
        let started = std::time::Instant::now();
        context.metrics.pass_started(&key);
        let result = reconcile_app(&app, &context, &key, &mut state).await;
        context.metrics.reconciled(&key, &result, started.elapsed());
        match &result {
            Ok(_) => state.errors = 0,
            Err(error) => {
                state.errors = state.errors.saturating_add(1);
                warn!(%error, attempt = state.errors, "pass failed; will retry");
            }
        }
        if state.forgotten {
            context.metrics.forget(&key);
        } else {
            context.put_state(&key, state);
        }
        result
    }
    .instrument(span)
    .await
}

pub fn app_key(app: &AppDeployment) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

async fn reconcile_app(
    app: &AppDeployment,
    context: &Context,
    key: &str,
    state: &mut AppState,
) -> Result<Action, Error> {
    // While the Lease's renewal is overdue (an API server outage) this replica neither
    // reads nor writes; it looks again once the claim may be back.
    if !context.leader.is_held() {
        return Ok(Action::requeue(LEADER_LAPSED_REQUEUE));
    }
    let namespace = app.namespace().unwrap_or_default();
    let api: Api<AppDeployment> = Api::namespaced(context.client.clone(), &namespace);
    let mut app = app.clone();
    // The watch may not have delivered our own last write yet: a copy older than it
    // would decide from the past. Read it fresh.
    if state
        .written_version
        .as_ref()
        .is_some_and(|written| app.resource_version().as_ref() != Some(written))
    {
        match api.get_opt(&app.name_any()).await? {
            Some(fresh) => app = fresh,
            None => return Ok(Action::await_change()),
        }
        state.written_version = app.resource_version();
    }
    if app.metadata.deletion_timestamp.is_some() {
        return cleanup::finalize(context, &api, &app, state).await;
    }
    if !app.finalizers().iter().any(|f| f == FINALIZER) {
        app = status_writer::set_finalizer(&context.leader, &api, &app, true).await?;
        state.written_version = app.resource_version();
    }
    for _ in 0..CONFLICT_RETRIES {
        // A decision the last pass could not write goes on from where it was, provided
        // nothing changed the app since it was computed.
        let (status, pending) = match state.unsaved.take() {
            Some(unsaved) if unsaved.computed_from == app.resource_version() => {
                if !unsaved.carried {
                    info!("writing the status an earlier pass could not write");
                }
                (unsaved.status, unsaved.notices)
            }
            // Written after all (the answer was lost), or changed by someone else:
            // decide anew from what is there.
            _ => (app.status.clone().unwrap_or_default(), Vec::new()),
        };
        let mut pass = Pass {
            context,
            api: &api,
            key,
            status,
            saved: app.status.clone().unwrap_or_default(),
            app: app.clone(),
            state,
            pending,
            next_round: None,
            logged_revision: None,
            notify: Vec::new(),
            secret_headers: Default::default(),
        };
        let result = pass.run().await;
        // An operation in progress has more passes coming: work pending.
        context
            .metrics
            .operation_in_progress(key, pass.status.operation.is_some());
        match result {
            Err(Error::Conflict) => {
                info!("status changed meanwhile; reading it again and deciding anew");
                match api.get_opt(&app.name_any()).await? {
                    Some(fresh) => app = fresh,
                    None => return Ok(Action::await_change()),
                }
                state.written_version = app.resource_version();
            }
            other => return other,
        }
    }
    Err(Error::Conflict)
}

/// A status computed from `computed_from` whose write got no answer (the API server
/// unreachable), and the Events announcing it. The next pass writes it rather than
/// decide from the older copy, so what happened meanwhile (a step retried while the
/// API server was down) is recorded once it is back.
pub(super) struct Unsaved {
    computed_from: Option<String>,
    status: AppDeploymentStatus,
    notices: Vec<Notice>,
    /// Carried on purpose (a verification round coalesced with the next write), not a
    /// write that got no answer.
    carried: bool,
}

/// One pass: the app as read, the status being worked on, and what was last saved.
struct Pass<'a> {
    context: &'a Context,
    api: &'a Api<AppDeployment>,
    key: &'a str,
    /// The app at the `resourceVersion` of the last read or write.
    app: AppDeployment,
    status: AppDeploymentStatus,
    saved: AppDeploymentStatus,
    state: &'a mut AppState,
    /// Events of an earlier pass's decision, published once it is written.
    pending: Vec<Notice>,
    /// When the verification round just run wants the next one.
    next_round: Option<Duration>,
    /// The revision the pass's log span names (recorded once it is known).
    logged_revision: Option<String>,
    /// The Runbook's webhooks (`spec.notify`), told of the phase changes this pass saves.
    notify: Vec<crate::api::Notify>,
    /// The `headersFrom` values of the Runbook's gates, read this pass as the app.
    secret_headers: crate::gates::SecretHeaders,
}

impl Pass<'_> {
    async fn run(&mut self) -> Result<Action, Error> {
        let (runbook, runbook_problem) = match observe::runbook(self.context, &self.app) {
            Ok(runbook) => (runbook, None),
            Err(problem) => (
                ValidatedRunbook {
                    spec: RunbookSpec::default(),
                    version: String::new(),
                },
                Some(problem),
            ),
        };
        self.notify = runbook.spec.notify.clone();
        let spec_problem = observe::spec_problem(self.context, &self.app);
        // The gates' reads in the target namespace must be the app identity's to make.
        let runbook_problem = match (&runbook_problem, &spec_problem) {
            (None, None) => match boundary::runbook_reads(self.context, &self.app, &runbook.spec).await {
                Ok(secret_headers) => {
                    self.secret_headers = secret_headers;
                    None
                }
                Err(problem) => Some(problem),
            },
            _ => runbook_problem,
        };
        // A source the spec may not use is not fetched at all (credentials over plain
        // HTTP would already be on the wire).
        let (source_read, credentials, source_problem) = match spec_problem {
            Some(_) => (SourceRead::NotRead, None, None),
            None => {
                let source = observe::source(self.context, &self.app, self.state, &self.status).await;
                (source.read, source.credentials, source.problem)
            }
        };
        let desired = source_read.desired();
        // A gate the egress policy refused is a Runbook problem until the Runbook changes.
        let refused = self
            .state
            .verification
            .as_ref()
            .and_then(|session| session.refusal(&runbook.version));
        let problem: Option<Failure> = spec_problem.or(source_problem).or(runbook_problem).or(refused);
        let mut notices: Vec<Notice> = std::mem::take(&mut self.pending);
        let interval = observe::interval(&self.app);
        let step_deadline = runbook
            .spec
            .progress_deadline()
            .unwrap_or(Duration::from_secs(600));
        let spec_digest = self.app.spec.apply_digest();
        let generation = self.app.metadata.generation;
        let plan = core::StepPlan {
            backup: runbook.spec.backup.is_some(),
            backup_optional: runbook.spec.backup.as_ref().is_some_and(|b| !b.required),
            migrate: runbook.spec.migrate.is_some(),
            migration_rollback: runbook.spec.migration_rollback_policy(),
        };
        let readable = if runbook.spec.rollout_on_secret_change() && !self.status.secret_digests.is_empty() {
            boundary::readable_secret_namespaces(self.context, &self.app, self.status.secret_digests.keys())
                .await
        } else {
            None
        };
        // Read only where the Runbook asks for rotations: the data of a Secret is looked
        // at for no other purpose.
        let secret_data = if runbook.spec.rollout_on_secret_change() {
            observe::secret_data(self.context, &self.status, readable.as_ref())
        } else {
            Default::default()
        };
        let pass_started = Timestamp::now();
        let history_limit = self.app.spec.revision_history_limit.unwrap_or(10) as usize;
        let source_notice = record::source_read(
            &mut self.status,
            &source_read,
            &record::RecordInput {
                now: pass_started,
                generation,
                history_limit,
                spec_digest: &spec_digest,
                desired: desired.revision(),
            },
        );
        if let (SourceRead::Failed { reason, message }, Some(_)) = (&source_read, &source_notice) {
            warn!(reason, message, "source not ready");
        }
        notices.extend(source_notice);
        // Taken once per pass: the re-check this pass makes must not make itself
        // "not due" before its result is decided on.
        let mut block_checked_at = self.state.last_block_check.map(|at| wall_time(pass_started, at));
        let config_changed_at = self
            .context
            .caches
            .config_changed_at(&AppNames::of(&self.app).target_namespace)
            .map(|at| wall_time(pass_started, at));

        let mut outcome: Option<StepOutcome> = None;
        let mut recheck: Option<Recheck> = None;
        for _ in 0..MAX_DECISIONS {
            let now = Timestamp::now();
            // One re-check per pass: once its result is decided on (a new block recorded,
            // say), the next check waits for the interval.
            let recheck_found = recheck.take();
            let rechecked = recheck_found.is_some();
            let decision = core::decide(&core::Input {
                status: &self.status,
                generation,
                suspended: self.app.spec.suspend,
                automatic_rollback: runbook.spec.automatic_rollback(),
                desired: desired.clone(),
                spec_digest: &spec_digest,
                problem: problem.clone(),
                outcome: outcome.take(),
                now,
                step_deadline,
                interval,
                block_checked_at,
                config_changed_at,
                recheck: recheck_found,
                plan,
                last_resync: self.state.last_resync.map(|at| wall_time(now, at)),
                rollout_on_secret_change: runbook.spec.rollout_on_secret_change(),
                secret_data: secret_data.clone(),
                retry: core::RetryRequest::from_annotations(self.app.annotations()),
            });
            if rechecked {
                // Its result decided on: the block counts as checked now.
                block_checked_at = Some(now);
            }
            self.name_revision_in_logs(&desired);
            if !matches!(
                decision,
                Decision::Wait
                    | Decision::Run(_)
                    | Decision::KeepVerifying { .. }
                    | Decision::BlockOnProblem(_)
                    | Decision::Resync { .. }
                    | Decision::DriftRepaired(_)
            ) {
                info!(decision = %describe(&decision), "decided");
            }
            let record_input = record::RecordInput {
                now,
                generation,
                history_limit,
                spec_digest: &spec_digest,
                desired: desired.revision(),
            };
            notices.extend(record::record(&mut self.status, &decision, &record_input));
            if let Decision::Block { message, .. } = &decision {
                // The status and the Event keep it normalised and within a budget.
                info!(%message, "the refusal in full");
            }
            // Persisted before a step that writes, and when the pass ends; with the fault
            // switch armed, at every boundary, so that a test aims at a recorded state.
            if persists_before(&decision) || self.context.fault.must_persist(&decision, &self.status) {
                self.save(&mut notices).await?;
                self.publish(&mut notices).await;
            }
            if matches!(decision, Decision::RollBack { .. }) {
                self.context
                    .metrics
                    .rollback_decided(&self.app.namespace().unwrap_or_default(), &self.app.name_any());
            }
            self.context.fault.after(self.key, &decision, &self.status);

            match decision {
                Decision::Run(step) => {
                    let done = self.run_step(step, &runbook, credentials.as_ref()).await?;
                    self.count_rollback_applied(&done);
                    outcome = Some(done);
                }
                Decision::RecheckBlock { ref revision } => {
                    self.state.last_block_check = Some(std::time::Instant::now());
                    let inventory = self.status.inventory.clone();
                    let found = steps::recheck(
                        self.context,
                        &self.app,
                        revision,
                        &inventory,
                        credentials.as_ref(),
                        &runbook.spec,
                    )
                    .await?;
                    if !matches!(found, Recheck::Clear) {
                        info!(?found, "blocked revision checked again: still in the way");
                    }
                    recheck = Some(found);
                }
                Decision::Resync {
                    ref revision,
                    ref snapshot,
                } => {
                    // Counted from the attempt: a repair that fails waits an interval too.
                    resync::mark_done(self.state);
                    let done = resync::run(
                        self.context,
                        &self.app,
                        revision,
                        snapshot,
                        &self.status,
                        &runbook.spec,
                    )
                    .await?;
                    outcome = Some(done);
                }
                ref continuing if continuing.continues() => {}
                Decision::Wait => {
                    if !self.state.snapshots_retained {
                        self.state.snapshots_retained = true;
                        resync::retain_snapshots(self.context, &self.app, &self.status).await;
                    }
                    return Ok(Action::requeue(interval));
                }
                Decision::KeepVerifying { .. } => {
                    self.carry_or_save(&mut notices).await?;
                    return Ok(Action::requeue(self.next_round.unwrap_or(Duration::from_secs(5))));
                }
                // The Job watch wakes the app when the Job ends; this is a safety net.
                Decision::AwaitJob { .. } => return Ok(Action::requeue(JOB_RECHECK)),
                Decision::Retry { .. } => {
                    let (attempt, elapsed) =
                        self.status.operation.as_ref().map_or((1, Duration::ZERO), |op| {
                            (op.attempt, record::elapsed_since(now, &op.step_started_at))
                        });
                    return Ok(Action::requeue(retry_delay(
                        backoff(attempt),
                        step_deadline,
                        elapsed,
                    )));
                }
                Decision::MarkHealthy { .. } | Decision::FinishRollback => {
                    self.state.verification = None;
                    resync::mark_done(self.state);
                    self.state.snapshots_retained = true;
                    resync::retain_snapshots(self.context, &self.app, &self.status).await;
                    return Ok(Action::requeue(interval));
                }
                // The verification is kept: it holds an egress refusal, the Runbook
                // problem reported until the Runbook changes.
                Decision::BlockOnProblem(_) => return Ok(Action::requeue(interval)),
                _ => {
                    self.state.verification = None;
                    return Ok(Action::requeue(interval));
                }
            }
        }
        warn!("a pass took {MAX_DECISIONS} decisions without coming to rest; yielding");
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    async fn run_step(
        &mut self,
        step: Step,
        runbook: &ValidatedRunbook,
        credentials: Option<&Credentials>,
    ) -> Result<StepOutcome, Error> {
        let Some(operation) = self.status.operation.clone() else {
            return Err(Error::internal("a step was decided without an operation"));
        };
        let input = StepInput {
            context: self.context,
            app: &self.app,
            operation: &operation,
            inventory: &self.status.inventory,
            credentials,
            runbook: &runbook.spec,
        };
        Ok(match step {
            Step::Render => steps::render(&input, self.state).await,
            Step::Snapshot => steps::snapshot(&input, self.state).await,
            Step::Preflight => steps::preflight(&input).await,
            Step::Backup => job_steps::run(&input, &runbook.spec, JobKind::Backup).await?,
            Step::Migrate => job_steps::run(&input, &runbook.spec, JobKind::Migrate).await?,
            Step::Downgrade => job_steps::run(&input, &runbook.spec, JobKind::Downgrade).await?,
            Step::Inventory => steps::inventory(&input).await?,
            Step::Apply => steps::apply(&input).await?,
            Step::Verify => {
                let target = AppNames::of(&self.app).target_namespace;
                let client = self.context.client_for(&self.app)?;
                let round = verify::round(
                    self.context,
                    &client,
                    &mut self.state.verification,
                    &operation,
                    &runbook.spec,
                    &runbook.version,
                    &self.status.inventory,
                    &target,
                    &self.secret_headers,
                )
                .await;
                self.next_round = Some(round.next);
                StepOutcome::Verified(round.verification)
            }
        })
    }

    /// Stops the clock of `bosun_time_to_rollback_seconds` when a rollback's apply
    /// step just finished.
    fn count_rollback_applied(&self, outcome: &StepOutcome) {
        let rolling_back = self
            .status
            .operation
            .as_ref()
            .is_some_and(|op| op.kind == crate::api::OperationKind::Rollback);
        if rolling_back && matches!(outcome, StepOutcome::Done(crate::core::StepResult::Applied(_))) {
            self.context
                .metrics
                .rollback_applied(&self.app.namespace().unwrap_or_default(), &self.app.name_any());
        }
    }

    /// Writes the status when it changed, conditional on the version it was computed
    /// from. When the write gets no answer, the status and the `notices` announcing it
    /// are kept for the next pass.
    async fn save(&mut self, notices: &mut Vec<Notice>) -> Result<(), Error> {
        if self.status == self.saved {
            return Ok(());
        }
        let version = match status_writer::save(&self.context.leader, self.api, &self.app, &self.status).await
        {
            Ok(version) => version,
            Err(Error::Kube(error)) if failure::class_of(&error) == ApiErrorClass::Transient => {
                self.state.unsaved = Some(Unsaved {
                    computed_from: self.app.resource_version(),
                    status: self.status.clone(),
                    notices: std::mem::take(notices),
                    carried: false,
                });
                return Err(Error::Kube(error));
            }
            Err(error) => return Err(error),
        };
        self.app.metadata.resource_version = Some(version.clone());
        self.state.written_version = Some(version);
        let before = std::mem::replace(&mut self.saved, self.status.clone());
        self.tell(&before).await;
        Ok(())
    }

    /// Ends a verification round: a round that changed nothing a reader acts on since the
    /// last write ([`carried_to_next_write`]) is kept for the next pass with its Events;
    /// any other is written now.
    async fn carry_or_save(&mut self, notices: &mut Vec<Notice>) -> Result<(), Error> {
        if self.status != self.saved && carried_to_next_write(&self.saved, &self.status) {
            self.state.unsaved = Some(Unsaved {
                computed_from: self.app.resource_version(),
                status: self.status.clone(),
                notices: std::mem::take(notices),
                carried: true,
            });
            return Ok(());
        }
        self.save(notices).await?;
        self.publish(notices).await;
        Ok(())
    }

    /// Tells the Runbook's webhooks of a phase change just saved. Delivery happens in
    /// the background and never holds the pass up; a receiver that cannot be resolved
    /// (its URL's Secret missing, or not the app identity's to read) is named, never
    /// with its URL, in the log and in a Warning Event on the app: the tenant is told.
    async fn tell(&self, before: &AppDeploymentStatus) {
        if self.notify.is_empty() {
            return;
        }
        let Some(event) = crate::notify::event_of(&self.app, before, &self.status) else {
            return;
        };
        let namespace = self.app.namespace().unwrap_or_default();
        // A `urlFrom` Secret is read only when the app's identity may read it.
        let wanted = crate::notify::receivers_of(&self.notify, event.phase);
        let (notify, mut problems): (Vec<_>, Vec<String>) = if crate::notify::secrets_read_by(&wanted)
            .is_empty()
        {
            (self.notify.clone(), Vec::new())
        } else {
            match boundary::may_read_secrets(self.context, &self.app, &namespace).await {
                Ok(()) => (self.notify.clone(), Vec::new()),
                Err(why) => {
                    let (inline, from_secret): (Vec<_>, Vec<_>) =
                        self.notify.iter().cloned().partition(|r| r.url_from.is_none());
                    let refused = from_secret
                            .iter()
                            .filter(|r| wanted.iter().any(|w| w.name == r.name))
                            .map(|r| {
                                format!(
                                    "notify receiver {}: spec.notify[].urlFrom names Secret {namespace}/{}, which is not read: {why}",
                                    r.name,
                                    r.url_from.as_ref().map(|f| f.name.as_str()).unwrap_or_default()
                                )
                            })
                            .collect();
                    (inline, refused)
                }
            }
        };
        let (receivers, more) =
            crate::notify::receivers_for(&self.context.client, &notify, &namespace, event.phase).await;
        problems.extend(more);
        for problem in problems {
            warn!(%problem, "a notification receiver was skipped");
            let notice = Notice {
                warning: true,
                reason: "NotificationSkipped",
                note: problem,
            };
            self.context.events.publish(&self.app, &notice).await;
        }
        // A receiver the egress policy refuses is the Runbook's to fix: the app's owner
        // hears of it (a Warning Event naming the receiver, the host and the rule, never
        // the URL's path), and it is not tried.
        let mut allowed = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            match self.context.notifier.refused(&receiver.url) {
                None => allowed.push(receiver),
                Some(refusal) => {
                    warn!(receiver = %receiver.name, "notification not sent: {refusal}");
                    let notice = Notice {
                        warning: true,
                        reason: "NotificationRefused",
                        note: format!("notification receiver {}: {refusal}; not sent", receiver.name),
                    };
                    self.context.events.publish(&self.app, &notice).await;
                }
            }
        }
        self.context.notifier.send(allowed, event);
    }

    async fn publish(&self, notices: &mut Vec<Notice>) {
        for notice in notices.drain(..) {
            self.context.events.publish(&self.app, &notice).await;
        }
    }

    /// Every log line of this pass names the revision it is about.
    fn name_revision_in_logs(&mut self, desired: &DesiredRevision) {
        let revision = match (&self.status.operation, desired) {
            (Some(operation), _) => Some(operation.revision.as_str()),
            (None, DesiredRevision::Known { revision, .. }) => Some(revision.as_str()),
            (None, DesiredRevision::Unavailable) => self.status.current_revision.as_deref(),
        };
        if let Some(revision) = revision
            && self.logged_revision.is_none()
        {
            let short = short_revision(revision);
            tracing::Span::current().record("revision", short.as_str());
            self.logged_revision = Some(short);
        }
    }
}

/// Whether `decision` is persisted as soon as it is recorded: before a step that changes
/// the cluster (so that a restart finds the step it was at), and when it ends the pass.
/// A decision that continues the pass, or leads to a step that only reads, goes out with
/// the next write. (Snapshot Secrets are written unrecorded: one nothing refers to is
/// deleted at the next start.)
fn persists_before(decision: &Decision) -> bool {
    match decision {
        Decision::Run(step) => matches!(step, Step::Apply | Step::Backup | Step::Migrate | Step::Downgrade),
        // A re-check only reads; its result is decided on in this same pass.
        Decision::RecheckBlock { .. } => false,
        // Ends with a verification round, coalesced or written then.
        Decision::KeepVerifying { .. } => false,
        other => !other.continues(),
    }
}

/// Whether a verification round's status may wait for the next write: the same
/// operation at its Verify step, in the same phase, with the same conditions (type,
/// status, reason), and `saved` at its Apply or Verify step. Only the gates' verdicts,
/// the messages and what the apply recorded differ: a rollback's apply, made after its
/// RollingBack was written, is recorded with the write that ends it.
fn carried_to_next_write(saved: &AppDeploymentStatus, status: &AppDeploymentStatus) -> bool {
    let (Some(before), Some(now)) = (&saved.operation, &status.operation) else {
        return false;
    };
    let conditions = |s: &AppDeploymentStatus| {
        let mut list: Vec<(String, String, String)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        list.sort();
        list
    };
    now.step == Step::Verify
        && matches!(before.step, Step::Apply | Step::Verify)
        && before.kind == now.kind
        && before.revision == now.revision
        && before.started_at == now.started_at
        && saved.phase == status.phase
        && saved.blocked == status.blocked
        && saved.quarantined == status.quarantined
        && conditions(saved) == conditions(status)
}

/// A decision in a log line: its name and revision, not every gate's message.
fn describe(decision: &Decision) -> String {
    match decision {
        Decision::StartDeploy { revision } => format!("deploy {}", short_revision(revision)),
        Decision::Advance(result, next) => format!("advance after {} to {}", step_of(result), next.step),
        Decision::RollBack {
            failed_revision, to, ..
        } => format!(
            "roll back from {} to {}",
            short_revision(failed_revision),
            short_revision(to)
        ),
        Decision::Block { revision, reason, .. } => {
            format!("block {} ({})", short_revision(revision), reason.as_str())
        }
        Decision::Fail { revision, .. } => format!("fail {}", short_revision(revision)),
        Decision::GiveUp { step, .. } => format!("give up at {step}"),
        Decision::Retry { step, .. } => format!("retry {step}"),
        Decision::MarkHealthy { .. } => "healthy".into(),
        Decision::FinishRollback => "rolled back".into(),
        Decision::Adopt { revision } => format!("adopt {}", short_revision(revision)),
        Decision::Resume { phase } => format!("resume ({phase})"),
        Decision::LiftQuarantine { revision } => {
            format!("lift the quarantine of {} on request", short_revision(revision))
        }
        Decision::RecheckBlock { revision } => format!("check blocked {} again", short_revision(revision)),
        Decision::StartRotation { secrets } => {
            format!(
                "roll out a change of Secret {}",
                secrets.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
        Decision::RejectRotation { .. } => "reject the Secret change".into(),
        Decision::Resync { revision, .. } => format!("repair drift of {}", short_revision(revision)),
        Decision::DriftRepaired(resynced) => format!(
            "drift repaired ({} re-applied, {} pruned)",
            resynced.sent.len(),
            resynced.pruned
        ),
        other => format!("{other:?}"),
    }
}

fn step_of(result: &crate::core::StepResult) -> &'static str {
    use crate::core::StepResult;
    match result {
        StepResult::Rendered { .. } => "render",
        StepResult::SnapshotStored { .. } => "snapshot",
        StepResult::Planned { .. } => "inventory",
        StepResult::Applied(_) => "apply",
        StepResult::PreflightPassed => "preflight",
        StepResult::JobFinished(job) => job.kind.as_str(),
    }
}

/// Per-app exponential back-off with jitter: 2 s, 4 s, 8 s, … up to 5 minutes, each
/// ±20%, so that many apps failing together do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(2).saturating_mul(1u32 << attempt.saturating_sub(1).min(8));
    let capped = base.min(Duration::from_secs(300));
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

/// The wall-clock time of `at`, a moment of this process taken before `now`.
fn wall_time(now: Timestamp, at: std::time::Instant) -> Timestamp {
    k8s_openapi::jiff::SignedDuration::try_from(at.elapsed())
        .ok()
        .and_then(|elapsed| now.checked_sub(elapsed).ok())
        .unwrap_or(now)
}

/// The back-off, but never past the step's deadline: the step is tried once more just
/// after the deadline and gives up then, not a whole back-off later (with a back-off of
/// up to 5 minutes, a 30 s deadline could otherwise pass by minutes).
fn retry_delay(backoff: Duration, step_deadline: Duration, elapsed: Duration) -> Duration {
    // A second past the deadline, so that the attempt then is past it.
    let until_past_deadline = step_deadline.saturating_sub(elapsed) + Duration::from_secs(1);
    backoff.min(until_past_deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_never_waits_past_the_step_deadline() {
        let secs = Duration::from_secs;
        // The back-off ends before the deadline: the back-off.
        assert_eq!(retry_delay(secs(4), secs(30), secs(2)), secs(4));
        assert_eq!(retry_delay(secs(16), secs(30), secs(14)), secs(16));
        // The back-off would end well past the deadline: just past it instead.
        assert_eq!(retry_delay(secs(32), secs(30), secs(28)), secs(3));
        // At or past the deadline (the step is about to give up): a second.
        assert_eq!(retry_delay(secs(32), secs(30), secs(30)), secs(1));
        assert_eq!(retry_delay(secs(32), secs(30), secs(45)), secs(1));
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        for attempt in 1..20 {
            let delay = backoff(attempt);
            let nominal =
                Duration::from_secs(2 * (1u64 << (attempt - 1).min(8))).min(Duration::from_secs(300));
            assert!(
                delay >= nominal.mul_f64(0.79) && delay <= nominal.mul_f64(1.21),
                "{attempt}: {delay:?}"
            );
        }
    }
}
