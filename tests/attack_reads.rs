//! Attacks on what bosun reads on an app's behalf (issue 11 §1), played by a hostile
//! tenant against a control plane that enforces RBAC. The tenant `attacker` has a
//! ServiceAccount `bosun-deployer` that may edit its own namespace only; the
//! namespace `victim` holds a ConfigMap `cfg` and a Secret `db` whose values carry
//! canary strings. Each test asserts that the attack is refused, named (identity,
//! verb, resource, namespace), and that no canary appears in any AppDeployment's
//! status, any Event, or the controller's log. The controller runs without
//! `--single-tenant`, as a multi-tenant install would.

mod support;

use std::time::Duration;

use bosun::api::{AppDeployment, BlockReason, Phase};
use bosun_devenv::WorkRepo;
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::{Harness, status};

const ATTACKER: &str = "attacker";
const VICTIM: &str = "victim";
const BYSTANDER: &str = "bystander";
const ACCOUNT: &str = "bosun-deployer";
const APP: &str = "evil";

const CM_CANARY: &str = "cm-canary-5d1f0b7e";
const SECRET_CANARY: &str = "secret-canary-9a3c6e21";
const LOG_CANARY: &str = "log-canary-77b04c2d";

/// Multi-tenant: an app that names no account is refused, not applied as the controller.
const MULTI_TENANT: [(&str, &str); 1] = [("BOSUN_SINGLE_TENANT", "false")];

fn user() -> String {
    format!("system:serviceaccount:{ATTACKER}:{ACCOUNT}")
}

async fn apply<K>(harness: &Harness, namespace: Option<&str>, object: Value)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("object");
    let name = object.meta().name.clone().expect("name");
    let api: Api<K> = Api::namespaced(harness.client.clone(), namespace.expect("a namespace"));
    api.patch(
        &name,
        &PatchParams::apply("bosun-test").force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

/// A ServiceAccount `bosun-deployer` in `namespace` that may edit that namespace (the
/// built-in `edit` ClusterRole, bound there), and the workload-only Runbook `quick`.
async fn tenant(harness: &Harness, namespace: &str) {
    harness.namespace(namespace).await;
    apply::<ServiceAccount>(
        harness,
        Some(namespace),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}}),
    )
    .await;
    apply::<RoleBinding>(
        harness,
        Some(namespace),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bosun-deployer-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
        }),
    )
    .await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(namespace, "quick"))
        .await;
}

/// The attacker's and a bystander's namespaces, and the victim's ConfigMap and Secret.
async fn set_up(harness: &Harness) {
    tenant(harness, ATTACKER).await;
    tenant(harness, BYSTANDER).await;
    harness.namespace(VICTIM).await;
    apply::<ConfigMap>(
        harness,
        Some(VICTIM),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
               "data": {"DB_URL": format!("postgres://victim:{CM_CANARY}@db.victim:5432/prod")}}),
    )
    .await;
    apply::<Secret>(
        harness,
        Some(VICTIM),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
               "stringData": {"password": SECRET_CANARY}}),
    )
    .await;
}

/// A Runbook `probe` in the attacker's namespace with `spec`.
async fn attacker_runbook(harness: &Harness, spec: Value) {
    let runbook = json!({
        "apiVersion": "bosun.dev/v1alpha1",
        "kind": "Runbook",
        "metadata": {"name": "probe", "namespace": ATTACKER},
        "spec": spec,
    });
    harness
        .apply_runbook(&serde_json::to_string(&runbook).unwrap())
        .await;
}

/// The attacker's app on `repo`, with extra spec lines (`  serviceAccountName: …`).
async fn attacker_app(harness: &Harness, repo: &WorkRepo, runbook: &str, extra: &str) {
    let mut yaml = app_deployment_yaml(ATTACKER, APP, &harness.git.url(repo.name()), Some(runbook), "2s");
    yaml.push_str(extra);
    harness.apply_app(&yaml).await;
}

fn account_line() -> String {
    format!("  serviceAccountName: {ACCOUNT}\n")
}

/// A Deployment `web` (in `namespace` when given) whose container reads `env`.
fn deployment_reading(namespace: Option<&str>, env: Value) -> String {
    let mut metadata = json!({"name": "web"});
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    serde_json::to_string(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example/web:1", "env": [env]}]},
            },
        },
    }))
    .unwrap()
}

