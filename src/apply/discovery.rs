//! Which resource (URL path) and scope a kind has: asked of the API server one
//! group-version at a time, cached, and asked again when a kind is missing (a CRD may
//! have been installed since). When a kind is not found, [`DiscoveryCache::serving`]
//! says what the server serves instead, so the message can name the apiVersion to use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::Client;
use kube::core::{ApiResource, GroupVersionKind};

use super::is_not_found;

/// A kind's resource and whether its objects live in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

type KindsOfVersion = HashMap<String, ResolvedKind>;

/// What the API server serves of the group of an apiVersion it has no kind for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupServing {
    /// Whether the server serves the apiVersion asked for at all.
    pub version_served: bool,
    /// The versions of the group it serves, as apiVersions (`autoscaling/v1`), the
    /// preferred one first; empty when it serves no version of the group.
    pub versions: Vec<String>,
    /// Those of `versions` that have the kind.
    pub versions_with_kind: Vec<String>,
}

/// Discovery results shared by every [`Applier`](super::Applier) built from it (one per
/// impersonated account, one cache for the controller). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryCache {
    by_api_version: Arc<RwLock<HashMap<String, KindsOfVersion>>>,
}

impl DiscoveryCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kind from the cache, or from the server when the cache does not know it.
    /// `Ok(None)`: the server does not serve this kind at this apiVersion.
    pub async fn resolve(
        &self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<ResolvedKind>, kube::Error> {
        if let Some(found) = self.cached(api_version, kind) {
            return Ok(Some(found));
        }
        self.refresh(client, api_version).await?;
        Ok(self.cached(api_version, kind))
    }

    /// What the server serves of `api_version`'s group, and where it has `kind`: asked
    /// when [`DiscoveryCache::resolve`] found no such kind, for the message (a manifest
    /// written for a newer Kubernetes names a version an older server does not serve).
    pub async fn serving(
        &self,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<GroupServing, kube::Error> {
        let versions = match api_version.split_once('/') {
            Some((group, _)) => {
                let groups = client.list_api_groups().await?;
                groups
                    .groups
                    .into_iter()
                    .find(|g| g.name == group)
                    .map(|g| {
                        let preferred = g.preferred_version.map(|v| v.group_version);
                        let mut versions: Vec<String> =
                            g.versions.into_iter().map(|v| v.group_version).collect();
                        // Preferred first, the rest in the server's order.
                        if let Some(at) = versions.iter().position(|v| Some(v) == preferred.as_ref()) {
                            let preferred = versions.remove(at);
                            versions.insert(0, preferred);
                        }
                        versions
                    })
                    .unwrap_or_default()
            }
            // The core group: `v1`.
            None => client.list_core_api_versions().await?.versions,
        };
        let mut versions_with_kind = Vec::new();
        for version in &versions {
            if self.resolve(client, version, kind).await?.is_some() {
                versions_with_kind.push(version.clone());
            }
        }
        Ok(GroupServing {
            version_served: versions.iter().any(|v| v == api_version),
            versions,
            versions_with_kind,
        })
    }

    /// Forgets what is known about one apiVersion (after a CRD changed).
    pub fn invalidate(&self, api_version: &str) {
        if let Ok(mut map) = self.by_api_version.write() {
            map.remove(api_version);
        }
    }

    fn cached(&self, api_version: &str, kind: &str) -> Option<ResolvedKind> {
        let map = self.by_api_version.read().ok()?;
        map.get(api_version)?.get(kind).cloned()
    }

    async fn refresh(&self, client: &Client, api_version: &str) -> Result<(), kube::Error> {
        let listed = if api_version.contains('/') {
            client.list_api_group_resources(api_version).await
        } else {
            client.list_core_api_resources(api_version).await
        };
        let list = match listed {
            Ok(list) => list,
            // The group-version is not served (yet): nothing to cache.
            Err(error) if is_not_found(&error) => return Ok(()),
            Err(error) => return Err(error),
        };
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        let kinds: KindsOfVersion = list
            .resources
            .iter()
            // Subresources (`deployments/scale`) are not kinds one applies.
            .filter(|resource| !resource.name.contains('/'))
            .map(|resource| {
                let gvk = GroupVersionKind::gvk(group, version, &resource.kind);
                let resolved = ResolvedKind {
                    resource: ApiResource::from_gvk_with_plural(&gvk, &resource.name),
                    namespaced: resource.namespaced,
                };
                (resource.kind.clone(), resolved)
            })
            .collect();
        if let Ok(mut map) = self.by_api_version.write() {
            map.insert(api_version.to_string(), kinds);
        }
        Ok(())
    }
}
