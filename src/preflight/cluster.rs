//! What preflight reads from the cluster: the data of Secrets and ConfigMaps, by
//! namespace and name. The controller answers from its watch caches ([`StoreLookup`]);
//! tests answer from memory ([`InMemoryLookup`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{ObjectRef, Store};

/// The Secrets and ConfigMaps of the cluster, as preflight needs them.
///
/// Secret data goes in, never comes out: preflight compares it, hashes it, and never
/// puts it in a message, a log line or a return value.
pub trait ClusterLookup {
    /// `data` of Secret `namespace/name` (the API server has already merged
    /// `stringData` into it), or `None` when there is no such Secret.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;

    /// `data` of ConfigMap `namespace/name`, or `None` when there is none. Only
    /// `data`: the kubelet reads environment variables from nothing else.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
}

/// The controller's watch caches of Secrets and ConfigMaps.
#[derive(Clone)]
pub struct StoreLookup {
    pub secrets: Store<Secret>,
    pub config_maps: Store<ConfigMap>,
}

impl ClusterLookup for StoreLookup {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secret = self.secrets.get(&ObjectRef::new(name).within(namespace))?;
        Some(
            secret
                .data
                .iter()
                .flatten()
                .map(|(key, value)| (key.clone(), value.0.clone()))
                .collect(),
        )
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let config_map = self.config_maps.get(&ObjectRef::new(name).within(namespace))?;
        Some(config_map.data.clone().unwrap_or_default())
    }
}

/// Secrets and ConfigMaps held in memory: for tests, and for callers that already
/// hold the objects.
#[derive(Clone, Default)]
pub struct InMemoryLookup {
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
}

impl InMemoryLookup {
    /// Adds (or replaces) Secret `namespace/name` with `data`.
    pub fn with_secret<K, V>(
        mut self,
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<Vec<u8>>,
    {
        self.secrets.insert(
            (namespace.into(), name.into()),
            data.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        );
        self
    }

    /// Adds (or replaces) ConfigMap `namespace/name` with `data`.
    pub fn with_config_map<K, V>(
        mut self,
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.config_maps.insert(
            (namespace.into(), name.into()),
            data.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        );
        self
    }
}

// Hand-written so that no Debug output of a lookup ever carries Secret data.
impl std::fmt::Debug for InMemoryLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLookup")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ClusterLookup for InMemoryLookup {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(&(namespace.into(), name.into())).cloned()
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(&(namespace.into(), name.into())).cloned()
    }
}

impl<L: ClusterLookup + ?Sized> ClusterLookup for &L {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        (**self).secret(namespace, name)
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (**self).config_map(namespace, name)
    }
}

/// Which kind of object a lookup reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LookupKind {
    Secret,
    ConfigMap,
}

impl LookupKind {
    /// The resource (plural, core group) the API server authorises reads of.
    pub fn resource(self) -> &'static str {
        match self {
            LookupKind::Secret => "secrets",
            LookupKind::ConfigMap => "configmaps",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            LookupKind::Secret => "Secret",
            LookupKind::ConfigMap => "ConfigMap",
        }
    }
}

/// A lookup that answers nothing and records what was asked: `(kind, namespace,
/// name)`. Which objects preflight asks for depends only on the manifests (every
/// reference is looked up, whatever an earlier one held), so a dry pass with this
/// lookup lists every read a real pass would make, before any is made.
#[derive(Default)]
pub struct RecordingLookup {
    asked: std::sync::Mutex<std::collections::BTreeSet<(LookupKind, String, String)>>,
}

impl RecordingLookup {
    pub fn asked(&self) -> std::collections::BTreeSet<(LookupKind, String, String)> {
        self.asked.lock().expect("recording lookup poisoned").clone()
    }

    fn record(&self, kind: LookupKind, namespace: &str, name: &str) {
        self.asked.lock().expect("recording lookup poisoned").insert((
            kind,
            namespace.to_string(),
            name.to_string(),
        ));
    }
}

impl ClusterLookup for RecordingLookup {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.record(LookupKind::Secret, namespace, name);
        None
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.record(LookupKind::ConfigMap, namespace, name);
        None
    }
}

/// A lookup that reads only where it is allowed: `(kind, namespace)` pairs the app's
/// identity may `get` (checked with the API server before). Anything else answers
/// `None` without reading: defence in depth behind the check that refuses a revision
/// reading elsewhere before preflight runs.
pub struct GuardedLookup<L> {
    inner: L,
    allowed: std::collections::BTreeSet<(LookupKind, String)>,
    /// Everything is allowed (the controller's own identity, single-tenant).
    all: bool,
}

