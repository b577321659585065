//! Apply stage (the inventory and apply steps, README, "The life of a revision"): the
//! rendered manifests of a revision reach the cluster by server-side apply with the
//! app's own field manager, in dependency order, after the whole set passed a server
//! dry run; what is already in place is not sent again; what the previous revision
//! owned and this one does not is pruned, within limits.
//!
//! Two calls, matching the steps of an operation:
//! - [`Applier::plan`] (step `inventory`): resolves every object, refuses objects that
//!   belong to another AppDeployment, dry-runs what would change, and says what the
//!   revision will own, so that it is recorded before anything is written;
//! - [`Applier::apply`] (step `apply`, and drift correction): does the same checks again,
//!   then sends what changed and prunes.
//!
//! Whether an object "would change" is judged twice: first cheaply, by comparing the
//! manifest with the live object ([`plan::already_applied`]); when that says "changed",
//! by the API server's own dry-run result compared with the live object. The second
//! judge cannot go stale as Kubernetes adds defaults or canonical forms (a quantity
//! `0.5` read back as `500m`, a field the server fills in), so it decides; the first
//! only keeps the common case free of requests. A dry-run verdict of "unchanged" is
//! remembered for the live object's `resourceVersion`, so it is asked once.
//!
//! The pure steps live in [`plan`]; this file does the requests.

mod discovery;
mod error;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::api::{APP_LABEL, InventoryEntry, OWNER_ANNOTATION};
use crate::failure::server_message;
use crate::render::Manifest;

pub use discovery::{DiscoveryCache, GroupServing, ResolvedKind};
pub use error::{Action, ApplyError};
use plan::CrdKind;

/// How many reads or dry runs are in flight at once.
const CONCURRENT_REQUESTS: usize = 8;
/// How long a CRD of the revision may take to become Established.
const DEFAULT_CRD_TIMEOUT: Duration = Duration::from_secs(60);
const CRD_POLL: Duration = Duration::from_millis(250);

/// Annotation on a manifest that decides whether prune may delete the object:
/// `"false"` keeps any object; `"true"` lets bosun delete what it otherwise never
/// deletes (a Namespace, a CustomResourceDefinition, a PersistentVolumeClaim, or an
/// object it found rather than created).
pub const PRUNE_ANNOTATION: &str = "bosun.dev/prune";

/// Field manager names of bosun's apps start with this; another app's manager in a
/// conflict means the field belongs to that app.
pub const FIELD_MANAGER_PREFIX: &str = "bosun:";

/// The field manager of one AppDeployment (`bosun:<namespace>/<name>`), so that
/// server-side apply itself reports a field another app set. Managers are limited to
/// 128 characters: a long name is shortened with a hash.
pub fn field_manager(owner: &str) -> String {
    let full = format!("{FIELD_MANAGER_PREFIX}{owner}");
    if full.len() <= 128 {
        return full;
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(owner.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep: String = full.chars().take(128 - hash.len() - 1).collect();
    format!("{keep}-{hash}")
}

/// One revision to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyPlan<'a> {
    pub manifests: &'a [Manifest],
    /// Namespace of namespaced objects that name none.
    pub default_namespace: &'a str,
    /// `namespace/name` of the AppDeployment, stamped as [`OWNER_ANNOTATION`].
    pub owner: &'a str,
    /// Value of the [`APP_LABEL`] label (`namespace.name`).
    pub app_label: &'a str,
    /// Server-side apply field manager of this app ([`field_manager`]).
    pub field_manager: &'a str,
    /// What the app owns now: the candidates for pruning.
    pub previous_inventory: &'a [InventoryEntry],
}

/// What the revision will own, judged without writing anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Planned {
    /// Every object of the revision, sorted, with whether it was found rather than created.
    pub inventory: Vec<InventoryEntry>,
    /// How many would be sent.
    pub changed: usize,
}

/// What applying a revision did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// What the app owns now, sorted: the revision's objects plus any whose prune failed.
    pub inventory: Vec<InventoryEntry>,
    /// Objects sent to the server (new or changed), in apply order.
    pub sent: Vec<InventoryEntry>,
    /// How many objects were already in place and not sent.
    pub unchanged: usize,
    /// Objects of the previous revision deleted because this one no longer has them.
    pub pruned: Vec<InventoryEntry>,
    /// Objects no longer in the revision but kept: owned by another app now, found
    /// rather than created, a kind never pruned, or annotated `bosun.dev/prune: "false"`.
    /// They are released (bosun's owner annotation removed) and leave the inventory.
    pub prune_skipped: Vec<InventoryEntry>,
    /// Objects whose prune failed (kept in the inventory, tried again next time).
    pub prune_failures: Vec<(InventoryEntry, String)>,
    /// Of [`remove_all`](Applier::remove_all)'s failures, those the API server refused
    /// with 403 (the app's identity may no longer touch them, e.g. its RoleBinding went
    /// first when its namespace was deleted): retrying will not help.
    pub prune_forbidden: Vec<InventoryEntry>,
    /// `metadata.generation` of every object that has one, as this apply left it (from
    /// the server's answer, or the live object when nothing was sent): a watch cache
    /// showing an older generation has not seen this revision yet.
    pub generations: Vec<(InventoryEntry, i64)>,
}

