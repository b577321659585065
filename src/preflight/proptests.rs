//! Properties over arbitrary workloads, environments, Runbooks and Secrets:
//! - the transforms are deterministic and idempotent (applying twice is applying once);
//! - a Secret's digest, and the annotation of a workload reading it, changes if and
//!   only if the Secret's data changes;
//! - the misses do not depend on the order of the containers or of the objects.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::api::{EnvPolicy, EnvRule, RequiredWhen, RunbookSpec};
use crate::render::Manifest;

const NAMES: [&str; 4] = ["MODE", "KEY", "URL", "TOKEN"];
const VALUES: [&str; 4] = ["a", "clerk", "*", "0123456789abcdef"];

/// One `env` entry: a literal, a Secret or ConfigMap key (maybe missing), a fieldRef.
fn env_entry() -> impl Strategy<Value = Value> {
    let name = prop::sample::select(&NAMES[..]);
    prop_oneof![
        (name.clone(), prop::sample::select(&VALUES[..])).prop_map(|(n, v)| json!({"name": n, "value": v})),
        (name.clone(), 0..3usize, 0..3usize, any::<bool>()).prop_map(|(n, s, k, optional)| json!({
            "name": n,
            "valueFrom": {"secretKeyRef": {"name": format!("s{s}"), "key": format!("k{k}"), "optional": optional}}
        })),
        (name.clone(), 0..2usize).prop_map(|(n, k)| json!({
            "name": n, "valueFrom": {"configMapKeyRef": {"name": "cm", "key": format!("k{k}")}}
        })),
        name.prop_map(|n| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
    ]
}

fn env_from() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0..3usize, any::<bool>())
            .prop_map(|(s, optional)| json!({"secretRef": {"name": format!("s{s}"), "optional": optional}})),
        Just(json!({"prefix": "P_", "configMapRef": {"name": "cm"}})),
    ]
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(env_entry(), 0..4),
        prop::collection::vec(env_from(), 0..2),
    )
        .prop_map(move |(env, env_from)| {
            let mut container = json!({"name": name, "image": "app:1", "env": env});
            if !env_from.is_empty() {
                container["envFrom"] = Value::Array(env_from);
            }
            container
        })
}

/// A Deployment `name` with 1 to 3 containers and maybe an init container and
/// Secret volumes.
fn deployment(name: &'static str) -> impl Strategy<Value = Value> {
    (
        (1..4usize).prop_flat_map(|count| (0..count).map(|i| container(format!("c{i}"))).collect::<Vec<_>>()),
        prop::option::of(container("init".into())),
        prop::collection::vec(0..3usize, 0..2),
    )
        .prop_map(move |(containers, init, volumes)| {
            let mut spec = json!({"containers": containers});
            if let Some(init) = init {
                spec["initContainers"] = json!([init]);
            }
            if !volumes.is_empty() {
                spec["volumes"] = volumes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| json!({"name": format!("v{i}"), "secret": {"secretName": format!("s{s}")}}))
                    .collect();
            }
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": spec}}
            })
        })
}

fn manifests(objects: Vec<Value>) -> Vec<Manifest> {
    objects
        .into_iter()
        .enumerate()
        .map(|(line, object)| Manifest {
            object,
            file: "app.yaml".into(),
            line: line + 1,
        })
        .collect()
}

fn rule() -> impl Strategy<Value = EnvRule> {
    (
        prop::sample::select(&NAMES[..]),
        any::<bool>(),
        prop::option::of(prop::sample::select(&VALUES[..])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of((
            prop::sample::select(&NAMES[..]),
            prop::sample::select(&VALUES[..]),
        )),
        prop::option::of((
            prop::option::of(prop::sample::select(&VALUES[..])),
            prop::option::of(1..20u32),
            prop::collection::vec(prop::sample::select(&VALUES[..]), 0..2),
        )),
    )
        .prop_map(
            |(name, required, default, inject, secret, required_when, policy)| EnvRule {
                name: name.into(),
                required,
                default: default.map(str::to_string),
                inject,
                secret,
                required_when: required_when.map(|(env, equals)| RequiredWhen {
                    env: env.into(),
                    equals: equals.into(),
                }),
                policy: policy.map(|(equals, min_length, not_equals)| EnvPolicy {
                    equals: equals.map(str::to_string),
                    min_length,
                    not_equals: not_equals.into_iter().map(str::to_string).collect(),
                    ..Default::default()
                }),
            },
        )
}

fn runbook() -> impl Strategy<Value = RunbookSpec> {
    (
        prop::collection::vec(rule(), 0..4),
        prop::sample::select(vec![
            vec![],
            vec!["api".to_string()],
            vec!["api/c0".to_string(), "worker".to_string()],
        ]),
    )
        .prop_map(|(env, workloads)| RunbookSpec {
            env,
            workloads,
            ..Default::default()
        })
}

/// Secret data over a small alphabet, so that equal data comes up often.
fn secret_data() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["k0".to_string(), "k1".to_string(), "k2".to_string()]),
        prop::collection::vec(0..3u8, 0..3),
        0..3,
    )
}

