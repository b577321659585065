//! The few changes render makes to what users wrote.
//!
//! API servers before 1.21 refuse server-side apply of a Service port or a container
//! port without `protocol` ("associative list with keys has an element that omits key
//! field protocol"), because `protocol` is part of those lists' merge key, while plain
//! `kubectl apply` accepts the same YAML. Kubernetes defaults it to `TCP` anyway, so
//! filling in `TCP` exactly where Kubernetes would changes nothing on newer servers and
//! lets ordinary manifests apply on older ones. Nothing else is touched.

use serde_json::{Map, Value};

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// Where the pod spec sits in objects of core, apps, extensions and batch groups.
fn pod_spec_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("", "PodTemplate") => Some(&["template", "spec"]),
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
        | ("batch", "Job") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Sets `protocol: TCP` on Service ports and container ports that have none.
pub(super) fn fill_default_protocols(object: &mut Value) {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version
        .split_once('/')
        .map_or("", |(group, _)| group)
        .to_string();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if group.is_empty() && kind == "Service" {
        if let Some(ports) = descend(object, &["spec", "ports"]) {
            fill_ports(ports);
        }
        return;
    }
    let Some(path) = pod_spec_path(&group, &kind) else {
        return;
    };
    let Some(Value::Object(pod_spec)) = descend(object, path) else {
        return;
    };
    for list in CONTAINER_LISTS {
        let Some(Value::Array(containers)) = pod_spec.get_mut(list) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(ports) = container.get_mut("ports") {
                fill_ports(ports);
            }
        }
    }
}

fn descend<'v>(mut value: &'v mut Value, path: &[&str]) -> Option<&'v mut Value> {
    for key in path {
        value = value.as_object_mut()?.get_mut(*key)?;
    }
    Some(value)
}

fn fill_ports(ports: &mut Value) {
    let Some(ports) = ports.as_array_mut() else {
        return;
    };
    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
        fill_protocol(port);
    }
}

fn fill_protocol(port: &mut Map<String, Value>) {
    match port.get("protocol") {
        None | Some(Value::Null) => {
            port.insert("protocol".into(), Value::String("TCP".into()));
        }
        Some(_) => {}
    }
}