async fn wait_blocked(harness: &Harness, namespace: &str, name: &str) -> AppDeployment {
    harness
        .wait_for(namespace, name, "Blocked", Duration::from_secs(90), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await
}

fn ready_message(app: &AppDeployment) -> (String, String) {
    let ready = support::ready_condition(app);
    (ready.reason, ready.message)
}

/// Every place a canary could surface: every AppDeployment's status, every Event of
/// every namespace (both APIs), the controller's log.
async fn assert_no_canary(harness: &Harness, canaries: &[&str]) {
    assert!(
        harness.controller_rss_kib().is_some(),
        "the controller is not running: it died under its address-space limit"
    );
    let apps: Api<AppDeployment> = Api::all(harness.client.clone());
    let statuses = serde_json::to_string(
        &apps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|a| &a.status)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(harness.client.clone());
    let events = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let core_events: Api<k8s_openapi::api::core::v1::Event> = Api::all(harness.client.clone());
    let core_events =
        serde_json::to_string(&core_events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let log = harness.controller_log_text();
    for canary in canaries {
        for (place, text) in [
            ("an AppDeployment status", &statuses),
            ("an Event", &events),
            ("a core Event", &core_events),
            ("the controller log", &log),
        ] {
            assert!(!text.contains(canary), "{canary} appears in {place}");
        }
    }
}

/// A bystander app in its own namespace, as its own account, goes Healthy.
async fn bystander_deploys(harness: &Harness) {
    let repo = harness.repo("bystander");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    let mut yaml = app_deployment_yaml(
        BYSTANDER,
        "calm",
        &harness.git.url(repo.name()),
        Some("quick"),
        "2s",
    );
    yaml.push_str(&account_line());
    harness.apply_app(&yaml).await;
    harness
        .wait_for_phase(BYSTANDER, "calm", Phase::Healthy, &revision)
        .await;
}

#[tokio::test]
async fn a_config_map_of_another_namespace_is_not_read_nor_echoed() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    attacker_runbook(
        &harness,
        json!({"verifyWindow": "1s", "env": [{"name": "DB_URL", "policy": {"equals": "x"}}]}),
    )
    .await;
    let repo = harness.repo("evil");
    repo.write(
        "deploy/web.yaml",
        &deployment_reading(
            Some(VICTIM),
            json!({"name": "DB_URL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "DB_URL"}}}),
        ),
    )
    .unwrap();
    repo.commit("a Deployment in victim reading its ConfigMap")
        .unwrap();
    attacker_app(&harness, &repo, "probe", &account_line()).await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);

    let app = wait_blocked(&harness, ATTACKER, APP).await;
    let block = status(&app).blocked.clone().expect("status.blocked");
    assert_eq!(block.reason, BlockReason::Forbidden, "{block:?}");
    let refusal = format!(
        "forbidden: {} may not patch deployments.apps in namespace {VICTIM}",
        user()
    );
    assert!(block.message.contains(&refusal), "{}", block.message);
    assert!(
        block.message.contains("Deployment victim/web"),
        "{}",
        block.message
    );
    // Meanwhile another tenant deploys as usual.
    bystander_deploys(&harness).await;
    assert_no_canary(&harness, &[CM_CANARY, "db.victim"]).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(harness.client.clone(), VICTIM);
    assert!(deployments.get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
async fn a_secret_of_another_namespace_answers_no_question() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    // The attacker may even write Deployments in victim (a shared namespace, say), but
    // not read its Secrets: preflight must not read them for it.
    apply::<Role>(
        &harness,
        Some(VICTIM),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "deploy-only"},
               "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                          "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]}]}),
    )
    .await;
    apply::<RoleBinding>(
        &harness,
        Some(VICTIM),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deploy-only"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deploy-only"},
               "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ATTACKER}]}),
    )
    .await;
    attacker_runbook(
        &harness,
        json!({"verifyWindow": "1s", "env": [{"name": "PASSWORD", "policy": {"pattern": "^secret-canary"}}]}),
    )
    .await;
    let repo = harness.repo("evil");
    repo.write(
        "deploy/web.yaml",
        &deployment_reading(
            Some(VICTIM),
            json!({"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}),
        ),
    )
    .unwrap();
    let first = repo.commit("a Deployment in victim reading its Secret").unwrap();
    attacker_app(&harness, &repo, "probe", &account_line()).await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);

    let app = wait_blocked(&harness, ATTACKER, APP).await;
    let block = status(&app).blocked.clone().expect("status.blocked");
    assert_eq!(block.revision, first);
    assert_eq!(block.reason, BlockReason::Forbidden, "{block:?}");
    let refusal = format!("forbidden: {} may not get secrets in namespace {VICTIM}", user());
    assert!(block.message.contains(&refusal), "{}", block.message);

    // A key that does not exist gets the same answer: no oracle on names or keys.
    repo.write(
        "deploy/web.yaml",
        &deployment_reading(
            Some(VICTIM),
            json!({"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}}),
        ),
    )
    .unwrap();
    let second = repo.commit("a key that is not there").unwrap();
    let app = harness
        .wait_for(
            ATTACKER,
            APP,
            "Blocked at the second revision",
            Duration::from_secs(90),
            |app| {
                app.status
                    .as_ref()
                    .and_then(|s| s.blocked.as_ref())
                    .is_some_and(|b| b.revision == second)
            },
        )
        .await;
    let block = status(&app).blocked.clone().expect("status.blocked");
    assert_eq!(block.reason, BlockReason::Forbidden, "{block:?}");
    assert!(block.message.contains(&refusal), "{}", block.message);
    for hint in ["has no key", "not found", "does not match", "matches"] {
        assert!(!block.message.contains(hint), "{hint:?} in {}", block.message);
    }
    bystander_deploys(&harness).await;
    assert_no_canary(&harness, &[SECRET_CANARY, "has no key nope"]).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(harness.client.clone(), VICTIM);
    assert!(deployments.get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
async fn a_logs_gate_does_not_read_another_namespaces_pods() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    // The victim's own workload, logging a canary.
    apply::<k8s_openapi::api::apps::v1::Deployment>(
        &harness,
        Some(VICTIM),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "example/web:1",
                        "command": ["sh", "-c", format!("echo {LOG_CANARY}; sleep infinity")]}]},
                },
            },
        }),
    )
    .await;
    attacker_runbook(
        &harness,
        json!({"verifyWindow": "1s", "gates": [{"name": "peek", "logs": {"workload": "web", "pattern": "canary"}}]}),
    )
    .await;
    let repo = harness.repo("evil");
    repo.write(
        "deploy/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: harmless\ndata:\n  a: b\n",
    )
    .unwrap();
    repo.commit("a ConfigMap").unwrap();
    attacker_app(
        &harness,
        &repo,
        "probe",
        &format!("{}  targetNamespace: {VICTIM}\n", account_line()),
    )
    .await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);

    let app = wait_blocked(&harness, ATTACKER, APP).await;
    let (reason, message) = ready_message(&app);
    assert_eq!(reason, "RunbookInvalid", "{message}");
    let refusal = format!("forbidden: {} may not get pods/log in namespace {VICTIM}", user());
    assert!(message.contains(&refusal), "{message}");
    assert!(message.contains("spec.gates[0].logs"), "{message}");
    assert!(status(&app).inventory.is_empty(), "{:?}", status(&app).inventory);
    bystander_deploys(&harness).await;
    assert_no_canary(&harness, &[LOG_CANARY]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), VICTIM);
    assert!(config_maps.get_opt("harmless").await.unwrap().is_none());
}

