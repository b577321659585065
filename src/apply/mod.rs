//! Apply stage (SPEC §2 step 5): the rendered manifests of a revision reach the cluster by
//! server-side apply with field manager `bosun`, in dependency order, after the whole set
//! passed a server dry run; what is already in place is not sent again; what the
//! previous revision owned and this one does not is pruned.
//!
//! The pure steps live in [`plan`]; this file does the requests.

mod discovery;
mod error;
pub mod plan;

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::api::{FIELD_MANAGER, InventoryEntry, OWNER_ANNOTATION};
use crate::render::Manifest;

pub use discovery::{DiscoveryCache, ResolvedKind};
pub use error::ApplyError;
use error::{is_not_found, server_message};
use plan::CrdKind;

/// How many reads or dry runs are in flight at once.
const CONCURRENT_REQUESTS: usize = 8;
/// How long a CRD of the revision may take to become Established.
const DEFAULT_CRD_TIMEOUT: Duration = Duration::from_secs(60);
const CRD_POLL: Duration = Duration::from_millis(250);

/// One revision to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyPlan<'a> {
    pub manifests: &'a [Manifest],
    /// Namespace of namespaced objects that name none.
    pub default_namespace: &'a str,
    /// `namespace/name` of the AppDeployment, stamped as [`OWNER_ANNOTATION`].
    pub owner: &'a str,
    /// Value of the [`APP_LABEL`](crate::api::APP_LABEL) label (`namespace.name`).
    pub app_label: &'a str,
    /// What the previously applied revision owned: the candidates for pruning.
    pub previous_inventory: &'a [InventoryEntry],
}

/// What applying a revision did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// Every object this revision owns, sorted: the next revision's `previous_inventory`.
    pub inventory: Vec<InventoryEntry>,
    /// Objects sent to the server (new or changed), in apply order.
    pub sent: Vec<InventoryEntry>,
    /// How many objects were already in place and not sent.
    pub unchanged: usize,
    /// Objects of the previous revision deleted because this one no longer has them.
    pub pruned: Vec<InventoryEntry>,
    /// Objects that would have been pruned but now belong to another owner: left alone.
    pub prune_skipped: Vec<InventoryEntry>,
}

/// Applies revisions with one client (possibly impersonating the app's ServiceAccount).
#[derive(Clone)]
pub struct Applier {
    client: Client,
    discovery: DiscoveryCache,
    crd_timeout: Duration,
}

/// A manifest resolved, placed and stamped, ready to send.
struct Prepared<'m> {
    manifest: &'m Manifest,
    object: Value,
    entry: InventoryEntry,
    kind: ResolvedKind,
    /// The CRD of this revision that defines the kind, if one does.
    defined_by: Option<&'m CrdKind>,
    /// Apply group ([`plan::apply_rank`]).
    rank: u8,
}

impl Prepared<'_> {
    fn location(&self) -> String {
        location(self.manifest)
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        dynamic_api(client, &self.kind, self.entry.namespace.as_deref())
    }

    fn is_crd(&self) -> bool {
        self.entry.api_version == "apiextensions.k8s.io/v1" && self.entry.kind == "CustomResourceDefinition"
    }

    fn is_namespace(&self) -> bool {
        self.entry.api_version == "v1" && self.entry.kind == "Namespace"
    }
}

impl Applier {
    pub fn new(client: Client) -> Self {
        Self::with_discovery(client, DiscoveryCache::new())
    }

    /// An applier sharing discovery results with others (e.g. one per impersonated account).
    pub fn with_discovery(client: Client, discovery: DiscoveryCache) -> Self {
        Self {
            client,
            discovery,
            crd_timeout: DEFAULT_CRD_TIMEOUT,
        }
    }

    /// How long to wait for a CRD of the revision to become Established (default 60 s).
    #[must_use]
    pub fn crd_timeout(mut self, timeout: Duration) -> Self {
        self.crd_timeout = timeout;
        self
    }

    pub fn discovery(&self) -> &DiscoveryCache {
        &self.discovery
    }

