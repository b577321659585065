//! Preflight against the seed runbooks' cases (LiteVault: `AUTH_MODE` must be
//! `clerk`, `OPENAI_API_KEY` required only with `LLM_PROVIDER=litellm`, `CORS_ORIGINS`
//! not `*`; Plannior: `JWT_SECRET` changed from its documented default, at least 32
//! characters, from a Secret), every kind of Secret reference, and the transforms.

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::api::RunbookSpec;
use crate::render::Manifest;

/// Objects of a revision from a multi-document YAML string.
pub(super) fn revision(yaml: &str) -> Vec<Manifest> {
    yaml.split("\n---\n")
        .filter(|document| !document.trim().is_empty())
        .enumerate()
        .map(|(index, document)| Manifest {
            object: serde_saphyr::from_str::<Value>(document).expect("manifest YAML"),
            file: "app.yaml".into(),
            line: index + 1,
        })
        .collect()
}

pub(super) fn runbook(yaml: &str) -> RunbookSpec {
    serde_saphyr::from_str(yaml).expect("RunbookSpec YAML")
}

/// A Deployment `app/api` whose one container `api` has `env` (a YAML flow list).
fn api_with_env(env: &str) -> Vec<Manifest> {
    revision(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: api, namespace: app}}\nspec:\n  template:\n    \
         spec:\n      containers:\n        - name: api\n          image: api:1\n          env: {env}\n"
    ))
}

fn messages(result: Result<Checked, Vec<PreflightMiss>>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(misses) => misses.iter().map(ToString::to_string).collect(),
    }
}

fn empty() -> InMemoryLookup {
    InMemoryLookup::default()
}

const JWT_DEFAULT: &str = "your-long-random-secret-key-min-32-chars";

/// The env contract of the seed runbooks, as a Runbook would write it.
const SEED_CONTRACT: &str = r#"
env:
  - {name: AUTH_MODE, default: mixed, policy: {equals: clerk}}
  - {name: LLM_PROVIDER, default: stub, policy: {oneOf: [stub, litellm]}}
  - {name: OPENAI_API_KEY, secret: true, requiredWhen: {env: LLM_PROVIDER, equals: litellm}}
  - {name: JWT_SECRET, required: true, secret: true, policy: {minLength: 32, notEquals: [your-long-random-secret-key-min-32-chars]}}
  - {name: CORS_ORIGINS, required: true, policy: {notEquals: ['*']}}
"#;

/// A container meeting [`SEED_CONTRACT`], with `extra` entries appended to its env
/// (later entries win, as in Kubernetes).
fn seed_api(extra: &str) -> Vec<Manifest> {
    api_with_env(&format!(
        "[{{name: AUTH_MODE, value: clerk}}, {{name: CORS_ORIGINS, value: 'https://app.example.com'}}, \
         {{name: JWT_SECRET, valueFrom: {{secretKeyRef: {{name: jwt, key: secret}}}}}}{extra}]"
    ))
}

fn good_jwt() -> InMemoryLookup {
    empty().with_secret("app", "jwt", [("secret", "k8Vq2pX9rT4mZ7wN1bY6cH3jL5sD0fGa")])
}

#[test]
fn a_revision_meeting_the_seed_contract_passes() {
    let checked = check(&seed_api(""), &runbook(SEED_CONTRACT), "app", &good_jwt()).expect("passes");
    assert_eq!(checked.notes, Vec::<String>::new());
    assert_eq!(checked.secrets, ["app/jwt".to_string()].into());
}

#[test]
fn auth_mode_must_be_clerk() {
    let contract = runbook(SEED_CONTRACT);
    assert_eq!(
        messages(check(
            &seed_api(", {name: AUTH_MODE, value: dev}"),
            &contract,
            "app",
            &good_jwt()
        )),
        ["Deployment app/api container api: AUTH_MODE is \"dev\", must be \"clerk\""]
    );
    // Not set at all: the app's documented default applies, and it is not clerk.
    let unset = api_with_env(
        "[{name: CORS_ORIGINS, value: 'https://a.example'}, \
         {name: JWT_SECRET, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}]",
    );
    assert_eq!(
        messages(check(&unset, &contract, "app", &good_jwt())),
        [
            "Deployment app/api container api: AUTH_MODE (not set; the Runbook's default applies) is \"mixed\", \
          must be \"clerk\""
        ]
    );
}