impl ApplyOutcome {
    /// `Kind namespace/name: why` for each prune that failed, for messages.
    pub fn prune_failure_notes(&self) -> Vec<String> {
        self.prune_failures
            .iter()
            .map(|(entry, message)| format!("{entry}: {message}"))
            .collect()
    }
}

/// What a live-object cache knows about one object. A cache of what bosun labelled
/// cannot say "absent": an object bosun did not create carries no label.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(Value),
    /// Not in the cache: ask the API server.
    Unknown,
}

/// Live objects as a watch cache holds them, so that judging an unchanged revision costs
/// no request. [`NoCache`] always says `Unknown`.
pub trait LiveObjects: Send + Sync {
    fn lookup(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Lookup;
}

/// No cache: every live object is read from the API server.
pub struct NoCache;

impl LiveObjects for NoCache {
    fn lookup(&self, _: &ApiResource, _: Option<&str>, _: &str) -> Lookup {
        Lookup::Unknown
    }
}

/// Objects the API server's dry run found unchanged, by what was sent and the live
/// `resourceVersion` it was judged against. Shared by every applier of a controller.
#[derive(Debug, Clone, Default)]
pub struct UnchangedMemo {
    judged: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl UnchangedMemo {
    /// The key an object is remembered by.
    pub fn key(entry: &InventoryEntry) -> String {
        format!(
            "{}/{}/{}/{}",
            entry.api_version,
            entry.kind,
            entry.namespace.as_deref().unwrap_or(""),
            entry.name
        )
    }

    fn holds(&self, entry: &InventoryEntry, hash: &str, resource_version: &str) -> bool {
        let judged = self.judged.lock().expect("memo poisoned");
        judged
            .get(&Self::key(entry))
            .is_some_and(|(h, rv)| h == hash && rv == resource_version)
    }

    fn remember(&self, entry: &InventoryEntry, hash: &str, resource_version: &str) {
        let mut judged = self.judged.lock().expect("memo poisoned");
        judged.insert(Self::key(entry), (hash.to_string(), resource_version.to_string()));
    }

    /// Keeps only what `keep` says of what was judged (an app was deleted).
    pub fn forget_where(&self, keep: impl Fn(&str) -> bool) {
        self.judged
            .lock()
            .expect("memo poisoned")
            .retain(|key, _| keep(key));
    }
}

/// Applies revisions with one client (possibly impersonating the app's ServiceAccount).
#[derive(Clone)]
pub struct Applier {
    client: Client,
    discovery: DiscoveryCache,
    crd_timeout: Duration,
    live: Arc<dyn LiveObjects>,
    memo: UnchangedMemo,
    /// The client acts for someone with fewer rights than the cache's reader (an
    /// impersonated ServiceAccount): the cache answers only for this app's own objects,
    /// anything else is read as that identity, so it learns nothing it may not read.
    scoped: bool,
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
    fn subject(&self) -> String {
        format!("{} ({})", self.entry, location(self.manifest))
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

    fn hash(&self) -> &str {
        self.object["metadata"]["annotations"][plan::APPLIED_HASH_ANNOTATION]
            .as_str()
            .unwrap_or_default()
    }
}

/// One object judged against the cluster.
struct Judged<'m> {
    prepared: Prepared<'m>,
    live: Option<Value>,
    /// Whether it must be sent (the dry run says applying it changes something).
    send: bool,
    /// Whether fields set by someone other than a bosun app must be taken over.
    force: bool,
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
            live: Arc::new(NoCache),
            memo: UnchangedMemo::default(),
            scoped: false,
        }
    }

    /// Reads live objects from `live` where it knows them, and remembers dry-run verdicts
    /// in `memo` (both shared by the controller's appliers).
    #[must_use]
    pub fn with_cache(mut self, live: Arc<dyn LiveObjects>, memo: UnchangedMemo) -> Self {
        self.live = live;
        self.memo = memo;
        self
    }

