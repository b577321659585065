//! Attacks on what a tenant controls that costs the controller memory or work, played
//! on the local control plane against the real `bosun` binary (one test per attack):
//! - an env-expansion bomb (`Vn = "$(Vn-1)$(Vn-1)"` up to `V30`, 16 GiB expanded) with
//!   the controller under an address-space limit: the revision is Blocked naming the
//!   limit and the figure, the controller lives and stays small, a bystander app in
//!   another namespace deploys meanwhile;
//! - requests to the webhook receiver that do not authenticate: no API request, no body
//!   read, and the answer to a valid push names no app;
//! - an AppDeployment and a Runbook that do not deserialize (a field of the wrong range
//!   the CRD schema does not constrain): the watches carry on, another app deploys;
//! - an app with a 253-character name whose Event notes are long multi-byte text: the
//!   API server takes the Events.

mod support;

use std::time::{Duration, Instant};

use bosun::api::Phase;
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml};
use bosun_devenv::{CONTROLLER_USER, ControlPlaneOptions, WorkRepo};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACKER: &str = "attacker";
const BYSTANDER: &str = "bystander";
/// The controller's address-space limit: a normal run stays well under it (its virtual
/// size is mostly reserved, not used), one 2 GiB value does not fit.
const ADDRESS_SPACE: u64 = support::ATTACK_ADDRESS_SPACE;
/// What the controller's resident memory must stay under while it refuses the bomb.
const MAX_RSS_KIB: u64 = 400 * 1024;

fn deployment(name: &str, env: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "api", "image": "example/api:1.0", "env": env}]}
            }
        }
    })
}

fn commit(repo: &WorkRepo, deployment: &Value, message: &str) -> String {
    repo.write(
        "deploy/api.json",
        &serde_json::to_string_pretty(deployment).unwrap(),
    )
    .unwrap();
    repo.commit(message).unwrap()
}

/// The bystander: the example app in its own namespace; the time from its commit to
/// Healthy.
async fn bystander_deploys(harness: &Harness, repo: &WorkRepo, version: &str) -> Duration {
    let commit = ExampleRevision::good(version).commit_to(repo, version).unwrap();
    let start = Instant::now();
    harness
        .wait_for_phase(BYSTANDER, "shop", Phase::Healthy, &commit)
        .await;
    start.elapsed()
}

#[tokio::test]
async fn an_env_expansion_bomb_is_blocked_naming_the_limit_and_the_controller_stays_small() {
    let mut harness = Harness::start().await;
    harness.limit_controller_address_space(ADDRESS_SPACE);
    let shop = harness.repo("shop");
    ExampleRevision::good("1.0").commit_to(&shop, "first").unwrap();
    harness.quick_app(BYSTANDER, "shop", shop.name(), "2s").await;
    harness.start_controller();
    let usual = bystander_deploys(&harness, &shop, "1.1").await;
    let rss_before = harness.controller_rss_kib().expect("controller running");

    // V0 = 16 bytes, Vn = "$(Vn-1)$(Vn-1)": V30 would be 16 GiB.
    harness.namespace(ATTACKER).await;
    let mut env = vec![json!({"name": "V0", "value": "0123456789abcdef"})];
    for n in 1..=30 {
        env.push(json!({"name": format!("V{n}"), "value": format!("$(V{})$(V{})", n - 1, n - 1)}));
    }
    let bomb = harness.repo("bomb");
    let revision = commit(&bomb, &deployment("api", Value::Array(env)), "bomb");
    harness
        .apply_runbook(&format!(
            "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: rules\n  namespace: {ATTACKER}\nspec:\n  verifyWindow: 1s\n  env:\n  - name: V30\n    required: true\n"
        ))
        .await;
    harness
        .apply_app(&app_deployment_yaml(
            ATTACKER,
            "api",
            &harness.git.url(bomb.name()),
            Some("rules"),
            "2s",
        ))
        .await;
    // The bystander commits while the bomb is being refused.
    let during = bystander_deploys(&harness, &shop, "1.2").await;
    let blocked = harness
        .wait_for(
            ATTACKER,
            "api",
            "the bomb blocked",
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == revision)
                })
            },
        )
        .await;
    let message = blocked.status.unwrap().blocked.unwrap().message;
    // The first variable over the limit (16 · 2^14 bytes), the limit, the figure, the
    // workload and the container.
    for fragment in [
        "Deployment attacker/api",
        "api",
        "V14",
        "262144 bytes",
        "131072 bytes",
    ] {
        assert!(message.contains(fragment), "{fragment:?} not in {message}");
    }
    assert!(
        harness.controller_running(),
        "the controller died:\n{}",
        harness.controller_log()
    );
    let rss = harness.controller_rss_kib().expect("controller running");
    println!(
        "controller RSS: {rss_before} KiB before, {rss} KiB after the bomb; bystander commit->Healthy {usual:?} before, {during:?} during"
    );
    assert!(rss < MAX_RSS_KIB, "controller RSS {rss} KiB");
    assert!(
        during < usual * 3 + Duration::from_secs(10),
        "the bystander took {during:?} (usually {usual:?})"
    );
    // A restart repeats the step: still alive, still blocked the same way.
    harness.kill_controller();
    harness.start_controller();
    bystander_deploys(&harness, &shop, "1.3").await;
    assert!(harness.controller_running(), "{}", harness.controller_log());
    let again = harness.app(ATTACKER, "api").await;
    assert!(
        again
            .status
            .unwrap()
            .blocked
            .unwrap()
            .message
            .contains("262144 bytes"),
        "still blocked on the bomb"
    );
}