#[test]
fn openai_api_key_is_required_only_with_litellm() {
    let contract = runbook(SEED_CONTRACT);
    let litellm = ", {name: LLM_PROVIDER, value: litellm}";
    assert_eq!(
        messages(check(&seed_api(litellm), &contract, "app", &good_jwt())),
        [
            "Deployment app/api container api: OPENAI_API_KEY is required when LLM_PROVIDER is \"litellm\", and not set"
        ]
    );
    let with_key = format!(
        "{litellm}, {{name: OPENAI_API_KEY, valueFrom: {{secretKeyRef: {{name: openai, key: key}}}}}}"
    );
    let lookup = good_jwt().with_secret("app", "openai", [("key", "sk-test")]);
    assert!(check(&seed_api(&with_key), &contract, "app", &lookup).is_ok());
    // Stub, set or by default: no key needed.
    assert!(
        check(
            &seed_api(", {name: LLM_PROVIDER, value: stub}"),
            &contract,
            "app",
            &good_jwt()
        )
        .is_ok()
    );
    assert!(check(&seed_api(""), &contract, "app", &good_jwt()).is_ok());
    // The provider from a ConfigMap counts the same.
    let from_config_map = ", {name: LLM_PROVIDER, valueFrom: {configMapKeyRef: {name: llm, key: provider}}}";
    let lookup = good_jwt().with_config_map("app", "llm", [("provider", "litellm")]);
    assert_eq!(
        messages(check(&seed_api(from_config_map), &contract, "app", &lookup)),
        [
            "Deployment app/api container api: OPENAI_API_KEY is required when LLM_PROVIDER is \"litellm\", and not set"
        ]
    );
    // From a Secret: the message does not say which value it has.
    let from_secret = ", {name: LLM_PROVIDER, valueFrom: {secretKeyRef: {name: llm, key: provider}}}";
    let lookup = good_jwt().with_secret("app", "llm", [("provider", "litellm")]);
    assert_eq!(
        messages(check(&seed_api(from_secret), &contract, "app", &lookup)),
        [
            "Deployment app/api container api: OPENAI_API_KEY is required (spec.env[2].requiredWhen reads LLM_PROVIDER) \
          and not set"
        ]
    );
    // The key must come from a Secret too.
    assert_eq!(
        messages(check(
            &seed_api(&format!("{litellm}, {{name: OPENAI_API_KEY, value: sk-x}}")),
            &contract,
            "app",
            &good_jwt()
        )),
        ["Deployment app/api container api: OPENAI_API_KEY is a literal; it must come from a Secret"]
    );
}

#[test]
fn jwt_secret_is_long_changed_from_its_default_and_from_a_secret() {
    let contract = runbook(SEED_CONTRACT);
    let short = empty().with_secret("app", "jwt", [("secret", "tooShort-Zq81")]);
    let miss = check(&seed_api(""), &contract, "app", &short).expect_err("short");
    assert_eq!(
        miss.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Deployment app/api container api: JWT_SECRET (Secret app/jwt, key secret) is shorter than 32 characters"
        ]
    );
    assert_eq!(
        (
            miss[0].workload.as_deref(),
            miss[0].container.as_deref(),
            miss[0].variable.as_deref(),
            miss[0].secret.as_deref(),
            miss[0].key.as_deref()
        ),
        (
            Some("Deployment app/api"),
            Some("api"),
            Some("JWT_SECRET"),
            Some("app/jwt"),
            Some("secret")
        )
    );
    let documented = empty().with_secret("app", "jwt", [("secret", JWT_DEFAULT)]);
    assert_eq!(
        messages(check(&seed_api(""), &contract, "app", &documented)),
        [
            "Deployment app/api container api: JWT_SECRET (Secret app/jwt, key secret) still has a value the Runbook \
          forbids (notEquals)"
        ]
    );
    // A literal is refused, and its value is not quoted (the rule says secret).
    let literal = format!(", {{name: JWT_SECRET, value: {JWT_DEFAULT}}}");
    let found = messages(check(&seed_api(&literal), &contract, "app", &good_jwt()));
    assert_eq!(
        found,
        [
            "Deployment app/api container api: JWT_SECRET is a literal; it must come from a Secret",
            "Deployment app/api container api: JWT_SECRET still has a value the Runbook forbids (notEquals)",
        ]
    );
    let from_config_map = ", {name: JWT_SECRET, valueFrom: {configMapKeyRef: {name: cfg, key: jwt}}}";
    let lookup = good_jwt().with_config_map("app", "cfg", [("jwt", "k8Vq2pX9rT4mZ7wN1bY6cH3jL5sD0fGa")]);
    assert_eq!(
        messages(check(&seed_api(from_config_map), &contract, "app", &lookup)),
        [
            "Deployment app/api container api: JWT_SECRET comes from ConfigMap app/cfg (key jwt); it must come from a \
          Secret"
        ]
    );
    // Through envFrom of a Secret, with a prefix.
    let env_from = revision(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: app}\nspec:\n  template:\n    spec:\n      \
         containers:\n        - name: api\n          envFrom: [{prefix: JWT_, secretRef: {name: jwt}}]\n          \
         env: [{name: AUTH_MODE, value: clerk}, {name: CORS_ORIGINS, value: 'https://a'}]\n",
    );
    let lookup = empty().with_secret("app", "jwt", [("SECRET", "short")]);
    assert_eq!(
        messages(check(&env_from, &contract, "app", &lookup)),
        [
            "Deployment app/api container api: JWT_SECRET (Secret app/jwt, key SECRET) is shorter than 32 characters"
        ]
    );
}

