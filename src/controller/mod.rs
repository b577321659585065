//! kube-runtime wiring: the watch caches, the shared context, and the passes that turn
//! each [`crate::core::Decision`] into API calls.
//!
//! - [`pass`]: one pass over one AppDeployment (observe, decide, record, persist, act);
//! - [`observe`]: Runbook, spec and Git tip;
//! - [`steps`]: render, snapshot, preflight, inventory, apply; [`job_steps`]: the
//!   backup, migration and downgrade Jobs; [`verify`]: verification rounds;
//! - [`resync`]: drift correction at rest; [`cleanup`]: deletion;
//! - [`cache`]: the watch caches; [`status_writer`]: the one status writer;
//!   [`events`]: Events; [`fault`]: fault injection for the crash tests;
//! - [`leader`]: leader election on a Lease, and the claim every status write checks.

mod boundary;
mod cache;
mod cleanup;
mod error;
mod events;
pub mod fault;
mod job_steps;
pub mod leader;
mod observe;
mod pass;
mod resync;
pub mod status_writer;
mod steps;
mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::{Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};

use crate::access::{Access, Identity, Lru};
use crate::api::AppDeployment;
use crate::apply::{Applier, ApplyPlan, DiscoveryCache, UnchangedMemo};
use crate::core::{Failure, FailureKind};
use crate::gates::http::HttpProber;
use crate::render::Manifest;
use crate::source::{Credentials, GitBudgets, GitCache};

pub use cache::{Caches, WatchScope};
pub use error::Error;

/// Settings of one controller process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the shared Git clones live (one per repository URL).
    pub cache_dir: PathBuf,
    /// Name of this controller instance in Events.
    pub instance: String,
    /// How many AppDeployments are reconciled at once.
    pub concurrency: u16,
    /// Apps without `serviceAccountName` are applied as this ServiceAccount of their own
    /// namespace (the multi-tenant setting); unset, they are Blocked unless
    /// `single_tenant`.
    pub default_service_account: Option<String>,
    /// `--single-tenant`: an app with no ServiceAccount acts as the controller itself.
    pub single_tenant: bool,
    /// Allow `file://` sources (demos and tests).
    pub allow_file_sources: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub listen_address: Option<std::net::SocketAddr>,
    /// Reconcile only while holding this Lease; `None`: the only replica, always.
    pub leader_election: Option<leader::LeaderElection>,
    /// Reconcile only the AppDeployments whose labels match (a label selector, as
    /// Flux's `--watch-label-selector`): one controller per shard.
    pub watch_label_selector: Option<String>,
    /// Every namespace, or only one (a namespace-scoped install).
    pub watch_scope: cache::WatchScope,
    /// The Git push webhook receiver: where its shared secret is, where it listens.
    pub webhook: Option<crate::server::webhook::WebhookSettings>,
    /// What one repository may cost (`--git-max-*`).
    pub git_budgets: GitBudgets,
    /// `--egress-allow` and `--egress-deny`: where gates, metrics queries and
    /// notifications may go besides (or not, despite) the built-in rules.
    pub egress_allow: Vec<crate::egress::Rule>,
    pub egress_deny: Vec<crate::egress::Rule>,
    /// The API server's own addresses behind its Service (the `kubernetes` Endpoints),
    /// refused by the egress policy like its URL's; filled in by [`run`].
    pub api_server_endpoints: Vec<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_dir: std::env::temp_dir().join("bosun-git-cache"),
            instance: std::env::var("HOSTNAME").unwrap_or_else(|_| "bosun".into()),
            concurrency: 16,
            default_service_account: None,
            single_tenant: false,
            allow_file_sources: false,
            listen_address: None,
            leader_election: None,
            watch_label_selector: None,
            watch_scope: cache::WatchScope::Cluster,
            webhook: None,
            git_budgets: GitBudgets::default(),
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            api_server_endpoints: Vec::new(),
        }
    }
}