    /// What applying `plan` would own (sorted), without writing anything: lets the
    /// caller record the objects before they exist, so that a crash or failure half-way
    /// through leaves nothing that no inventory names.
    pub async fn inventory(&self, plan: &ApplyPlan<'_>) -> Result<Vec<InventoryEntry>, ApplyError> {
        let crd_kinds = plan::crd_kinds(plan.manifests);
        let prepared = self.prepare(plan, &crd_kinds).await?;
        let mut entries: Vec<InventoryEntry> = prepared.into_iter().map(|p| p.entry).collect();
        entries.sort();
        Ok(entries)
    }

    /// Validates the whole revision with a server dry run, applies what is not yet in
    /// place in dependency order, then prunes what the previous revision owned and this
    /// one does not. An error before the first write leaves the cluster untouched
    /// ([`ApplyError::before_any_write`]).
    pub async fn apply(&self, plan: ApplyPlan<'_>) -> Result<ApplyOutcome, ApplyError> {
        let crd_kinds = plan::crd_kinds(plan.manifests);
        let mut prepared = self.prepare(&plan, &crd_kinds).await?;
        let entries: Vec<InventoryEntry> = prepared.iter().map(|p| p.entry.clone()).collect();
        let order = plan::apply_order(&entries);
        let mut slots: Vec<Option<Prepared>> = prepared.drain(..).map(Some).collect();
        let prepared: Vec<Prepared> = order.iter().filter_map(|&i| slots[i].take()).collect();

        let live = self.read_live(&prepared).await?;
        let changed: Vec<bool> = prepared
            .iter()
            .zip(&live)
            .map(|(p, live)| match live {
                Some(live) => !plan::already_applied(&p.object, live),
                None => true,
            })
            .collect();

        self.dry_run(&prepared, &live, &changed).await?;
        let sent = self.send(&prepared, &live, &changed).await?;

        let mut inventory = entries;
        inventory.sort();
        let (pruned, prune_skipped) = self
            .prune(plan.previous_inventory, &inventory, plan.owner)
            .await?;
        let unchanged = prepared.len() - sent.len();
        info!(
            owner = plan.owner,
            objects = inventory.len(),
            sent = sent.len(),
            unchanged,
            pruned = pruned.len(),
            "applied revision"
        );
        Ok(ApplyOutcome {
            inventory,
            sent,
            unchanged,
            pruned,
            prune_skipped,
        })
    }