#[test]
fn cors_origins_are_not_a_wildcard() {
    let contract = runbook(SEED_CONTRACT);
    assert_eq!(
        messages(check(
            &seed_api(", {name: CORS_ORIGINS, value: '*'}"),
            &contract,
            "app",
            &good_jwt()
        )),
        ["Deployment app/api container api: CORS_ORIGINS is \"*\", a value the Runbook forbids (notEquals)"]
    );
    let from_config_map = ", {name: CORS_ORIGINS, valueFrom: {configMapKeyRef: {name: cfg, key: cors}}}";
    let lookup = good_jwt().with_config_map("app", "cfg", [("cors", "*")]);
    assert_eq!(
        messages(check(&seed_api(from_config_map), &contract, "app", &lookup)),
        [
            "Deployment app/api container api: CORS_ORIGINS (ConfigMap app/cfg, key cors) is \"*\", a value the \
          Runbook forbids (notEquals)"
        ]
    );
    let missing = api_with_env(
        "[{name: AUTH_MODE, value: clerk}, {name: JWT_SECRET, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}]",
    );
    assert_eq!(
        messages(check(&missing, &contract, "app", &good_jwt())),
        ["Deployment app/api container api: CORS_ORIGINS is required and not set"]
    );
}

#[test]
fn patterns_match_the_whole_value_and_bad_patterns_are_named() {
    let contract = runbook("env: [{name: ORIGIN, policy: {pattern: 'https://[a-z.]+'}}]");
    assert!(
        check(
            &api_with_env("[{name: ORIGIN, value: 'https://app.example'}]"),
            &contract,
            "app",
            &empty()
        )
        .is_ok()
    );
    assert_eq!(
        messages(check(
            &api_with_env("[{name: ORIGIN, value: 'https://app.example/x'}]"),
            &contract,
            "app",
            &empty()
        )),
        [
            "Deployment app/api container api: ORIGIN is \"https://app.example/x\", which does not match the pattern \
          https://[a-z.]+"
        ]
    );
    let broken = runbook("env: [{name: A}, {name: ORIGIN, policy: {pattern: 'https://[a-z'}}]");
    let misses = check(
        &api_with_env("[{name: ORIGIN, value: x}]"),
        &broken,
        "app",
        &empty(),
    )
    .expect_err("invalid");
    assert_eq!(misses.len(), 1, "{misses:?}");
    assert_eq!(misses[0].field.as_deref(), Some("spec.env[1].policy.pattern"));
    assert!(
        misses[0]
            .message
            .starts_with("spec.env[1].policy.pattern: \"https://[a-z\" is not a regular expression ("),
        "{}",
        misses[0]
    );
}

#[test]
fn every_policy_rule_is_reported() {
    let contract = runbook(
        "env: [{name: MODE, policy: {equals: b, oneOf: [b, c], pattern: '[bc]', minLength: 2, notEquals: [a]}}]",
    );
    assert_eq!(
        messages(check(
            &api_with_env("[{name: MODE, value: a}]"),
            &contract,
            "app",
            &empty()
        )),
        [
            "Deployment app/api container api: MODE is \"a\", a value the Runbook forbids (notEquals)",
            "Deployment app/api container api: MODE is \"a\", must be \"b\"",
            "Deployment app/api container api: MODE is \"a\", must be one of \"b\", \"c\"",
            "Deployment app/api container api: MODE is \"a\", shorter than 2 characters",
            "Deployment app/api container api: MODE is \"a\", which does not match the pattern [bc]",
        ]
    );
    // The same rules on a Secret: nothing quoted, neither the value nor what it equals.
    let from_secret = api_with_env("[{name: MODE, valueFrom: {secretKeyRef: {name: s, key: mode}}}]");
    let lookup = empty().with_secret("app", "s", [("mode", "a")]);
    assert_eq!(
        messages(check(&from_secret, &contract, "app", &lookup)),
        [
            "Deployment app/api container api: MODE (Secret app/s, key mode) does not match the pattern [bc]",
            "Deployment app/api container api: MODE (Secret app/s, key mode) is not one of the values the Runbook \
             allows (oneOf)",
            "Deployment app/api container api: MODE (Secret app/s, key mode) is not the value the Runbook requires \
             (equals)",
            "Deployment app/api container api: MODE (Secret app/s, key mode) is shorter than 2 characters",
            "Deployment app/api container api: MODE (Secret app/s, key mode) still has a value the Runbook forbids \
             (notEquals)",
        ]
    );
}