/// What a controller keeps about one app between passes, in memory only: losing it
/// (a restart) costs a fresh verification window and a re-read, never a decision.
#[derive(Default)]
pub struct AppState {
    verification: Option<verify::Session>,
    last_resync: Option<Instant>,
    /// Consecutive failed passes (for the back-off).
    errors: u32,
    /// The `resourceVersion` of our last write of the app.
    written_version: Option<String>,
    /// Manifests rendered but not yet in a snapshot.
    rendered: Option<RenderedManifests>,
    /// Git credentials read from the Secret, with when and from which Secret.
    credentials: Option<ReadCredentials>,
    /// When the blocked revision was last checked again (checks cost no write, so the
    /// status does not say when).
    last_block_check: Option<Instant>,
    /// The app was deleted: do not keep this state.
    forgotten: bool,
    /// Snapshots nothing can return to were deleted since this process took the app
    /// over (a crash right after a revision's end skips the deletion that follows it).
    snapshots_retained: bool,
    /// A decision whose status write got no answer, written by the next pass.
    unsaved: Option<pass::Unsaved>,
}

/// Manifests the render step made, kept for the snapshot step of the same pass or the next.
struct RenderedManifests {
    /// `revision/render digest`: what they are the manifests of.
    key: String,
    manifests: Arc<Vec<Manifest>>,
}

/// Git credentials read from `spec.source.git.secretRef`, re-read after an interval.
struct ReadCredentials {
    read_at: Instant,
    /// The Secret's name (the app may name another one since).
    secret: String,
    credentials: Credentials,
}

/// The names an app's applies go by: owner (`namespace/name`, the owner annotation),
/// the namespace objects without one are placed in, the app label, the field manager.
pub struct AppNames {
    pub owner: String,
    pub target_namespace: String,
    pub label: String,
    pub field_manager: String,
}

impl AppNames {
    pub fn of(app: &AppDeployment) -> Self {
        let namespace = app.namespace().unwrap_or_default();
        let owner = format!("{namespace}/{}", app.name_any());
        AppNames {
            target_namespace: app
                .spec
                .target_namespace
                .clone()
                .unwrap_or_else(|| namespace.clone()),
            label: crate::snapshot::app_label_value(&namespace, &app.name_any()),
            field_manager: crate::apply::field_manager(&owner),
            owner,
        }
    }

    /// The plan that applies `manifests` as this app, `previous` being what it owns.
    pub fn plan<'a>(
        &'a self,
        manifests: &'a [Manifest],
        previous: &'a [crate::api::InventoryEntry],
    ) -> ApplyPlan<'a> {
        ApplyPlan {
            manifests,
            default_namespace: &self.target_namespace,
            owner: &self.owner,
            app_label: &self.label,
            field_manager: &self.field_manager,
            previous_inventory: previous,
        }
    }
}

/// The egress policy of this process: the built-in denials (the API server of
/// `config`, the listeners of `settings`, this host's addresses) and the flags.
fn egress_policy(config: &kube::Config, settings: &Settings) -> crate::egress::EgressPolicy {
    let listeners: Vec<std::net::SocketAddr> = settings
        .listen_address
        .into_iter()
        .chain(settings.webhook.as_ref().and_then(|webhook| webhook.listen))
        .collect();
    let mut builtins = crate::egress::Builtins::discover(&config.cluster_url.to_string(), listeners);
    builtins
        .api_server
        .extend(settings.api_server_endpoints.iter().copied());
    tracing::info!(
        api_server = ?builtins.api_server,
        listeners = ?builtins.listeners,
        own_addresses = ?builtins.own_addresses,
        allow = ?settings.egress_allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        deny = ?settings.egress_deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "egress policy: link-local, loopback, these addresses and the API server are refused unless allowed"
    );
    crate::egress::EgressPolicy::new(
        settings.egress_allow.clone(),
        settings.egress_deny.clone(),
        &builtins,
    )
}