    /// Steps 1–3: identity, kind, namespace, stamp; duplicates refused.
    async fn prepare<'m>(
        &self,
        plan: &ApplyPlan<'m>,
        crd_kinds: &'m [CrdKind],
    ) -> Result<Vec<Prepared<'m>>, ApplyError> {
        let mut prepared = Vec::with_capacity(plan.manifests.len());
        let mut seen: HashMap<(String, String, Option<String>, String), String> = HashMap::new();
        for manifest in plan.manifests {
            let id = plan::identity(&manifest.object).map_err(|message| ApplyError::InvalidManifest {
                file: manifest.file.clone(),
                line: manifest.line,
                message,
            })?;
            let group = plan::group_of(&id.api_version);
            let version = id.api_version.rsplit('/').next().unwrap_or_default();
            let defined_by = crd_kinds
                .iter()
                .find(|k| k.group == group && k.version == version && k.kind == id.kind);
            let kind = match defined_by {
                Some(crd) => ResolvedKind {
                    resource: kube::core::ApiResource {
                        group: crd.group.clone(),
                        version: crd.version.clone(),
                        api_version: id.api_version.clone(),
                        kind: crd.kind.clone(),
                        plural: crd.plural.clone(),
                    },
                    namespaced: crd.namespaced,
                },
                None => {
                    self.resolve(&id.api_version, &id.kind, &id.name, manifest)
                        .await?
                }
            };

            let mut object = manifest.object.clone();
            plan::strip_server_metadata(&mut object);
            plan::fold_secret_string_data(&mut object);
            let entry_for = |namespace: Option<String>| InventoryEntry {
                api_version: id.api_version.clone(),
                kind: id.kind.clone(),
                namespace,
                name: id.name.clone(),
            };
            let namespace = plan::place_namespace(&mut object, kind.namespaced, plan.default_namespace)
                .map_err(|message| ApplyError::InvalidObject {
                    object: entry_for(id.namespace.clone()),
                    location: location(manifest),
                    message,
                })?;
            let entry = entry_for(namespace);
            plan::stamp(&mut object, plan.owner, plan.app_label);

            let key = (
                group.to_string(),
                entry.kind.clone(),
                entry.namespace.clone(),
                entry.name.clone(),
            );
            if let Some(first) = seen.insert(key, location(manifest)) {
                return Err(ApplyError::DuplicateObject {
                    object: entry,
                    location: location(manifest),
                    first,
                });
            }
            let rank = plan::apply_rank(group, &entry.kind);
            prepared.push(Prepared {
                manifest,
                object,
                entry,
                kind,
                defined_by,
                rank,
            });
        }
        Ok(prepared)
    }

    async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
        manifest: &Manifest,
    ) -> Result<ResolvedKind, ApplyError> {
        match self.discovery.resolve(&self.client, api_version, kind).await {
            Ok(Some(resolved)) => Ok(resolved),
            Ok(None) => Err(ApplyError::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                name: name.to_string(),
                location: location(manifest),
            }),
            Err(error) => Err(ApplyError::Discovery {
                api_version: api_version.to_string(),
                message: server_message(&error),
            }),
        }
    }

    /// The live object of each prepared one (`None`: does not exist yet).
    async fn read_live(&self, prepared: &[Prepared<'_>]) -> Result<Vec<Option<Value>>, ApplyError> {
        // Futures from an `async fn` (not a closure) keep the borrow lifetimes general
        // enough for the controller's spawned, `Send` reconcile future.
        let reads: Vec<_> = prepared.iter().map(|p| self.read_one(p)).collect();
        stream::iter(reads)
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await
    }

    async fn read_one(&self, p: &Prepared<'_>) -> Result<Option<Value>, ApplyError> {
        match p.api(&self.client).get(&p.entry.name).await {
            Ok(live) => Ok(Some(serde_json::to_value(live).unwrap_or_default())),
            // Also the answer for a kind whose CRD is not installed yet.
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(ApplyError::ReadFailed {
                object: p.entry.clone(),
                location: p.location(),
                message: server_message(&error),
            }),
        }
    }

    async fn dry_run_one(&self, p: &Prepared<'_>, params: &PatchParams) -> Result<(), ApplyError> {
        p.api(&self.client)
            .patch(&p.entry.name, params, &Patch::Apply(&p.object))
            .await
            .map(|_| ())
            .map_err(|error| ApplyError::DryRunFailed {
                object: p.entry.clone(),
                location: p.location(),
                message: server_message(&error),
            })
    }

    /// Step 5: every changed object through a server dry run before anything is written.
    /// Objects that cannot be validated yet — in a Namespace this revision creates, or of
    /// a kind whose CRD this revision installs — are left to the real apply.
    async fn dry_run(
        &self,
        prepared: &[Prepared<'_>],
        live: &[Option<Value>],
        changed: &[bool],
    ) -> Result<(), ApplyError> {
        let live_of = |wanted: &dyn Fn(&Prepared) -> bool| -> HashMap<String, &Option<Value>> {
            prepared
                .iter()
                .zip(live)
                .filter(|(p, _)| wanted(p))
                .map(|(p, live)| (p.entry.name.clone(), live))
                .collect()
        };
        let namespaces = live_of(&|p| p.is_namespace());
        let crds = live_of(&|p| p.is_crd());
        let pending_namespace = |p: &Prepared| {
            p.entry
                .namespace
                .as_ref()
                .and_then(|ns| namespaces.get(ns))
                .is_some_and(|live| live.is_none())
        };
        let pending_crd = |p: &Prepared| {
            p.defined_by.is_some_and(|crd| {
                !crds
                    .get(&crd.crd_name)
                    .and_then(|live| live.as_ref())
                    .is_some_and(|live| crd_serves(live, &crd.version))
            })
        };

        let to_check: Vec<&Prepared> = prepared
            .iter()
            .zip(changed)
            .filter(|(_, changed)| **changed)
            .map(|(p, _)| p)
            .filter(|p| {
                let skip = pending_namespace(p) || pending_crd(p);
                if skip {
                    debug!(object = %p.entry, "dry run skipped: namespace or CRD not there yet");
                }
                !skip
            })
            .collect();
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let checks: Vec<_> = to_check
            .into_iter()
            .map(|p| self.dry_run_one(p, &params))
            .collect();
        stream::iter(checks)
            .buffered(CONCURRENT_REQUESTS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Step 6: server-side apply of the changed objects, group by group in apply order.
    /// Objects of one group do not depend on each other, so they are sent concurrently;
    /// a group starts when the one before it is done. CRDs are waited for until
    /// Established before the groups after them.
    async fn send(
        &self,
        prepared: &[Prepared<'_>],
        live: &[Option<Value>],
        changed: &[bool],
    ) -> Result<Vec<InventoryEntry>, ApplyError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut sent = Vec::new();
        let indices: Vec<usize> = (0..prepared.len()).collect();
        for group in indices.chunk_by(|&a, &b| prepared[a].rank == prepared[b].rank) {
            let to_send: Vec<&Prepared> = group
                .iter()
                .filter(|&&i| changed[i])
                .map(|&i| &prepared[i])
                .collect();
            // Futures collected first: a `.map(closure)` on the stream makes the
            // reconcile future's lifetimes too specific for kube-runtime.
            let sends: Vec<_> = to_send.iter().map(|p| self.send_one(p, &params)).collect();
            stream::iter(sends)
                .buffered(CONCURRENT_REQUESTS)
                .try_collect::<Vec<()>>()
                .await?;
            for p in &to_send {
                debug!(object = %p.entry, "applied");
                sent.push(p.entry.clone());
            }
            for &i in group.iter().filter(|&&i| prepared[i].is_crd()) {
                let crd = &prepared[i];
                let versions = crd_versions(&crd.object);
                let live_ready = live[i]
                    .as_ref()
                    .is_some_and(|l| versions.iter().all(|v| crd_serves(l, v)));
                if changed[i] || !live_ready {
                    self.wait_established(&crd.entry.name).await?;
                    let api_group = crd.object["spec"]["group"].as_str().unwrap_or_default();
                    for version in versions {
                        self.discovery.invalidate(&format!("{api_group}/{version}"));
                    }
                }
            }
        }
        Ok(sent)
    }

    async fn send_one(&self, p: &Prepared<'_>, params: &PatchParams) -> Result<(), ApplyError> {
        // Right after a CRD is Established its endpoint may still answer 404 for a moment
        // (more so behind several API servers): retry those briefly.
        let attempts = if p.defined_by.is_some() { 20 } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match p
                .api(&self.client)
                .patch(&p.entry.name, params, &Patch::Apply(&p.object))
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if is_not_found(&error) && attempt < attempts => {
                    tokio::time::sleep(CRD_POLL).await;
                }
                Err(error) => {
                    return Err(ApplyError::ApplyFailed {
                        object: p.entry.clone(),
                        location: p.location(),
                        message: server_message(&error),
                    });
                }
            }
        }
    }

    async fn wait_established(&self, name: &str) -> Result<(), ApplyError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + self.crd_timeout;
        loop {
            let crd = crds
                .get(name)
                .await
                .map_err(|error| ApplyError::CrdNotEstablished {
                    name: name.to_string(),
                    message: server_message(&error),
                })?;
            let conditions = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .cloned()
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                return Ok(());
            }
            // A name clash will not resolve by waiting.
            if let Some(clash) = conditions
                .iter()
                .find(|c| c.type_ == "NamesAccepted" && c.status == "False")
            {
                return Err(ApplyError::CrdNotEstablished {
                    name: name.to_string(),
                    message: clash.message.clone().unwrap_or_default(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApplyError::CrdNotEstablished {
                    name: name.to_string(),
                    message: format!("not Established after {:?}", self.crd_timeout),
                });
            }
            tokio::time::sleep(CRD_POLL).await;
        }
    }

    /// Step 7: deletes what the previous revision owned and this one does not, if it
    /// still carries our owner annotation. Tries every object; reports the first failure.
    async fn prune(
        &self,
        previous: &[InventoryEntry],
        current: &[InventoryEntry],
        owner: &str,
    ) -> Result<(Vec<InventoryEntry>, Vec<InventoryEntry>), ApplyError> {
        let mut pruned = Vec::new();
        let mut skipped = Vec::new();
        let mut first_error = None;
        for entry in plan::prune_set(previous, current) {
            match self.prune_one(&entry, owner).await {
                Ok(PruneResult::Deleted) => pruned.push(entry),
                Ok(PruneResult::Gone) => {}
                Ok(PruneResult::NotOurs) => skipped.push(entry),
                Err(message) => {
                    warn!(object = %entry, %message, "prune failed");
                    first_error.get_or_insert(ApplyError::PruneFailed {
                        object: entry,
                        message,
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok((pruned, skipped)),
        }
    }

    async fn prune_one(&self, entry: &InventoryEntry, owner: &str) -> Result<PruneResult, String> {
        let kind = match self
            .discovery
            .resolve(&self.client, &entry.api_version, &entry.kind)
            .await
        {
            Ok(Some(kind)) => kind,
            // The kind itself is gone (its CRD was removed), and its objects with it.
            Ok(None) => return Ok(PruneResult::Gone),
            Err(error) => return Err(server_message(&error)),
        };
        if kind.namespaced && entry.namespace.is_none() {
            return Err("inventory entry of a namespaced kind has no namespace".to_string());
        }
        let api = dynamic_api(&self.client, &kind, entry.namespace.as_deref());
        let live = match api.get(&entry.name).await {
            Ok(live) => live,
            Err(error) if is_not_found(&error) => return Ok(PruneResult::Gone),
            Err(error) => return Err(server_message(&error)),
        };
        if live.annotations().get(OWNER_ANNOTATION).map(String::as_str) != Some(owner) {
            info!(object = %entry, "not pruned: no longer owned by this app");
            return Ok(PruneResult::NotOurs);
        }
        // The uid precondition keeps us from deleting an object recreated meanwhile.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: live.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&entry.name, &params).await {
            Ok(_) => {
                debug!(object = %entry, "pruned");
                Ok(PruneResult::Deleted)
            }
            Err(error) if is_not_found(&error) => Ok(PruneResult::Gone),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                info!(object = %entry, "not pruned: replaced by another object");
                Ok(PruneResult::NotOurs)
            }
            Err(error) => Err(server_message(&error)),
        }
    }
}

enum PruneResult {
    Deleted,
    Gone,
    NotOurs,
}

fn location(manifest: &Manifest) -> String {
    format!("{}:{}", manifest.file, manifest.line)
}

fn dynamic_api(client: &Client, kind: &ResolvedKind, namespace: Option<&str>) -> Api<DynamicObject> {
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &kind.resource),
        _ => Api::all_with(client.clone(), &kind.resource),
    }
}

/// Served version names of a CRD object.
fn crd_versions(crd: &Value) -> Vec<String> {
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

/// Whether a live CRD is Established and serves `version`: its objects can be dry-run.
fn crd_serves(live: &Value, version: &str) -> bool {
    let established = live["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    established && crd_versions(live).iter().any(|v| v == version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_serves_needs_established_and_the_version() {
        let live = json!({
            "spec": {"versions": [{"name": "v1", "served": true}, {"name": "v0", "served": false}]},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}
        });
        assert!(crd_serves(&live, "v1"));
        assert!(!crd_serves(&live, "v0"));
        assert!(!crd_serves(&live, "v2"));
        let mut not_yet = live.clone();
        not_yet["status"]["conditions"][0]["status"] = json!("False");
        assert!(!crd_serves(&not_yet, "v1"));
    }

    #[test]
    fn errors_have_reasons_and_name_the_object() {
        let object = InventoryEntry {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("team".into()),
            name: "web".into(),
        };
        let error = ApplyError::DryRunFailed {
            object,
            location: "deploy/web.yaml:3".into(),
            message: "spec.replicas: Invalid value: -1".into(),
        };
        assert_eq!(error.reason(), "DryRunFailed");
        assert!(error.before_any_write());
        let text = error.to_string();
        assert!(text.contains("Deployment team/web"), "{text}");
        assert!(text.contains("deploy/web.yaml:3"), "{text}");
        assert!(text.contains("spec.replicas"), "{text}");

        let unknown = ApplyError::UnknownKind {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            name: "w".into(),
            location: "w.yaml:1".into(),
        };
        assert_eq!(unknown.reason(), "UnknownKind");
        assert!(unknown.to_string().contains("Widget w (w.yaml:1)"));
    }
}