#[test]
fn the_later_definition_wins_as_in_kubernetes() {
    let contract = runbook("env: [{name: MODE, policy: {equals: good}}]");
    let lookup = empty().with_config_map("app", "cfg", [("MODE", "bad")]);
    let objects = |env: &str| {
        revision(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: api, namespace: app}}\nspec:\n  template:\n    \
             spec:\n      containers:\n        - name: api\n          envFrom: [{{configMapRef: {{name: cfg}}}}]\n          \
             env: {env}\n"
        ))
    };
    // env over envFrom.
    assert!(check(&objects("[{name: MODE, value: good}]"), &contract, "app", &lookup).is_ok());
    // envFrom alone.
    assert_eq!(
        messages(check(&objects("[]"), &contract, "app", &lookup)),
        ["Deployment app/api container api: MODE (ConfigMap app/cfg, key MODE) is \"bad\", must be \"good\""]
    );
    // The last of two env entries.
    assert_eq!(
        messages(check(
            &objects("[{name: MODE, value: good}, {name: MODE, value: worse}]"),
            &contract,
            "app",
            &lookup
        )),
        ["Deployment app/api container api: MODE is \"worse\", must be \"good\""]
    );
    // An optional reference to a missing key leaves the envFrom value in place.
    assert_eq!(
        messages(check(
            &objects("[{name: MODE, valueFrom: {configMapKeyRef: {name: cfg, key: nope, optional: true}}}]"),
            &contract,
            "app",
            &lookup
        )),
        ["Deployment app/api container api: MODE (ConfigMap app/cfg, key MODE) is \"bad\", must be \"good\""]
    );
    // $(VAR) expansion.
    let expanded = runbook("env: [{name: URL, policy: {equals: 'http://db:5432'}}]");
    assert!(
        check(
            &api_with_env("[{name: HOST, value: db}, {name: URL, value: 'http://$(HOST):5432'}]"),
            &expanded,
            "app",
            &empty()
        )
        .is_ok()
    );
}

#[test]
fn a_value_known_only_in_the_pod_passes_with_a_note() {
    let contract = runbook(
        "env: [{name: POD, required: true, policy: {equals: x}}, {name: KEY, requiredWhen: {env: POD, equals: x}}, \
         {name: TOKEN, secret: true}]",
    );
    let objects = api_with_env("[{name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]");
    let checked = check(&objects, &contract, "app", &empty()).expect("passes");
    assert_eq!(
        checked.notes,
        [
            "Deployment app/api container api: KEY is required when POD is \"x\", and POD comes from fieldRef \
             metadata.name; its value is known only in the pod, so this was not checked",
            "Deployment app/api container api: POD comes from fieldRef metadata.name; its value is known only in the \
             pod, so its policy was not checked",
        ]
    );
    // But a fieldRef is no Secret.
    let objects = api_with_env("[{name: TOKEN, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}]");
    assert_eq!(
        messages(check(
            &objects,
            &runbook("env: [{name: TOKEN, secret: true}]"),
            "app",
            &empty()
        )),
        [
            "Deployment app/api container api: TOKEN comes from resourceFieldRef limits.cpu; it must come from a Secret"
        ]
    );
}

#[test]
fn a_password_built_into_a_url_counts_as_from_its_secret() {
    let contract = runbook("env: [{name: DATABASE_URL, secret: true, policy: {pattern: 'postgres://.*'}}]");
    let objects = api_with_env(
        "[{name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}, \
         {name: DATABASE_URL, value: 'mysql://u:$(PASSWORD)@db'}]",
    );
    let lookup = empty().with_secret("app", "db", [("password", "Pw-7e1d0c")]);
    assert_eq!(
        messages(check(&objects, &contract, "app", &lookup)),
        [
            "Deployment app/api container api: DATABASE_URL (built from $(PASSWORD)) does not match the pattern \
          postgres://.*"
        ]
    );
}

#[test]
fn every_workload_kind_is_found_at_its_pod_template() {
    let container = "{name: c, image: x, env: [{name: MODE, value: bad}]}";
    let objects = revision(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: ds}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: rs}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: v1\nkind: ReplicationController\nmetadata: {{name: rc}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n---\n\
         apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {{name: cj}}\nspec: {{jobTemplate: {{spec: {{template: {{spec: {{containers: [{container}]}}}}}}}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: other}}\nspec: {{containers: [{container}]}}\n---\n\
         apiVersion: example.com/v1\nkind: Deployment\nmetadata: {{name: custom}}\nspec: {{template: {{spec: {{containers: [{container}]}}}}}}\n"
    ));
    let contract = runbook("env: [{name: MODE, policy: {equals: good}}]");
    assert_eq!(
        messages(check(&objects, &contract, "app", &empty())),
        [
            "CronJob app/cj container c: MODE is \"bad\", must be \"good\"",
            "DaemonSet app/ds container c: MODE is \"bad\", must be \"good\"",
            "Deployment app/d container c: MODE is \"bad\", must be \"good\"",
            "Job app/j container c: MODE is \"bad\", must be \"good\"",
            "Pod other/p container c: MODE is \"bad\", must be \"good\"",
            "ReplicaSet app/rs container c: MODE is \"bad\", must be \"good\"",
            "ReplicationController app/rc container c: MODE is \"bad\", must be \"good\"",
            "StatefulSet app/s container c: MODE is \"bad\", must be \"good\"",
        ]
    );
}