/// The addresses of the `default/kubernetes` Endpoints: the API server itself, which a
/// Pod reaches past the Service's address too. Best effort: without the right to read
/// them, the Service's address alone is refused (logged).
async fn api_server_endpoints(client: &Client) -> Vec<std::net::SocketAddr> {
    let api: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), "default");
    match api.get_opt("kubernetes").await {
        Ok(Some(endpoints)) => endpoints
            .subsets
            .unwrap_or_default()
            .iter()
            .flat_map(|subset| {
                let ports: Vec<u16> = subset
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|port| u16::try_from(port.port).ok())
                    .collect();
                subset
                    .addresses
                    .iter()
                    .flatten()
                    .filter_map(|address| address.ip.parse::<std::net::IpAddr>().ok())
                    .flat_map(move |ip| {
                        ports
                            .clone()
                            .into_iter()
                            .map(move |port| std::net::SocketAddr::new(ip, port))
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(error) => {
            warn!(%error, "cannot read the Endpoints default/kubernetes: the egress policy refuses the API server by its URL only");
            Vec::new()
        }
    }
}

/// Shared by every pass.
pub struct Context {
    pub client: Client,
    pub config: kube::Config,
    pub git: GitCache,
    pub events: events::EventRecorder,
    pub prober: HttpProber,
    /// API discovery shared by every apply, whichever account applies.
    pub discovery: DiscoveryCache,
    pub caches: Caches,
    pub memo: UnchangedMemo,
    pub settings: Settings,
    pub fault: fault::FaultSwitch,
    /// Delivers the Runbook's webhook notifications in the background.
    pub notifier: crate::notify::Notifier,
    pub metrics: crate::server::Metrics,
    /// Whether this process may write (leader election); checked by the status writer.
    pub leader: leader::LeaderClaim,
    /// What an app's identity may read: every read made on an app's behalf is
    /// authorised here first (see [`crate::access`]).
    pub access: Access,
    apps: Mutex<HashMap<String, AppState>>,
    /// Clients impersonating ServiceAccounts, keyed by user name; bounded (a tenant
    /// may name any number of accounts), the least recently used evicted.
    impersonated: Mutex<Lru<Client>>,
}

/// Impersonated clients kept at most (each holds a connection pool).
pub const IMPERSONATED_CLIENTS: usize = 256;

impl Context {
    pub fn new(
        client: Client,
        config: kube::Config,
        settings: Settings,
        caches: Caches,
        metrics: crate::server::Metrics,
        leader: leader::LeaderClaim,
        git: GitCache,
    ) -> Result<Context, Error> {
        let egress = egress_policy(&config, &settings);
        Ok(Context {
            events: events::EventRecorder::new(client.clone(), settings.instance.clone()),
            access: Access::new(
                client.clone(),
                match &settings.watch_scope {
                    cache::WatchScope::Cluster => None,
                    cache::WatchScope::Namespace(namespace) => Some(namespace.clone()),
                },
            ),
            git,
            prober: HttpProber::new(egress.clone()).map_err(|e| Error::internal_from("HTTP client", e))?,
            discovery: DiscoveryCache::new(),
            memo: UnchangedMemo::default(),
            fault: fault::FaultSwitch::from_env(),
            notifier: crate::notify::Notifier::start(crate::notify::DeliverySettings::default(), egress)
                .map_err(|e| Error::internal_from("notifications", e))?,
            client,
            config,
            settings,
            caches,
            metrics,
            leader,
            apps: Mutex::default(),
            impersonated: Mutex::new(Lru::new(IMPERSONATED_CLIENTS)),
        })
    }

    fn take_state(&self, key: &str) -> AppState {
        self.apps
            .lock()
            .expect("app states poisoned")
            .remove(key)
            .unwrap_or_default()
    }

    fn put_state(&self, key: &str, state: AppState) {
        self.apps
            .lock()
            .expect("app states poisoned")
            .insert(key.to_string(), state);
    }

    fn errors(&self, key: &str) -> u32 {
        self.apps
            .lock()
            .expect("app states poisoned")
            .get(key)
            .map_or(0, |s| s.errors)
    }

    /// Drops everything kept about a deleted app, its Git clone too when no other app
    /// uses it.
    fn forget(&self, app: &AppDeployment) {
        let key = pass::app_key(app);
        self.apps.lock().expect("app states poisoned").remove(&key);
        let git = self.git.clone();
        let user = key.clone();
        tokio::task::spawn_blocking(move || git.release(&user));
        if let Some(uid) = app.uid() {
            self.events.forget(&uid);
        }
        let namespace = app.namespace().unwrap_or_default();
        let snapshots: Vec<String> = app
            .status
            .iter()
            .flat_map(|s| [s.current_snapshot.clone(), s.last_healthy_snapshot.clone()])
            .flatten()
            .collect();
        self.caches.forget_snapshots(&namespace, &snapshots);
        let owned: Vec<String> = app
            .status
            .iter()
            .flat_map(|s| s.inventory.iter())
            .map(UnchangedMemo::key)
            .collect();
        self.memo.forget_where(|key| !owned.iter().any(|o| o == key));
    }

    /// The identity an app acts as, for its writes and for every read made on its
    /// behalf: `spec.serviceAccountName`, else the controller's
    /// `--default-service-account`, of the app's own namespace; with neither, the
    /// controller itself under `--single-tenant`, and otherwise a SpecInvalid problem
    /// (a missing setting must never mean the controller's rights).
    pub fn identity(&self, app: &AppDeployment) -> Result<Identity, Failure> {
        let account = app
            .spec
            .service_account_name
            .clone()
            .or_else(|| self.settings.default_service_account.clone());
        match account {
            Some(name) => Ok(Identity::ServiceAccount {
                namespace: app.namespace().unwrap_or_default(),
                name,
            }),
            None if self.settings.single_tenant => Ok(Identity::Controller),
            None => Err(Failure::new(
                FailureKind::SpecInvalid,
                "spec.serviceAccountName: not set, and the controller has no --default-service-account: \
                 name the ServiceAccount of this namespace the app is applied as, or run the controller with \
                 --default-service-account (or --single-tenant, which applies such apps with the controller's \
                 own rights)",
            )),
        }
    }

    /// The user an app's manifests are applied as (`None`: the controller itself).
    pub fn apply_identity(&self, app: &AppDeployment) -> Result<Option<String>, Error> {
        self.identity(app)
            .map(|identity| identity.user())
            .map_err(|failure| Error::internal(failure.message))
    }

    /// A client acting as the app's identity ([`Context::apply_identity`]): what it
    /// applies, and the Jobs it runs, are allowed only what that identity may do.
    /// Every apply and Job goes through here, so the leader claim is checked here too:
    /// a replica whose renewals have lapsed writes no object (see [`leader`]).
    fn client_for(&self, app: &AppDeployment) -> Result<Client, Error> {
        self.leader.check(&format!(
            "the objects of {}/{}",
            app.namespace().unwrap_or_default(),
            app.name_any()
        ))?;
        Ok(match self.apply_identity(app)? {
            None => self.client.clone(),
            Some(user) => {
                let mut cache = self.impersonated.lock().expect("impersonation cache poisoned");
                match cache.get(&user) {
                    Some(client) => client,
                    None => {
                        let mut config = self.config.clone();
                        config.auth_info.impersonate = Some(user.clone());
                        let client = Client::try_from(config)
                            .map_err(|e| Error::internal_from(&format!("client impersonating {user}"), e))?;
                        cache.insert(user, client.clone());
                        client
                    }
                }
            }
        })
    }

    /// An applier acting as the app's identity, sharing the caches.
    fn applier(&self, app: &AppDeployment) -> Result<Applier, Error> {
        let client = self.client_for(app)?;
        // An impersonated account reads from the shared cache only what this app owns.
        let scoped = self.apply_identity(app)?.is_some();
        Ok(Applier::with_discovery(client, self.discovery.clone())
            .with_cache(self.caches.managed.clone(), self.memo.clone())
            .scoped(scoped))
    }
}

/// Makes apps look at their Git repository now rather than at the end of their
/// interval: what a Git push webhook calls. Cheap to clone.
#[derive(Clone)]
pub struct FetchNow {
    apps: reflector::Store<AppDeployment>,
    git: GitCache,
    trigger: cache::Trigger,
    ready: crate::server::Readiness,
}

impl FetchNow {
    /// `apps`: the AppDeployment cache; `trigger`: the channel whose apps get a pass;
    /// `ready`: whether this replica reconciles.
    pub fn new(
        apps: reflector::Store<AppDeployment>,
        git: GitCache,
        trigger: tokio::sync::mpsc::UnboundedSender<reflector::ObjectRef<AppDeployment>>,
        ready: crate::server::Readiness,
    ) -> FetchNow {
        FetchNow {
            apps,
            git,
            trigger,
            ready,
        }
    }
}

impl crate::server::webhook::SourceWaker for FetchNow {
    fn is_reconciling(&self) -> bool {
        self.ready.is_reconciling()
    }

    /// Every app (not suspended) whose `spec.source.git.url` `pushed` accepts: its
    /// repository's clone is marked stale, so the app's next pass fetches whatever its
    /// interval, and the app is woken for that pass.
    fn wake(&self, pushed: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut woken: Vec<String> = self
            .apps
            .state()
            .into_iter()
            .filter(|app| !app.spec.suspend && pushed(&app.spec.source.git.url))
            .filter_map(|app| {
                // A URL that does not parse is the app's own spec problem, reported by its pass.
                self.git.invalidate(&app.spec.source.git.url).ok()?;
                let _ = self.trigger.send(reflector::ObjectRef::from_obj(app.as_ref()));
                Some(pass::app_key(&app))
            })
            .collect();
        woken.sort();
        woken
    }
}

/// Runs the controller until SIGTERM/SIGINT, or until it loses the leader Lease (an
/// error: the caller exits, and the Deployment restarts it as a follower).
///
/// With leader election, nothing but the Lease is read or written until it is held:
/// a follower starts its watches only when it takes over (for 1,000 apps the caches
/// sync in seconds, well inside the 15 s lease duration it has already waited).
pub async fn run(client: Client, config: kube::Config, mut settings: Settings) -> Result<(), Error> {
    let (reader, writer) = reflector::store();
    let (trigger, mut triggered) = tokio::sync::mpsc::unbounded_channel();
    let metrics = crate::server::Metrics::new();
    metrics.count_apps(reader.clone());
    let ready = crate::server::Readiness::default();
    let fetches = metrics.clone();
    let git = GitCache::observed(
        settings.cache_dir.clone(),
        Arc::new(move |took, error| fetches.git_fetched(took, error)),
        settings.git_budgets,
    );
    spawn_clone_sweeper(git.clone());
    let mut webhook = None;
    if let Some(hooks) = &settings.webhook {
        let fetch_now = FetchNow::new(reader.clone(), git.clone(), trigger.clone(), ready.clone());
        let receiver =
            crate::server::webhook::WebhookReceiver::new(hooks, Arc::new(fetch_now), client.clone());
        match hooks.listen {
            // A port of its own, e.g. to expose only the webhooks beyond the cluster.
            Some(address) => crate::server::webhook::listen(hooks, receiver)
                .await
                .map_err(|e| Error::internal_from(&format!("--webhook-listen-address {address}"), e))?,
            None => webhook = Some(receiver),
        }
    }
    // Served from the start: `/healthz` answers while the API server is still awaited;
    // a push wakes the apps the cache holds by then.
    if let Some(address) = settings.listen_address {
        let state = crate::server::ServerState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            apps: reader.clone(),
            wake: trigger.clone(),
            client: client.clone(),
            webhook,
        };
        let bound = crate::server::spawn(address, state)
            .await
            .map_err(|e| Error::internal_from(&format!("--listen-address {address}"), e))?;
        // The port actually listened on (`:0` picks one): the egress policy refuses it.
        settings.listen_address = Some(bound);
    }
    let scope = settings.watch_scope.clone();
    if let cache::WatchScope::Namespace(namespace) = &scope {
        info!(%namespace, "watching and reconciling only this namespace (--watch-namespace)");
    }
    // Guarded, as the watch: an AppDeployment that does not deserialize must not make
    // this first list fail (and the controller exit, again at every restart).
    let apps: Api<kube::core::DeserializeGuard<AppDeployment>> = scope.api(&client);
    let selector = settings.watch_label_selector.clone();
    wait_for_api_server(&apps, selector.as_deref()).await?;

    let (claim, mut elector) = match settings.leader_election.clone() {
        Some(election) => {
            // A label left by this Pod's previous process (a crash, a lost Lease) must
            // not route webhooks here while another replica leads.
            leader::label_own_pod(&client, &election, false).await;
            // Up, the API server answering: ready to take over (see Readiness).
            ready.standby();
            let claim = leader::LeaderClaim::elected();
            let mut elector = leader::LeaseElector::new(client.clone(), election.clone());
            elector.acquire(&claim).await;
            leader::label_own_pod(&client, &election, true).await;
            (claim, Some((elector, election)))
        }
        None => (leader::LeaderClaim::unconditional(), None),
    };

    let pod_client = client.clone();
    let mut watch = watcher::Config::default();
    if let Some(selector) = &selector {
        info!(%selector, "reconciling only the AppDeployments matching --watch-label-selector");
        watch = watch.labels(selector);
    }
    // A pass is triggered by a change of the spec (generation: deletion bumps it too) or
    // the annotations, never by bosun's own status writes.
    // Guarded: one AppDeployment that does not deserialize is left out (logged), not
    // a stalled watch for every app.
    let app_changes = cache::guarded_watcher(scope.api(&client), watch, cache::app_stub, Default::default())
        .default_backoff()
        .modify(|app: &mut AppDeployment| app.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            (predicates::generation as fn(&AppDeployment) -> Option<u64>).combine(predicates::annotations),
            Default::default(),
        );
    let caches = Caches::start(&client, &scope, reader.clone(), trigger);
    let concurrency = settings.concurrency;
    // A namespace-scoped install may read nothing in `default`: it refuses the API
    // server by its URL and `KUBERNETES_SERVICE_HOST` only.
    if scope == cache::WatchScope::Cluster {
        settings.api_server_endpoints = api_server_endpoints(&client).await;
    }
    let context = Arc::new(Context::new(
        client,
        config,
        settings,
        caches,
        metrics,
        claim.clone(),
        git,
    )?);
    if context.fault.is_armed() {
        warn!(
            "fault injection is armed ({}): the process will abort at a step boundary",
            fault::ENV
        );
    }
    context.caches.wait_ready().await;
    ready.reconciling();
    info!("bosun controller started");
    let controller = Controller::for_stream(app_changes, reader)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .reconcile_on(futures::stream::poll_fn(move |cx| triggered.poll_recv(cx)))
        .shutdown_on_signal()
        .run(pass::reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile failed");
            }
        });
    let Some((elector, election)) = elector.as_mut() else {
        controller.await;
        info!("bosun controller stopped");
        return Ok(());
    };
    // The Lease is renewed beside the passes (and during a clean shutdown, while the
    // last passes finish); losing it ends the process, passes and all.
    let lost = tokio::select! {
        () = controller => None,
        why = elector.keep(&claim) => Some(why),
    };
    leader::label_own_pod(&pod_client, election, false).await;
    match lost {
        None => {
            elector.release(&claim).await;
            info!("bosun controller stopped");
            Ok(())
        }
        Some(why) => {
            error!(%why, "lost the leader Lease: stopping reconciling and exiting");
            Err(Error::internal(format!("lost the leader Lease: {why}")))
        }
    }
}

