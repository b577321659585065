//! Who an app acts as ([`Identity`]), and what that identity may read ([`Access`]).
//!
//! bosun keeps reading from its watch caches (one cluster-wide cache of Secrets,
//! ConfigMaps, workloads and Pods costs one watch each, whatever the number of apps),
//! but every read it makes on an app's behalf is first authorised for the app's
//! identity with a SubjectAccessReview (`authorization.k8s.io/v1`, served by every
//! Kubernetes bosun supports). Why not impersonated reads throughout:
//! - a cache per identity would cost a watch per tenant and resource, and a GET per
//!   read would cost a request per Secret per pass;
//! - a SubjectAccessReview asks the API server's own authorizer (RBAC, webhooks, ABAC:
//!   whatever the cluster runs), so bosun never re-implements RBAC;
//! - answers are cached per (identity, verb, resource, namespace) for a short time
//!   ([`GRANT_TTL`], [`REFUSAL_TTL`]) and the cache is bounded ([`CAPACITY`], evicting the
//!   oldest answers): a permission granted is seen within seconds, one revoked within a
//!   minute, and a pass costs no request once its answers are known.
//!
//! What is read as bosun itself, never on an app's behalf: AppDeployments, Runbooks,
//! ClusterRunbooks, Leases, the snapshot Secrets, Events, and the webhook secret. The
//! [`Identity::Controller`] (single-tenant mode, `--single-tenant`) is allowed
//! everything the controller may do, without a review.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long a granted permission is taken as granted: a revocation is seen within this.
pub(crate) const GRANT_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is remembered: a permission granted to unblock an app is seen
/// within this (a blocked app is checked again at its Git interval, not more often).
pub const REFUSAL_TTL: Duration = Duration::from_secs(10);
/// Answers kept at most; beyond, the oldest are evicted.
pub(crate) const CAPACITY: usize = 4096;

/// Who an app's reads and writes are authorised as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A ServiceAccount of the app's own namespace (`spec.serviceAccountName`, else
    /// `--default-service-account`).
    ServiceAccount { namespace: String, name: String },
    /// The controller itself: only with `--single-tenant`.
    Controller,
}

impl Identity {
    /// The user name the API server knows the identity by; `None` for the controller.
    pub fn user(&self) -> Option<String> {
        match self {
            Identity::ServiceAccount { namespace, name } => {
                Some(format!("system:serviceaccount:{namespace}:{name}"))
            }
            Identity::Controller => None,
        }
    }

    /// The groups the API server gives a ServiceAccount (and an impersonated one).
    fn groups(&self) -> Vec<String> {
        match self {
            Identity::ServiceAccount { namespace, .. } => vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            Identity::Controller => Vec::new(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.user() {
            Some(user) => f.write_str(&user),
            None => f.write_str("the controller (--single-tenant)"),
        }
    }
}

/// One thing an identity may or may not do: `get secrets in namespace shop`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    pub verb: String,
    /// API group, `""` for the core group.
    pub group: String,
    /// Plural resource name (`secrets`, `deployments`).
    pub resource: String,
    pub subresource: Option<String>,
    /// `None`: cluster scope.
    pub namespace: Option<String>,
}

impl Permission {
    pub fn new(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Self {
        Permission {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: namespace.map(str::to_string),
        }
    }

    pub(crate) fn with_subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.into());
        self
    }

    /// `pods/log`, `deployments.apps`, as the API server's RBAC refusals name them.
    pub(crate) fn resource_name(&self) -> String {
        let mut name = self.resource.clone();
        if !self.group.is_empty() {
            name.push('.');
            name.push_str(&self.group);
        }
        if let Some(subresource) = &self.subresource {
            name.push('/');
            name.push_str(subresource);
        }
        name
    }

    /// `get secrets in namespace shop`, `create namespaces at cluster scope`.
    pub fn describe(&self) -> String {
        let scope = match &self.namespace {
            Some(namespace) => format!("in namespace {namespace}"),
            None => "at cluster scope".into(),
        };
        format!("{} {} {scope}", self.verb, self.resource_name())
    }
}

/// A permission refused to an identity, worded as [`crate::failure::describe_forbidden`]
/// words the API server's refusals: `forbidden: U may not get secrets in namespace n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub identity: Identity,
    pub permission: Permission,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forbidden: {} may not {}",
            self.identity,
            self.permission.describe()
        )
    }
}

