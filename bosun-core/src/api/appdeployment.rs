use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::RestartBaseline;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to deploy and from where.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "bosun.dev",
    version = "v1alpha1",
    kind = "AppDeployment",
    namespaced,
    status = "AppDeploymentStatus",
    shortname = "appdeploy",
    shortname = "ad",
    category = "bosun",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Current","type":"string","jsonPath":".status.currentRevisionShort"}"#,
    printcolumn = r#"{"name":"Last Healthy","type":"string","jsonPath":".status.lastHealthyRevisionShort"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AppDeploymentSpec {
    pub source: Source,
    /// The Runbook (same namespace) or ClusterRunbook that says how to deploy safely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_ref: Option<RunbookRef>,
    /// Namespace for namespaced objects that name none (default: this object's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Apply as this ServiceAccount of the AppDeployment's namespace (impersonation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Stop following Git; what is applied stays as it is.
    #[serde(default)]
    pub suspend: bool,
    /// How many entries `status.history` keeps (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
    /// Hold the app at one revision (manual rollback); removing it resumes Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// What happens to the objects bosun created when this AppDeployment is deleted:
    /// `Orphan` (the default: they keep running, released for another owner) or `Delete`.
    // Not an Option: schemars writes `null` into the enum of an optional enum, and a 1.20
    // API server then refuses the CRD ("per-version schemas may not all be set to
    // identical values").
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Deleting the AppDeployment is not a request to take the app down: by default what
/// bosun created keeps running (an AppDeployment deleted by mistake, or recreated while
/// bosun is reinstalled, must not cost an outage). `Delete` removes what bosun created.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Orphan,
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub git: GitSource,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// `https://`, `ssh://`, `git@host:path`, `git://` or `file://`.
    pub url: String,
    #[serde(rename = "ref", default)]
    pub reference: GitRef,
    /// Directory inside the repository holding the manifests (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Secret with `username`+`password`, `token`, or `identity` (+ `known_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
    /// How often to look for a new commit (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Allow credentials over plain `http://` (they travel in clear text).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// Exactly one of `branch`, `tag`, `commit`, `semver`; none means branch `main`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A semver range over the repository's tags, e.g. `>=1.2.0, <2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LocalObjectRef {
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RunbookRef {
    #[serde(default)]
    pub kind: RunbookKind,
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunbookKind {
    #[default]
    Runbook,
    ClusterRunbook,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Pin {
    /// Full commit id to hold the app at.
    pub revision: String,
}

/// Where a revision is in its life; see the README, "The life of a revision".
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Fetching,
    Blocked,
    BackingUp,
    Migrating,
    Applying,
    Verifying,
    Healthy,
    RollingBack,
    RolledBack,
    Failed,
    Suspended,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Fetching => "Fetching",
            Phase::Blocked => "Blocked",
            Phase::BackingUp => "BackingUp",
            Phase::Migrating => "Migrating",
            Phase::Applying => "Applying",
            Phase::Verifying => "Verifying",
            Phase::Healthy => "Healthy",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppDeploymentStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Git tip the source ref points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<String>,
    /// The revision whose manifests are applied (or being applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision_short: Option<String>,
    /// Digest of the spec fields that shaped the applied revision (`url`, `path`,
    /// `targetNamespace`, `serviceAccountName`): a change redeploys the same commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_spec_digest: Option<String>,
    /// Snapshot Secret holding the manifests `currentRevision` was applied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision_short: Option<String>,
    /// Snapshot Secret of the last healthy revision's render: the rollback target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_snapshot: Option<String>,
    /// `currentSpecDigest` of the last healthy render: what a rollback puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_spec_digest: Option<String>,
    /// Revisions that failed and are not applied again while Git stays on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantine>,
    /// Newest first, at most `spec.revisionHistoryLimit` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The step in progress, persisted so a restarted controller resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// Objects the applied revision owns: what a later revision prunes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// The Git tip (or pin) that could not be deployed, and why; it stays out until Git,
    /// the spec or (for reasons that may pass) the next interval says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedRevision>,
    /// Backup, migration and downgrade Jobs that finished, newest first: a revision
    /// whose migration succeeded never migrates again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobRecord>,
    /// Secrets the running workloads read (not carried by the revision itself) → digest
    /// of their data, as written into the pod templates; a change rolls the workloads.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_digests: std::collections::BTreeMap<String, String>,
    /// Secret data whose rollout failed (name → digest): not rolled out again until the
    /// data changes once more.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected_secret_digests: std::collections::BTreeMap<String, String>,
}

/// A backup, migration or downgrade Job that finished.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub kind: JobKind,
    /// The revision the Job ran for (for a downgrade: the revision whose migration it undid).
    pub revision: String,
    /// The Job's name (deterministic from app, kind and revision).
    pub job: String,
    pub succeeded: bool,
    pub finished_at: String,
    /// The revision marked its migration irreversible (`bosun.dev/migration: irreversible`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
    /// Why it failed, with the last lines of its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum JobKind {
    Backup,
    Migrate,
    Downgrade,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Migrate => "migrate",
            JobKind::Downgrade => "downgrade",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedRevision {
    pub revision: String,
    pub reason: BlockReason,
    pub message: String,
    /// The AppDeployment's generation when it was blocked: a spec change tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub at: String,
    /// Whether trying again later may succeed without a new commit (a missing
    /// permission, an object owned by another app, an API that kept failing); a
    /// manifest that does not parse will not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// Why a revision was refused before anything of it was written.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum BlockReason {
    /// Its manifests do not parse, name an unknown kind, or the API server refused them.
    #[default]
    RevisionInvalid,
    /// The identity bosun applies as may not do what the revision needs.
    Forbidden,
    /// An object of the revision belongs to another AppDeployment.
    OwnershipConflict,
    /// A step kept failing for reasons outside the revision until its deadline.
    DeadlineExceeded,
    /// The env contract or a Secret reference is not met; fixed in the cluster (a
    /// Secret created), it passes without a new commit.
    PreflightFailed,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::RevisionInvalid => "RevisionInvalid",
            BlockReason::Forbidden => "Forbidden",
            BlockReason::OwnershipConflict => "OwnershipConflict",
            BlockReason::DeadlineExceeded => "DeadlineExceeded",
            BlockReason::PreflightFailed => "PreflightFailed",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub revision: String,
    pub reason: String,
    pub at: String,
    /// The AppDeployment's generation when the revision failed: a pin or a change of
    /// the applied spec made later may try it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The spec digest it failed with (`currentSpecDigest`): the same commit rendered
    /// from another path is another candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: String,
    pub phase: Phase,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateVerdict>,
    /// For a rollout of a Secret change (no new commit): the Secrets whose data changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotation: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateVerdict {
    pub name: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    #[default]
    Pending,
    Passed,
    Failed,
}

/// What the controller is in the middle of: a Deploy or a Rollback, at one step.
/// Written before the step's side effects, so that after a crash the same step is
/// finished instead of started anew; every step is idempotent.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    /// The revision being deployed (for a rollback: the last healthy one returned to).
    pub revision: String,
    /// For a rollback: the revision that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    pub step: Step,
    /// Failed attempts of this step so far (errors that may pass by themselves).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The last such error, quoted when the step's deadline passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub started_at: String,
    /// When the current step began (its deadline counts from here).
    pub step_started_at: String,
    /// Digest of what shaped the render (url, path, target namespace): part of the
    /// snapshot's name, so a re-render of the same commit never overwrites another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_digest: Option<String>,
    /// The snapshot Secret the remaining steps apply (no Git needed after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Set once the revision's manifests are applied; gates judge what happened after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Container restarts of the pods that existed when the revision was applied (and
    /// the workload generations the apply wrote): only what happens after counts.
    #[serde(default, skip_serializing_if = "RestartBaseline::is_empty")]
    pub restart_baseline: RestartBaseline,
    /// A verification this Deploy interrupted: restored if this revision is refused
    /// before anything of it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<InterruptedVerification>,
    /// For a rollout of a Secret change: the Secrets whose data changed → the digest of
    /// their new data (the revision is the one already running; its snapshot is
    /// applied again with the new digests).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rotation: std::collections::BTreeMap<String, String>,
    /// For a rollback: the snapshot of the revision that failed (a downgrade Job takes
    /// its image from there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_snapshot: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// The verifying Deploy operation a newer commit interrupted.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterruptedVerification {
    pub revision: String,
    pub started_at: String,
    pub step_started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    #[serde(default, skip_serializing_if = "RestartBaseline::is_empty")]
    pub restart_baseline: RestartBaseline,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OperationKind {
    Deploy,
    Rollback,
}

/// The steps of an operation, in order. A Deploy runs them all but `Downgrade` (and
/// skips `Backup`/`Migrate` when the Runbook has none); a rollout of a Secret change
/// starts at `Preflight` with the running snapshot; a Rollback starts at `Downgrade`
/// (when the Runbook asks for one) or `Inventory`, with the last healthy snapshot.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Step {
    /// Read the revision's files from Git and parse them.
    Render,
    /// Store the rendered manifests in a Secret: later steps and rollbacks need no Git.
    Snapshot,
    /// The env contract and the Secret references, checked before anything is written.
    Preflight,
    /// The Runbook's backup Job.
    Backup,
    /// The Runbook's migration Job (once per revision).
    Migrate,
    /// On a rollback: the downgrade Job, with the failed revision's image.
    Downgrade,
    /// Resolve every object, check ownership, dry-run what changes, and record the
    /// objects as owned before any is written.
    Inventory,
    /// Server-side apply what changed, in order; prune what is no longer owned.
    Apply,
    /// Workload gate and Runbook gates for the verify window.
    Verify,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Render => "render",
            Step::Snapshot => "snapshot",
            Step::Preflight => "preflight",
            Step::Backup => "backup",
            Step::Migrate => "migrate",
            Step::Downgrade => "downgrade",
            Step::Inventory => "inventory",
            Step::Apply => "apply",
            Step::Verify => "verify",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Deploy => "deploy",
            OperationKind::Rollback => "rollback",
        }
    }
}

