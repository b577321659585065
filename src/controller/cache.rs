//! Watch caches: what reconciliation and verification read comes from reflectors that
//! the API server keeps warm, so a verification round costs no request and a crash-looping
//! Pod is seen the moment its status changes, not at the next tick.
//!
//! Only what bosun manages is watched: objects bosun applies carry its app label, and so
//! do the pod templates of its workloads, hence their ReplicaSets, ControllerRevisions
//! and Pods (a cluster holds far more Pods than bosun manages), and the backup and
//! migration Jobs. Runbooks, ClusterRunbooks and snapshot Secrets are watched whole, and
//! so are the other Secrets (preflight checks their keys and policies, and a change of
//! one rolls the workloads that read it), Helm's release Secrets excepted. Any change of
//! a watched object wakes the app it belongs to; a Secret's change wakes every app of
//! its namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::{APP_LABEL, AppDeployment, ClusterRunbook, Runbook, RunbookKind, RunbookSpec};
use crate::apply::{LiveObjects, Lookup};
use crate::gates::WorkloadStores;
use crate::render::Manifest;
use crate::snapshot::{self, SNAPSHOT_SECRET_TYPE, SnapshotError};

/// Wakes the app a change concerns.
pub type Trigger = mpsc::UnboundedSender<ObjectRef<AppDeployment>>;

/// Which namespaces the controller watches: all of them, or the one of a
/// namespace-scoped install (`--watch-namespace`), whose RBAC grants nothing beyond it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    #[default]
    Cluster,
    Namespace(String),
}

impl WatchScope {
    /// The API of a namespaced kind, over every namespace or the one watched.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            WatchScope::Cluster => Api::all(client.clone()),
            WatchScope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }

    /// Whether objects of `namespace` (`None`: cluster-scoped) are in sight.
    fn sees(&self, namespace: Option<&str>) -> bool {
        match self {
            WatchScope::Cluster => true,
            WatchScope::Namespace(watched) => namespace == Some(watched.as_str()),
        }
    }
}

/// Every cache the controller reads, kept warm by watches.
#[derive(Clone)]
pub struct Caches {
    pub apps: Store<AppDeployment>,
    pub runbooks: Store<Runbook>,
    pub cluster_runbooks: Store<ClusterRunbook>,
    pub snapshots: Store<Secret>,
    /// Every Secret but snapshots and Helm releases.
    pub secrets: Store<Secret>,
    /// Every ConfigMap (`binaryData` dropped: environment variables never read it).
    pub config_maps: Store<ConfigMap>,
    /// Backup, migration and downgrade Jobs (labelled with their app).
    pub jobs: Store<Job>,
    pub workloads: WorkloadStores,
    pub managed: Arc<ManagedObjects>,
    decoded: Arc<Mutex<DecodedSnapshots>>,
    /// Runbooks and ClusterRunbooks left out of their watches: they do not deserialize.
    unreadable_runbooks: Unreadable,
    unreadable_cluster_runbooks: Unreadable,
    /// When a Secret or ConfigMap of a namespace last changed.
    secret_changes: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How many decoded snapshots are kept at most (two per app are read: the running and
/// the last healthy revision).
const DECODED_MAX_ENTRIES: usize = 256;
/// How many bytes (of the JSON they were decoded from) decoded snapshots may hold in
/// all: with [`snapshot::MAX_DECODED_BYTES`] a bound on one, this keeps the cache a
/// small share of the controller's memory limit however many apps there are.
const DECODED_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Decoded snapshots, bounded by count and bytes; the least recently used go first.
/// A snapshot is decoded again when it is read after eviction: the Secret stays in the
/// watch cache.
#[derive(Default)]
struct DecodedSnapshots {
    entries: HashMap<String, DecodedEntry>,
    bytes: usize,
    clock: u64,
}

struct DecodedEntry {
    /// The Secret's resourceVersion they were decoded from.
    version: String,
    manifests: Arc<Vec<Manifest>>,
    bytes: usize,
    used: u64,
}

impl DecodedSnapshots {
    fn get(&mut self, key: &str, version: &str) -> Option<Arc<Vec<Manifest>>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key).filter(|e| e.version == version)?;
        entry.used = self.clock;
        Some(entry.manifests.clone())
    }

