//! Tenancy end to end, against a control plane that enforces RBAC: the controller
//! runs as its own user (`bosun`, a cluster admin) and applies an app's manifests
//! impersonating the app's ServiceAccount (`spec.serviceAccountName`, else the
//! controller's `--default-service-account`), so a tenant gets exactly the rights its
//! Role grants. `file://` sources read the controller's own disk and need
//! `--allow-file-sources`.
//!
//! What the API server did is read from its audit log (every write, dry runs
//! included, with the user and whom it impersonated) and its request metrics.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, BlockReason, Phase};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use bosun_devenv::{AuditedWrite, CONTROLLER_USER, WorkRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use support::{Harness, status};

/// The tenant's namespace, where the app and its ServiceAccount live.
const NS: &str = "tenant";
/// A namespace the tenant has no rights in.
const ELSEWHERE: &str = "elsewhere";
const APP: &str = "litevault";
const ACCOUNT: &str = "deployer";
/// The resources the example app is made of (ConfigMap, Service, Deployments).
const APP_RESOURCES: [&str; 3] = ["configmaps", "services", "deployments"];

fn account_user() -> String {
    format!("system:serviceaccount:{NS}:{ACCOUNT}")
}

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

/// A revision of the example app plus a ConfigMap in a namespace the tenant may not
/// write to.
fn commit_with_foreign_object(repo: &WorkRepo, version: &str) -> String {
    for (path, contents) in ExampleRevision::good(version).files() {
        repo.write(&path, &contents).unwrap();
    }
    repo.write(
        "deploy/elsewhere.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: intruder\n  namespace: {ELSEWHERE}\ndata:\n  version: \"{version}\"\n"
        ),
    )
    .unwrap();
    repo.commit(&format!("v{version} with a ConfigMap in {ELSEWHERE}"))
        .unwrap()
}

/// Makes `revision` the repository's content, without the foreign ConfigMap.
fn commit_without_foreign_object(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    if repo.path().join("deploy/elsewhere.yaml").exists() {
        repo.remove("deploy/elsewhere.yaml").unwrap();
    }
    commit(repo, revision, message)
}

/// The namespaces, the ServiceAccount `deployer` with a Role granting only what the
/// example app needs in its own namespace, and a Runbook with the workload gate alone.
/// The account may also read ConfigMaps in [`ELSEWHERE`] (a shared namespace, say), but
/// not write them: what refuses a revision reaching there is the write itself, whose
/// dry run the audit log records.
async fn set_up_tenant(harness: &Harness) {
    harness.namespace(NS).await;
    harness.namespace(ELSEWHERE).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(harness.client.clone(), NS);
    let account: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}
    }))
    .unwrap();
    accounts
        .patch(
            ACCOUNT,
            &PatchParams::apply("bosun-test"),
            &Patch::Apply(&account),
        )
        .await
        .expect("ServiceAccount");
    // Server-side apply needs `patch`, and `create` for an object that is not there
    // yet; the live object is read (`get`); prune and release need `delete` and `patch`.
    let verbs = ["get", "create", "patch", "delete"];
    grant(
        harness,
        NS,
        ACCOUNT,
        json!([
            {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": verbs},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs},
        ]),
    )
    .await;
    grant(
        harness,
        ELSEWHERE,
        "reader",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]),
    )
    .await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(NS, "quick"))
        .await;
}

/// A Role `name` in `namespace` with `rules`, bound to the ServiceAccount.
async fn grant(harness: &Harness, namespace: &str, name: &str, rules: serde_json::Value) {
    let params = PatchParams::apply("bosun-test");
    let roles: Api<Role> = Api::namespaced(harness.client.clone(), namespace);
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": rules,
    }))
    .unwrap();
    roles
        .patch(name, &params, &Patch::Apply(&role))
        .await
        .expect("Role");
    let bindings: Api<RoleBinding> = Api::namespaced(harness.client.clone(), namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NS}],
    }))
    .unwrap();
    bindings
        .patch(name, &params, &Patch::Apply(&binding))
        .await
        .expect("RoleBinding");
}

