//! The one way status reaches the API server: every write carries the
//! `resourceVersion` the status was computed from, so a write computed from a stale
//! copy (a pass that started before the watch delivered the previous write, or another
//! writer) fails with a conflict and is decided again from a fresh read, instead of
//! overwriting a saved rollback or quarantine.
//!
//! The status is replaced whole (PUT on the status subresource): it is bosun's record,
//! computed entirely from the copy it read, so nothing of another writer can be lost
//! without a conflict. (Server-side apply of the status also worked until a field was
//! removed: the 1.20 API server then left `null`s behind inside the removed object's
//! maps and refused its own result.)
//!
//! Every write first checks the [`LeaderClaim`]: a replica that does not hold the
//! leader Lease (or whose renewal is overdue) refuses, and nothing is sent.

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Error;
use super::leader::LeaderClaim;
use crate::api::{AppDeployment, AppDeploymentStatus, FIELD_MANAGER};

/// Finalizer that lets bosun act on an AppDeployment's deletion (its deletion policy).
pub const FINALIZER: &str = "bosun.dev/finalizer";

/// Writes `status` as computed from `app` (at its `resourceVersion`); returns the new
/// `resourceVersion`. A conflict is [`Error::Conflict`]; without the leader claim,
/// an error and no write.
pub async fn save(
    claim: &LeaderClaim,
    api: &Api<AppDeployment>,
    app: &AppDeployment,
    status: &AppDeploymentStatus,
) -> Result<String, Error> {
    claim.check(&format!("the status of {}", describe(app)))?;
    let mut written = AppDeployment::new(&app.name_any(), app.spec.clone());
    written.metadata.namespace = app.namespace();
    written.metadata.resource_version = app.resource_version();
    written.status = Some(status.clone());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    match api.replace_status(&app.name_any(), &params, &written).await {
        Ok(saved) => Ok(saved.resource_version().unwrap_or_default()),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(error) => Err(error.into()),
    }
}

/// Adds or removes bosun's finalizer, conditional on the `resourceVersion` read.
pub async fn set_finalizer(
    claim: &LeaderClaim,
    api: &Api<AppDeployment>,
    app: &AppDeployment,
    present: bool,
) -> Result<AppDeployment, Error> {
    claim.check(&format!("the finalizer of {}", describe(app)))?;
    let mut finalizers: Vec<String> = app.finalizers().to_vec();
    finalizers.retain(|f| f != FINALIZER);
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": app.resource_version()}});
    match api
        .patch(&app.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(updated) => Ok(updated),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(error) => Err(error.into()),
    }
}

fn describe(app: &AppDeployment) -> String {
    format!(
        "AppDeployment {}/{}",
        app.namespace().unwrap_or_default(),
        app.name_any()
    )
}
