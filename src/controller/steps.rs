//! The steps of an operation, each idempotent, each reporting a typed
//! [`StepOutcome`]: render and snapshot (a Deploy's first two), inventory and apply
//! (both operations; a Rollback works from the last healthy snapshot). What follows an
//! outcome is decided by [`crate::core::decide`], never here.

use std::sync::Arc;

use kube::ResourceExt;

use super::{AppNames, AppState, Context, Error};
use crate::api::{AppDeployment, Operation, short_revision};
use crate::core::{Applied, Failure, FailureKind, Recheck, StepOutcome, StepResult};
use crate::failure::Classified;
use crate::gates::capture_baseline;
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
}

impl StepInput<'_> {
    fn namespace(&self) -> String {
        self.app.namespace().unwrap_or_default()
    }
}

fn from(classified: Classified) -> StepOutcome {
    match classified {
        Classified::Transient(message) => StepOutcome::Transient(message),
        Classified::Refused(failure) => StepOutcome::Refused(failure),
    }
}

/// Reads the revision's files from Git and parses them.
pub async fn render(step: &StepInput<'_>, state: &mut AppState) -> StepOutcome {
    let revision = &step.operation.revision;
    match render_manifests(step, revision).await {
        Ok(manifests) => {
            let objects = manifests.len();
            let render_digest = step.app.spec.render_digest();
            state.rendered = Some((format!("{revision}/{render_digest}"), Arc::new(manifests)));
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
        .map_err(|e| {
            if e.is_transient() {
                StepOutcome::Transient(e.to_string())
            } else {
                StepOutcome::Refused(Failure::new(FailureKind::RevisionInvalid, e.to_string()))
            }
        })?;
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
        Some((rendered, manifests)) if *rendered == key => manifests.clone(),
        // Rendered by a controller that stopped since: render again (same files).
        _ => match render_manifests(step, revision).await {
            Ok(manifests) => Arc::new(manifests),
            Err(outcome) => return outcome,
        },
    };
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
        Err(error) => from(error.classify()),
    }
}

/// The manifests of the operation's snapshot, from the watch cache or the API server.
async fn manifests(step: &StepInput<'_>) -> Result<Arc<Vec<Manifest>>, StepOutcome> {
    let Some(name) = &step.operation.snapshot else {
        return Err(StepOutcome::Refused(Failure::new(
            FailureKind::RevisionInvalid,
            format!(
                "no snapshot recorded for revision {}",
                short_revision(&step.operation.revision)
            ),
        )));
    };
    let namespace = step.namespace();
    let revision = &step.operation.revision;
    let loaded = match step.context.caches.snapshot(&namespace, name, revision) {
        Some(cached) => cached,
        None => snapshot::load(&step.context.client, &namespace, name, revision)
            .await
            .map(Arc::new),
    };
    loaded.map_err(|error| from(error.classify()))
}

/// Resolves every object, refuses what another app owns, dry-runs what changes, and
/// says what the revision will own, before anything is written.
pub async fn inventory(step: &StepInput<'_>) -> Result<StepOutcome, Error> {
    let manifests = match manifests(step).await {
        Ok(manifests) => manifests,
        Err(outcome) => return Ok(outcome),
    };
    let applier = step.context.applier(step.app)?;
    let names = AppNames::of(step.app);
    Ok(
        match applier.plan(&names.plan(&manifests, step.inventory)).await {
            Ok(planned) => StepOutcome::Done(StepResult::Planned {
                inventory: planned.inventory,
            }),
            Err(error) => from(error.classify()),
        },
    )
}

/// Applies what changed and prunes; records the container restarts the gates count from.
pub async fn apply(step: &StepInput<'_>) -> Result<StepOutcome, Error> {
    let manifests = match manifests(step).await {
        Ok(manifests) => manifests,
        Err(outcome) => return Ok(outcome),
    };
    let applier = step.context.applier(step.app)?;
    let names = AppNames::of(step.app);
    // Taken before anything is sent: the pods it lists predate the revision.
    let mut restart_baseline = capture_baseline(&step.context.caches.workloads, step.inventory);
    Ok(
        match applier.apply(names.plan(&manifests, step.inventory)).await {
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
            })),
            Err(error) => from(error.classify()),
        },
    )
}

/// Checks a blocked revision again without writing anything: its files rendered from
/// Git and the whole set dry-run as it would be applied.
pub async fn recheck(
    context: &Context,
    app: &AppDeployment,
    revision: &str,
    inventory: &[crate::api::InventoryEntry],
    credentials: Option<&Credentials>,
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
    };
    let manifests = match render_manifests(&step, revision).await {
        Ok(manifests) => manifests,
        Err(StepOutcome::Transient(message)) => return Ok(Recheck::Transient(message)),
        Err(StepOutcome::Refused(failure)) => return Ok(Recheck::Refused(failure)),
        Err(_) => return Ok(Recheck::Transient("render gave no answer".into())),
    };
    let applier = context.applier(app)?;
    let names = AppNames::of(app);
    Ok(match applier.plan(&names.plan(&manifests, inventory)).await {
        Ok(_) => Recheck::Clear,
        Err(error) => match error.classify() {
            Classified::Transient(message) => Recheck::Transient(message),
            Classified::Refused(failure) => Recheck::Refused(failure),
        },
    })
}