/// Asks the API server what an identity may do, and remembers the answers a while.
pub struct Access {
    client: Client,
    answers: Mutex<Answers>,
    /// A namespace-scoped install (`--watch-namespace`): its Role cannot grant the
    /// cluster-scoped SubjectAccessReview, only LocalSubjectAccessReview of its own
    /// namespace (the chart's `rbac.scope=namespace`), so reviews are asked that way.
    local_to: Option<String>,
}

impl Access {
    /// `local_to`: the one namespace of a namespace-scoped install, else `None`.
    pub fn new(client: Client, local_to: Option<String>) -> Self {
        Access {
            client,
            answers: Mutex::new(Answers::new(CAPACITY)),
            local_to,
        }
    }

    /// Whether `identity` may do `permission`: the controller always; a ServiceAccount
    /// as the API server's authorizer says (cached).
    pub async fn may(&self, identity: &Identity, permission: &Permission) -> Result<bool, kube::Error> {
        if *identity == Identity::Controller {
            return Ok(true);
        }
        let key = (identity.clone(), permission.clone());
        if let Some(allowed) = self
            .answers
            .lock()
            .expect("access cache poisoned")
            .get(&key, Instant::now())
        {
            return Ok(allowed);
        }
        let allowed = self.review(identity, permission).await?;
        self.answers
            .lock()
            .expect("access cache poisoned")
            .insert(key, allowed, Instant::now());
        Ok(allowed)
    }

    /// The first of `permissions` refused to `identity`, in order; `None`: all granted.
    pub async fn first_refused<'p>(
        &self,
        identity: &Identity,
        permissions: impl IntoIterator<Item = &'p Permission>,
    ) -> Result<Option<Refusal>, kube::Error> {
        for permission in permissions {
            if !self.may(identity, permission).await? {
                return Ok(Some(Refusal {
                    identity: identity.clone(),
                    permission: permission.clone(),
                }));
            }
        }
        Ok(None)
    }

    async fn review(&self, identity: &Identity, permission: &Permission) -> Result<bool, kube::Error> {
        let spec = SubjectAccessReviewSpec {
            user: identity.user(),
            groups: Some(identity.groups()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.clone()),
                group: Some(permission.group.clone()),
                resource: Some(permission.resource.clone()),
                subresource: permission.subresource.clone(),
                namespace: permission.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = match &self.local_to {
            None => {
                let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
                let review = SubjectAccessReview {
                    spec,
                    ..Default::default()
                };
                api.create(&PostParams::default(), &review).await?.status
            }
            // Outside its one namespace a namespace-scoped install may not act at all.
            Some(own) if permission.namespace.as_deref() != Some(own.as_str()) => return Ok(false),
            Some(own) => {
                let api: Api<LocalSubjectAccessReview> = Api::namespaced(self.client.clone(), own);
                let review = LocalSubjectAccessReview {
                    metadata: kube::api::ObjectMeta {
                        namespace: Some(own.clone()),
                        ..Default::default()
                    },
                    spec,
                    ..Default::default()
                };
                api.create(&PostParams::default(), &review).await?.status
            }
        };
        Ok(status.is_some_and(|status| status.allowed && status.denied != Some(true)))
    }
}

type Key = (Identity, Permission);

/// Answers with when they were given, bounded: at capacity, expired answers go first,
/// then the oldest.
struct Answers {
    capacity: usize,
    entries: HashMap<Key, (Instant, bool)>,
}

impl Answers {
    fn new(capacity: usize) -> Self {
        Answers {
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    fn ttl(allowed: bool) -> Duration {
        if allowed { GRANT_TTL } else { REFUSAL_TTL }
    }

    fn get(&self, key: &Key, now: Instant) -> Option<bool> {
        let (at, allowed) = self.entries.get(key)?;
        (now.saturating_duration_since(*at) < Self::ttl(*allowed)).then_some(*allowed)
    }

    fn insert(&mut self, key: Key, allowed: bool, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (at, allowed)| now.saturating_duration_since(*at) < Self::ttl(*allowed));
            while self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(key, _)| key.clone());
                match oldest {
                    Some(oldest) => self.entries.remove(&oldest),
                    None => break,
                };
            }
        }
        self.entries.insert(key, (now, allowed));
    }
}

/// A map that keeps at most `capacity` entries, evicting the least recently used:
/// the impersonated clients (one per ServiceAccount an app names) must not grow with
/// every name a tenant tries.
pub struct Lru<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, V)>,
}