/// The AppDeployment on `url` (2s interval), applied as `service_account` if given.
fn app_yaml(url: &str, service_account: Option<&str>) -> String {
    let mut yaml = app_deployment_yaml(NS, APP, url, Some("quick"), "2s");
    if let Some(account) = service_account {
        yaml.push_str(&format!("  serviceAccountName: {account}\n"));
    }
    yaml
}

fn ready(app: &AppDeployment) -> (String, String, String) {
    let ready = support::ready_condition(app);
    (ready.status, ready.reason, ready.message)
}

async fn wait_blocked_at(harness: &Harness, revision: &str) -> AppDeployment {
    harness
        .wait_for(
            NS,
            APP,
            &format!("Blocked at {revision}"),
            Duration::from_secs(90),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == revision)
                })
            },
        )
        .await
}

/// Writes the controller sent to the app's own kinds of objects, as whoever.
fn writes_to_app_objects(writes: &[AuditedWrite]) -> Vec<&AuditedWrite> {
    writes
        .iter()
        .filter(|w| w.user == CONTROLLER_USER && APP_RESOURCES.contains(&w.resource.as_str()))
        .collect()
}

/// Everything the controller sent that the audit log records (writes and dry runs,
/// in its own name or impersonating).
async fn controller_requests(harness: &Harness) -> Vec<AuditedWrite> {
    let mut all = harness.control_plane.audit_writes().await.expect("audit log");
    // Dry runs included; the leader election's Lease renewals left out (a heartbeat).
    all.retain(|w| w.user == CONTROLLER_USER && w.resource != "leases");
    all
}

/// The Events bosun published about the app, by name: (reason, note, series count).
async fn app_events(harness: &Harness) -> BTreeMap<String, (String, String, i32)> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .map(|e| {
            (
                e.metadata.name.clone().unwrap_or_default(),
                (
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                    e.series.as_ref().map_or(1, |s| s.count),
                ),
            )
        })
        .collect()
}

async fn backend_image(harness: &Harness) -> String {
    harness.image_of(NS, "backend").await
}

async fn intruder(harness: &Harness) -> Option<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(harness.client.clone(), ELSEWHERE);
    api.get_opt("intruder").await.unwrap()
}

/// The Ready condition of a Forbidden block names who was refused what, where.
fn assert_forbidden_condition(app: &AppDeployment, revision: &str) {
    let s = status(app);
    let block = s.blocked.as_ref().expect("status.blocked");
    assert_eq!(block.revision, revision);
    assert_eq!(block.reason, BlockReason::Forbidden, "{block:?}");
    let (ready, reason, message) = ready(app);
    assert_eq!(ready, "False");
    assert_eq!(reason, "Forbidden", "{message}");
    // The object, and who may not do what where (the account may read there, not write).
    let refusal = format!(
        "forbidden: {} may not patch configmaps in namespace {ELSEWHERE}",
        account_user()
    );
    for expected in ["ConfigMap elsewhere/intruder", refusal.as_str()] {
        assert!(
            message.contains(expected),
            "Ready message lacks {expected:?}: {message}"
        );
    }
}

