//! The steps of an operation, each idempotent, each reporting a typed
//! [`StepOutcome`]: render, snapshot and preflight (a Deploy's first three), inventory
//! and apply (both operations; a Rollback works from the last healthy snapshot). The
//! Job steps are in [`super::job_steps`]. What follows an outcome is decided by
//! [`crate::core::decide`], never here.

use std::sync::Arc;

use kube::ResourceExt;

use super::{AppNames, AppState, Context, Error, RenderedManifests};
use crate::api::{AppDeployment, Operation, RunbookSpec, short_revision};
use crate::core::{Applied, Failure, FailureKind, Recheck, StepOutcome, StepResult};
use crate::failure::Classified;
use crate::gates::capture_baseline;
use crate::preflight;
use crate::render::{self, Manifest};
use crate::snapshot;
use crate::source::Credentials;

/// Everything a step needs about the app, gathered once per pass.
pub struct StepInput<'a> {
    pub context: &'a Context,
    pub app: &'a AppDeployment,
    pub operation: &'a Operation,
    /// What the app owns now (status.inventory).
    pub inventory: &'a [crate::api::InventoryEntry],
    pub credentials: Option<&'a Credentials>,
    pub runbook: &'a RunbookSpec,
}

impl StepInput<'_> {
    /// The operation's snapshot as it is applied, with the Secret digests of now.
    async fn prepare(&self) -> Result<Prepared, StepOutcome> {
        prepare(
            self.context,
            self.app,
            self.operation.snapshot.as_deref(),
            &self.operation.revision,
            self.runbook,
            None,
        )
        .await
    }
}

/// Reads the revision's files from Git and parses them.
pub async fn render(step: &StepInput<'_>, state: &mut AppState) -> StepOutcome {
    let revision = &step.operation.revision;
    match render_manifests(step, revision).await {
        Ok(manifests) => {
            let objects = manifests.len();
            let render_digest = step.app.spec.render_digest();
            state.rendered = Some(RenderedManifests {
                key: format!("{revision}/{render_digest}"),
                manifests: Arc::new(manifests),
            });
            StepOutcome::Done(StepResult::Rendered {
                render_digest,
                objects,
            })
        }
        Err(outcome) => outcome,
    }
}

async fn render_manifests(step: &StepInput<'_>, revision: &str) -> Result<Vec<Manifest>, StepOutcome> {
    let git = &step.app.spec.source.git;
    let files = step
        .context
        .git
        .files(&git.url, revision, git.path.as_deref(), step.credentials)
        .await
        .map_err(|e| StepOutcome::from(e.classify()))?;
    if files.is_empty() {
        return Err(StepOutcome::Refused(Failure::new(
            FailureKind::RevisionInvalid,
            format!(
                "no *.yaml, *.yml or *.json files under {:?} at revision {}",
                git.path.as_deref().unwrap_or("."),
                short_revision(revision)
            ),
        )));
    }
    render::render(&files)
        .map_err(|e| StepOutcome::Refused(Failure::new(FailureKind::RevisionInvalid, e.to_string())))
}

/// Stores the rendered manifests in a Secret: the later steps, and any rollback to this
/// revision, read them from there, never from Git.
pub async fn snapshot(step: &StepInput<'_>, state: &mut AppState) -> StepOutcome {
    let revision = &step.operation.revision;
    let render_digest = step
        .operation
        .render_digest
        .clone()
        .unwrap_or_else(|| step.app.spec.render_digest());
    let key = format!("{revision}/{render_digest}");
    let manifests = match &state.rendered {
        Some(rendered) if rendered.key == key => rendered.manifests.clone(),
        // Rendered by a controller that stopped since: render again (same files).
        _ => match render_manifests(step, revision).await {
            Ok(manifests) => Arc::new(manifests),
            Err(outcome) => return outcome,
        },
    };
    // The snapshot Secret is written as the controller itself: the claim is checked
    // here as `client_for` checks it for applies and Jobs.
    if let Err(error) = step.context.leader.check("the revision snapshot") {
        return StepOutcome::Transient(error.to_string());
    }
    match snapshot::store(
        &step.context.client,
        step.app,
        revision,
        &render_digest,
        &manifests,
    )
    .await
    {
        Ok(name) => {
            state.rendered = None;
            StepOutcome::Done(StepResult::SnapshotStored { name })
        }
        Err(error) => StepOutcome::from(error.classify()),
    }
}