impl<V: Clone> Lru<V> {
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(used, value)| {
            *used = tick;
            value.clone()
        })
    }

    pub fn insert(&mut self, key: String, value: V) {
        self.tick += 1;
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&key)
            && let Some(least) = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(key, _)| key.clone())
        {
            self.entries.remove(&least);
        }
        self.entries.insert(key, (self.tick, value));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: "attacker".into(),
            name: name.into(),
        }
    }

    fn get_secrets(namespace: &str) -> Permission {
        Permission::new("get", "", "secrets", Some(namespace))
    }

    #[test]
    fn identities_are_the_users_the_api_server_knows() {
        assert_eq!(
            account("deployer").user().as_deref(),
            Some("system:serviceaccount:attacker:deployer")
        );
        assert_eq!(
            account("deployer").groups(),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:attacker",
                "system:authenticated"
            ]
        );
        assert_eq!(Identity::Controller.user(), None);
        assert!(Identity::Controller.to_string().contains("--single-tenant"));
    }

    #[test]
    fn refusals_name_identity_verb_resource_and_scope() {
        let refusal = Refusal {
            identity: account("deployer"),
            permission: Permission::new("get", "", "pods", Some("victim")).with_subresource("log"),
        };
        assert_eq!(
            refusal.to_string(),
            "forbidden: system:serviceaccount:attacker:deployer may not get pods/log in namespace victim"
        );
        assert_eq!(
            Permission::new("patch", "rbac.authorization.k8s.io", "clusterroles", None).describe(),
            "patch clusterroles.rbac.authorization.k8s.io at cluster scope"
        );
    }

    #[test]
    fn answers_expire_grants_later_than_refusals() {
        let mut answers = Answers::new(10);
        let start = Instant::now();
        let granted = (account("a"), get_secrets("mine"));
        let refused = (account("a"), get_secrets("victim"));
        answers.insert(granted.clone(), true, start);
        answers.insert(refused.clone(), false, start);
        assert_eq!(answers.get(&granted, start), Some(true));
        assert_eq!(answers.get(&refused, start), Some(false));
        let later = start + REFUSAL_TTL;
        assert_eq!(answers.get(&refused, later), None, "a refusal is asked again");
        assert_eq!(answers.get(&granted, later), Some(true));
        assert_eq!(
            answers.get(&granted, start + GRANT_TTL),
            None,
            "a grant is asked again"
        );
        // Another identity's answer is not this one's.
        assert_eq!(answers.get(&(account("b"), get_secrets("mine")), start), None);
    }

    #[test]
    fn answers_are_bounded_expired_then_oldest_first() {
        let mut answers = Answers::new(3);
        let start = Instant::now();
        let key = |n: usize| (account("a"), get_secrets(&format!("ns{n}")));
        answers.insert(key(0), false, start);
        answers.insert(key(1), true, start + Duration::from_secs(1));
        answers.insert(key(2), true, start + Duration::from_secs(2));
        // key(0), a refusal, has expired by then: it goes, the grants stay.
        let now = start + REFUSAL_TTL + Duration::from_secs(1);
        answers.insert(key(3), true, now);
        assert_eq!(answers.entries.len(), 3);
        assert_eq!(answers.get(&key(0), now), None);
        assert_eq!(answers.get(&key(1), now), Some(true));
        // Nothing expired: the oldest goes.
        answers.insert(key(4), true, now);
        assert_eq!(answers.entries.len(), 3);
        assert_eq!(answers.get(&key(1), now), None);
        assert_eq!(answers.get(&key(2), now), Some(true));
        assert_eq!(answers.get(&key(4), now), Some(true));
        // Replacing an answer evicts nothing.
        answers.insert(key(4), false, now);
        assert_eq!(answers.entries.len(), 3);
        assert_eq!(answers.get(&key(4), now), Some(false));
    }

    #[test]
    fn the_lru_keeps_the_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.get("a"), Some(1));
        lru.insert("c".into(), 3);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("b"), None, "the least recently used is evicted");
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.get("c"), Some(3));
        for n in 0..1000 {
            lru.insert(format!("k{n}"), n);
        }
        assert_eq!(lru.len(), 2);
    }

    #[tokio::test]
    async fn the_controller_is_allowed_without_asking() {
        // A client of an API server that is not there: asking would fail.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let access = Access::new(Client::try_from(config).unwrap(), None);
        assert!(
            access
                .may(&Identity::Controller, &get_secrets("victim"))
                .await
                .unwrap()
        );
        assert!(access.may(&account("a"), &get_secrets("victim")).await.is_err());
    }
}