#[tokio::test]
async fn service_account_applies_its_namespace_and_is_refused_elsewhere_without_a_retry_loop() {
    let mut harness = Harness::start().await;
    set_up_tenant(&harness).await;
    let repo = harness.repo("app");
    let first = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness
        .apply_app(&app_yaml(&harness.git.url(repo.name()), Some(ACCOUNT)))
        .await;
    harness.start_controller();

    // 1. The app's own namespace: Healthy, every object written as the ServiceAccount.
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    let writes = controller_requests(&harness).await;
    let applied = writes_to_app_objects(&writes);
    for (resource, name) in [
        ("configmaps", "litevault-config"),
        ("services", "backend"),
        ("deployments", "backend"),
        ("deployments", "worker"),
    ] {
        assert!(
            applied.iter().any(|w| w.resource == resource
                && w.name.as_deref() == Some(name)
                && !w.dry_run
                && w.succeeded()),
            "no write of {resource}/{name}: {applied:#?}"
        );
    }
    for write in &applied {
        assert_eq!(
            write.impersonated_user.as_deref(),
            Some(account_user().as_str()),
            "written in the controller's own name: {write:#?}"
        );
        assert_eq!(write.namespace.as_deref(), Some(NS), "{write:#?}");
    }

    // 2. A revision that also writes to another namespace is refused as a whole.
    let second = commit_with_foreign_object(&repo, "2.0");
    let app = wait_blocked_at(&harness, &second).await;
    assert_forbidden_condition(&app, &second);
    eprintln!("blocked: {}", ready(&app).2);
    assert_eq!(status(&app).current_revision.as_deref(), Some(first.as_str()));
    assert!(intruder(&harness).await.is_none());
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");
    let after_block = controller_requests(&harness).await;
    let real_writes_of_second = writes_to_app_objects(&after_block)
        .into_iter()
        .filter(|w| !w.dry_run && w.succeeded())
        .count();
    assert_eq!(
        real_writes_of_second,
        applied.iter().filter(|w| !w.dry_run && w.succeeded()).count(),
        "an object of the blocked revision was written"
    );

    // No retry loop: over several Git intervals the block is checked again (a
    // permission may be granted meanwhile) with SubjectAccessReviews whose answers are
    // cached (a refusal for `access::REFUSAL_TTL`, a grant longer), before anything is
    // read or dry-run; nothing is written (not even the status) and no Event published.
    let interval = Duration::from_secs(2);
    let intervals = 8;
    let events_before = app_events(&harness).await;
    let version_before = harness.app(NS, APP).await.metadata.resource_version;
    let requests_before = controller_requests(&harness).await.len();
    let started = Instant::now();
    tokio::time::sleep(interval * intervals).await;
    let elapsed = started.elapsed();
    let requests = controller_requests(&harness).await;
    let new_requests = &requests[requests_before..];
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for w in new_requests {
        let key = format!(
            "{} {}{}{}{}",
            w.verb,
            w.resource,
            w.subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            if w.dry_run { " (dry run)" } else { "" },
            w.code.map(|c| format!(" {c}")).unwrap_or_default(),
        );
        *by_kind.entry(key).or_default() += 1;
    }
    let is_review = |w: &AuditedWrite| w.resource == "subjectaccessreviews";
    let checks = new_requests.iter().filter(|w| is_review(w)).count() as f64;
    let dry_runs = new_requests.iter().filter(|w| w.dry_run).count();
    let writes: Vec<_> = new_requests
        .iter()
        .filter(|w| !w.dry_run && !is_review(w))
        .collect();
    eprintln!(
        "blocked for {elapsed:?} ({intervals} intervals of {interval:?}): {checks} reviews, \
         {} audited requests, {} of them writes: {by_kind:?}",
        new_requests.len(),
        writes.len()
    );
    assert!(
        checks >= 1.0,
        "a block that may pass (a permission granted) is checked again: {by_kind:?}"
    );
    // The refused permission asked again once its refusal expired, and each granted
    // one (patch and create of the app's three resources) at most once more.
    let refusal_ttl = bosun::access::REFUSAL_TTL.as_secs_f64();
    let most_checks = (elapsed.as_secs_f64() / refusal_ttl).ceil() + 1.0 + 2.0 * APP_RESOURCES.len() as f64;
    assert!(
        checks <= most_checks,
        "{checks} reviews in {elapsed:?}: the answers are not cached: {by_kind:?}"
    );
    // Refused at the boundary, before any dry run.
    assert_eq!(
        dry_runs, 0,
        "dry runs of a revision refused at the boundary: {by_kind:?}"
    );
    assert!(writes.is_empty(), "written while blocked: {writes:#?}");
    assert_eq!(
        harness.app(NS, APP).await.metadata.resource_version,
        version_before,
        "the status was written while blocked"
    );
    let events_after = app_events(&harness).await;
    assert_eq!(events_after, events_before, "Events published while blocked");
    let blocked_events: Vec<_> = events_after
        .values()
        .filter(|(reason, note, _)| reason == "Blocked" && note.contains(&second[..12]))
        .collect();
    assert_eq!(blocked_events.len(), 1, "{events_after:#?}");
    let app = harness.app(NS, APP).await;
    assert_forbidden_condition(&app, &second);
    let entries = status(&app)
        .history
        .iter()
        .filter(|h| h.revision == second)
        .count();
    assert_eq!(
        entries,
        1,
        "one history entry for the blocked revision, however often it is retried: {:#?}",
        status(&app).history
    );
    assert!(
        status(&app).history.iter().any(|h| h.revision == first),
        "the healthy revision's history entry was pushed out"
    );
    assert!(intruder(&harness).await.is_none());
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:1.0");

    // A revision that stays in its namespace goes out again; the ConfigMap it no
    // longer has is pruned, also as the ServiceAccount.
    let third = commit_without_foreign_object(
        &repo,
        &ExampleRevision {
            with_config_map: false,
            ..ExampleRevision::good("3.0")
        },
        "v3.0 without the ConfigMap",
    );
    harness.wait_for_phase(NS, APP, Phase::Healthy, &third).await;
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:3.0");
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    assert!(config_maps.get_opt("litevault-config").await.unwrap().is_none());

    // Deleted (deletionPolicy Orphan), its objects are released as the ServiceAccount.
    let apps: Api<AppDeployment> = Api::namespaced(harness.client.clone(), NS);
    apps.delete(APP, &Default::default()).await.unwrap();
    support::eventually("the AppDeployment gone", Duration::from_secs(60), || async {
        Ok(apps.get_opt(APP).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), NS);
    let worker = deployments.get("worker").await.expect("worker kept");
    let annotations = worker.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key("bosun.dev/owner"),
        "worker not released: {annotations:?}"
    );

    let writes = controller_requests(&harness).await;
    let applied = writes_to_app_objects(&writes);
    let done_as_account = |verb: &str, resource: &str, name: &str| {
        applied.iter().any(|w| {
            w.verb == verb
                && w.resource == resource
                && w.name.as_deref() == Some(name)
                && !w.dry_run
                && w.succeeded()
                && w.impersonated_user.as_deref() == Some(account_user().as_str())
        })
    };
    assert!(
        done_as_account("delete", "configmaps", "litevault-config"),
        "prune: {applied:#?}"
    );
    assert!(
        done_as_account("patch", "deployments", "worker"),
        "release: {applied:#?}"
    );
    assert!(
        applied
            .iter()
            .all(|w| w.impersonated_user.as_deref() == Some(account_user().as_str())),
        "an app object was written in the controller's own name: {applied:#?}"
    );
}