/// Removes the Git clones no app uses any more, once a minute (see `crate::source`).
fn spawn_clone_sweeper(git: GitCache) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let git = git.clone();
            let _ = tokio::task::spawn_blocking(move || git.sweep()).await;
        }
    });
}

/// Lists AppDeployments once before anything starts, and waits, with back-off and a
/// log line saying why, while the API server does not answer at all (a controller
/// restarted during an outage carries on when it is back), refuses it (RBAC) or does
/// not serve AppDeployments (CRDs): in all three cases the controller is alive and not
/// ready. A `--watch-label-selector` the API server cannot parse ends it, naming it,
/// as does any other answer.
async fn wait_for_api_server(
    apps: &Api<kube::core::DeserializeGuard<AppDeployment>>,
    selector: Option<&str>,
) -> Result<(), Error> {
    let mut attempt = 0;
    let mut params = kube::api::ListParams::default().limit(1);
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    loop {
        match apps.list(&params).await {
            Ok(_) => return Ok(()),
            Err(error) if crate::failure::class_of(&error) == crate::failure::ApiErrorClass::Transient => {
                attempt += 1;
                let delay = pass::backoff(attempt).min(std::time::Duration::from_secs(30));
                warn!(
                    error = %crate::failure::server_message(&error),
                    retry_in = ?delay,
                    "the API server is unreachable or not ready; waiting for it"
                );
                tokio::time::sleep(delay).await;
            }
            // Forbidden (403) or not found (404): the RBAC or the CRDs may be on their
            // way (installed after the controller, or an API server just restarted
            // that has not read them yet: 1.20's /readyz waits for neither). Said
            // loudly, and waited for as the API server's absence is: not ready meanwhile.
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => {
                attempt += 1;
                let delay = pass::backoff(attempt).min(std::time::Duration::from_secs(30));
                error!(
                    error = %status.message,
                    retry_in = ?delay,
                    "cannot list AppDeployments: are the CRDs in crds/ installed, and the controller's RBAC (charts/bosun)? waiting"
                );
                tokio::time::sleep(delay).await;
            }
            Err(kube::Error::Api(status)) if status.code == 400 && selector.is_some() => {
                return Err(Error::Internal {
                    message: format!(
                        "--watch-label-selector {:?}: {}",
                        selector.unwrap_or_default(),
                        status.message
                    ),
                    cause: Some(Box::new(kube::Error::Api(status))),
                });
            }
            Err(error) => {
                return Err(Error::Internal {
                    message: format!(
                        "cannot list AppDeployments: {}",
                        crate::failure::server_message(&error)
                    ),
                    cause: Some(Box::new(error)),
                });
            }
        }
    }
}

fn error_policy(app: Arc<AppDeployment>, _error: &Error, context: Arc<Context>) -> Action {
    let attempt = context.errors(&pass::app_key(&app)).max(1);
    Action::requeue(pass::backoff(attempt))
}