/// Reads of the webhook Secret by the controller, from the audit log.
async fn webhook_secret_reads(harness: &Harness) -> usize {
    harness
        .control_plane
        .controller_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.resource == "secrets" && r.name.as_deref() == Some("bosun-webhook"))
        .count()
}

/// Every API request of the controller so far, but the long-running watches' restarts.
async fn controller_requests(harness: &Harness) -> usize {
    harness
        .control_plane
        .controller_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.user == CONTROLLER_USER)
        .count()
}

/// Sends `head` (request line and headers, no body) on a raw connection and returns
/// the status line of the answer, which must come without the body being sent.
async fn status_without_body(address: &str, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_unauthenticated_webhook_request_costs_no_api_request_and_reads_no_body() {
    let mut harness = Harness::start_with(ControlPlaneOptions {
        audit_controller_reads: true,
        ..Default::default()
    })
    .await;
    let shop = harness.repo("shop");
    let first = ExampleRevision::good("1.0").commit_to(&shop, "first").unwrap();
    harness.quick_app(BYSTANDER, "shop", shop.name(), "10m").await;
    let base = harness
        .start_controller_with_webhook_receiver("webhook-s3cret")
        .await;
    let address = base.trim_start_matches("http://").to_string();
    harness
        .wait_for_phase(BYSTANDER, "shop", Phase::Healthy, &first)
        .await;
    // Settled: the watches are up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests_before = controller_requests(&harness).await;

    // Headers that announce a 1 MB body that never comes: answered at once.
    let no_credential = status_without_body(
        &address,
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    assert!(no_credential.contains(" 401 "), "{no_credential}");
    let wrong_token = status_without_body(
        &address,
        "POST /hooks/gitlab HTTP/1.1\r\nHost: x\r\nX-Gitlab-Token: guess\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    // Over the 1 MiB limit? no: 1,000,000 bytes is under it; the token is wrong and the
    // body is never read.
    assert!(wrong_token.contains(" 401 "), "{wrong_token}");
    let malformed_signature = status_without_body(
        &address,
        "POST /hooks/generic HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=zz\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    assert!(malformed_signature.contains(" 401 "), "{malformed_signature}");

    // Many more without a credential: no API request at all.
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let response = http
            .post(format!("http://{address}/hooks/generic"))
            .body(r#"{"repository":"git://x/y"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    let requests_after = controller_requests(&harness).await;
    // The only one allowed: the first read of the secret, made for the wrong token.
    assert!(
        requests_after - requests_before <= 1,
        "{} API requests for unauthenticated webhook requests",
        requests_after - requests_before
    );
    let reads_before_guesses = webhook_secret_reads(&harness).await;
    for n in 0..20 {
        let response = http
            .post(format!("http://{address}/hooks/generic"))
            .header("authorization", format!("Bearer guess-{n}"))
            .body(r#"{"repository":"git://x/y"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    assert!(
        webhook_secret_reads(&harness).await - reads_before_guesses <= 1,
        "wrong guesses read the Secret at most once per 10s"
    );

    // A valid push: the answer counts the apps and names none.
    let response = http
        .post(format!("http://{address}/hooks/generic"))
        .header("authorization", "Bearer webhook-s3cret")
        .body(json!({"repository": harness.git.url(shop.name())}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["apps"], json!(1), "{body}");
    assert!(!body.to_string().contains(BYSTANDER), "{body}");

    // A flood from one address: 429 once its burst (60) is spent, naming the limit.
    let mut limited = None;
    for _ in 0..60 {
        let response = http
            .post(format!("http://{address}/hooks/generic"))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            limited = Some(response.json::<Value>().await.unwrap());
            break;
        }
    }
    let limited = limited.expect("a flood from one address meets its rate limit");
    assert!(
        limited["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the limit is 60"),
        "{limited}"
    );
}

#[tokio::test]
async fn a_malformed_app_or_runbook_does_not_stall_the_watches() {
    let mut harness = Harness::start().await;
    harness.namespace(ATTACKER).await;
    // `format: uint32` is not checked by the API server: 99999999999 passes the schema
    // and does not fit the controller's types.
    let client = harness.client.clone();
    let dynamic = move |kind: &str, plural: &str| {
        let resource = kube::api::ApiResource {
            group: "bosun.dev".into(),
            version: "v1alpha1".into(),
            api_version: "bosun.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), ATTACKER, &resource)
    };
    let runbook = json!({
        "apiVersion": "bosun.dev/v1alpha1", "kind": "Runbook",
        "metadata": {"name": "broken", "namespace": ATTACKER},
        "spec": {"env": [{"name": "X", "policy": {"minLength": 99_999_999_999_u64}}]}
    });
    dynamic("Runbook", "runbooks")
        .patch(
            "broken",
            &PatchParams::apply("attacker").force(),
            &Patch::Apply(&runbook),
        )
        .await
        .expect("the API server takes the Runbook");
    let app = |name: &str| {
        json!({
            "apiVersion": "bosun.dev/v1alpha1", "kind": "AppDeployment",
            "metadata": {"name": name, "namespace": ATTACKER},
            "spec": {"source": {"git": {"url": "git://127.0.0.1:1/none"}}, "revisionHistoryLimit": 99_999_999_999_u64}
        })
    };
    // One before the controller starts (its first list), one after (the watch).
    dynamic("AppDeployment", "appdeployments")
        .patch(
            "broken-before",
            &PatchParams::apply("attacker").force(),
            &Patch::Apply(&app("broken-before")),
        )
        .await
        .expect("the API server takes the AppDeployment");
    let shop = harness.repo("shop");
    let first = ExampleRevision::good("1.0").commit_to(&shop, "first").unwrap();
    harness.quick_app(BYSTANDER, "shop", shop.name(), "2s").await;
    harness.start_controller();
    harness
        .wait_for_phase(BYSTANDER, "shop", Phase::Healthy, &first)
        .await;
    dynamic("AppDeployment", "appdeployments")
        .patch(
            "broken-after",
            &PatchParams::apply("attacker").force(),
            &Patch::Apply(&app("broken-after")),
        )
        .await
        .unwrap();
    let second = ExampleRevision::good("2.0").commit_to(&shop, "second").unwrap();
    harness
        .wait_for_phase(BYSTANDER, "shop", Phase::Healthy, &second)
        .await;
    assert!(harness.controller_running(), "{}", harness.controller_log());
    // An app naming the unreadable Runbook is told why, not "not found".
    harness
        .apply_app(&app_deployment_yaml(
            ATTACKER,
            "uses-broken",
            &harness.git.url(shop.name()),
            Some("broken"),
            "2s",
        ))
        .await;
    harness
        .wait_for(
            ATTACKER,
            "uses-broken",
            "the unreadable Runbook named",
            Duration::from_secs(30),
            |app| {
                serde_json::to_string(&app.status)
                    .is_ok_and(|status| status.contains("Runbook attacker/broken cannot be read"))
            },
        )
        .await;
    let log = harness.controller_log_text();
    for name in ["broken-before", "broken-after", "broken"] {
        assert!(
            log.lines().any(|line| line.contains("does not deserialize")
                && line.contains(&format!("name=\"{name}\""))
                || line.contains("does not deserialize") && line.contains(&format!("name={name}"))),
            "no log line names {name}:\n{}",
            harness.controller_log()
        );
    }
}

#[tokio::test]
async fn events_of_a_253_character_app_with_long_multibyte_notes_reach_the_api_server() {
    let mut harness = Harness::start().await;
    harness.namespace(ATTACKER).await;
    // A 253-character name (the most a name may have), dots and all.
    let name = format!("{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(125));
    assert_eq!(name.len(), 253);
    // A literal that breaks an `equals` policy: the miss quotes both, 3 bytes a
    // character, far past 1 KiB.
    let value = "€".repeat(600);
    let repo = harness.repo("wide");
    let revision = commit(
        &repo,
        &deployment("api", json!([{"name": "MODE", "value": value}])),
        "wide",
    );
    harness
        .apply_runbook(&format!(
            "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: rules\n  namespace: {ATTACKER}\nspec:\n  verifyWindow: 1s\n  env:\n  - name: MODE\n    policy:\n      equals: \"{}\"\n",
            "ü".repeat(600)
        ))
        .await;
    harness
        .apply_app(&app_deployment_yaml(
            ATTACKER,
            &name,
            &harness.git.url(repo.name()),
            Some("rules"),
            "2s",
        ))
        .await;
    harness.start_controller();
    harness
        .wait_for(ATTACKER, &name, "blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == revision)
            })
        })
        .await;
    let events: Api<Event> = Api::namespaced(harness.client.clone(), ATTACKER);
    let blocked = support::eventually("a Blocked Event on the app", Duration::from_secs(20), || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Blocked")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            }))
    })
    .await
    .unwrap_or_else(|_| panic!("no Blocked Event\n{}", harness.controller_log()));
    let event_name = blocked.metadata.name.unwrap();
    assert!(event_name.len() <= 253, "{event_name}");
    let note = blocked.note.unwrap();
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(note.contains('€'), "{note}");
    assert!(
        !harness.controller_log_text().contains("could not publish Event"),
        "{}",
        harness.controller_log()
    );
}

/// A Role with `verbs` on the example app's resources in `namespace`, bound to its
/// ServiceAccount `deployer`.
async fn tenant_account(harness: &Harness, namespace: &str) {
    let params = PatchParams::apply("bosun-test");
    let apply = |kind: &str, plural: &str, group: &str, version: &str, object: Value| {
        let resource = kube::api::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        };
        let api = Api::<DynamicObject>::namespaced_with(harness.client.clone(), namespace, &resource);
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let params = params.clone();
        let kind = kind.to_string();
        async move {
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
        }
    };
    apply(
        "ServiceAccount",
        "serviceaccounts",
        "",
        "v1",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer"}}),
    )
    .await;
    let verbs = ["get", "create", "patch", "delete"];
    apply(
        "Role",
        "roles",
        "rbac.authorization.k8s.io",
        "v1",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "deployer"},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": verbs},
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs},
            ]
        }),
    )
    .await;
    apply(
        "RoleBinding",
        "rolebindings",
        "rbac.authorization.k8s.io",
        "v1",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
        }),
    )
    .await;
}