/// A Deployment `app/api` with an init container `migrate`, the app container `api`
/// and a sidecar `proxy`, none setting anything; and a Deployment `app/worker`.
fn api_with_sidecar() -> Vec<Manifest> {
    revision(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: app}\nspec:\n  template:\n    spec:\n      \
         initContainers: [{name: migrate, env: [{name: MODE, value: bad}]}]\n      \
         containers: [{name: api}, {name: proxy}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: worker, namespace: app}\nspec:\n  template:\n    spec:\n      \
         containers: [{name: worker}]\n",
    )
}

#[test]
fn spec_workloads_selects_workloads_and_containers() {
    let objects = api_with_sidecar();
    let contract = |workloads: &str| {
        runbook(&format!(
            "workloads: {workloads}\nenv: [{{name: KEY, required: true}}, {{name: MODE, policy: {{equals: good}}}}]"
        ))
    };
    // Every workload: app containers must set it; the init container is judged on
    // what it sets.
    assert_eq!(
        messages(check(&objects, &contract("[]"), "app", &empty())),
        [
            "Deployment app/api container api: KEY is required and not set",
            "Deployment app/api container proxy: KEY is required and not set",
            "Deployment app/api init container migrate: MODE is \"bad\", must be \"good\"",
            "Deployment app/worker container worker: KEY is required and not set",
        ]
    );
    assert_eq!(
        messages(check(&objects, &contract("[worker]"), "app", &empty())),
        ["Deployment app/worker container worker: KEY is required and not set"]
    );
    // One container of a workload; a named init container gets every rule.
    assert_eq!(
        messages(check(
            &objects,
            &contract("[api/api, api/migrate]"),
            "app",
            &empty()
        )),
        [
            "Deployment app/api container api: KEY is required and not set",
            "Deployment app/api init container migrate: KEY is required and not set",
            "Deployment app/api init container migrate: MODE is \"bad\", must be \"good\"",
        ]
    );
    assert_eq!(
        messages(check(&objects, &contract("[web, api/sidecar]"), "app", &empty())),
        [
            "spec.workloads names api/sidecar, but Deployment app/api has no container sidecar",
            "spec.workloads names web, which this revision does not render",
        ]
    );
}

#[test]
fn every_secret_reference_must_exist() {
    let objects = revision(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: app}\nspec:\n  template:\n    spec:\n      \
         imagePullSecrets: [{name: regcred}]\n      \
         volumes:\n        \
         - {name: certs, secret: {secretName: tls}}\n        \
         - {name: keys, secret: {secretName: present, items: [{key: a, path: a}, {key: gone, path: g}]}}\n        \
         - {name: maybe, secret: {secretName: absent-ok, optional: true}}\n        \
         - name: creds\n          projected: {sources: [{secret: {name: projected}}, {secret: {name: present, items: [{key: lost, path: l}]}}, {configMap: {name: whatever}}]}\n      \
         initContainers:\n        - name: migrate\n          env: [{name: DATABASE_URL, valueFrom: {secretKeyRef: {name: db, key: url}}}]\n      \
         containers:\n        - name: api\n          \
         envFrom: [{secretRef: {name: bulk}}, {secretRef: {name: bulk-optional, optional: true}}, {configMapRef: {name: settings}}]\n          \
         env:\n            \
         - {name: JWT_SECRET, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}\n            \
         - {name: A, valueFrom: {secretKeyRef: {name: present, key: a}}}\n            \
         - {name: B, valueFrom: {secretKeyRef: {name: present, key: missing}}}\n            \
         - {name: C, valueFrom: {secretKeyRef: {name: present, key: missing-ok, optional: true}}}\n            \
         - {name: D, valueFrom: {configMapKeyRef: {name: cfg, key: d}}}\n",
    );
    let lookup = empty()
        .with_secret("app", "present", [("a", "1")])
        .with_config_map("app", "cfg", [("e", "1")]);
    let misses = check(&objects, &RunbookSpec::default(), "app", &lookup).expect_err("misses");
    let found: Vec<String> = misses.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "Deployment app/api: imagePullSecrets names Secret app/regcred, which does not exist",
            "Deployment app/api: projected volume creds reads Secret app/projected, which does not exist",
            "Deployment app/api: projected volume creds reads key lost of Secret app/present, which does not have that key",
            "Deployment app/api: volume certs reads Secret app/tls, which does not exist",
            "Deployment app/api: volume keys reads key gone of Secret app/present, which does not have that key",
            "Deployment app/api container api: env B reads key missing of Secret app/present, which does not have that key",
            "Deployment app/api container api: env D reads key d of ConfigMap app/cfg, which does not have that key",
            "Deployment app/api container api: env JWT_SECRET reads key secret of Secret app/jwt, which does not exist",
            "Deployment app/api container api: envFrom reads ConfigMap app/settings, which does not exist",
            "Deployment app/api container api: envFrom reads Secret app/bulk, which does not exist",
            "Deployment app/api init container migrate: env DATABASE_URL reads key url of Secret app/db, which does not exist",
        ]
    );
    let jwt = misses
        .iter()
        .find(|m| m.variable.as_deref() == Some("JWT_SECRET"))
        .expect("JWT miss");
    assert_eq!(
        (
            jwt.container.as_deref(),
            jwt.secret.as_deref(),
            jwt.key.as_deref()
        ),
        (Some("api"), Some("app/jwt"), Some("secret"))
    );
    let config_map = misses
        .iter()
        .find(|m| m.variable.as_deref() == Some("D"))
        .expect("D miss");
    assert_eq!(
        (config_map.config_map.as_deref(), config_map.secret.as_deref()),
        (Some("app/cfg"), None)
    );

    // Created, with their keys: the revision passes.
    let all = lookup
        .with_secret(
            "app",
            "present",
            [("a", "1"), ("gone", "2"), ("lost", "3"), ("missing", "4")],
        )
        .with_secret("app", "regcred", [(".dockerconfigjson", "{}")])
        .with_secret("app", "tls", [("tls.crt", "c")])
        .with_secret("app", "projected", [("p", "p")])
        .with_secret("app", "db", [("url", "postgres://")])
        .with_secret("app", "bulk", [("X", "x")])
        .with_secret("app", "jwt", [("secret", "s")])
        .with_config_map("app", "settings", [("Y", "y")])
        .with_config_map("app", "cfg", [("d", "1")]);
    let checked = check(&objects, &RunbookSpec::default(), "app", &all).expect("passes");
    assert_eq!(
        checked.secrets.into_iter().collect::<Vec<_>>(),
        [
            "app/absent-ok",
            "app/bulk",
            "app/bulk-optional",
            "app/db",
            "app/jwt",
            "app/present",
            "app/projected",
            "app/regcred",
            "app/tls"
        ]
    );
}

