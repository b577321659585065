//! Preflight end to end: the real `bosun` binary on the local control plane refuses a
//! revision whose workloads read a Secret (or key) that does not exist, or that breaks
//! the Runbook's env contract (the seeds' cases), before anything of it is written; and
//! lets it through within seconds of the missing Secret being created, without waiting
//! for the Git interval (10 minutes here, so that no pass on the interval can explain
//! it).
//!
//! New revisions reach the controller by moving `spec.pin` (a spec change wakes the app
//! at once) over commits that were all pushed before the controller started.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, AppDeploymentStatus, Phase};
use bosun_devenv::WorkRepo;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Harness, status};

const NS: &str = "shop";
const APP: &str = "api";
/// Long enough that nothing a test waits for can come from a pass on the interval.
const INTERVAL: &str = "10m";
/// Creating a missing Secret must let the revision through within this.
const UNBLOCK_WITHIN: Duration = Duration::from_secs(10);

// ---- revisions ------------------------------------------------------------------

/// The Deployment `api` (one container `api`) with `env`; `edit` adds what a case needs
/// to the pod spec.
fn api_deployment(env: Value, edit: impl FnOnce(&mut Value)) -> Value {
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "labels": {"app": "api"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "example/api:1.0", "env": env}]}
            }
        }
    });
    edit(&mut deployment["spec"]["template"]["spec"]);
    deployment
}

/// Commits `deployment` as the repository's only manifest; returns the commit id.
fn commit(repo: &WorkRepo, deployment: &Value, message: &str) -> String {
    repo.write(
        "deploy/api.json",
        &serde_json::to_string_pretty(deployment).unwrap(),
    )
    .unwrap();
    repo.commit(message).unwrap()
}

fn app_yaml(url: &str, runbook: &str, pin: &str) -> String {
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: AppDeployment
metadata:
  name: {APP}
  namespace: {NS}
spec:
  source:
    git:
      url: {url}
      ref:
        branch: main
      path: deploy
      interval: {INTERVAL}
  runbookRef:
    kind: Runbook
    name: {runbook}
  pin:
    revision: {pin}
"#
    )
}

/// Moves the pin: the controller sees the spec change at once.
async fn pin(harness: &Harness, repo: &WorkRepo, runbook: &str, revision: &str) {
    harness
        .apply_app(&app_yaml(&harness.git.url(repo.name()), runbook, revision))
        .await;
}

// ---- the cluster ----------------------------------------------------------------

async fn create_secret(harness: &Harness, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
}

/// Sets `key` of Secret `name` (merge patch: the other keys stay).
async fn set_secret_key(harness: &Harness, name: &str, key: &str, value: &str) {
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let patch = json!({"stringData": {key: value}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch Secret");
}

/// The Events bosun published about the app.
async fn bosun_events(harness: &Harness) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .collect()
}

fn condition<'a>(
    status: &'a AppDeploymentStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until `revision` is blocked by preflight; returns the app.
async fn wait_blocked(harness: &Harness, revision: &str) -> AppDeployment {
    harness
        .wait_for(
            NS,
            APP,
            &format!("revision {revision} blocked by preflight"),
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked
                        && s.blocked.as_ref().is_some_and(|b| {
                            b.revision == revision && b.reason == bosun::api::BlockReason::PreflightFailed
                        })
                })
            },
        )
        .await
}

/// Waits until the app is blocked by preflight on `revision` with a message containing
/// `fragment` (a re-check that finds another reason records it).
async fn wait_blocked_saying(harness: &Harness, revision: &str, fragment: &str) -> AppDeployment {
    harness
        .wait_for(
            NS,
            APP,
            &format!("revision {revision} blocked saying {fragment:?}"),
            Duration::from_secs(30),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked
                        && s.blocked
                            .as_ref()
                            .is_some_and(|b| b.revision == revision && b.message.contains(fragment))
                })
            },
        )
        .await
}