    /// The client acts for an identity with fewer rights than the cache's reader
    /// (see [`Applier::with_cache`]).
    #[must_use]
    pub fn scoped(mut self, scoped: bool) -> Self {
        self.scoped = scoped;
        self
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

    /// What applying `plan` would own and change, without writing anything: every
    /// object resolved, none owned by another app, every change accepted by a server
    /// dry run.
    pub async fn plan(&self, plan: &ApplyPlan<'_>) -> Result<Planned, ApplyError> {
        let crd_kinds = plan::crd_kinds(plan.manifests);
        let judged = self.judge(plan, &crd_kinds).await?;
        let mut inventory: Vec<InventoryEntry> = judged.iter().map(|j| j.prepared.entry.clone()).collect();
        inventory.sort();
        Ok(Planned {
            changed: judged.iter().filter(|j| j.send).count(),
            inventory,
        })
    }

    /// Validates the whole revision with a server dry run, applies what is not yet in
    /// place in dependency order, then prunes what the previous revision owned and this
    /// one does not. A failure before the first write leaves the cluster untouched.
    pub async fn apply(&self, plan: ApplyPlan<'_>) -> Result<ApplyOutcome, ApplyError> {
        let crd_kinds = plan::crd_kinds(plan.manifests);
        let judged = self.judge(&plan, &crd_kinds).await?;
        let (sent, mut generations) = self.send(&judged, plan.field_manager).await?;
        for j in judged.iter().filter(|j| !j.send) {
            if let Some(generation) = j
                .live
                .as_ref()
                .and_then(|live| live["metadata"]["generation"].as_i64())
            {
                generations.push((j.prepared.entry.clone(), generation));
            }
        }
        let mut inventory: Vec<InventoryEntry> = judged.iter().map(|j| j.prepared.entry.clone()).collect();
        inventory.sort();
        let prune = self.prune(plan.previous_inventory, &inventory, plan.owner).await;
        for (entry, _) in &prune.failures {
            if !inventory.iter().any(|e| e.same_object(entry)) {
                inventory.push(entry.clone());
            }
        }
        inventory.sort();
        let unchanged = judged.len() - sent.len();
        info!(
            owner = plan.owner,
            objects = judged.len(),
            sent = sent.len(),
            unchanged,
            pruned = prune.deleted.len(),
            "applied revision"
        );
        Ok(ApplyOutcome {
            inventory,
            sent,
            unchanged,
            pruned: prune.deleted,
            prune_skipped: prune.skipped,
            prune_failures: prune.failures,
            prune_forbidden: Vec::new(),
            generations,
        })
    }

    /// Resolves, reads live, checks ownership and dry-runs every object that looks
    /// changed. Nothing is written.
    async fn judge<'m>(
        &self,
        plan: &ApplyPlan<'m>,
        crd_kinds: &'m [CrdKind],
    ) -> Result<Vec<Judged<'m>>, ApplyError> {
        let mut prepared = self.prepare(plan, crd_kinds).await?;
        let entries: Vec<InventoryEntry> = prepared.iter().map(|p| p.entry.clone()).collect();
        let order = plan::apply_order(&entries);
        let mut slots: Vec<Option<Prepared>> = prepared.drain(..).map(Some).collect();
        let prepared: Vec<Prepared> = order.iter().filter_map(|&i| slots[i].take()).collect();