#[test]
fn a_secret_the_revision_renders_is_checked_against_its_manifest() {
    let objects = revision(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: jwt}\nstringData: {secret: 'k8Vq2pX9rT4mZ7wN1bY6cH3jL5sD0fGa'}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: elsewhere}\ndata: {short: c2hvcnQ=}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    spec:\n      containers:\n        \
         - name: api\n          env:\n            \
         - {name: JWT_SECRET, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}\n            \
         - {name: OTHER, valueFrom: {secretKeyRef: {name: jwt, key: other}}}\n",
    );
    let contract = runbook("env: [{name: JWT_SECRET, secret: true, policy: {minLength: 32}}]");
    // Not in the cluster: the rendered one counts, and the cluster's copy does not.
    let stale = empty().with_secret("app", "jwt", [("secret", "old"), ("other", "x")]);
    assert_eq!(
        messages(check(&objects, &contract, "app", &stale)),
        [
            "Deployment app/api container api: env OTHER reads key other of Secret app/jwt, which this revision renders \
          without that key"
        ]
    );
    // A Secret rendered into another namespace is not this one.
    let in_elsewhere = revision(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: elsewhere}\ndata: {short: c2hvcnQ=}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: elsewhere}\nspec:\n  template:\n    spec:\n      \
         containers: [{name: api, env: [{name: JWT_SECRET, valueFrom: {secretKeyRef: {name: other, key: short}}}]}]\n",
    );
    assert_eq!(
        messages(check(&in_elsewhere, &contract, "app", &empty())),
        [
            "Deployment elsewhere/api container api: JWT_SECRET (Secret elsewhere/other, key short) is shorter than 32 \
          characters"
        ]
    );
    let checked = check(&in_elsewhere, &RunbookSpec::default(), "app", &empty()).expect("passes");
    assert!(checked.secrets.is_empty(), "{checked:?}");
}

#[test]
fn no_secret_value_appears_in_any_message_or_note() {
    // In the cluster's Secrets only.
    const SECRET_VALUES: [&str; 3] = ["Zebra-7f3a", "Quokka-91bd", "litellm"];
    let contract = runbook(
        "env:\n  - {name: JWT_SECRET, secret: true, policy: {equals: x, oneOf: [x], pattern: 'x', minLength: 64, notEquals: [Zebra-7f3a]}}\n  \
         - {name: PROVIDER, policy: {equals: stub}}\n  \
         - {name: API_KEY, requiredWhen: {env: PROVIDER, equals: litellm}}\n  \
         - {name: URL, policy: {equals: x, minLength: 99}}\n  \
         - {name: LITERAL, secret: true, policy: {oneOf: [x], notEquals: [Narwhal-2c44]}}\n",
    );
    let objects = api_with_env(
        "[{name: JWT_SECRET, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}, \
         {name: PROVIDER, valueFrom: {secretKeyRef: {name: llm, key: provider}}}, \
         {name: URL, value: 'db://$(JWT_SECRET)'}, \
         {name: LITERAL, value: Narwhal-2c44}, \
         {name: GONE, valueFrom: {secretKeyRef: {name: llm, key: gone}}}, \
         {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]",
    );
    let lookup = empty()
        .with_secret("app", "jwt", [("secret", "Zebra-7f3a")])
        .with_secret("app", "llm", [("provider", "litellm"), ("other", "Quokka-91bd")]);
    let misses = check(&objects, &contract, "app", &lookup).expect_err("misses");
    assert!(misses.len() >= 10, "{misses:#?}");
    let mut written = format!("{misses:?}\n{}\n{lookup:?}", describe_misses(&misses));
    for miss in &misses {
        written.push_str(&miss.to_string());
    }
    let transformed = apply_transforms(
        &objects,
        &contract,
        "app",
        &lookup,
        &secret_digests(&objects, "app", &lookup),
    );
    written.push_str(&serde_json::to_string(&transformed).expect("JSON"));
    let checked = check(
        &objects,
        &runbook("env: [{name: POD, policy: {equals: x}}]"),
        "app",
        &lookup,
    );
    written.push_str(&format!("{checked:?}"));
    for value in SECRET_VALUES {
        // "litellm" is also the Runbook's own text; the message must not say it,
        // since it would tell the Secret's value.
        assert!(!written.contains(value), "{value} written in:\n{written}");
    }
    // The literal's value is in the manifest, so only the messages count for it.
    let messages_only: String = misses.iter().map(ToString::to_string).collect();
    assert!(!messages_only.contains("Narwhal-2c44"), "{messages_only}");
}