/// Secrets `s0`..`s2` (some missing) and ConfigMap `cm`.
fn cluster() -> impl Strategy<Value = InMemoryLookup> {
    (
        prop::collection::vec(prop::option::of(secret_data()), 3),
        prop::option::of(prop::collection::btree_map(
            prop::sample::select(vec!["k0".to_string(), "k1".to_string(), "MODE".to_string()]),
            prop::sample::select(&VALUES[..]).prop_map(str::to_string),
            0..3,
        )),
    )
        .prop_map(|(secrets, config_map)| {
            let mut lookup = InMemoryLookup::default();
            for (index, data) in secrets.into_iter().enumerate() {
                if let Some(data) = data {
                    lookup = lookup.with_secret("app", &format!("s{index}"), data);
                }
            }
            if let Some(data) = config_map {
                lookup = lookup.with_config_map("app", "cm", data);
            }
            lookup
        })
}

fn revision() -> impl Strategy<Value = Vec<Value>> {
    (deployment("api"), deployment("worker")).prop_map(|(api, worker)| vec![api, worker])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn transforms_are_deterministic_and_idempotent(
        objects in revision(),
        runbook in runbook(),
        lookup in cluster(),
    ) {
        let objects = manifests(objects);
        let digests = secret_digests(&objects, "app", &lookup);
        prop_assert_eq!(&secret_digests(&objects, "app", &lookup), &digests);
        let once = apply_transforms(&objects, &runbook, "app", &lookup, &digests);
        prop_assert_eq!(&apply_transforms(&objects, &runbook, "app", &lookup, &digests), &once);
        let twice = apply_transforms(&once, &runbook, "app", &lookup, &digests);
        prop_assert_eq!(&twice, &once);
        // What preflight judges does not change by applying the transforms, but for
        // the injected defaults (which it assumed already).
        let before = check(&objects, &runbook, "app", &lookup).map(|c| c.secrets);
        let after = check(&once, &runbook, "app", &lookup).map(|c| c.secrets);
        prop_assert_eq!(before.is_ok(), after.is_ok());
    }

    #[test]
    fn a_digest_changes_if_and_only_if_the_data_does(
        first in secret_data(),
        second in secret_data(),
        objects in revision(),
    ) {
        prop_assert_eq!(secret_data_digest(&first) == secret_data_digest(&second), first == second);
        // Through a workload: only Secret s0 differs between the two clusters.
        let mut objects = manifests(objects);
        objects[0].object["spec"]["template"]["spec"]["volumes"] = json!([{"name": "x", "secret": {"secretName": "s0"}}]);
        let annotation = |data: &BTreeMap<String, Vec<u8>>| {
            let lookup = InMemoryLookup::default().with_secret("app", "s0", data.clone());
            let digests = secret_digests(&objects, "app", &lookup);
            apply_transforms(&objects, &RunbookSpec::default(), "app", &lookup, &digests)[0].object["spec"]["template"]
                ["metadata"]["annotations"][SECRETS_DIGEST_ANNOTATION]
                .clone()
        };
        let (a, b) = (annotation(&first), annotation(&second));
        prop_assert!(a.is_string());
        prop_assert_eq!(a == b, first == second);
    }

    #[test]
    fn misses_do_not_depend_on_order(
        (objects, shuffled) in revision().prop_flat_map(|objects| {
            let reordered = objects.iter().map(|object| {
                let containers = object["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
                Just(containers).prop_shuffle()
            }).collect::<Vec<_>>();
            (Just(objects), reordered, any::<bool>())
        }).prop_map(|(objects, reordered, swap)| {
            let mut shuffled = objects.clone();
            for (object, containers) in shuffled.iter_mut().zip(reordered) {
                object["spec"]["template"]["spec"]["containers"] = Value::Array(containers);
            }
            if swap {
                shuffled.reverse();
            }
            (objects, shuffled)
        }),
        runbook in runbook(),
        lookup in cluster(),
    ) {
        let original = check(&manifests(objects), &runbook, "app", &lookup);
        let reordered = check(&manifests(shuffled), &runbook, "app", &lookup);
        prop_assert_eq!(original, reordered);
    }
}
