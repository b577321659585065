//! The workloads of a revision, their pod templates and containers, and which of
//! them `spec.workloads` selects for the env contract.

use serde_json::Value;

use super::PreflightMiss;
use crate::render::Manifest;

/// An object that runs pods: where its pod template is, and what it is called.
pub(super) struct Workload<'a> {
    /// Position in the rendered objects.
    pub index: usize,
    pub kind: &'a str,
    pub name: &'a str,
    /// Its own namespace, or the target namespace when it names none.
    pub namespace: String,
    /// Path from the object to its pod template (`metadata` + `spec`); empty for a Pod.
    pub template_path: &'static [&'static str],
    /// The pod spec (an empty object when the manifest has none).
    pub pod_spec: &'a Value,
}

static EMPTY: Value = Value::Null;

impl<'a> Workload<'a> {
    /// `Deployment app/api`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// Init containers, then app containers, as the kubelet starts them. Ephemeral
    /// containers are added to running pods by hand, never by a revision.
    pub fn containers(&self) -> Vec<Container<'a>> {
        let listed = |field: &str, init: bool| {
            array(self.pod_spec, field)
                .iter()
                .map(move |spec| Container {
                    name: str_field(spec, "name").unwrap_or_default(),
                    init,
                    spec,
                })
                .collect::<Vec<_>>()
        };
        let mut containers = listed("initContainers", true);
        containers.extend(listed("containers", false));
        containers
    }

    /// Deployments, StatefulSets and DaemonSets replace their pods when the pod
    /// template changes: the kinds a Secret digest in the template rolls. (A Job's
    /// template cannot change at all; a ReplicaSet's or a CronJob's change reaches
    /// only pods started later, which read the Secret as it is then anyway.)
    pub fn rolls_on_template_change(&self) -> bool {
        matches!(self.kind, "Deployment" | "StatefulSet" | "DaemonSet")
    }
}

/// A container of a workload's pod template.
pub(super) struct Container<'a> {
    pub name: &'a str,
    pub init: bool,
    pub spec: &'a Value,
}

impl Container<'_> {
    /// `container api`, `init container migrate`.
    pub fn describe(&self) -> String {
        if self.init {
            format!("init container {}", self.name)
        } else {
            format!("container {}", self.name)
        }
    }
}

/// Where the pod template of `group`/`kind` is, for the kinds that have one.
pub(super) fn template_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    const TEMPLATE: &[&str] = &["spec", "template"];
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => Some(TEMPLATE),
        // Served until Kubernetes 1.16; still what some old manifests say.
        ("extensions", "Deployment" | "DaemonSet" | "ReplicaSet") => Some(TEMPLATE),
        ("batch", "Job") => Some(TEMPLATE),
        // batch/v1beta1 on 1.20, batch/v1 from 1.21: the same path.
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        ("", "ReplicationController") => Some(TEMPLATE),
        ("", "Pod") => Some(&[]),
        _ => None,
    }
}

/// Every workload of the revision, in object order.
pub(super) fn find<'a>(objects: &'a [Manifest], namespace: &str) -> Vec<Workload<'a>> {
    objects
        .iter()
        .enumerate()
        .filter_map(|(index, manifest)| {
            let template_path = template_path(manifest.group(), manifest.kind())?;
            let template = at(&manifest.object, template_path).unwrap_or(&EMPTY);
            Some(Workload {
                index,
                kind: manifest.kind(),
                name: manifest.name(),
                namespace: manifest.namespace().unwrap_or(namespace).to_string(),
                template_path,
                pod_spec: template.get("spec").unwrap_or(&EMPTY),
            })
        })
        .collect()
}

/// How far the env contract applies to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Depth {
    /// Every rule, and defaults are injected: the app containers of a selected
    /// workload, and containers selected by name.
    Full,
    /// Only the rules that judge a value that is set (`secret`, `policy`): init
    /// containers of a selected workload.
    SetValuesOnly,
}

/// `spec.workloads`: which containers the env contract applies to.
pub(super) struct Selection<'r> {
    /// `(workload, container)`; no entries selects every workload.
    entries: Vec<(&'r str, Option<&'r str>)>,
    raw: &'r [String],
}

impl<'r> Selection<'r> {
    pub fn new(names: &'r [String]) -> Self {
        Selection {
            entries: names
                .iter()
                .map(|entry| match entry.split_once('/') {
                    Some((workload, container)) => (workload, Some(container)),
                    None => (entry.as_str(), None),
                })
                .collect(),
            raw: names,
        }
    }

    /// How far the contract applies to `container` of `workload`; `None`: not at all.
    pub fn depth(&self, workload: &Workload<'_>, container: &Container<'_>) -> Option<Depth> {
        let by_workload = || {
            if container.init {
                Depth::SetValuesOnly
            } else {
                Depth::Full
            }
        };
        if self.entries.is_empty() {
            return Some(by_workload());
        }
        let mut depth = None;
        for (name, selected_container) in &self.entries {
            if *name != workload.name {
                continue;
            }
            match selected_container {
                Some(selected) if *selected == container.name => return Some(Depth::Full),
                Some(_) => {}
                None => depth = Some(by_workload()),
            }
        }
        depth
    }

    /// Entries naming a workload (or a container) the revision does not render.
    pub fn unknown_entries(&self, found: &[Workload<'_>]) -> Vec<PreflightMiss> {
        let mut misses = Vec::new();
        for (entry, (name, container)) in self.raw.iter().zip(&self.entries) {
            let named: Vec<&Workload<'_>> = found.iter().filter(|w| w.name == *name).collect();
            let message = if named.is_empty() {
                format!("spec.workloads names {entry}, which this revision does not render")
            } else if let Some(container) = container
                && !named
                    .iter()
                    .any(|w| w.containers().iter().any(|c| c.name == *container))
            {
                let workloads: Vec<String> = named.iter().map(|w| w.describe()).collect();
                format!(
                    "spec.workloads names {entry}, but {} has no container {container}",
                    workloads.join(" and ")
                )
            } else {
                continue;
            };
            misses.push(PreflightMiss {
                workload: None,
                container: None,
                variable: None,
                secret: None,
                config_map: None,
                key: None,
                field: Some("spec.workloads".into()),
                message,
            });
        }
        misses
    }
}

/// The value at `path` under `value`.
pub(super) fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(key))
}

/// The list under `key`, or nothing.
pub(super) fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn str_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// `optional: true` on a reference (absent means false, as in Kubernetes).
pub(super) fn optional(reference: &Value) -> bool {
    reference
        .get("optional")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}