#[test]
fn defaults_are_injected_where_missing() {
    let contract = runbook(
        "env:\n  - {name: LLM_PROVIDER, default: stub, inject: true}\n  - {name: LOG_LEVEL, default: info, inject: true}\n  \
         - {name: QUIET, default: '1'}\n  - {name: TOKEN, default: t, inject: true, secret: true}\n",
    );
    let objects = revision(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: app}\nspec:\n  template:\n    spec:\n      \
         initContainers: [{name: migrate}]\n      \
         containers:\n        - {name: api, env: [{name: LOG_LEVEL, value: debug}]}\n        \
         - {name: worker, envFrom: [{configMapRef: {name: cfg}}]}\n        \
         - {name: unknown, envFrom: [{configMapRef: {name: absent, optional: true}}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n",
    );
    let lookup = empty().with_config_map("app", "cfg", [("LLM_PROVIDER", "litellm")]);
    let transformed = apply_transforms(&objects, &contract, "app", &lookup, &BTreeMap::new());
    let containers = &transformed[0].object["spec"]["template"]["spec"];
    assert_eq!(
        containers["containers"][0]["env"],
        serde_json::json!([{"name": "LOG_LEVEL", "value": "debug"}, {"name": "LLM_PROVIDER", "value": "stub"}])
    );
    assert_eq!(
        containers["containers"][1]["env"],
        serde_json::json!([{"name": "LOG_LEVEL", "value": "info"}])
    );
    // An optional envFrom source that does not exist yet may hold it later: untouched.
    assert_eq!(containers["containers"][2].get("env"), None);
    assert_eq!(containers["initContainers"][0].get("env"), None);
    assert_eq!(transformed[1], objects[1]);
    assert_eq!(
        apply_transforms(&transformed, &contract, "app", &lookup, &BTreeMap::new()),
        transformed
    );
    // Only in the selected workloads.
    let elsewhere = RunbookSpec {
        workloads: vec!["web".into()],
        ..contract.clone()
    };
    assert_eq!(
        apply_transforms(&objects, &elsewhere, "app", &lookup, &BTreeMap::new()),
        objects
    );
}

/// A Deployment reading Secret `jwt` (env), `tls` (volume), `bundle` (projected),
/// `rendered` (rendered by the revision) and `regcred` (image pulls); a Job reading
/// `jwt`; a Deployment reading only `regcred`.
fn secret_readers() -> Vec<Manifest> {
    revision(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: rendered}\nstringData: {a: b}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    metadata: {labels: {app: api}}\n    spec:\n      \
         imagePullSecrets: [{name: regcred}]\n      \
         volumes: [{name: tls, secret: {secretName: tls}}, {name: b, projected: {sources: [{secret: {name: bundle}}]}}]\n      \
         containers:\n        - {name: api, env: [{name: JWT, valueFrom: {secretKeyRef: {name: jwt, key: secret}}}], envFrom: [{secretRef: {name: rendered}}]}\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec: {template: {spec: {containers: [{name: once, envFrom: [{secretRef: {name: jwt}}]}]}}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: pulls}\nspec: {template: {spec: {imagePullSecrets: [{name: regcred}], containers: [{name: p}]}}}\n",
    )
}

fn secret_cluster(jwt: &str) -> InMemoryLookup {
    empty()
        .with_secret("app", "jwt", [("secret", jwt)])
        .with_secret("app", "tls", [("tls.crt", "cert"), ("tls.key", "key")])
        .with_secret("app", "bundle", [("ca", "ca")])
        .with_secret("app", "regcred", [(".dockerconfigjson", "{}")])
        .with_secret("app", "rendered", [("a", "old")])
}