        let live = self.read_live(&prepared, plan.owner).await?;
        let mut judged = Vec::with_capacity(prepared.len());
        for (mut p, live) in prepared.into_iter().zip(live) {
            if let Some(live) = &live {
                let owner = live["metadata"]["annotations"][OWNER_ANNOTATION].as_str();
                match owner {
                    Some(owner) if owner != plan.owner => {
                        return Err(ApplyError::OwnedByAnother {
                            object: p.entry.clone(),
                            location: location(p.manifest),
                            owner: format!("AppDeployment {owner}"),
                        });
                    }
                    Some(_) => {
                        p.entry.adopted = plan
                            .previous_inventory
                            .iter()
                            .find(|e| e.same_object(&p.entry))
                            .is_some_and(|e| e.adopted);
                    }
                    // There before bosun: found, not created.
                    None => p.entry.adopted = true,
                }
            }
            let send = match &live {
                None => true,
                Some(live) => {
                    !plan::already_applied(&p.object, live)
                        && !self.memo.holds(&p.entry, p.hash(), resource_version(live))
                }
            };
            judged.push(Judged {
                prepared: p,
                live,
                send,
                force: false,
            });
        }
        self.dry_run(&mut judged, plan.field_manager).await?;
        Ok(judged)
    }

    /// Identity, kind, namespace, stamp; duplicates refused.
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
                    resource: ApiResource {
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
                adopted: false,
            };
            let namespace = plan::place_namespace(&mut object, kind.namespaced, plan.default_namespace)
                .map_err(|message| ApplyError::InvalidObject {
                    object: entry_for(id.namespace.clone()),
                    location: location(manifest),
                    message,
                })?;
            let entry = entry_for(namespace);
            label_pod_template(&mut object, group, &entry.kind, plan.app_label);
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
                // Only for the message: what to write instead, when discovery can say.
                serving: self.discovery.serving(&self.client, api_version, kind).await.ok(),
            }),
            Err(error) => Err(ApplyError::api(
                Action::Discovery,
                api_version.to_string(),
                &error,
            )),
        }
    }

    /// The live object of each prepared one (`None`: does not exist yet), from the
    /// cache where it knows, else from the API server.
    async fn read_live(
        &self,
        prepared: &[Prepared<'_>],
        owner: &str,
    ) -> Result<Vec<Option<Value>>, ApplyError> {
        // Futures from an `async fn` (not a closure) keep the borrow lifetimes general
        // enough for the controller's spawned, `Send` reconcile future.
        let reads: Vec<_> = prepared.iter().map(|p| self.read_one(p, owner)).collect();
        stream::iter(reads)
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await
    }

    async fn read_one(&self, p: &Prepared<'_>, owner: &str) -> Result<Option<Value>, ApplyError> {
        match self
            .live
            .lookup(&p.kind.resource, p.entry.namespace.as_deref(), &p.entry.name)
        {
            Lookup::Found(live)
                if !self.scoped
                    || live["metadata"]["annotations"][OWNER_ANNOTATION].as_str() == Some(owner) =>
            {
                return Ok(Some(live));
            }
            Lookup::Found(_) | Lookup::Unknown => {}
        }
        match p.api(&self.client).get(&p.entry.name).await {
            Ok(live) => Ok(Some(serde_json::to_value(live).unwrap_or_default())),
            // Also the answer for a kind whose CRD is not installed yet.
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(ApplyError::api(Action::Read, p.subject(), &error)),
        }
    }

    /// Every object that looks changed goes through a server dry run before anything is
    /// written. Objects that cannot be validated yet — in a Namespace this revision
    /// creates, or of a kind whose CRD this revision installs — are left to the real
    /// apply. A conflict with another bosun app's field manager refuses the object; a
    /// conflict with anyone else (kubectl, another controller) is drift bosun takes back.
    async fn dry_run(&self, judged: &mut [Judged<'_>], field_manager: &str) -> Result<(), ApplyError> {
        let pending_namespaces: Vec<String> = judged
            .iter()
            .filter(|j| j.prepared.is_namespace() && j.live.is_none())
            .map(|j| j.prepared.entry.name.clone())
            .collect();
        let live_crds: HashMap<String, Option<Value>> = judged
            .iter()
            .filter(|j| j.prepared.is_crd())
            .map(|j| (j.prepared.entry.name.clone(), j.live.clone()))
            .collect();
        let checkable = |j: &Judged| {
            let p = &j.prepared;
            let pending_namespace = p
                .entry
                .namespace
                .as_ref()
                .is_some_and(|ns| pending_namespaces.contains(ns));
            let pending_crd = p.defined_by.is_some_and(|crd| {
                !live_crds
                    .get(&crd.crd_name)
                    .and_then(|live| live.as_ref())
                    .is_some_and(|live| crd_serves(live, &crd.version))
            });
            if pending_namespace || pending_crd {
                debug!(object = %p.entry, "dry run skipped: namespace or CRD not there yet");
            }
            !pending_namespace && !pending_crd
        };
        let indices: Vec<usize> = (0..judged.len())
            .filter(|&i| judged[i].send && checkable(&judged[i]))
            .collect();
        let checks: Vec<_> = indices
            .iter()
            .map(|&i| self.dry_run_one(&judged[i].prepared, field_manager))
            .collect();
        let results: Vec<DryRun> = stream::iter(checks)
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
        for (i, result) in indices.into_iter().zip(results) {
            let j = &mut judged[i];
            j.force = result.forced;
            if let Some(live) = &j.live
                && same_state(&result.object, live)
            {
                // Applying would change nothing the API server keeps: not sent.
                j.send = false;
                self.memo
                    .remember(&j.prepared.entry, j.prepared.hash(), resource_version(live));
            }
        }
        Ok(())
    }

    async fn dry_run_one(&self, p: &Prepared<'_>, field_manager: &str) -> Result<DryRun, ApplyError> {
        let api = p.api(&self.client);
        let polite = PatchParams::apply(field_manager).dry_run();
        match api.patch(&p.entry.name, &polite, &Patch::Apply(&p.object)).await {
            Ok(object) => {
                return Ok(DryRun {
                    object: serde_json::to_value(object).unwrap_or_default(),
                    forced: false,
                });
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let managers = conflicting_managers(&status);
                if let Some(other) = managers
                    .iter()
                    .find(|m| m.starts_with(FIELD_MANAGER_PREFIX) && m.as_str() != field_manager)
                {
                    return Err(ApplyError::OwnedByAnother {
                        object: p.entry.clone(),
                        location: location(p.manifest),
                        owner: format!(
                            "AppDeployment {} (its field manager {other} set the same fields)",
                            other.trim_start_matches(FIELD_MANAGER_PREFIX)
                        ),
                    });
                }
                debug!(object = %p.entry, ?managers, "fields set by others are taken back");
            }
            Err(error) => return Err(ApplyError::api(Action::DryRun, p.subject(), &error)),
        }
        let forced = PatchParams::apply(field_manager).force().dry_run();
        match api.patch(&p.entry.name, &forced, &Patch::Apply(&p.object)).await {
            Ok(object) => Ok(DryRun {
                object: serde_json::to_value(object).unwrap_or_default(),
                forced: true,
            }),
            Err(error) => Err(ApplyError::api(Action::DryRun, p.subject(), &error)),
        }
    }

    /// Server-side apply of the changed objects, group by group in apply order. Objects
    /// of one group do not depend on each other, so they are sent concurrently; a group
    /// starts when the one before it is done. CRDs are waited for until Established
    /// before the groups after them.
    async fn send(&self, judged: &[Judged<'_>], field_manager: &str) -> Result<Sent, ApplyError> {
        let mut sent = Vec::new();
        let mut generations = Vec::new();
        let indices: Vec<usize> = (0..judged.len()).collect();
        for group in indices.chunk_by(|&a, &b| judged[a].prepared.rank == judged[b].prepared.rank) {
            let to_send: Vec<&Judged> = group
                .iter()
                .filter(|&&i| judged[i].send)
                .map(|&i| &judged[i])
                .collect();
            // Futures collected first: a `.map(closure)` on the stream makes the
            // reconcile future's lifetimes too specific for kube-runtime.
            let sends: Vec<_> = to_send.iter().map(|j| self.send_one(j, field_manager)).collect();
            let answers: Vec<Option<i64>> = stream::iter(sends)
                .buffered(CONCURRENT_REQUESTS)
                .try_collect()
                .await?;
            for (j, generation) in to_send.iter().zip(answers) {
                debug!(object = %j.prepared.entry, "applied");
                sent.push(j.prepared.entry.clone());
                if let Some(generation) = generation {
                    generations.push((j.prepared.entry.clone(), generation));
                }
            }
            for &i in group.iter().filter(|&&i| judged[i].prepared.is_crd()) {
                let crd = &judged[i];
                let versions = crd_versions(&crd.prepared.object);
                let live_ready = crd
                    .live
                    .as_ref()
                    .is_some_and(|l| versions.iter().all(|v| crd_serves(l, v)));
                if crd.send || !live_ready {
                    self.wait_established(&crd.prepared.entry.name).await?;
                    let api_group = crd.prepared.object["spec"]["group"].as_str().unwrap_or_default();
                    for version in versions {
                        self.discovery.invalidate(&format!("{api_group}/{version}"));
                    }
                }
            }
        }
        Ok((sent, generations))
    }

    /// Sends one object; returns the generation the server gave it, if it has one.
    async fn send_one(&self, j: &Judged<'_>, field_manager: &str) -> Result<Option<i64>, ApplyError> {
        let p = &j.prepared;
        // Conflicts with another bosun app were refused at the dry run; what is left to
        // force is drift made by hand or by other tools. An object whose dry run was
        // skipped (its namespace or CRD comes with this revision) is new: nothing to force.
        let params = if j.force {
            PatchParams::apply(field_manager).force()
        } else {
            PatchParams::apply(field_manager)
        };
        // Right after a CRD is Established its endpoint may still answer 404 for a moment
        // (more so behind several API servers): retry those briefly.
        let attempts = if p.defined_by.is_some() { 20 } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match p
                .api(&self.client)
                .patch(&p.entry.name, &params, &Patch::Apply(&p.object))
                .await
            {
                Ok(applied) => return Ok(applied.metadata.generation),
                Err(error) if is_not_found(&error) && attempt < attempts => {
                    tokio::time::sleep(CRD_POLL).await;
                }
                Err(error) => return Err(ApplyError::api(Action::Apply, p.subject(), &error)),
            }
        }
    }

    async fn wait_established(&self, name: &str) -> Result<(), ApplyError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + self.crd_timeout;
        let subject = format!("CustomResourceDefinition {name}");
        loop {
            let crd = crds
                .get(name)
                .await
                .map_err(|error| ApplyError::api(Action::WaitEstablished, subject.clone(), &error))?;
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
                return Err(ApplyError::CrdNamesRejected {
                    name: name.to_string(),
                    message: clash.message.clone().unwrap_or_default(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApplyError::Api {
                    action: Action::WaitEstablished,
                    subject,
                    message: format!("not Established after {:?}", self.crd_timeout),
                    class: crate::failure::ApiErrorClass::Transient,
                });
            }
            tokio::time::sleep(CRD_POLL).await;
        }
    }

    /// Deletes what the previous revision owned and this one does not, within limits:
    /// only objects still carrying this app's owner annotation, never one bosun found
    /// rather than created, never a Namespace, CustomResourceDefinition or
    /// PersistentVolumeClaim (their loss takes data with it), unless the manifest said
    /// `bosun.dev/prune: "true"`; never one that says `"false"`. What is kept is
    /// released. Tries every object; failures are reported, not raised.
    async fn prune(
        &self,
        previous: &[InventoryEntry],
        current: &[InventoryEntry],
        owner: &str,
    ) -> PruneReport {
        let mut report = PruneReport::default();
        for entry in plan::prune_set(previous, current) {
            match self.prune_one(&entry, owner).await {
                Ok(PruneResult::Deleted) => report.deleted.push(entry),
                Ok(PruneResult::Gone) => {}
                Ok(PruneResult::Kept) => report.skipped.push(entry),
                Err(Refusal { message, .. }) => {
                    warn!(object = %entry, %message, "prune failed");
                    report.failures.push((entry, message));
                }
            }
        }
        report
    }

    /// The API of an inventory entry's kind; `None` when the kind itself is gone (its
    /// CRD was removed), and its objects with it.
    async fn api_of(&self, entry: &InventoryEntry) -> Result<Option<Api<DynamicObject>>, String> {
        let kind = match self
            .discovery
            .resolve(&self.client, &entry.api_version, &entry.kind)
            .await
        {
            Ok(Some(kind)) => kind,
            Ok(None) => return Ok(None),
            Err(error) => return Err(server_message(&error)),
        };
        if kind.namespaced && entry.namespace.is_none() {
            return Err("inventory entry of a namespaced kind has no namespace".to_string());
        }
        Ok(Some(dynamic_api(&self.client, &kind, entry.namespace.as_deref())))
    }

    async fn prune_one(&self, entry: &InventoryEntry, owner: &str) -> Result<PruneResult, Refusal> {
        let Some(api) = self.api_of(entry).await? else {
            return Ok(PruneResult::Gone);
        };
        let live = match api.get(&entry.name).await {
            Ok(live) => live,
            Err(error) if is_not_found(&error) => return Ok(PruneResult::Gone),
            Err(error) => return Err(Refusal::of(&error)),
        };
        if live.annotations().get(OWNER_ANNOTATION).map(String::as_str) != Some(owner) {
            info!(object = %entry, "not pruned: no longer owned by this app");
            return Ok(PruneResult::Kept);
        }
        if let Some(why) = keep_reason(
            entry,
            live.annotations().get(PRUNE_ANNOTATION).map(String::as_str),
        ) {
            info!(object = %entry, why, "not pruned; released");
            release(&api, &live, &field_manager(owner))
                .await
                .map_err(|e| Refusal::of(&e))?;
            return Ok(PruneResult::Kept);
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
                Ok(PruneResult::Kept)
            }
            Err(error) => Err(Refusal::of(&error)),
        }
    }

    /// Deletes (or, with `delete == false`, releases) everything in `inventory` that
    /// this app created, by the same rules as prune: what happens to an app's objects
    /// when its AppDeployment is deleted.
    pub async fn remove_all(&self, inventory: &[InventoryEntry], owner: &str, delete: bool) -> ApplyOutcome {
        let mut outcome = ApplyOutcome::default();
        for entry in plan::prune_set(inventory, &[]) {
            let result = if delete {
                self.prune_one(&entry, owner).await
            } else {
                self.release_one(&entry, owner).await
            };
            match result {
                Ok(PruneResult::Deleted) => outcome.pruned.push(entry),
                Ok(PruneResult::Gone) => {}
                Ok(PruneResult::Kept) => outcome.prune_skipped.push(entry),
                Err(refusal) => {
                    if refusal.forbidden {
                        outcome.prune_forbidden.push(entry.clone());
                    }
                    outcome.prune_failures.push((entry, refusal.message));
                }
            }
        }
        outcome
    }

    async fn release_one(&self, entry: &InventoryEntry, owner: &str) -> Result<PruneResult, Refusal> {
        let Some(api) = self.api_of(entry).await? else {
            return Ok(PruneResult::Gone);
        };
        match api.get_opt(&entry.name).await {
            Ok(Some(live)) if live.annotations().get(OWNER_ANNOTATION).map(String::as_str) == Some(owner) => {
                release(&api, &live, &field_manager(owner))
                    .await
                    .map_err(|e| Refusal::of(&e))?;
                Ok(PruneResult::Kept)
            }
            Ok(_) => Ok(PruneResult::Gone),
            Err(error) => Err(Refusal::of(&error)),
        }
    }
}