    fn insert(&mut self, key: String, version: String, manifests: Arc<Vec<Manifest>>, bytes: usize) {
        self.remove(&key);
        if bytes > DECODED_MAX_BYTES {
            return;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            key,
            DecodedEntry {
                version,
                manifests,
                bytes,
                used: self.clock,
            },
        );
        while self.entries.len() > DECODED_MAX_ENTRIES || self.bytes > DECODED_MAX_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.bytes;
        }
    }
}

impl Caches {
    /// Starts every watch; changes are sent on `trigger` as the apps they concern.
    pub fn start(
        client: &Client,
        scope: &WatchScope,
        apps: Store<AppDeployment>,
        trigger: Trigger,
    ) -> Caches {
        let managed_only = || watcher::Config::default().labels(APP_LABEL);
        let to_owner = {
            let apps = apps.clone();
            let trigger = trigger.clone();
            move |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                let Some(value) = meta.labels.as_ref().and_then(|l| l.get(APP_LABEL)) else {
                    return;
                };
                for app in apps_with_label(&apps, value) {
                    let _ = trigger.send(app);
                }
            }
        };
        let workloads = WorkloadStores {
            deployments: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &Deployment| wake(&o.metadata)
            }),
            stateful_sets: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &StatefulSet| wake(&o.metadata)
            }),
            daemon_sets: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &DaemonSet| wake(&o.metadata)
            }),
            replica_sets: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &ReplicaSet| wake(&o.metadata)
            }),
            controller_revisions: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &ControllerRevision| wake(&o.metadata)
            }),
            pods: reflect(scope.api(client), managed_only(), {
                let wake = to_owner.clone();
                move |o: &Pod| wake(&o.metadata)
            }),
        };
        let unreadable_runbooks = Unreadable::default();
        let unreadable_cluster_runbooks = Unreadable::default();
        let runbooks = reflect_guarded(
            scope.api(client),
            watcher::Config::default(),
            runbook_stub,
            unreadable_runbooks.clone(),
            {
                let apps = apps.clone();
                let trigger = trigger.clone();
                move |runbook: &Runbook| {
                    let namespace = runbook.namespace();
                    for app in apps_using(
                        &apps,
                        RunbookKind::Runbook,
                        namespace.as_deref(),
                        &runbook.name_any(),
                    ) {
                        let _ = trigger.send(app);
                    }
                }
            },
        );
        let cluster_runbooks = match scope {
            WatchScope::Cluster => reflect_guarded(
                Api::all(client.clone()),
                watcher::Config::default(),
                cluster_runbook_stub,
                unreadable_cluster_runbooks.clone(),
                {
                    let apps = apps.clone();
                    let trigger = trigger.clone();
                    move |runbook: &ClusterRunbook| {
                        for app in apps_using(&apps, RunbookKind::ClusterRunbook, None, &runbook.name_any()) {
                            let _ = trigger.send(app);
                        }
                    }
                },
            ),
            // A namespace-scoped install may not read ClusterRunbooks: none are known.
            WatchScope::Namespace(_) => {
                let (reader, mut writer) = reflector::store();
                writer.apply_watcher_event(&watcher::Event::InitDone);
                reader
            }
        };
        let snapshots = reflect(
            scope.api(client),
            watcher::Config::default().fields(&format!("type={SNAPSHOT_SECRET_TYPE}")),
            |_: &Secret| {},
        );
        let jobs = reflect(scope.api(client), managed_only(), {
            let wake = to_owner.clone();
            move |o: &Job| wake(&o.metadata)
        });
        let secret_changes: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let secrets = reflect(
            scope.api(client),
            // Field selectors on `type` are served for Secrets by every API server version.
            watcher::Config::default()
                .fields(&format!("type!={SNAPSHOT_SECRET_TYPE},type!={HELM_RELEASE_TYPE}")),
            {
                let apps = apps.clone();
                let trigger = trigger.clone();
                let changes = secret_changes.clone();
                move |secret: &Secret| {
                    let namespace = secret.namespace().unwrap_or_default();
                    changes
                        .lock()
                        .expect("secret change times poisoned")
                        .insert(namespace.clone(), Instant::now());
                    for app in apps_targeting(&apps, &namespace) {
                        let _ = trigger.send(app);
                    }
                }
            },
        );
        let config_maps = {
            let (reader, writer) = reflector::store();
            let apps = apps.clone();
            let trigger = trigger.clone();
            let changes = secret_changes.clone();
            let stream = watcher(scope.api::<ConfigMap>(client), watcher::Config::default())
                .default_backoff()
                .modify(|object: &mut ConfigMap| {
                    object.metadata.managed_fields = None;
                    object.binary_data = None;
                })
                .reflect(writer)
                .touched_objects();
            tokio::spawn(drive(stream, move |config_map: &ConfigMap| {
                let namespace = config_map.namespace().unwrap_or_default();
                changes
                    .lock()
                    .expect("secret change times poisoned")
                    .insert(namespace.clone(), Instant::now());
                for app in apps_targeting(&apps, &namespace) {
                    let _ = trigger.send(app);
                }
            }));
            reader
        };
        Caches {
            apps,
            runbooks,
            cluster_runbooks,
            snapshots,
            secrets,
            config_maps,
            jobs,
            secret_changes,
            workloads,
            managed: Arc::new(ManagedObjects::new(client.clone(), scope.clone())),
            decoded: Arc::default(),
            unreadable_runbooks,
            unreadable_cluster_runbooks,
        }
    }

    /// Waits until every watch has listed once: before that, "not found" means nothing.
    pub async fn wait_ready(&self) {
        let _ = self.runbooks.wait_until_ready().await;
        let _ = self.cluster_runbooks.wait_until_ready().await;
        let _ = self.snapshots.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
        let _ = self.jobs.wait_until_ready().await;
        let w = &self.workloads;
        let _ = w.deployments.wait_until_ready().await;
        let _ = w.stateful_sets.wait_until_ready().await;
        let _ = w.daemon_sets.wait_until_ready().await;
        let _ = w.replica_sets.wait_until_ready().await;
        let _ = w.controller_revisions.wait_until_ready().await;
        let _ = w.pods.wait_until_ready().await;
    }

    /// Why the Runbook (in `namespace`) or ClusterRunbook named by a `runbookRef` was
    /// left out of its watch, when it was: it does not deserialize.
    pub fn unreadable_runbook(&self, kind: RunbookKind, namespace: &str, name: &str) -> Option<String> {
        let (map, key) = match kind {
            RunbookKind::Runbook => (&self.unreadable_runbooks, format!("{namespace}/{name}")),
            RunbookKind::ClusterRunbook => (&self.unreadable_cluster_runbooks, format!("/{name}")),
        };
        map.lock()
            .expect("unreadable objects poisoned")
            .get(&key)
            .cloned()
    }

    /// The Runbook (in `namespace`) or ClusterRunbook named by a `runbookRef`, with the
    /// resourceVersion it was read at.
    pub fn runbook(&self, kind: RunbookKind, namespace: &str, name: &str) -> Option<(RunbookSpec, String)> {
        match kind {
            RunbookKind::Runbook => self
                .runbooks
                .get(&ObjectRef::new(name).within(namespace))
                .map(|r| (r.spec.clone(), r.resource_version().unwrap_or_default())),
            RunbookKind::ClusterRunbook => self
                .cluster_runbooks
                .get(&ObjectRef::new(name))
                .map(|r| (r.spec.runbook.clone(), r.resource_version().unwrap_or_default())),
        }
    }

    /// The manifests of snapshot Secret `namespace/name` from the cache, decoded once per
    /// version of the Secret. `None` when the cache does not hold it (read it instead).
    pub fn snapshot(
        &self,
        namespace: &str,
        name: &str,
        revision: &str,
    ) -> Option<Result<Arc<Vec<Manifest>>, SnapshotError>> {
        let secret = self.snapshots.get(&ObjectRef::new(name).within(namespace))?;
        let version = secret.resource_version().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        if let Some(manifests) = self
            .decoded
            .lock()
            .expect("snapshot cache poisoned")
            .get(&key, &version)
        {
            return Some(Ok(manifests));
        }
        let decoded = snapshot::manifests_counted(&secret, revision);
        Some(decoded.map(|(manifests, bytes)| {
            let manifests = Arc::new(manifests);
            self.decoded.lock().expect("snapshot cache poisoned").insert(
                key,
                version,
                manifests.clone(),
                bytes,
            );
            manifests
        }))
    }

    /// When a Secret or ConfigMap of `namespace` last changed (`None`: not since the
    /// caches started).
    pub fn config_changed_at(&self, namespace: &str) -> Option<Instant> {
        let changes = self.secret_changes.lock().expect("secret change times poisoned");
        changes.get(namespace).copied()
    }

    /// What preflight reads: Secrets and ConfigMaps from the caches.
    pub fn lookup(&self) -> crate::preflight::StoreLookup {
        crate::preflight::StoreLookup {
            secrets: self.secrets.clone(),
            config_maps: self.config_maps.clone(),
        }
    }

    /// A Secret from the cache (never a snapshot or a Helm release).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }

    /// Drops what was decoded for an app's snapshots (the app was deleted).
    pub fn forget_snapshots(&self, namespace: &str, names: &[String]) {
        let mut decoded = self.decoded.lock().expect("snapshot cache poisoned");
        for name in names {
            decoded.remove(&format!("{namespace}/{name}"));
        }
    }
}