impl<L: ClusterLookup> GuardedLookup<L> {
    pub fn new(inner: L, allowed: std::collections::BTreeSet<(LookupKind, String)>) -> Self {
        GuardedLookup {
            inner,
            allowed,
            all: false,
        }
    }

    /// Every namespace readable: for the controller's own identity.
    pub fn unguarded(inner: L) -> Self {
        GuardedLookup {
            inner,
            allowed: Default::default(),
            all: true,
        }
    }

    fn allows(&self, kind: LookupKind, namespace: &str) -> bool {
        self.all || self.allowed.contains(&(kind, namespace.to_string()))
    }
}

impl<L: ClusterLookup> ClusterLookup for GuardedLookup<L> {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        if !self.allows(LookupKind::Secret, namespace) {
            return None;
        }
        self.inner.secret(namespace, name)
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        if !self.allows(LookupKind::ConfigMap, namespace) {
            return None;
        }
        self.inner.config_map(namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    use super::*;

    #[test]
    fn a_guarded_lookup_reads_only_where_it_is_allowed() {
        let cluster = InMemoryLookup::default()
            .with_secret("mine", "db", [("password", "canary-pw")])
            .with_secret("victim", "db", [("password", "canary-victim")])
            .with_config_map("victim", "cfg", [("DB_URL", "canary-url")])
            .with_config_map("mine", "cfg", [("DB_URL", "mine-url")]);
        let allowed = [
            (LookupKind::Secret, "mine".to_string()),
            (LookupKind::ConfigMap, "mine".to_string()),
        ];
        let guarded = GuardedLookup::new(&cluster, allowed.into_iter().collect());
        assert!(guarded.secret("mine", "db").is_some());
        assert!(guarded.config_map("mine", "cfg").is_some());
        assert_eq!(guarded.secret("victim", "db"), None);
        assert_eq!(guarded.config_map("victim", "cfg"), None);
        let only_config_maps = GuardedLookup::new(
            &cluster,
            [(LookupKind::ConfigMap, "victim".to_string())]
                .into_iter()
                .collect(),
        );
        assert_eq!(only_config_maps.secret("victim", "db"), None);
        assert!(only_config_maps.config_map("victim", "cfg").is_some());
        assert!(
            GuardedLookup::unguarded(&cluster)
                .secret("victim", "db")
                .is_some()
        );
    }

    #[test]
    fn a_recording_lookup_lists_what_was_asked_and_answers_nothing() {
        let recording = RecordingLookup::default();
        assert_eq!(recording.secret("victim", "db"), None);
        assert_eq!(recording.config_map("victim", "cfg"), None);
        assert_eq!(recording.secret("victim", "db"), None);
        assert_eq!(
            recording.asked().into_iter().collect::<Vec<_>>(),
            [
                (LookupKind::Secret, "victim".to_string(), "db".to_string()),
                (LookupKind::ConfigMap, "victim".to_string(), "cfg".to_string()),
            ]
        );
    }

    #[test]
    fn a_store_lookup_reads_the_watch_caches() {
        let (secrets, mut secret_writer) = store::<Secret>();
        let (config_maps, mut config_map_writer) = store::<ConfigMap>();
        secret_writer.apply_watcher_event(&Event::Apply(Secret {
            metadata: ObjectMeta {
                name: Some("jwt".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            data: Some([("secret".to_string(), ByteString(b"s3cr3t".to_vec()))].into()),
            ..Default::default()
        }));
        config_map_writer.apply_watcher_event(&Event::Apply(ConfigMap {
            metadata: ObjectMeta {
                name: Some("cfg".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            data: Some([("mode".to_string(), "clerk".to_string())].into()),
            ..Default::default()
        }));
        let lookup = StoreLookup { secrets, config_maps };
        assert_eq!(
            lookup.secret("app", "jwt"),
            Some([("secret".to_string(), b"s3cr3t".to_vec())].into())
        );
        assert_eq!(lookup.secret("other", "jwt"), None);
        assert_eq!(lookup.secret("app", "nope"), None);
        assert_eq!(
            lookup.config_map("app", "cfg"),
            Some([("mode".to_string(), "clerk".to_string())].into())
        );
        assert_eq!(lookup.config_map("app", "jwt"), None);
    }
}