/// Why one object could not be pruned or released.
struct Refusal {
    message: String,
    /// The API server answered 403.
    forbidden: bool,
}

impl Refusal {
    fn of(error: &kube::Error) -> Refusal {
        Refusal {
            message: server_message(error),
            forbidden: matches!(error, kube::Error::Api(status) if status.code == 403),
        }
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal {
            message,
            forbidden: false,
        }
    }
}

/// Why prune leaves an object alone, if it does.
pub fn keep_reason(entry: &InventoryEntry, prune_annotation: Option<&str>) -> Option<&'static str> {
    match prune_annotation {
        Some("false") => return Some("annotated bosun.dev/prune: \"false\""),
        Some("true") => return None,
        _ => {}
    }
    let group = plan::group_of(&entry.api_version);
    match (group, entry.kind.as_str()) {
        ("", "Namespace") => Some("a Namespace is never pruned unless annotated bosun.dev/prune: \"true\""),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            Some("a CustomResourceDefinition is never pruned unless annotated bosun.dev/prune: \"true\"")
        }
        ("", "PersistentVolumeClaim") => {
            Some("a PersistentVolumeClaim is never pruned unless annotated bosun.dev/prune: \"true\"")
        }
        _ if entry.adopted => Some("bosun found it rather than created it"),
        _ => None,
    }
}