/// The block's message and the `PreflightPassed` condition's both contain every one of
/// `fragments`; so does a `Blocked` Event.
async fn assert_block_names(harness: &Harness, app: &AppDeployment, fragments: &[&str]) {
    let s = status(app);
    let block = s.blocked.as_ref().expect("blocked");
    let preflight = condition(s, "PreflightPassed").expect("PreflightPassed condition");
    assert_eq!(preflight.status, "False", "{preflight:?}");
    assert_eq!(preflight.reason, "PreflightFailed");
    for fragment in fragments {
        assert!(
            block.message.contains(fragment),
            "the block does not name {fragment:?}: {}",
            block.message
        );
        assert!(
            preflight.message.contains(fragment),
            "PreflightPassed does not name {fragment:?}: {}",
            preflight.message
        );
    }
    support::eventually(
        "a Blocked Event naming the miss",
        Duration::from_secs(10),
        || async {
            Ok(bosun_events(harness)
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Blocked")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note
                            .as_deref()
                            .is_some_and(|note| fragments.iter().all(|f| note.contains(f)))
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
}

/// Waits until the blocked `revision` is on its way (or through): the block lifted.
async fn wait_unblocked(harness: &Harness, revision: &str) -> AppDeployment {
    harness
        .wait_for(
            NS,
            APP,
            &format!("revision {revision} let through"),
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase != Phase::Blocked
                        && (s.operation.as_ref().is_some_and(|op| op.revision == revision)
                            || s.current_revision.as_deref() == Some(revision))
                })
            },
        )
        .await
}

/// The Deployment `api` as it is live: its `resourceVersion` and first container.
async fn live_api(harness: &Harness) -> Deployment {
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), NS);
    deployments.get("api").await.expect("Deployment api")
}

fn container_env(deployment: &Deployment) -> BTreeMap<String, Option<String>> {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect()
}

