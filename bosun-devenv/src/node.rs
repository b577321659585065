//! Fake Nodes: no kubelet runs on the local control plane, so a Node is an object
//! whose status says what a healthy kubelet would report, written once. Its kubelet
//! endpoint is the control plane's [`KubeletEndpoint`](super::KubeletEndpoint),
//! which serves the logs of the simulated containers of the Pods bound to it.
//!
//! That is all the DaemonSet controller of 1.20 needs: it places a daemon Pod on
//! every Node whose labels and taints the Pod's template accepts (it checks no
//! readiness and no resources). The Pod it creates is not bound (`spec.nodeName`
//! stays empty: binding is the scheduler's job since 1.17) but pinned by a node
//! affinity on `metadata.name`; the controller counts it for that Node, and the
//! [`PodSimulator`](super::PodSimulator) makes it Ready.
//!
//! The API server's admission taints every new Node
//! `node.kubernetes.io/not-ready:NoSchedule`, which daemon Pods do not tolerate;
//! the node lifecycle controller, which would lift it (and would taint a Node
//! whose kubelet stops reporting), is off, so
//! [`ControlPlane::register_node`](super::ControlPlane::register_node) removes it.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

/// The kubelet version a fake Node reports, that of the local control plane.
pub const KUBELET_VERSION: &str = "v1.20.2";

/// The object of a Ready Node named `name`, labelled as a kubelet labels its Node
/// (`kubernetes.io/hostname`, `kubernetes.io/os`, `kubernetes.io/arch`), without
/// taints, with room for 110 Pods, its heartbeats at `now`, its kubelet serving on
/// 127.0.0.1:`kubelet_port` (address `InternalIP`).
pub fn fake_node(name: &str, now: Timestamp, kubelet_port: u16) -> Node {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        })
    };
    let resources = json!({ "cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi" });
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated)"),
            ],
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                { "type": "InternalIP", "address": "127.0.0.1" },
                { "type": "Hostname", "address": name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": kubelet_port } },
            "nodeInfo": {
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
                "kernelVersion": "simulated",
                "osImage": "bosun devenv",
                "containerRuntimeVersion": "simulated://1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    });
    serde_json::from_value(node).expect("the fake Node matches the Node schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_node_is_ready_untainted_and_labelled() {
        let node = fake_node("worker-1", Timestamp::from_second(1_700_000_000).unwrap(), 10250);
        assert_eq!(node.metadata.name.as_deref(), Some("worker-1"));
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "worker-1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(node.spec.as_ref().unwrap().taints.is_none());
        let status = node.status.as_ref().unwrap();
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.as_ref().unwrap()["pods"].0, "110");
        let kubelet = status
            .daemon_endpoints
            .as_ref()
            .unwrap()
            .kubelet_endpoint
            .as_ref()
            .unwrap();
        assert_eq!(kubelet.port, 10250);
        let addresses = status.addresses.as_ref().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
        );
        assert_eq!(
            status.node_info.as_ref().unwrap().kubelet_version,
            KUBELET_VERSION
        );
    }
}