/// A reflector over `api`, kept running in the background; `on_change` sees every
/// object that is added, changed or deleted. Managed fields are dropped: they are not
/// read and would double the memory.
fn reflect<K>(api: Api<K>, config: watcher::Config, on_change: impl Fn(&K) + Send + 'static) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(drive(stream, on_change));
    reader
}

/// [`reflect`] for bosun's own kinds, through [`guarded_watcher`].
fn reflect_guarded<K>(
    api: Api<DeserializeGuard<K>>,
    config: watcher::Config,
    stub: fn(ObjectMeta) -> K,
    unreadable: Unreadable,
    on_change: impl Fn(&K) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = guarded_watcher(api, config, stub, unreadable)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(drive(stream, on_change));
    reader
}

/// A watch that outlives an object it cannot read (a field of the wrong type that the
/// CRD's schema does not constrain, such as an integer past `u32`: the API server
/// checks `type: integer`, not `format: uint32`). Without the guard, one such object
/// fails every list, and the whole watch, every app with it, stalls. The object is left
/// out instead, with a warning naming it and why; when it was in the cache it goes, as
/// if deleted (a stale version is not acted on).
pub(super) fn guarded_watcher<K>(
    api: Api<DeserializeGuard<K>>,
    config: watcher::Config,
    stub: fn(ObjectMeta) -> K,
    unreadable: Unreadable,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, config).filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => guard_event(event, stub, &unreadable).map(Ok),
            Err(error) => Some(Err(error)),
        })
    })
}

