//! The few changes render makes to what users wrote.
//!
//! API servers before 1.21 refuse server-side apply of a Service port or a container
//! port without `protocol` ("associative list with keys has an element that omits key
//! field protocol"), because `protocol` is part of those lists' merge key, while plain
//! `kubectl apply` accepts the same YAML. Kubernetes defaults it to `TCP` anyway, so
//! filling in `TCP` exactly where Kubernetes would changes nothing on newer servers and
//! lets ordinary manifests apply on older ones.
//!
//! Resource quantities written as numbers (`cpu: 0.5`, `memory: 268435456`, as many
//! charts do) become the string the server would store for them (`"500m"`,
//! `"268435456"`). The 1.20 API server refuses numbers there in server-side apply
//! ("expected string, got &value.valueUnstructured{Value:0.5}") though `kubectl apply`
//! takes them; 1.28+ servers accept them but read back strings, so without this every
//! resync would see a number where the server has a string. Strings are left as written.
//!
//! Nothing else is touched.

use serde_json::{Map, Value};

use super::quantity::{PathStep, QuantityFields, canonical_text_of_number};

pub(super) const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// Where the pod spec sits in objects of core, apps, extensions and batch groups.
pub(super) fn pod_spec_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
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

/// Replaces resource quantities written as numbers by their canonical strings
/// (`0.5` → `"500m"`), at the fields [`QuantityFields`] names for the object's kind.
pub(super) fn canonicalize_numeric_quantities(object: &mut Value) {
    let fields = QuantityFields::of(object);
    if !fields.is_empty() {
        canonicalize_numbers_under(object, &fields, &mut Vec::new());
    }
}

fn canonicalize_numbers_under<'v>(
    value: &'v mut Value,
    fields: &QuantityFields,
    path: &mut Vec<PathStep<'v>>,
) {
    match value {
        Value::Number(number) if fields.contains(path) => {
            if let Some(text) = canonical_text_of_number(number) {
                *value = Value::String(text);
            }
        }
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(PathStep::Field(key));
                canonicalize_numbers_under(child, fields, path);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(PathStep::Index(index));
                canonicalize_numbers_under(item, fields, path);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numeric_quantities_become_canonical_strings() {
        let mut deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "template": {"spec": {
                "containers": [{"name": "web", "image": "x",
                    "ports": [{"containerPort": 80}],
                    "resources": {"requests": {"cpu": 0.5, "memory": 268435456},
                                  "limits": {"cpu": 1, "memory": "1.5Gi", "example.com/gpu": 2}}}],
                "initContainers": [{"name": "init", "image": "x",
                    "resources": {"limits": {"cpu": 0.1, "ephemeral-storage": 1e9}}}],
                "overhead": {"cpu": 0.25}
            }}}
        });
        canonicalize_numeric_quantities(&mut deployment);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["resources"]["requests"],
            json!({"cpu": "500m", "memory": "268435456"})
        );
        assert_eq!(
            container["resources"]["limits"],
            json!({"cpu": "1", "memory": "1.5Gi", "example.com/gpu": "2"}),
            "strings stay as written"
        );
        assert_eq!(
            pod["initContainers"][0]["resources"]["limits"],
            json!({"cpu": "100m", "ephemeral-storage": "1G"})
        );
        assert_eq!(pod["overhead"]["cpu"], "250m");
        assert_eq!(deployment["spec"]["replicas"], 2, "not a quantity");
        assert_eq!(container["ports"][0]["containerPort"], 80, "not a quantity");
    }

    #[test]
    fn claims_quotas_and_limit_ranges_are_normalized() {
        let mut claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "spec": {"resources": {"requests": {"storage": 1073741824}}}});
        canonicalize_numeric_quantities(&mut claim);
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1073741824");

        let mut stateful_set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "spec": {"volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": 1000}}}}],
                     "template": {"spec": {"containers": [{"resources": {"limits": {"cpu": 2}}}]}}}});
        canonicalize_numeric_quantities(&mut stateful_set);
        assert_eq!(
            stateful_set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1k"
        );
        assert_eq!(
            stateful_set["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "2"
        );

        let mut quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "spec": {"hard": {"pods": 10, "requests.cpu": 1.5}}});
        canonicalize_numeric_quantities(&mut quota);
        assert_eq!(
            quota["spec"]["hard"],
            json!({"pods": "10", "requests.cpu": "1500m"})
        );

        let mut limit_range = json!({"apiVersion": "v1", "kind": "LimitRange",
            "spec": {"limits": [{"type": "Container", "max": {"cpu": 2}, "min": {"cpu": 0.1},
                "default": {"memory": 536870912}, "defaultRequest": {"cpu": 0.25},
                "maxLimitRequestRatio": {"cpu": 4}}]}});
        canonicalize_numeric_quantities(&mut limit_range);
        assert_eq!(
            limit_range["spec"]["limits"][0],
            json!({"type": "Container", "max": {"cpu": "2"}, "min": {"cpu": "100m"},
                "default": {"memory": "536870912"}, "defaultRequest": {"cpu": "250m"},
                "maxLimitRequestRatio": {"cpu": "4"}})
        );
    }

    #[test]
    fn numbers_elsewhere_are_left_alone() {
        let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "data": {"cpu": 0.5}, "spec": {"hard": {"cpu": 1}}});
        let mut normalized = config_map.clone();
        canonicalize_numeric_quantities(&mut normalized);
        assert_eq!(normalized, config_map);

        // A custom resource that happens to look like a Pod.
        let custom = json!({"apiVersion": "example.com/v1", "kind": "Pod",
            "spec": {"containers": [{"resources": {"limits": {"cpu": 0.5}}}]}});
        let mut normalized = custom.clone();
        canonicalize_numeric_quantities(&mut normalized);
        assert_eq!(normalized, custom);
    }
}