/// The app as `kubectl get ad -o yaml` prints it (empty when kubectl is not installed).
fn app_as_printed(harness: &Harness) -> String {
    match std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(harness.control_plane.kubeconfig_path())
        .args(["-n", NS, "get", "ad", APP, "-o", "yaml"])
        .output()
    {
        Ok(output) => {
            assert!(
                output.status.success(),
                "kubectl get ad: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let printed = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(printed.contains("PreflightPassed"), "{printed}");
            printed
        }
        // kubectl is not installed: the JSON of the object is checked all the same.
        Err(_) => String::new(),
    }
}

/// Every place a Secret's value must never reach: the app's status (as kubectl prints
/// it, and as JSON), the Events of the namespace, and the controller's log.
async fn assert_nowhere(harness: &Harness, values: &[&str]) {
    let app = harness.app(NS, APP).await;
    let json = serde_json::to_string(&app).unwrap();
    let printed = app_as_printed(harness);
    let events = Api::<Event>::namespaced(harness.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let events = serde_json::to_string(&events.items).unwrap();
    let log = harness.controller_log_text();
    assert!(!log.is_empty(), "the controller logged nothing");
    for value in values {
        for (place, text) in [
            ("the AppDeployment", &json),
            ("kubectl get ad -o yaml", &printed),
            ("the Events", &events),
            ("the controller log", &log),
        ] {
            assert!(!text.contains(value), "{place} contains the value {value:?}");
        }
    }
}

// ---- tests ----------------------------------------------------------------------

/// One kind of Secret reference, missing at first.
struct Case {
    what: &'static str,
    revision: String,
    /// What the block must name.
    names: Vec<&'static str>,
}

#[tokio::test]
async fn a_missing_secret_or_key_blocks_the_revision_until_it_is_created() {
    let mut harness = Harness::start().await;
    harness.namespace(NS).await;
    harness
        .apply_runbook(&bosun_devenv::example::workload_only_runbook_yaml(NS, "quick"))
        .await;
    let repo = harness.repo("app");
    let good = commit(
        &repo,
        &api_deployment(json!([{"name": "ENV", "value": "production"}]), |_| {}),
        "plain",
    );
    let secret_ref = |name: &str, key: &str, optional: bool| json!({"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": optional}}});
    let missing_secret = commit(
        &repo,
        &api_deployment(json!([secret_ref("db", "url", false)]), |_| {}),
        "reads Secret db",
    );
    let missing_key = commit(
        &repo,
        &api_deployment(
            json!([secret_ref("db", "url", false),
                   {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]),
            |_| {},
        ),
        "reads key password of Secret db",
    );
    let env_from = commit(
        &repo,
        &api_deployment(json!([]), |pod| {
            pod["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "api-env"}}]);
        }),
        "envFrom Secret api-env",
    );
    let volume = commit(
        &repo,
        &api_deployment(json!([]), |pod| {
            pod["volumes"] = json!([{"name": "certs", "secret": {"secretName": "tls-certs"}}]);
            pod["containers"][0]["volumeMounts"] = json!([{"name": "certs", "mountPath": "/certs"}]);
        }),
        "secret volume tls-certs",
    );
    let pull = commit(
        &repo,
        &api_deployment(json!([]), |pod| {
            pod["imagePullSecrets"] = json!([{"name": "registry"}]);
        }),
        "imagePullSecrets registry",
    );
    let optional = commit(
        &repo,
        &api_deployment(json!([secret_ref("nowhere", "url", true)]), |pod| {
            pod["volumes"] =
                json!([{"name": "extra", "secret": {"secretName": "nowhere-either", "optional": true}}]);
        }),
        "optional references to Secrets that do not exist",
    );

    harness
        .apply_app(&app_yaml(&harness.git.url(repo.name()), "quick", &good))
        .await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let running = live_api(&harness).await;

    // A Secret that does not exist: refused before anything is written.
    let pinned_at = Timestamp::now();
    pin(&harness, &repo, "quick", &missing_secret).await;
    let app = wait_blocked(&harness, &missing_secret).await;
    assert_block_names(
        &harness,
        &app,
        &[
            "Deployment shop/api",
            "container api",
            "DB_URL",
            "Secret shop/db",
            "url",
        ],
    )
    .await;
    // Give the controller time to do anything it would wrongly do.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Blocked);
    assert_eq!(
        s.current_revision.as_deref(),
        Some(good.as_str()),
        "the running revision changed"
    );
    assert_eq!(s.last_healthy_revision.as_deref(), Some(good.as_str()));
    assert!(s.quarantined.is_empty(), "quarantined: {:?}", s.quarantined);
    assert!(s.operation.is_none(), "an operation is open: {:?}", s.operation);
    let after = live_api(&harness).await;
    assert_eq!(
        after.metadata.resource_version, running.metadata.resource_version,
        "the running Deployment was written"
    );
    let writes: Vec<_> = harness
        .controller_writes()
        .await
        .into_iter()
        .filter(|w| w.received_at > pinned_at)
        .collect();
    let snapshots: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    for write in &writes {
        let allowed = match (write.resource.as_str(), write.subresource.as_deref()) {
            ("appdeployments", Some("status")) | ("events", None) => true,
            ("secrets", None) => {
                let name = write.name.clone().unwrap_or_default();
                let secret = snapshots.get(&name).await.expect("the Secret written exists");
                secret.type_.as_deref() == Some(bosun::snapshot::SNAPSHOT_SECRET_TYPE)
            }
            _ => false,
        };
        assert!(
            allowed,
            "a blocked revision wrote {} {}/{:?} {:?}",
            write.verb, write.resource, write.subresource, write.name
        );
    }
    assert!(
        writes.iter().any(|w| w.resource == "appdeployments"),
        "no status write recorded the block: {writes:?}"
    );

    // Creating the Secret lets the revision through at once: the interval is 10 minutes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = Instant::now();
    create_secret(&harness, "db", &[("url", "postgres://db/shop")]).await;
    wait_unblocked(&harness, &missing_secret).await;
    let unblocked = created.elapsed();
    let app = harness
        .wait_for_phase(NS, APP, Phase::Healthy, &missing_secret)
        .await;
    let healthy = created.elapsed();
    println!(
        "missing Secret (env secretKeyRef): let through {:.2}s after the Secret was created, Healthy after {:.2}s",
        unblocked.as_secs_f64(),
        healthy.as_secs_f64()
    );
    assert!(unblocked < UNBLOCK_WITHIN, "let through only after {unblocked:?}");
    let preflight = condition(status(&app), "PreflightPassed").unwrap();
    assert_eq!(preflight.status, "True", "{preflight:?}");
    assert!(status(&app).quarantined.is_empty());

    // The same for a missing key, an envFrom Secret, a secret volume and an image pull
    // Secret; each is created (or completed) once the revision is blocked.
    let cases = [
        Case {
            what: "a missing key",
            revision: missing_key.clone(),
            names: vec!["container api", "DB_PASSWORD", "Secret shop/db", "key password"],
        },
        Case {
            what: "envFrom",
            revision: env_from.clone(),
            names: vec!["container api", "envFrom", "Secret shop/api-env"],
        },
        Case {
            what: "a secret volume",
            revision: volume.clone(),
            names: vec!["Deployment shop/api", "volume certs", "Secret shop/tls-certs"],
        },
        Case {
            what: "imagePullSecrets",
            revision: pull.clone(),
            names: vec!["Deployment shop/api", "imagePullSecrets", "Secret shop/registry"],
        },
    ];
    for case in &cases {
        pin(&harness, &repo, "quick", &case.revision).await;
        let app = wait_blocked(&harness, &case.revision).await;
        assert_block_names(&harness, &app, &case.names).await;
        assert!(status(&app).quarantined.is_empty());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let created = Instant::now();
        match case.what {
            "a missing key" => set_secret_key(&harness, "db", "password", "s3cret-password").await,
            "envFrom" => create_secret(&harness, "api-env", &[("FEATURE", "on")]).await,
            "a secret volume" => create_secret(&harness, "tls-certs", &[("tls.crt", "cert")]).await,
            _ => create_secret(&harness, "registry", &[(".dockerconfigjson", "{\"auths\":{}}")]).await,
        }
        wait_unblocked(&harness, &case.revision).await;
        let unblocked = created.elapsed();
        harness
            .wait_for_phase(NS, APP, Phase::Healthy, &case.revision)
            .await;
        println!(
            "{}: let through {:.2}s after the Secret was created or completed, Healthy after {:.2}s",
            case.what,
            unblocked.as_secs_f64(),
            created.elapsed().as_secs_f64()
        );
        assert!(
            unblocked < UNBLOCK_WITHIN,
            "{}: let through only after {unblocked:?}",
            case.what
        );
    }

    // References marked optional pass with nothing to read.
    pin(&harness, &repo, "quick", &optional).await;
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &optional).await;
    assert!(status(&app).blocked.is_none(), "{:?}", status(&app).blocked);
    let history_blocked = status(&app)
        .history
        .iter()
        .filter(|h| h.revision == optional && h.phase == Phase::Blocked)
        .count();
    assert_eq!(history_blocked, 0);
}

/// The env contract of the seed runbooks (LiteVault, Plannior): `JWT_SECRET` from a
/// Secret, changed from its documented default and at least 32 characters; `AUTH_MODE`
/// must be `clerk`; `OPENAI_API_KEY` required only when `LLM_PROVIDER=litellm`;
/// `CORS_ORIGINS` not `*`; `LOG_LEVEL` defaults to `WARNING`, injected.
const CONTRACT_RUNBOOK: &str = r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: contract
  namespace: shop
spec:
  verifyWindow: 1s
  env:
    - name: JWT_SECRET
      required: true
      secret: true
      policy:
        minLength: 32
        notEquals: ["change-me"]
    - name: AUTH_MODE
      required: true
      policy:
        equals: clerk
    - name: LLM_PROVIDER
      default: stub
    - name: OPENAI_API_KEY
      secret: true
      requiredWhen:
        env: LLM_PROVIDER
        equals: litellm
    - name: CORS_ORIGINS
      required: true
      policy:
        notEquals: ["*"]
    - name: LOG_LEVEL
      default: WARNING
      inject: true
"#;

/// A short value nothing else in the test contains, to grep for.
const SHORT_JWT: &str = "tooShortJwt-7f3a9c";
/// A literal `JWT_SECRET` long enough for the policy, refused for being a literal.
const LITERAL_JWT: &str = "literalJwtInGit-0d4c1e9b8a7f6e5d4c3b2a19";
const GOOD_JWT: &str = "a-jwt-secret-of-forty-characters-xx-ok!!";

fn contract_env(jwt_secret: &str, overrides: &[(&str, Value)]) -> Value {
    let mut vars: Vec<(String, Value)> = vec![
        (
            "JWT_SECRET".into(),
            json!({"name": "JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": jwt_secret, "key": "secret"}}}),
        ),
        ("AUTH_MODE".into(), json!({"name": "AUTH_MODE", "value": "clerk"})),
        (
            "LLM_PROVIDER".into(),
            json!({"name": "LLM_PROVIDER", "value": "stub"}),
        ),
        (
            "CORS_ORIGINS".into(),
            json!({"name": "CORS_ORIGINS", "value": "https://app.example.com"}),
        ),
    ];
    for (name, var) in overrides {
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = var.clone(),
            None => vars.push((name.to_string(), var.clone())),
        }
    }
    Value::Array(vars.into_iter().map(|(_, v)| v).collect())
}