/// One event of a guarded watch, the unreadable objects left out; `None`: nothing to
/// pass on.
fn guard_event<K>(
    event: watcher::Event<DeserializeGuard<K>>,
    stub: fn(ObjectMeta) -> K,
    unreadable: &Unreadable,
) -> Option<watcher::Event<K>>
where
    K: Resource,
    K::DynamicType: Default,
{
    use watcher::Event;
    let key = |metadata: &ObjectMeta| {
        format!(
            "{}/{}",
            metadata.namespace.as_deref().unwrap_or_default(),
            metadata.name.as_deref().unwrap_or_default()
        )
    };
    let mut unreadable = unreadable.lock().expect("unreadable objects poisoned");
    match &event {
        Event::Apply(DeserializeGuard(Ok(object))) | Event::InitApply(DeserializeGuard(Ok(object))) => {
            unreadable.remove(&key(object.meta()));
        }
        Event::Apply(DeserializeGuard(Err(invalid))) | Event::InitApply(DeserializeGuard(Err(invalid))) => {
            unreadable.insert(key(&invalid.metadata), invalid.error.clone());
        }
        Event::Delete(DeserializeGuard(Ok(object))) => {
            unreadable.remove(&key(object.meta()));
        }
        Event::Delete(DeserializeGuard(Err(invalid))) => {
            unreadable.remove(&key(&invalid.metadata));
        }
        Event::Init | Event::InitDone => {}
    }
    drop(unreadable);
    let left_out = |invalid: InvalidObject| {
        warn!(
            kind = %K::kind(&K::DynamicType::default()),
            namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
            name = invalid.metadata.name.as_deref().unwrap_or_default(),
            error = %invalid.error,
            "left out of the watch: it does not deserialize (fix the field named; the other objects are not affected)"
        );
        stub(invalid.metadata)
    };
    Some(match event {
        Event::Apply(DeserializeGuard(Ok(object))) => Event::Apply(object),
        Event::Apply(DeserializeGuard(Err(invalid))) => Event::Delete(left_out(invalid)),
        Event::Delete(DeserializeGuard(Ok(object))) => Event::Delete(object),
        Event::Delete(DeserializeGuard(Err(invalid))) => Event::Delete(stub(invalid.metadata)),
        Event::Init => Event::Init,
        Event::InitApply(DeserializeGuard(Ok(object))) => Event::InitApply(object),
        Event::InitApply(DeserializeGuard(Err(invalid))) => {
            left_out(invalid);
            return None;
        }
        Event::InitDone => Event::InitDone,
    })
}

