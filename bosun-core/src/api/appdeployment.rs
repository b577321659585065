use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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

/// Where a revision is in its life; see SPEC §2.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision_short: Option<String>,
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

/// What the controller is in the middle of. Written before the step's side effects,
/// so that after a crash the same step is finished instead of started anew.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    /// The revision being applied or verified (for a rollback: the one returned to).
    pub revision: String,
    /// For a rollback: the revision that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    pub started_at: String,
    /// Set once the revision's manifests are applied; verification counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationKind {
    Deploy,
    Rollback,
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

/// First 12 characters of a commit id, as shown in printer columns and messages.
pub fn short_revision(revision: &str) -> String {
    revision.chars().take(12).collect()
}