#[tokio::test]
async fn the_env_contract_of_the_seed_runbooks_is_enforced_without_printing_secrets() {
    let mut harness = Harness::start().await;
    harness.namespace(NS).await;
    harness.apply_runbook(CONTRACT_RUNBOOK).await;
    create_secret(&harness, "jwt", &[("secret", GOOD_JWT)]).await;
    create_secret(&harness, "jwt-default", &[("secret", "change-me")]).await;
    let repo = harness.repo("app");
    let commit_env = |env: Value, message: &str| commit(&repo, &api_deployment(env, |_| {}), message);
    // LLM_PROVIDER=stub and no OPENAI_API_KEY: passes; LOG_LEVEL is not set: injected.
    let good = commit_env(contract_env("jwt", &[]), "meets the contract");
    let default_jwt = commit_env(contract_env("jwt-default", &[]), "JWT_SECRET left at change-me");
    let auth_mode = commit_env(
        contract_env(
            "jwt",
            &[("AUTH_MODE", json!({"name": "AUTH_MODE", "value": "mixed"}))],
        ),
        "AUTH_MODE mixed",
    );
    let litellm = commit_env(
        contract_env(
            "jwt",
            &[(
                "LLM_PROVIDER",
                json!({"name": "LLM_PROVIDER", "value": "litellm"}),
            )],
        ),
        "litellm without a key",
    );
    let cors = commit_env(
        contract_env(
            "jwt",
            &[("CORS_ORIGINS", json!({"name": "CORS_ORIGINS", "value": "*"}))],
        ),
        "CORS *",
    );
    let literal = commit_env(
        contract_env(
            "jwt",
            &[("JWT_SECRET", json!({"name": "JWT_SECRET", "value": LITERAL_JWT}))],
        ),
        "JWT_SECRET as a literal",
    );

    harness
        .apply_app(&app_yaml(&harness.git.url(repo.name()), "contract", &good))
        .await;
    harness.start_controller();
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    assert_eq!(
        condition(status(&app), "PreflightPassed").map(|c| c.status.as_str()),
        Some("True")
    );
    // The default is added to the applied container.
    let env = container_env(&live_api(&harness).await);
    assert_eq!(
        env.get("LOG_LEVEL"),
        Some(&Some("WARNING".to_string())),
        "{env:?}"
    );
    assert!(!env.contains_key("OPENAI_API_KEY"));

    // JWT_SECRET at its documented default: refused, the value never quoted.
    pin(&harness, &repo, "contract", &default_jwt).await;
    let app = wait_blocked(&harness, &default_jwt).await;
    assert_block_names(
        &harness,
        &app,
        &[
            "JWT_SECRET (Secret shop/jwt-default, key secret)",
            "forbids (notEquals)",
            "Deployment shop/api",
            "container api",
        ],
    )
    .await;
    assert!(status(&app).quarantined.is_empty());
    // Changed, but too short: the re-check records the new reason.
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_secret_key(&harness, "jwt-default", "secret", SHORT_JWT).await;
    let app = wait_blocked_saying(&harness, &default_jwt, "is shorter than 32 characters").await;
    assert_block_names(
        &harness,
        &app,
        &["JWT_SECRET (Secret shop/jwt-default, key secret) is shorter than 32 characters"],
    )
    .await;
    // Long enough: through within seconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fixed = Instant::now();
    set_secret_key(&harness, "jwt-default", "secret", GOOD_JWT).await;
    wait_unblocked(&harness, &default_jwt).await;
    let unblocked = fixed.elapsed();
    harness
        .wait_for_phase(NS, APP, Phase::Healthy, &default_jwt)
        .await;
    println!(
        "JWT_SECRET fixed in its Secret: let through {:.2}s later, Healthy after {:.2}s",
        unblocked.as_secs_f64(),
        fixed.elapsed().as_secs_f64()
    );
    assert!(unblocked < UNBLOCK_WITHIN, "let through only after {unblocked:?}");

    // AUTH_MODE is a literal, not a Secret: its value is named.
    pin(&harness, &repo, "contract", &auth_mode).await;
    let app = wait_blocked(&harness, &auth_mode).await;
    assert_block_names(&harness, &app, &["AUTH_MODE is \"mixed\", must be \"clerk\""]).await;

    // OPENAI_API_KEY is required with LLM_PROVIDER=litellm (and not with stub, above).
    pin(&harness, &repo, "contract", &litellm).await;
    let app = wait_blocked(&harness, &litellm).await;
    assert_block_names(
        &harness,
        &app,
        &["OPENAI_API_KEY is required when LLM_PROVIDER is \"litellm\", and not set"],
    )
    .await;

    pin(&harness, &repo, "contract", &cors).await;
    let app = wait_blocked(&harness, &cors).await;
    assert_block_names(
        &harness,
        &app,
        &["CORS_ORIGINS is \"*\", a value the Runbook forbids (notEquals)"],
    )
    .await;

    // A literal for a `secret: true` variable: refused, and not quoted either.
    pin(&harness, &repo, "contract", &literal).await;
    let app = wait_blocked(&harness, &literal).await;
    assert_block_names(
        &harness,
        &app,
        &["JWT_SECRET is a literal; it must come from a Secret"],
    )
    .await;

    // Nothing of the refused revisions reached the running Deployment.
    let env = container_env(&live_api(&harness).await);
    assert_eq!(env.get("AUTH_MODE"), Some(&Some("clerk".to_string())));
    assert_eq!(
        env.get("CORS_ORIGINS"),
        Some(&Some("https://app.example.com".to_string()))
    );
    assert_eq!(
        status(&harness.app(NS, APP).await).current_revision.as_deref(),
        Some(default_jwt.as_str())
    );
    assert!(status(&harness.app(NS, APP).await).quarantined.is_empty());

    // No Secret value, nor the literal meant to be one, is in status, Events or the log.
    assert_nowhere(&harness, &["change-me", SHORT_JWT, GOOD_JWT, LITERAL_JWT]).await;
}