/// Removes bosun's owner annotation and app label, and this app's field ownership: the
/// object is no longer this app's, and another app may take it over without its
/// fields counting as another app's (the dry run refuses those). The object itself is
/// left as it is. Conditional on the `resourceVersion` read, so that no change of the
/// managed fields made meanwhile is lost (a conflict is retried with the prune).
async fn release(
    api: &Api<DynamicObject>,
    live: &DynamicObject,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let mut metadata = json!({
        "resourceVersion": live.resource_version(),
        "annotations": {OWNER_ANNOTATION: null, plan::APPLIED_HASH_ANNOTATION: null},
        "labels": {APP_LABEL: null},
    });
    if let Some(managed_fields) = managed_fields_without(live.managed_fields(), field_manager) {
        metadata["managedFields"] = managed_fields;
    }
    api.patch(
        &live.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": metadata})),
    )
    .await
    .map(|_| ())
}

/// The managed fields of an object without the entries of `field_manager`, as a patch
/// sends them: `None` when it has none (nothing to change). With no entry left, the
/// list holds one empty entry: that clears it, where an empty list would mean
/// "unchanged" to the API server.
fn managed_fields_without(managed_fields: &[ManagedFieldsEntry], field_manager: &str) -> Option<Value> {
    let ours = |entry: &&ManagedFieldsEntry| entry.manager.as_deref() == Some(field_manager);
    if !managed_fields.iter().any(|entry| ours(&entry)) {
        return None;
    }
    let others: Vec<Value> = managed_fields
        .iter()
        .filter(|entry| !ours(entry))
        .map(|entry| serde_json::to_value(entry).unwrap_or_default())
        .collect();
    Some(if others.is_empty() {
        json!([{}])
    } else {
        Value::Array(others)
    })
}

