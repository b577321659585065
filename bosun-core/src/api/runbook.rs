use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to deploy an app safely: the executable form of a deployment runbook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "bosun.dev",
    version = "v1alpha1",
    kind = "Runbook",
    namespaced,
    shortname = "rb",
    category = "bosun",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[kube(derive = "Default", derive = "PartialEq")]
#[serde(rename_all = "camelCase")]
pub struct RunbookSpec {
    /// Readiness gates that must keep passing for `verifyWindow` after rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_gate: Option<WorkloadGate>,
    /// How long every gate must keep passing after rollout (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackPolicy>,
    /// How long verification may stay undecided (rollout incomplete, gates below
    /// their thresholds) before the revision counts as failed (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
}

/// Cluster-wide defaults shared by many apps, with the same fields as a Runbook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "bosun.dev",
    version = "v1alpha1",
    kind = "ClusterRunbook",
    shortname = "crb",
    category = "bosun",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRunbookSpec {
    #[serde(flatten)]
    pub runbook: RunbookSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    pub name: String,
    /// Seconds between probes (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    /// Seconds one probe may take (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Consecutive failed probes that fail the gate (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Consecutive passing probes before the gate counts as passing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGate>,
}

impl Gate {
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.period_seconds.unwrap_or(5).max(1).into())
    }
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(5).max(1).into())
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1)
    }
}

/// An HTTP probe: `url`, or `service` + `port` (+ `scheme`) in the target namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub expect: HttpExpect,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpExpect {
    /// Accepted status codes (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// Dotted JSON path → expected value, e.g. `status: ok`, `checks.database: connected`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json: BTreeMap<String, serde_json::Value>,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Response headers that must have these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Always on; these settings tune it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadGate {
    /// Container restarts above which a pod counts as failing (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPolicy {
    /// Flip back to the last healthy revision when a gate fails (default true).
    #[serde(default = "default_true")]
    pub automatic: bool,
}

fn default_true() -> bool {
    true
}

impl RunbookSpec {
    pub fn verify_window(&self) -> Result<std::time::Duration, String> {
        match &self.verify_window {
            Some(text) => super::parse_duration(text).map_err(|e| format!("spec.verifyWindow: {e}")),
            None => Ok(std::time::Duration::from_secs(60)),
        }
    }
    pub fn progress_deadline(&self) -> Result<std::time::Duration, String> {
        match &self.progress_deadline {
            Some(text) => super::parse_duration(text).map_err(|e| format!("spec.progressDeadline: {e}")),
            None => Ok(std::time::Duration::from_secs(600)),
        }
    }
    pub fn automatic_rollback(&self) -> bool {
        self.rollback.as_ref().is_none_or(|r| r.automatic)
    }
    pub fn max_restarts(&self) -> i32 {
        self.workload_gate
            .as_ref()
            .and_then(|w| w.max_restarts)
            .unwrap_or(3)
    }
}
