//! kube-runtime wiring: watches, the shared context, and the loop that turns each
//! [`crate::core::Decision`] into API calls.

mod deploy;
mod error;
mod events;
mod observe;
mod reconcile;
mod rollback;
pub mod status;
mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::api::{AppDeployment, ClusterRunbook, Runbook, RunbookKind};
use crate::apply::DiscoveryCache;
use crate::gates::http::HttpProber;
use crate::source::GitCache;

pub use error::Error;

/// Settings of one controller process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the shared Git clones live (one per repository URL).
    pub cache_dir: PathBuf,
    /// Requeue period while a revision is being verified (gates are probed on their own periods).
    pub verify_tick: Duration,
    /// Name of this controller instance in Events.
    pub instance: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_dir: std::env::temp_dir().join("bosun-git-cache"),
            verify_tick: Duration::from_secs(1),
            instance: std::env::var("HOSTNAME").unwrap_or_else(|_| "bosun".into()),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: kube::Config,
    pub git: GitCache,
    pub recorder: Recorder,
    pub prober: HttpProber,
    /// API discovery shared by every apply, whichever account applies.
    pub discovery: DiscoveryCache,
    pub settings: Settings,
    /// Gate trackers of revisions being verified, keyed by `namespace/name`. In memory on
    /// purpose: after a restart verification simply starts over for the same revision.
    verifications: Mutex<HashMap<String, verify::Session>>,
    /// When each app's applied revision was last re-applied (drift correction).
    last_resync: Mutex<HashMap<String, Instant>>,
    /// Clients impersonating `spec.serviceAccountName`, keyed by `namespace/name`.
    impersonated: Mutex<HashMap<String, Client>>,
}

impl Context {
    pub fn new(client: Client, config: kube::Config, settings: Settings) -> Result<Context, Error> {
        let reporter = Reporter {
            controller: "bosun".into(),
            instance: Some(settings.instance.clone()),
        };
        Ok(Context {
            recorder: Recorder::new(client.clone(), reporter),
            git: GitCache::new(settings.cache_dir.clone()),
            prober: HttpProber::new().map_err(|e| Error::Internal(format!("HTTP client: {e}")))?,
            discovery: DiscoveryCache::new(),
            client,
            config,
            settings,
            verifications: Mutex::default(),
            last_resync: Mutex::default(),
            impersonated: Mutex::default(),
        })
    }

    /// The client that applies an app's manifests: impersonating its ServiceAccount
    /// when `spec.serviceAccountName` is set.
    fn apply_client(&self, namespace: &str, service_account: Option<&str>) -> Result<Client, Error> {
        let Some(service_account) = service_account else {
            return Ok(self.client.clone());
        };
        let key = format!("{namespace}/{service_account}");
        let mut cache = self.impersonated.lock().expect("impersonation cache poisoned");
        if let Some(client) = cache.get(&key) {
            return Ok(client.clone());
        }
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{key}"));
        let client =
            Client::try_from(config).map_err(|e| Error::Internal(format!("impersonating client: {e}")))?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(client: Client, config: kube::Config, settings: Settings) -> Result<(), Error> {
    let context = Arc::new(Context::new(client.clone(), config, settings)?);
    let apps: Api<AppDeployment> = Api::all(client.clone());
    let runbooks: Api<Runbook> = Api::all(client.clone());
    let cluster_runbooks: Api<ClusterRunbook> = Api::all(client.clone());

    // Fail early and clearly when the CRDs are not installed.
    apps.list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| {
            Error::Internal(format!(
                "cannot list AppDeployments (are the CRDs in crds/ installed?): {e}"
            ))
        })?;

    info!("bosun controller started");
    let controller = Controller::new(apps, watcher::Config::default());
    let store = controller.store();
    let cluster_store = store.clone();
    controller
        .watches(runbooks, watcher::Config::default(), move |runbook| {
            // A Runbook change reconciles the apps that use it at once.
            let namespace = runbook.namespace();
            apps_using(
                &store,
                RunbookKind::Runbook,
                namespace.as_deref(),
                &runbook.name_any(),
            )
        })
        .watches(cluster_runbooks, watcher::Config::default(), move |runbook| {
            apps_using(
                &cluster_store,
                RunbookKind::ClusterRunbook,
                None,
                &runbook.name_any(),
            )
        })
        .shutdown_on_signal()
        .run(reconcile::reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
    info!("bosun controller stopped");
    Ok(())
}

/// The AppDeployments whose `runbookRef` names this Runbook (`namespace` set) or
/// ClusterRunbook.
fn apps_using(
    store: &Store<AppDeployment>,
    kind: RunbookKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<AppDeployment>> {
    store
        .state()
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

fn error_policy(app: Arc<AppDeployment>, error: &Error, _context: Arc<Context>) -> Action {
    warn!(app = %format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()), %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}