/// The manifests of the operation's snapshot, from the watch cache or the API server.
async fn manifests(step: &StepInput<'_>) -> Result<Arc<Vec<Manifest>>, StepOutcome> {
    snapshot_manifests(
        step.context,
        step.app,
        step.operation.snapshot.as_deref(),
        &step.operation.revision,
    )
    .await
}

/// The manifests of snapshot `name` of `revision`, from the watch cache or the API server.
async fn snapshot_manifests(
    context: &Context,
    app: &AppDeployment,
    name: Option<&str>,
    revision: &str,
) -> Result<Arc<Vec<Manifest>>, StepOutcome> {
    let Some(name) = name else {
        return Err(StepOutcome::Refused(Failure::new(
            FailureKind::RevisionInvalid,
            format!("no snapshot recorded for revision {}", short_revision(revision)),
        )));
    };
    let namespace = app.namespace().unwrap_or_default();
    let loaded = match context.caches.snapshot(&namespace, name, revision) {
        Some(cached) => cached,
        None => snapshot::load(&context.client, &namespace, name, revision)
            .await
            .map(Arc::new),
    };
    loaded.map_err(|error| StepOutcome::from(error.classify()))
}

/// A revision's objects as they are applied, and where they go.
pub(super) struct Prepared {
    pub names: AppNames,
    /// The manifests with the Runbook's injected defaults and the Secret digests in
    /// their pod templates.
    pub objects: Vec<Manifest>,
    /// The digests written into the pod templates (Secret `namespace/name` → digest).
    pub secret_digests: std::collections::BTreeMap<String, String>,
}

impl Prepared {
    /// What applying (or dry-running) the objects over what the app owns means.
    pub fn plan<'a>(&'a self, inventory: &'a [crate::api::InventoryEntry]) -> crate::apply::ApplyPlan<'a> {
        self.names.plan(&self.objects, inventory)
    }
}