#[tokio::test]
async fn default_service_account_applies_apps_that_name_none() {
    let mut harness = Harness::start().await;
    set_up_tenant(&harness).await;
    let repo = harness.repo("app");
    let url = harness.git.url(repo.name());
    let first = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    harness.apply_app(&app_yaml(&url, Some(ACCOUNT))).await;
    harness.start_controller_with(&["--default-service-account", ACCOUNT], &[]);
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    let second = commit_with_foreign_object(&repo, "2.0");
    let app = wait_blocked_at(&harness, &second).await;
    assert_forbidden_condition(&app, &second);

    // The spec no longer names an account: the controller's default is the same one,
    // so the same revision, tried again at once for the new generation, is refused the
    // same way; it is not applied with the controller's own rights.
    harness.apply_app(&app_yaml(&url, None)).await;
    let generation = harness.app(NS, APP).await.metadata.generation;
    let app = harness
        .wait_for(
            NS,
            APP,
            "the blocked revision tried again for the new generation",
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.blocked
                        .as_ref()
                        .is_some_and(|b| b.revision == second && b.generation == generation)
                })
            },
        )
        .await;
    assert_forbidden_condition(&app, &second);
    assert!(intruder(&harness).await.is_none());

    // A revision within the namespace goes out, as the default account.
    let marker = controller_requests(&harness).await.len();
    let third = commit_without_foreign_object(&repo, &ExampleRevision::good("3.0"), "v3.0");
    harness.wait_for_phase(NS, APP, Phase::Healthy, &third).await;
    assert_eq!(backend_image(&harness).await, "example/litevault-backend:3.0");
    let writes = controller_requests(&harness).await;
    let applied = writes_to_app_objects(&writes[marker..]);
    assert!(
        applied
            .iter()
            .any(|w| w.resource == "deployments" && w.name.as_deref() == Some("backend") && !w.dry_run),
        "{applied:#?}"
    );
    for write in &applied {
        assert_eq!(
            write.impersonated_user.as_deref(),
            Some(account_user().as_str()),
            "{write:#?}"
        );
    }

    // Without --default-service-account, with --single-tenant (the harness's default),
    // an app that names no account is applied with the controller's own rights: the
    // ConfigMap in the other namespace goes out, written by the controller in its own
    // name. (Without --single-tenant it is refused: tests/attack_reads.rs.)
    harness.kill_controller();
    harness.start_controller();
    let fourth = commit_with_foreign_object(&repo, "4.0");
    harness.wait_for_phase(NS, APP, Phase::Healthy, &fourth).await;
    let intruder = intruder(&harness).await.expect("applied as the controller");
    assert_eq!(
        intruder
            .data
            .unwrap_or_default()
            .get("version")
            .map(String::as_str),
        Some("4.0")
    );
    let writes = controller_requests(&harness).await;
    let foreign: Vec<_> = writes
        .iter()
        .filter(|w| w.namespace.as_deref() == Some(ELSEWHERE) && !w.dry_run && w.succeeded())
        .collect();
    assert!(!foreign.is_empty());
    assert!(
        foreign.iter().all(|w| w.impersonated_user.is_none()),
        "{foreign:#?}"
    );
}