/// Objects of one kind left out of a watch because they do not deserialize:
/// `namespace/name` (`/name` for a cluster-scoped one) → why, so that an app naming one
/// is told why rather than "not found".
pub type Unreadable = Arc<Mutex<HashMap<String, String>>>;

/// Stand-ins with only the metadata of an object that does not deserialize, to remove
/// it from a cache.
pub(super) fn app_stub(metadata: ObjectMeta) -> AppDeployment {
    AppDeployment {
        metadata,
        spec: Default::default(),
        status: None,
    }
}

fn runbook_stub(metadata: ObjectMeta) -> Runbook {
    Runbook {
        metadata,
        spec: Default::default(),
    }
}

fn cluster_runbook_stub(metadata: ObjectMeta) -> ClusterRunbook {
    ClusterRunbook {
        metadata,
        spec: Default::default(),
    }
}

async fn drive<K>(stream: impl Stream<Item = Result<K, watcher::Error>>, on_change: impl Fn(&K)) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(object) => on_change(&object),
            Err(error) => warn!(%error, "watch error; retrying"),
        }
    }
}

/// The AppDeployments whose app label value is `value` (`namespace.name`, shortened
/// with a hash when long).
fn apps_with_label(apps: &Store<AppDeployment>, value: &str) -> Vec<ObjectRef<AppDeployment>> {
    if let Some((namespace, name)) = value.split_once('.') {
        let direct = ObjectRef::new(name).within(namespace);
        if apps.get(&direct).is_some() {
            return vec![direct];
        }
    }
    apps.state()
        .iter()
        .filter(|app| {
            snapshot::app_label_value(&app.namespace().unwrap_or_default(), &app.name_any()) == value
        })
        .map(|app| ObjectRef::from_obj(&**app))
        .collect()
}

/// The AppDeployments that apply into `namespace` (their target namespace).
fn apps_targeting(apps: &Store<AppDeployment>, namespace: &str) -> Vec<ObjectRef<AppDeployment>> {
    apps.state()
        .into_iter()
        .filter(|app| {
            app.spec
                .target_namespace
                .clone()
                .or_else(|| app.namespace())
                .as_deref()
                == Some(namespace)
        })
        .map(|app| ObjectRef::from_obj(&*app))
        .collect()
}

/// The Secret type of Helm's release records: large, many, and never read by an app.
const HELM_RELEASE_TYPE: &str = "helm.sh/release.v1";

