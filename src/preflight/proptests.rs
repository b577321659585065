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

/// The fuzz target for what a tenant commits: YAML text (random, alias bombs, deep
/// nesting, workloads whose env doubles by `$(VAR)` references) through `render` and
/// then `preflight::check` with an env rule, as the controller runs them. Neither may
/// panic, and what comes out stays within fixed bounds whatever went in.
mod fuzz {
    use super::*;
    use crate::render::render;
    use crate::source::SourceFile;

    /// The most the rendered objects (as JSON) may weigh for these inputs (at most a
    /// few KiB each): the YAML parser's budget allows 250,000 nodes.
    const MAX_RENDERED: usize = 64 * 1024 * 1024;
    /// The most preflight's sentences may weigh: each container's expansions stop at
    /// the container budget, and a miss quotes at most one value.
    const MAX_VERDICT: usize = 4 * 1024 * 1024;

    /// `levels` of anchors, each a list of `width` aliases of the one before.
    fn alias_bomb(levels: usize, width: usize) -> String {
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n  l0: &l0 \"lol\"\n",
        );
        for level in 1..levels {
            let aliases = vec![format!("*l{}", level - 1); width].join(", ");
            text.push_str(&format!("  l{level}: &l{level} [{aliases}]\n"));
        }
        text
    }

    fn nested(depth: usize) -> String {
        format!("a: {}1{}\n", "[".repeat(depth), "]".repeat(depth))
    }

    /// A Deployment whose env is a doubling chain (`V0` then `Vn = "$(Vn-1)$(Vn-1)"`),
    /// and some noise entries.
    fn env_bomb(length: usize, seed: &str, noise: &[String]) -> String {
        let mut env = vec![json!({"name": "V0", "value": seed})];
        for n in 1..length {
            env.push(json!({"name": format!("V{n}"), "value": format!("$(V{})$(V{})", n - 1, n - 1)}));
        }
        for (index, value) in noise.iter().enumerate() {
            env.push(json!({"name": format!("N{index}"), "value": value}));
        }
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "app:1", "env": env}]}}}
        });
        serde_json::to_string(&deployment).unwrap()
    }

    fn document() -> impl Strategy<Value = String> {
        prop_oneof![
            (1..12usize, 1..12usize).prop_map(|(levels, width)| alias_bomb(levels, width)),
            (1..200usize).prop_map(nested),
            (
                1..32usize,
                "[a-z€$()]{0,32}",
                prop::collection::vec("(\\$\\(V[0-9]{1,2}\\)|\\$\\$|[a-z€]){0,24}", 0..4)
            )
                .prop_map(|(length, seed, noise)| env_bomb(length, &seed, &noise)),
            "[ -~\n]{0,400}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "- ",
                    "a: ",
                    "&x ",
                    "*x ",
                    "[",
                    "]",
                    "{",
                    "}",
                    "\n",
                    "  ",
                    "---\n",
                    "kind: List\n",
                    "items:\n"
                ]),
                0..80
            )
            .prop_map(|pieces| pieces.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn render_and_preflight_stay_bounded_whatever_the_commit(
            documents in prop::collection::vec(document(), 1..4),
            rules in prop::collection::vec(rule(), 0..3),
        ) {
            let text = documents.join("\n---\n");
            let files = [SourceFile { path: "deploy/app.yaml".into(), content: text.into_bytes() }];
            let Ok(manifests) = render(&files) else { return Ok(()) };
            let rendered: usize = manifests.iter().map(|m| m.object.to_string().len()).sum();
            prop_assert!(rendered <= MAX_RENDERED, "{} bytes rendered", rendered);
            let mut env = rules;
            env.push(EnvRule { name: "V31".into(), policy: Some(EnvPolicy { min_length: Some(1), ..Default::default() }), ..Default::default() });
            let runbook = RunbookSpec { env, ..Default::default() };
            let verdict = check(&manifests, &runbook, "app", &InMemoryLookup::default());
            let size = match &verdict {
                Ok(checked) => checked.notes.iter().map(String::len).sum::<usize>(),
                Err(misses) => misses.iter().map(|m| m.message.len()).sum(),
            };
            prop_assert!(size <= MAX_VERDICT, "{} bytes of verdict", size);
        }
    }
}