#[tokio::test]
async fn file_sources_need_the_controller_flag() {
    let mut harness = Harness::start().await;
    harness.namespace(NS).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(NS, "quick"))
        .await;
    let repo = harness.repo("local");
    repo.write(
        "deploy/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-disk\ndata:\n  a: b\n",
    )
    .unwrap();
    let revision = repo.commit("one ConfigMap").unwrap();
    let url = format!("file://{}", repo.path().display());
    harness.apply_app(&app_yaml(&url, None)).await;

    harness.start_controller();
    let app = harness
        .wait_for(NS, APP, "Blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let (ready_status, reason, message) = ready(&app);
    assert_eq!(ready_status, "False");
    assert_eq!(reason, "SpecInvalid", "{message}");
    assert!(message.contains("--allow-file-sources"), "{message}");
    assert!(message.contains("file://"), "{message}");
    // Refused before it was read: nothing cloned, nothing applied.
    assert!(status(&app).desired_revision.is_none(), "{:?}", status(&app));
    let config_maps: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(config_maps.get_opt("from-disk").await.unwrap().is_none());
    assert_eq!(harness.app(NS, APP).await.status.unwrap().phase, Phase::Blocked);

    harness.kill_controller();
    harness.start_controller_with(&["--allow-file-sources"], &[]);
    harness.wait_for_phase(NS, APP, Phase::Healthy, &revision).await;
    assert!(config_maps.get_opt("from-disk").await.unwrap().is_some());
}