/// The AppDeployments whose `runbookRef` names this Runbook (`namespace` set) or
/// ClusterRunbook.
fn apps_using(
    apps: &Store<AppDeployment>,
    kind: RunbookKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<AppDeployment>> {
    apps.state()
        .into_iter()
        .filter(|app| namespace.is_none() || app.namespace().as_deref() == namespace)
        .filter(|app| {
            app.spec
                .runbook_ref
                .as_ref()
                .is_some_and(|r| r.kind == kind && r.name == name)
        })
        .map(|app| ObjectRef::from_obj(&*app))
        .collect()
}

/// Live objects of every kind bosun applies, one label-selected watch per kind, started
/// the first time a kind is looked up. An object not in the cache may still exist (one
/// bosun did not create carries no label), so the cache answers only what it holds.
/// A kind the controller may not list (the chart grants an explicit list) is not cached:
/// its watch ends at the first 403, and lookups answer Unknown, so the applier reads
/// the object with the app's own client (see [`crate::apply::Applier::scoped`]).
pub struct ManagedObjects {
    client: Client,
    scope: WatchScope,
    kinds: Mutex<HashMap<String, Arc<KindCache>>>,
}

struct KindCache {
    resource: ApiResource,
    store: Store<DynamicObject>,
    ready: Arc<AtomicBool>,
    /// When the controller's RBAC refused to list this kind (the chart grants an
    /// explicit list of kinds, `rbac.readResources`): the watch has ended, and the
    /// kind's objects are read with each app's own client until it is tried again.
    denied: Arc<Mutex<Option<Instant>>>,
}

impl KindCache {
    fn denied_at(&self) -> Option<Instant> {
        *self.denied.lock().expect("managed object caches poisoned")
    }
}

/// How long a kind the controller may not list is left alone before its watch is tried
/// again (its RBAC may have been extended meanwhile): once per interval, one refused
/// request and one log line, whatever the number of lookups.
const DENIED_RETRY: Duration = Duration::from_secs(600);

/// Whether a watch failed because the API server refused the controller (403).
fn is_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 403,
        watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

impl ManagedObjects {
    fn new(client: Client, scope: WatchScope) -> Self {
        Self {
            client,
            scope,
            kinds: Mutex::default(),
        }
    }

    fn cache_of(&self, resource: &ApiResource) -> Arc<KindCache> {
        let key = format!("{}/{}", resource.api_version, resource.plural);
        let mut kinds = self.kinds.lock().expect("managed object caches poisoned");
        if let Some(cache) = kinds.get(&key)
            && cache.denied_at().is_none_or(|at| at.elapsed() < DENIED_RETRY)
        {
            return cache.clone();
        }
        debug!(resource = %key, "watching managed objects of a new kind");
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let ready = Arc::new(AtomicBool::new(false));
        let api: Api<DynamicObject> = match &self.scope {
            WatchScope::Cluster => Api::all_with(self.client.clone(), resource),
            WatchScope::Namespace(namespace) => {
                Api::namespaced_with(self.client.clone(), namespace, resource)
            }
        };
        let kind = resource.clone();
        let stream = watcher(api, watcher::Config::default().labels(APP_LABEL))
            .default_backoff()
            .modify(move |object: &mut DynamicObject| as_cached(object, &kind))
            .reflect(writer)
            .touched_objects();
        let readiness = {
            let store = store.clone();
            let ready = ready.clone();
            async move {
                if store.wait_until_ready().await.is_ok() {
                    ready.store(true, Ordering::Release);
                }
            }
        };
        tokio::spawn(readiness);
        let denied: Arc<Mutex<Option<Instant>>> = Arc::default();
        tokio::spawn({
            let denied = denied.clone();
            let key = key.clone();
            async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(_) => {}
                        // Not a fault to retry every few seconds: the chart lists the kinds
                        // bosun reads as itself. Ending the stream ends the watch; lookups
                        // answer Unknown, and the applier reads as the app.
                        Err(error) if is_forbidden(&error) => {
                            info!(
                                resource = %key,
                                "the controller may not list this kind (not among the chart's rbac.readResources): \
                                 its objects are read with each app's own identity"
                            );
                            *denied.lock().expect("managed object caches poisoned") = Some(Instant::now());
                            return;
                        }
                        Err(error) => warn!(%error, resource = %key, "watch error; retrying"),
                    }
                }
            }
        });
        let cache = Arc::new(KindCache {
            resource: resource.clone(),
            store,
            ready,
            denied,
        });
        kinds.insert(key, cache.clone());
        cache
    }
}

/// A watched object as the cache keeps it: without managed fields (never read, and
/// they would double the memory), with `apiVersion` and `kind`. The items of a list
/// come without them (watch events carry them), and a live object lacking them never
/// looks like what bosun applies: after a restart every object listed at start would
/// be applied again at its first resync.
fn as_cached(object: &mut DynamicObject, resource: &ApiResource) {
    object.metadata.managed_fields = None;
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
    }
}