#[tokio::test]
async fn a_deletion_refused_403_releases_the_finalizer_with_a_warning() {
    let mut harness = Harness::start().await;
    harness.namespace(ATTACKER).await;
    tenant_account(&harness, ATTACKER).await;
    harness
        .apply_runbook(&bosun_devenv::example::workload_only_runbook_yaml(
            ATTACKER, "quick",
        ))
        .await;
    let repo = harness.repo("shop");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "first").unwrap();
    let mut yaml = app_deployment_yaml(
        ATTACKER,
        "shop",
        &harness.git.url(repo.name()),
        Some("quick"),
        "10m",
    );
    yaml.push_str("  serviceAccountName: deployer\n");
    harness.apply_app(&yaml).await;
    harness.start_controller();
    harness
        .wait_for_phase(ATTACKER, "shop", Phase::Healthy, &first)
        .await;
    // The tenant's RoleBinding goes first, as it may when its namespace is deleted.
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(harness.client.clone(), ATTACKER)
        .delete("deployer", &Default::default())
        .await
        .unwrap();
    Api::<bosun::api::AppDeployment>::namespaced(harness.client.clone(), ATTACKER)
        .delete("shop", &Default::default())
        .await
        .unwrap();
    let apps = Api::<bosun::api::AppDeployment>::namespaced(harness.client.clone(), ATTACKER);
    support::eventually("the AppDeployment gone", Duration::from_secs(30), || {
        let apps = apps.clone();
        async move { Ok(apps.get_opt("shop").await?.is_none().then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", harness.controller_log()));
    let events: Api<Event> = Api::namespaced(harness.client.clone(), ATTACKER);
    let warning = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("DeletionIncomplete"))
        .unwrap_or_else(|| panic!("no DeletionIncomplete Event\n{}", harness.controller_log()));
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.unwrap_or_default();
    assert!(note.contains("403") && note.contains("Deployment"), "{note}");
    // What could not be released is left running.
    assert!(
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(harness.client.clone(), ATTACKER)
            .get_opt("backend")
            .await
            .unwrap()
            .is_some()
    );
}