#[test]
fn the_secrets_a_workload_reads_are_digested_into_its_pod_template() {
    let objects = secret_readers();
    let cluster = secret_cluster("first-value");
    let digests = secret_digests(&objects, "app", &cluster);
    assert_eq!(
        digests.keys().collect::<Vec<_>>(),
        ["app/bundle", "app/jwt", "app/tls"]
    );
    assert!(
        digests
            .values()
            .all(|d| d.len() == 16 && d.chars().all(|c| c.is_ascii_hexdigit()))
    );
    let transformed = apply_transforms(&objects, &RunbookSpec::default(), "app", &cluster, &digests);
    let annotation = |objects: &[Manifest], index: usize| {
        objects[index].object["spec"]["template"]["metadata"]["annotations"][SECRETS_DIGEST_ANNOTATION]
            .as_str()
            .map(str::to_string)
    };
    let first = annotation(&transformed, 1).expect("annotated");
    assert_eq!(
        transformed[1].object["spec"]["template"]["metadata"]["labels"]["app"], "api",
        "the rest of the template stays"
    );
    // A Job's template cannot change; a Deployment reading only image pull Secrets has
    // nothing to roll for.
    assert_eq!(transformed[2], objects[2]);
    assert_eq!(transformed[3], objects[3]);

    // New data: a new digest and a new annotation; the same data: the same.
    let rotated = secret_cluster("second-value");
    let new_digests = secret_digests(&objects, "app", &rotated);
    assert_ne!(new_digests["app/jwt"], digests["app/jwt"]);
    assert_eq!(new_digests["app/tls"], digests["app/tls"]);
    let second = annotation(
        &apply_transforms(&objects, &RunbookSpec::default(), "app", &rotated, &new_digests),
        1,
    );
    assert_ne!(second.as_deref(), Some(first.as_str()));
    // A drift repair passes the recorded digests: the template stays as deployed.
    assert_eq!(
        annotation(
            &apply_transforms(&objects, &RunbookSpec::default(), "app", &rotated, &digests),
            1
        ),
        Some(first.clone())
    );
    // The rendered Secret's cluster data does not count.
    let rendered_changed = secret_cluster("first-value").with_secret("app", "rendered", [("a", "new")]);
    assert_eq!(secret_digests(&objects, "app", &rendered_changed), digests);

    // Whether a Secret change rolls is the controller's decision: the template is the
    // same either way, so turning the field off or on rolls nothing by itself.
    let no_rollout = runbook("secrets: {rolloutOnChange: false}");
    assert_eq!(
        annotation(
            &apply_transforms(&objects, &no_rollout, "app", &cluster, &digests),
            1
        ),
        Some(first.clone())
    );
}

/// Which objects preflight asks the cluster for depends on the manifests alone: a dry
/// pass with a recording lookup lists every read (every namespace, every kind), which
/// the controller authorises for the app's identity before the real pass reads.
#[test]
fn a_recording_pass_lists_every_read_whatever_the_data() {
    let objects = revision(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: victim}\nspec:\n  template:\n    \
         spec:\n      imagePullSecrets: [{name: pull}]\n      containers:\n        - name: web\n          image: web:1\n          \
         envFrom: [{configMapRef: {name: shared}}]\n          env:\n            \
         - {name: DB_URL, valueFrom: {configMapKeyRef: {name: cfg, key: DB_URL}}}\n            \
         - {name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: own}\nstringData: {a: b}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  template:\n    \
         spec:\n      containers:\n        - name: api\n          image: api:1\n          envFrom: [{secretRef: {name: own}}]\n",
    );
    let rules = runbook(
        "env:\n  - {name: DB_URL, policy: {equals: x}}\n  - {name: PASSWORD, policy: {pattern: '^s'}}\n",
    );
    let recording = RecordingLookup::default();
    let _ = check(&objects, &rules, "mine", &recording);
    let _ = secret_digests(&objects, "mine", &recording);
    let asked: Vec<(LookupKind, String, String)> = recording.asked().into_iter().collect();
    let expected = [
        (LookupKind::Secret, "victim", "db"),
        (LookupKind::Secret, "victim", "pull"),
        (LookupKind::ConfigMap, "victim", "cfg"),
        (LookupKind::ConfigMap, "victim", "shared"),
    ]
    .map(|(kind, namespace, name)| (kind, namespace.to_string(), name.to_string()));
    // The Secret the revision renders itself (`mine/own`) is not read from the cluster.
    assert_eq!(asked, expected);

    // Where the identity may read nothing, nothing is read: every reference is
    // missing, and no value of the cluster is in any message.
    let cluster = InMemoryLookup::default()
        .with_config_map("victim", "cfg", [("DB_URL", "canary-url")])
        .with_secret("victim", "db", [("password", "secret-canary")]);
    let guarded = GuardedLookup::new(&cluster, Default::default());
    let text = messages(check(&objects, &rules, "mine", &guarded)).join("\n");
    assert!(!text.contains("canary"), "{text}");
}