#[tokio::test]
async fn a_user_name_is_not_a_service_account() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let repo = harness.repo("evil");
    ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    attacker_app(
        &harness,
        &repo,
        "quick",
        "  serviceAccountName: system:serviceaccount:kube-system:namespace-controller\n",
    )
    .await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);
    let app = wait_blocked(&harness, ATTACKER, APP).await;
    let (reason, message) = ready_message(&app);
    assert_eq!(reason, "SpecInvalid", "{message}");
    assert!(message.contains("spec.serviceAccountName"), "{message}");
    // Refused before anything: not even the source was fetched.
    assert!(status(&app).desired_revision.is_none(), "{:?}", status(&app));
    assert!(status(&app).inventory.is_empty());
    bystander_deploys(&harness).await;
}

#[tokio::test]
async fn an_app_naming_no_account_is_refused_without_single_tenant() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let repo = harness.repo("evil");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    attacker_app(&harness, &repo, "quick", "").await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);
    let app = wait_blocked(&harness, ATTACKER, APP).await;
    let (reason, message) = ready_message(&app);
    assert_eq!(reason, "SpecInvalid", "{message}");
    for named in [
        "spec.serviceAccountName",
        "--default-service-account",
        "--single-tenant",
    ] {
        assert!(message.contains(named), "{named} not named: {message}");
    }
    assert!(status(&app).inventory.is_empty());
    bystander_deploys(&harness).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(harness.client.clone(), ATTACKER);
    assert!(
        deployments.get_opt("backend").await.unwrap().is_none(),
        "applied as the controller"
    );

    // With --single-tenant the same app is applied as the controller, as before.
    harness.kill_controller();
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&["--single-tenant"], &MULTI_TENANT);
    harness
        .wait_for_phase(ATTACKER, APP, Phase::Healthy, &revision)
        .await;
}