/// What was sent, and the generations the server answered with.
type Sent = (Vec<InventoryEntry>, Vec<(InventoryEntry, i64)>);

#[derive(Default)]
struct PruneReport {
    deleted: Vec<InventoryEntry>,
    skipped: Vec<InventoryEntry>,
    failures: Vec<(InventoryEntry, String)>,
}

enum PruneResult {
    Deleted,
    Gone,
    Kept,
}

struct DryRun {
    object: Value,
    forced: bool,
}

/// The field managers a server-side apply conflict names (`conflict with "kubectl"`).
fn conflicting_managers(status: &kube::core::Status) -> Vec<String> {
    let mut texts: Vec<&str> = vec![status.message.as_str()];
    if let Some(details) = &status.details {
        texts.extend(details.causes.iter().map(|c| c.message.as_str()));
    }
    let mut managers = Vec::new();
    for text in texts {
        let mut rest = text;
        while let Some(at) = rest.find(" with \"") {
            rest = &rest[at + " with \"".len()..];
            if let Some(end) = rest.find('"') {
                let manager = rest[..end].to_string();
                if !managers.contains(&manager) {
                    managers.push(manager);
                }
                rest = &rest[end..];
            }
        }
    }
    managers
}

/// Whether a dry-run result is the live object: everything but the bookkeeping a no-op
/// apply may touch (managedFields and their timestamps).
fn same_state(dry_run: &Value, live: &Value) -> bool {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
        }
        value
    };
    strip(dry_run) == strip(live)
}

fn resource_version(live: &Value) -> &str {
    live["metadata"]["resourceVersion"].as_str().unwrap_or_default()
}

/// Puts the app label on the pod template of a workload too, so that its ReplicaSets,
/// ControllerRevisions and Pods carry it and bosun's watch caches find them by label
/// (a cluster holds far more Pods than bosun manages).
pub fn label_pod_template(object: &mut Value, group: &str, kind: &str, app_label: &str) {
    if !matches!(
        (group, kind),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet")
    ) {
        return;
    }
    let Some(template) = object
        .pointer_mut("/spec/template")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let metadata = template.entry("metadata").or_insert_with(|| json!({}));
    if !metadata.is_object() {
        *metadata = json!({});
    }
    let labels = metadata
        .as_object_mut()
        .map(|m| m.entry("labels").or_insert_with(|| json!({})));
    if let Some(labels) = labels {
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(APP_LABEL.to_string(), Value::String(app_label.to_string()));
        }
    }
}

fn location(manifest: &Manifest) -> String {
    format!("{}:{}", manifest.file, manifest.line)
}

pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
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
    use crate::core::FailureKind;
    use crate::failure::Classified;

    fn entry(api_version: &str, kind: &str, name: &str) -> InventoryEntry {
        InventoryEntry {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some("team".into()),
            name: name.into(),
            adopted: false,
        }
    }

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
    fn errors_name_the_object_and_classify() {
        let error = ApplyError::Api {
            action: Action::DryRun,
            subject: "Deployment team/web (deploy/web.yaml:3)".into(),
            message: "spec.replicas: Invalid value: -1".into(),
            class: crate::failure::ApiErrorClass::Refused,
        };
        assert_eq!(error.reason(), "DryRunFailed");
        let text = error.to_string();
        assert_eq!(
            text,
            "dry run of Deployment team/web (deploy/web.yaml:3): spec.replicas: Invalid value: -1"
        );
        assert!(matches!(error.classify(), Classified::Refused(f) if f.kind == FailureKind::RevisionInvalid));

        let unknown = ApplyError::UnknownKind {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            name: "w".into(),
            location: "w.yaml:1".into(),
            serving: None,
        };
        assert_eq!(unknown.reason(), "UnknownKind");
        assert!(unknown.to_string().contains("Widget w (w.yaml:1)"));

        let owned = ApplyError::OwnedByAnother {
            object: entry("v1", "ConfigMap", "a"),
            location: "a.yaml:1".into(),
            owner: "AppDeployment team/other".into(),
        };
        assert!(
            matches!(owned.classify(), Classified::Refused(f) if f.kind == FailureKind::OwnershipConflict && f.message.contains("team/other"))
        );
    }

    #[test]
    fn prune_keeps_what_would_take_data_with_it_and_what_bosun_found() {
        assert_eq!(keep_reason(&entry("v1", "ConfigMap", "a"), None), None);
        assert!(keep_reason(&entry("v1", "Namespace", "a"), None).is_some());
        assert!(keep_reason(&entry("v1", "PersistentVolumeClaim", "a"), None).is_some());
        assert!(
            keep_reason(
                &entry("apiextensions.k8s.io/v1", "CustomResourceDefinition", "a"),
                None
            )
            .is_some()
        );
        assert_eq!(
            keep_reason(&entry("v1", "PersistentVolumeClaim", "a"), Some("true")),
            None
        );
        assert!(keep_reason(&entry("v1", "ConfigMap", "a"), Some("false")).is_some());
        let mut found = entry("v1", "ConfigMap", "a");
        found.adopted = true;
        assert!(keep_reason(&found, None).is_some());
        assert_eq!(keep_reason(&found, Some("true")), None);
    }

    #[test]
    fn a_release_drops_only_the_apps_own_field_ownership() {
        let entry = |manager: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            ..Default::default()
        };
        let managed = vec![entry("bosun:shop/app"), entry("kube-controller-manager")];
        let kept = managed_fields_without(&managed, "bosun:shop/app").unwrap();
        assert_eq!(kept.as_array().unwrap().len(), 1);
        assert_eq!(kept[0]["manager"], "kube-controller-manager");
        assert_eq!(kept[0]["operation"], "Apply");
        // Another app's ownership is not this app's to give away.
        assert_eq!(managed_fields_without(&managed, "bosun:shop/other"), None);
        // Nothing left: one empty entry clears the list (an empty list changes nothing).
        assert_eq!(
            managed_fields_without(&[entry("bosun:shop/app")], "bosun:shop/app"),
            Some(json!([{}]))
        );
        assert_eq!(managed_fields_without(&[], "bosun:shop/app"), None);
    }

    #[test]
    fn conflicts_name_their_managers() {
        let status = kube::core::Status::failure(
            "Apply failed with 2 conflicts: conflicts with \"bosun:shop/other\":\n- .data.a\nconflict with \"kubectl-edit\" using v1: .data.b",
            "Conflict",
        )
        .with_code(409);
        assert_eq!(
            conflicting_managers(&status),
            vec!["bosun:shop/other", "kubectl-edit"]
        );
    }

    #[test]
    fn field_managers_are_per_app_and_bounded() {
        assert_eq!(field_manager("shop/app"), "bosun:shop/app");
        let long = format!("ns/{}", "a".repeat(200));
        let manager = field_manager(&long);
        assert_eq!(manager.len(), 128);
        assert_ne!(field_manager(&format!("{long}b")), manager);
    }

    #[test]
    fn pod_templates_carry_the_app_label() {
        let mut deploy = json!({"spec": {"template": {"spec": {}}}});
        label_pod_template(&mut deploy, "apps", "Deployment", "shop.app");
        assert_eq!(
            deploy["spec"]["template"]["metadata"]["labels"][APP_LABEL],
            "shop.app"
        );
        let mut job = json!({"spec": {"template": {"spec": {}}}});
        label_pod_template(&mut job, "batch", "Job", "shop.app");
        assert!(job["spec"]["template"].get("metadata").is_none());
    }

    #[test]
    fn a_dry_run_that_changes_nothing_but_managed_fields_is_the_live_state() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": [{"manager": "x"}]}, "data": {"k": "500m"}});
        let result = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": [{"manager": "x"}, {"manager": "bosun:a/b"}]}, "data": {"k": "500m"}});
        assert!(same_state(&result, &live));
        let changed = json!({"metadata": {"name": "a", "resourceVersion": "5"}, "data": {"k": "1"}});
        assert!(!same_state(&changed, &live));
    }
}