/// The objects of snapshot `name` of `revision` as they are applied (see
/// [`prepare_manifests`]): what the inventory, apply, Job and drift repair steps work
/// from.
pub(super) async fn prepare(
    context: &Context,
    app: &AppDeployment,
    name: Option<&str>,
    revision: &str,
    runbook: &RunbookSpec,
    digests: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Prepared, StepOutcome> {
    let manifests = snapshot_manifests(context, app, name, revision).await?;
    prepare_manifests(context, app, &manifests, runbook, digests).await
}

/// `manifests` as they are applied: the Runbook's injected defaults added, and the
/// digest of the Secrets each workload reads in its pod template. `digests`: `None`
/// for the digests of now (a deploy or rollback); those recorded at the last rollout
/// for a drift repair, which must never roll a Secret change out past the gates. Read
/// only where the app's identity may read ([`super::boundary::lookup`]).
pub(super) async fn prepare_manifests(
    context: &Context,
    app: &AppDeployment,
    manifests: &[Manifest],
    runbook: &RunbookSpec,
    digests: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Prepared, StepOutcome> {
    let names = AppNames::of(app);
    let target = &names.target_namespace;
    let lookup = super::boundary::lookup(context, app, manifests, runbook, target).await?;
    let secret_digests = match digests {
        Some(recorded) => recorded.clone(),
        None => preflight::secret_digests(manifests, target, &lookup),
    };
    let objects = preflight::apply_transforms(manifests, runbook, target, &lookup, &secret_digests);
    Ok(Prepared {
        names,
        objects,
        secret_digests,
    })
}

/// Checks the env contract and every Secret (and ConfigMap) the revision reads, from
/// the watch caches, before anything of it is written. First the tenant boundary
/// ([`super::boundary`]): every object must be writable by the app's identity where
/// it goes, and every read preflight makes readable by it, before anything is read.
pub async fn preflight(step: &StepInput<'_>) -> StepOutcome {
    let manifests = match manifests(step).await {
        Ok(manifests) => manifests,
        Err(outcome) => return outcome,
    };
    let target = AppNames::of(step.app).target_namespace;
    match check_preflight(step.context, step.app, &manifests, step.runbook, &target).await {
        Ok(()) => StepOutcome::Done(StepResult::PreflightPassed),
        Err(outcome) => outcome,
    }
}

async fn check_preflight(
    context: &Context,
    app: &AppDeployment,
    manifests: &[Manifest],
    runbook: &RunbookSpec,
    target_namespace: &str,
) -> Result<(), StepOutcome> {
    super::boundary::writable(context, app, manifests, target_namespace).await?;
    let lookup = super::boundary::lookup(context, app, manifests, runbook, target_namespace).await?;
    match preflight::check(manifests, runbook, target_namespace, &lookup) {
        Ok(checked) => {
            for note in &checked.notes {
                tracing::info!(note = %note, "preflight let a value pass that only the pod will know");
            }
            Ok(())
        }
        Err(misses) => Err(StepOutcome::Refused(Failure::new(
            FailureKind::PreflightFailed,
            preflight::describe_misses(&misses),
        ))),
    }
}

/// Resolves every object, refuses what another app owns, dry-runs what changes, and
/// says what the revision will own, before anything is written.
pub async fn inventory(step: &StepInput<'_>) -> Result<StepOutcome, Error> {
    let prepared = match step.prepare().await {
        Ok(prepared) => prepared,
        Err(outcome) => return Ok(outcome),
    };
    let applier = step.context.applier(step.app)?;
    Ok(match applier.plan(&prepared.plan(step.inventory)).await {
        Ok(planned) => StepOutcome::Done(StepResult::Planned {
            inventory: planned.inventory,
        }),
        Err(error) => StepOutcome::from(error.classify()),
    })
}

/// Applies what changed and prunes; records the container restarts the gates count from.
pub async fn apply(step: &StepInput<'_>) -> Result<StepOutcome, Error> {
    let prepared = match step.prepare().await {
        Ok(prepared) => prepared,
        Err(outcome) => return Ok(outcome),
    };
    let applier = step.context.applier(step.app)?;
    // Taken before anything is sent: the pods it lists predate the revision.
    let mut restart_baseline = capture_baseline(&step.context.caches.workloads, step.inventory);
    Ok(match applier.apply(prepared.plan(step.inventory)).await {
        Ok(outcome) => StepOutcome::Done(StepResult::Applied(Applied {
            sent: outcome.sent.len(),
            unchanged: outcome.unchanged,
            pruned: outcome.pruned.len(),
            prune_failures: outcome.prune_failure_notes(),
            inventory: outcome.inventory,
            restart_baseline: {
                for (entry, generation) in &outcome.generations {
                    restart_baseline.record_generation(entry, *generation);
                }
                restart_baseline
            },
            secret_digests: prepared.secret_digests,
        })),
        Err(error) => StepOutcome::from(error.classify()),
    })
}

/// Checks a blocked revision again without writing anything: its files rendered from
/// Git and the whole set dry-run as it would be applied.
pub async fn recheck(
    context: &Context,
    app: &AppDeployment,
    revision: &str,
    inventory: &[crate::api::InventoryEntry],
    credentials: Option<&Credentials>,
    runbook: &RunbookSpec,
) -> Result<Recheck, Error> {
    let operation = crate::api::Operation {
        kind: crate::api::OperationKind::Deploy,
        revision: revision.to_string(),
        failed_revision: None,
        step: crate::api::Step::Inventory,
        attempt: 0,
        last_error: None,
        started_at: String::new(),
        step_started_at: String::new(),
        render_digest: None,
        snapshot: None,
        applied_at: None,
        restart_baseline: Default::default(),
        interrupted: None,
        rotation: Default::default(),
        failed_snapshot: None,
    };
    let step = StepInput {
        context,
        app,
        operation: &operation,
        inventory,
        credentials,
        runbook,
    };
    let manifests = match render_manifests(&step, revision).await {
        Ok(manifests) => manifests,
        Err(StepOutcome::Transient(message)) => return Ok(Recheck::Transient(message)),
        Err(StepOutcome::Refused(failure)) => return Ok(Recheck::Refused(failure)),
        Err(_) => return Ok(Recheck::Transient("render gave no answer".into())),
    };
    let names = AppNames::of(app);
    let as_recheck = |outcome: StepOutcome| match outcome {
        StepOutcome::Refused(failure) => Recheck::Refused(failure),
        StepOutcome::Transient(message) => Recheck::Transient(message),
        _ => Recheck::Transient("preflight gave no answer".into()),
    };
    if let Err(outcome) = check_preflight(context, app, &manifests, runbook, &names.target_namespace).await {
        return Ok(as_recheck(outcome));
    }
    let prepared = match prepare_manifests(context, app, &manifests, runbook, None).await {
        Ok(prepared) => prepared,
        Err(outcome) => return Ok(as_recheck(outcome)),
    };
    let applier = context.applier(app)?;
    Ok(match applier.plan(&prepared.plan(inventory)).await {
        Ok(_) => Recheck::Clear,
        Err(error) => match error.classify() {
            Classified::Transient(message) => Recheck::Transient(message),
            Classified::Refused(failure) => Recheck::Refused(failure),
        },
    })
}