/// Where a shared ClusterRunbook's gate sends a credential (issue 11 §3): `headersFrom`
/// reads it from a Secret of each app's own namespace, as the app. Two tenants get
/// their own tokens to the endpoint; a tenant whose account may not read Secrets is
/// refused (RunbookInvalid, naming the read) and its token is never read; a tenant
/// without the Secret is Blocked until it creates one. No token appears anywhere.
#[tokio::test]
async fn a_cluster_runbook_sends_each_app_the_secret_of_its_own_namespace() {
    use std::sync::{Arc, Mutex};

    const READONLY: &str = "readonly";
    const TOKENS: [(&str, &str); 3] = [
        (ATTACKER, "attacker-token-canary-3e8d"),
        (BYSTANDER, "bystander-token-canary-b51a"),
        (READONLY, "readonly-token-canary-c07f"),
    ];
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    // A tenant whose account may read its namespace but not its Secrets (`view`).
    harness.namespace(READONLY).await;
    apply::<ServiceAccount>(
        &harness,
        Some(READONLY),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}}),
    )
    .await;
    apply::<RoleBinding>(
        &harness,
        Some(READONLY),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "view"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
               "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": READONLY}]}),
    )
    .await;

    // The endpoint every app's gate probes: it records the Authorization it was sent.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = seen.clone();
    let router = axum::Router::new().route(
        "/check",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let recorded = recorded.clone();
            async move {
                let authorization = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                recorded.lock().unwrap().push(authorization);
                axum::Json(json!({"status": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let cluster_runbooks: Api<bosun::api::ClusterRunbook> = Api::all(harness.client.clone());
    let shared: bosun::api::ClusterRunbook = serde_json::from_value(json!({
        "apiVersion": "bosun.dev/v1alpha1", "kind": "ClusterRunbook", "metadata": {"name": "shared"},
        "spec": {"verifyWindow": "1s", "gates": [{"name": "authorized", "periodSeconds": 1, "http": {
            "url": url,
            "headersFrom": {"Authorization": {"secretKeyRef": {"name": "gate-token", "key": "token"}, "prefix": "Bearer "}},
        }}]},
    }))
    .unwrap();
    cluster_runbooks
        .patch(
            "shared",
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(&shared),
        )
        .await
        .unwrap();
    // The bystander's Secret comes later.
    for (namespace, token) in TOKENS.iter().filter(|(ns, _)| *ns != BYSTANDER) {
        apply::<Secret>(
            &harness,
            Some(namespace),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gate-token"},
                   "stringData": {"token": token}}),
        )
        .await;
    }
    let repo = harness.repo("team");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    for (namespace, _) in TOKENS {
        let mut yaml = app_deployment_yaml(
            namespace,
            APP,
            &harness.git.url(repo.name()),
            Some("shared"),
            "2s",
        )
        .replace("kind: Runbook\n", "kind: ClusterRunbook\n");
        yaml.push_str(&account_line());
        harness.apply_app(&yaml).await;
    }
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&[], &MULTI_TENANT);

    harness
        .wait_for_phase(ATTACKER, APP, Phase::Healthy, &revision)
        .await;
    let readonly = wait_blocked(&harness, READONLY, APP).await;
    let (reason, message) = ready_message(&readonly);
    assert_eq!(reason, "RunbookInvalid", "{message}");
    let refusal = format!(
        "forbidden: system:serviceaccount:{READONLY}:{ACCOUNT} may not get secrets in namespace {READONLY}"
    );
    assert!(message.contains(&refusal), "{message}");
    assert!(message.contains("spec.gates[0].http.headersFrom"), "{message}");
    let bystander = wait_blocked(&harness, BYSTANDER, APP).await;
    let (reason, message) = ready_message(&bystander);
    assert_eq!(reason, "RunbookInvalid", "{message}");
    assert!(
        message.contains(&format!("Secret {BYSTANDER}/gate-token does not exist")),
        "{message}"
    );
    // Creating the Secret is the fix: the app goes on by itself.
    apply::<Secret>(
        &harness,
        Some(BYSTANDER),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gate-token"},
               "stringData": {"token": TOKENS[1].1}}),
    )
    .await;
    harness
        .wait_for_phase(BYSTANDER, APP, Phase::Healthy, &revision)
        .await;

    let seen = seen.lock().unwrap().clone();
    for (namespace, token) in &TOKENS[..2] {
        let sent = format!("Bearer {token}");
        assert!(seen.contains(&sent), "{namespace}'s token never sent: {seen:?}");
    }
    let expected: Vec<String> = TOKENS[..2].iter().map(|(_, t)| format!("Bearer {t}")).collect();
    assert!(
        seen.iter().all(|sent| expected.contains(sent)),
        "a request without its app's own token: {seen:?}"
    );
    assert_no_canary(&harness, &TOKENS.map(|(_, token)| token)).await;
}