impl LiveObjects for ManagedObjects {
    fn lookup(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Lookup {
        // Out of a namespace-scoped install's sight (its RBAC would refuse the watch):
        // the applier reads it directly, and is answered by the API server.
        if !self.scope.sees(namespace) {
            return Lookup::Unknown;
        }
        let cache = self.cache_of(resource);
        if !cache.ready.load(Ordering::Acquire) || cache.denied_at().is_some() {
            return Lookup::Unknown;
        }
        let mut key = ObjectRef::new_with(name, cache.resource.clone());
        if let Some(namespace) = namespace {
            key = key.within(namespace);
        }
        match cache.store.get(&key) {
            Some(object) => Lookup::Found(serde_json::to_value(&*object).unwrap_or_default()),
            None => Lookup::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectList;

    fn manifests(n: usize) -> Arc<Vec<Manifest>> {
        Arc::new(
            (0..n)
                .map(|i| Manifest {
                    object: serde_json::json!({"kind": "ConfigMap", "metadata": {"name": format!("c{i}")}}),
                    file: "x.yaml".into(),
                    line: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn decoded_snapshots_are_bounded_by_count_and_bytes_least_recently_used_first() {
        let mut cache = DecodedSnapshots::default();
        for i in 0..DECODED_MAX_ENTRIES + 10 {
            cache.insert(format!("ns/s{i}"), "1".into(), manifests(1), 10);
            // s0 stays in use, so it is never the least recently used.
            assert!(cache.get("ns/s0", "1").is_some(), "s0 evicted at {i}");
        }
        assert_eq!(cache.entries.len(), DECODED_MAX_ENTRIES);
        assert_eq!(cache.bytes, DECODED_MAX_ENTRIES * 10);
        assert!(cache.get("ns/s1", "1").is_none(), "the oldest unused went first");
        assert!(
            cache
                .get(&format!("ns/s{}", DECODED_MAX_ENTRIES + 9), "1")
                .is_some()
        );
        // Another version of a Secret is not the cached one.
        assert!(cache.get("ns/s0", "2").is_none());

        // Bytes: three entries of 40% of the budget cannot all stay.
        let mut cache = DecodedSnapshots::default();
        let share = DECODED_MAX_BYTES * 2 / 5;
        for name in ["a", "b", "c"] {
            cache.insert(name.into(), "1".into(), manifests(1), share);
        }
        assert!(cache.bytes <= DECODED_MAX_BYTES, "{}", cache.bytes);
        assert_eq!(cache.entries.len(), 2);
        assert!(cache.get("a", "1").is_none() && cache.get("c", "1").is_some());
        // One larger than the whole budget is not kept, and evicts nothing.
        cache.insert("huge".into(), "1".into(), manifests(1), DECODED_MAX_BYTES + 1);
        assert!(cache.get("huge", "1").is_none());
        assert_eq!(cache.entries.len(), 2);
        // Replacing an entry counts its bytes once; removing gives them back.
        cache.insert("c".into(), "2".into(), manifests(1), 5);
        cache.remove("b");
        assert_eq!(cache.bytes, 5);
        assert_eq!(cache.get("c", "2").map(|m| m.len()), Some(1));
    }

    #[test]
    fn listed_objects_are_cached_with_their_api_version_and_kind() {
        // The API server leaves apiVersion and kind out of a list's items.
        let list: ObjectList<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMapList",
            "metadata": {"resourceVersion": "7"},
            "items": [{
                "metadata": {"name": "config", "namespace": "shop", "managedFields": [{"manager": "x"}]},
                "data": {"a": "b"}
            }]
        }))
        .unwrap();
        let mut object = list.items[0].clone();
        assert!(object.types.is_none());
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        as_cached(&mut object, &resource);
        let cached = serde_json::to_value(&object).unwrap();
        assert_eq!(cached["apiVersion"], "v1");
        assert_eq!(cached["kind"], "ConfigMap");
        assert_eq!(cached["data"]["a"], "b");
        assert!(cached["metadata"].get("managedFields").is_none());
        // What bosun applies compares equal on these fields now.
        let desired = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "config", "namespace": "shop"}, "data": {"a": "b"}
        });
        assert!(crate::apply::plan::already_applied(&desired, &cached));

        // An object from a watch event keeps what it came with.
        let mut watched: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "backend"}
        }))
        .unwrap();
        let deployments = ApiResource::erase::<Deployment>(&());
        as_cached(&mut watched, &deployments);
        assert_eq!(
            watched.types.as_ref().map(|t| t.kind.as_str()),
            Some("Deployment")
        );
    }
}