/// One applied object, enough to find and delete it again.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The object existed before bosun applied it (found, not created): prune and
    /// deletion leave it alone unless its manifest opts in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

impl InventoryEntry {
    /// Whether two entries name the same object (the `adopted` flag aside).
    pub fn same_object(&self, other: &InventoryEntry) -> bool {
        self.api_version == other.api_version
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

impl std::fmt::Display for InventoryEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl AppDeploymentSpec {
    /// Digest of the fields that decide what a revision renders to and how it is
    /// applied. Other fields (suspend, history limit, runbook) do not redeploy.
    pub fn apply_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let git = &self.source.git;
        let fields = serde_json::json!([
            git.url,
            git.path,
            self.target_namespace,
            self.service_account_name,
        ]);
        let digest = Sha256::digest(fields.to_string().as_bytes());
        digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
    }
}

impl AppDeploymentSpec {
    /// Digest of what shapes the rendered manifests of a commit: the repository, the
    /// path in it, and the namespace objects without one are placed in. Snapshots are
    /// keyed by commit and this digest.
    pub fn render_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let git = &self.source.git;
        let fields = serde_json::json!([git.url, git.path, self.target_namespace]);
        let digest = Sha256::digest(fields.to_string().as_bytes());
        digest.iter().take(4).map(|byte| format!("{byte:02x}")).collect()
    }
}

/// First 12 characters of a commit id, as shown in printer columns and messages.
pub fn short_revision(revision: &str) -> String {
    revision.chars().take(12).collect()
}
