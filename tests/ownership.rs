//! Ownership end to end: what bosun takes over, what it deletes when Git no longer
//! has it, what it keeps, what it refuses to touch because another app owns it, and
//! what becomes of an app's objects when the AppDeployment is deleted.
//!
//! An object bosun applies carries the owner annotation `bosun.dev/owner:
//! <namespace>/<name>` and the label `bosun.dev/app`; one it keeps but no longer
//! manages is released: both are removed, the object stays as it is.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bosun::api::{AppDeployment, BlockReason, InventoryEntry, Phase};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use bosun_devenv::{AuditedWrite, CONTROLLER_USER, WorkRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use support::{Harness, eventually, status};

const NS: &str = "shop";
const OWNER: &str = "bosun.dev/owner";
const APP_LABEL: &str = "bosun.dev/app";
/// How long the garbage collector may take to delete what an AppDeployment owned.
const GARBAGE_COLLECTION: Duration = Duration::from_secs(120);

/// A namespace with a Runbook that has only the workload gate and a 1s verify window.
async fn set_up(harness: &Harness) {
    harness.namespace(NS).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(NS, "quick"))
        .await;
}

/// AppDeployment `name` on `repo` (2s interval), with `extra_spec` lines under spec.
async fn apply_app(harness: &Harness, name: &str, repo: &WorkRepo, extra_spec: &str) {
    let mut yaml = app_deployment_yaml(NS, name, &harness.git.url(repo.name()), Some("quick"), "2s");
    yaml.push_str(extra_spec);
    harness.apply_app(&yaml).await;
}

fn config_map_yaml(name: &str, annotations: &[(&str, &str)], data: &[(&str, &str)]) -> String {
    let mut yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
    if !annotations.is_empty() {
        yaml.push_str("  annotations:\n");
        for (key, value) in annotations {
            yaml.push_str(&format!("    {key}: \"{value}\"\n"));
        }
    }
    yaml.push_str("data:\n");
    for (key, value) in data {
        yaml.push_str(&format!("  {key}: \"{value}\"\n"));
    }
    yaml
}

/// Makes `files` the whole content of `deploy/` and commits.
fn commit_files(repo: &WorkRepo, files: &[(&str, String)], message: &str) -> String {
    let deploy = repo.path().join("deploy");
    if deploy.exists() {
        for entry in std::fs::read_dir(&deploy).unwrap().flatten() {
            let path = format!("deploy/{}", entry.file_name().to_string_lossy());
            repo.remove(&path).unwrap();
        }
    }
    for (path, contents) in files {
        repo.write(&format!("deploy/{path}"), contents).unwrap();
    }
    repo.commit(message).unwrap()
}

fn config_maps(harness: &Harness) -> Api<ConfigMap> {
    Api::namespaced(harness.client.clone(), NS)
}

fn owner_of<K: Resource>(object: &K) -> Option<String> {
    object.meta().annotations.as_ref()?.get(OWNER).cloned()
}

fn app_label_of<K: Resource>(object: &K) -> Option<String> {
    object.meta().labels.as_ref()?.get(APP_LABEL).cloned()
}

/// Kept but no longer bosun's: no owner annotation, no app label, no field owned by
/// an app's field manager (another app may take it over).
fn assert_released<K: Resource>(object: &K, what: &str) {
    assert_eq!(owner_of(object), None, "{what} still names an owner");
    assert_eq!(app_label_of(object), None, "{what} still has the app label");
    let managers: Vec<&str> = object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    assert!(
        !managers.iter().any(|m| m.starts_with("bosun:")),
        "{what} still has fields owned by an app: {managers:?}"
    );
}

fn inventory_entry<'a>(app: &'a AppDeployment, kind: &str, name: &str) -> Option<&'a InventoryEntry> {
    status(app)
        .inventory
        .iter()
        .find(|e| e.kind == kind && e.name == name)
}

fn data(config_map: &ConfigMap) -> BTreeMap<String, String> {
    config_map.data.clone().unwrap_or_default()
}

/// Waits until `name` is gone or on its way out (a finalizer may hold it a moment).
async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} deleted"), Duration::from_secs(60), || async {
        Ok(match api.get_opt(name).await? {
            None => Some(()),
            Some(object) if object.meta().deletion_timestamp.is_some() => Some(()),
            Some(_) => None,
        })
    })
    .await
    .unwrap();
}

/// Whether the request was sent with `?fieldManager=<manager>` (URL-encoded or not).
fn sent_as_field_manager(write: &AuditedWrite, manager: &str) -> bool {
    let encoded = manager.replace(':', "%3A").replace('/', "%2F");
    let query = write.request_uri.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .any(|pair| pair == format!("fieldManager={manager}") || pair == format!("fieldManager={encoded}"))
}

async fn snapshot_secrets(harness: &Harness, app: &AppDeployment) -> Vec<Secret> {
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let uid = app.uid().expect("uid");
    secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.owner_references().iter().any(|o| o.uid == uid))
        .collect()
}

#[tokio::test]
async fn an_object_found_in_place_is_adopted_and_released_while_one_bosun_created_is_pruned() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    // Made by hand before bosun ever applied it.
    let by_hand = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("origin".to_string(), "by hand".to_string()),
            ("level".to_string(), "debug".to_string()),
        ])),
        ..Default::default()
    };
    config_maps(&harness)
        .create(&PostParams::default(), &by_hand)
        .await
        .unwrap();
    let repo = harness.repo("app");
    let first = commit_files(
        &repo,
        &[
            (
                "settings.yaml",
                config_map_yaml("settings", &[], &[("level", "info")]),
            ),
            ("made.yaml", config_map_yaml("made", &[], &[("a", "b")])),
        ],
        "settings and made",
    );
    apply_app(&harness, "app", &repo, "").await;
    harness.start_controller();

    let app = harness.wait_for_phase(NS, "app", Phase::Healthy, &first).await;
    let found = inventory_entry(&app, "ConfigMap", "settings").expect("settings in the inventory");
    assert!(found.adopted, "{found:?}");
    let made = inventory_entry(&app, "ConfigMap", "made").expect("made in the inventory");
    assert!(!made.adopted, "{made:?}");
    let settings = config_maps(&harness).get("settings").await.unwrap();
    assert_eq!(owner_of(&settings).as_deref(), Some("shop/app"));
    assert_eq!(data(&settings).get("level").map(String::as_str), Some("info"));
    assert_eq!(
        data(&settings).get("origin").map(String::as_str),
        Some("by hand"),
        "a field Git does not set is left alone"
    );

    // Git drops both: the one bosun created goes, the one it found stays, released.
    let second = commit_files(
        &repo,
        &[("other.yaml", config_map_yaml("other", &[], &[("c", "d")]))],
        "neither",
    );
    let app = harness.wait_for_phase(NS, "app", Phase::Healthy, &second).await;
    assert!(config_maps(&harness).get_opt("made").await.unwrap().is_none());
    let settings = config_maps(&harness)
        .get_opt("settings")
        .await
        .unwrap()
        .expect("the adopted ConfigMap was deleted");
    assert_released(&settings, "settings");
    assert_eq!(data(&settings).get("origin").map(String::as_str), Some("by hand"));
    assert_eq!(data(&settings).get("level").map(String::as_str), Some("info"));
    let names: Vec<&str> = status(&app).inventory.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["other"]);
    // And it stays so: later resyncs do not touch it.
    let version = settings.resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settings = config_maps(&harness).get("settings").await.unwrap();
    assert_eq!(settings.resource_version(), version);
}

#[tokio::test]
async fn namespaces_and_volume_claims_are_kept_unless_their_manifest_opts_in() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let namespace = |name: &str, prune: Option<&str>| {
        let annotations = prune
            .map(|p| format!("  annotations:\n    bosun.dev/prune: \"{p}\"\n"))
            .unwrap_or_default();
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{annotations}")
    };
    let claim = |name: &str, prune: Option<&str>| {
        let annotations = prune
            .map(|p| format!("  annotations:\n    bosun.dev/prune: \"{p}\"\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n{annotations}spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n"
        )
    };
    let repo = harness.repo("app");
    let first = commit_files(
        &repo,
        &[
            ("ns-kept.yaml", namespace("kept-ns", None)),
            ("ns-pruned.yaml", namespace("pruned-ns", Some("true"))),
            ("pvc-kept.yaml", claim("kept-data", None)),
            ("pvc-pruned.yaml", claim("pruned-data", Some("true"))),
            (
                "pinned.yaml",
                config_map_yaml("pinned", &[("bosun.dev/prune", "false")], &[("a", "b")]),
            ),
            ("plain.yaml", config_map_yaml("plain", &[], &[("a", "b")])),
            ("stays.yaml", config_map_yaml("stays", &[], &[("a", "b")])),
        ],
        "namespaces, claims, ConfigMaps",
    );
    apply_app(&harness, "app", &repo, "").await;
    harness.start_controller();
    let app = harness.wait_for_phase(NS, "app", Phase::Healthy, &first).await;
    assert_eq!(status(&app).inventory.len(), 7, "{:?}", status(&app).inventory);
    assert!(status(&app).inventory.iter().all(|e| !e.adopted));

    let second = commit_files(
        &repo,
        &[("stays.yaml", config_map_yaml("stays", &[], &[("a", "b")]))],
        "only stays",
    );
    let app = harness.wait_for_phase(NS, "app", Phase::Healthy, &second).await;
    let names: Vec<&str> = status(&app).inventory.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["stays"]);

    let namespaces: Api<Namespace> = Api::all(harness.client.clone());
    let kept_ns = namespaces.get("kept-ns").await.expect("Namespace kept");
    assert!(kept_ns.metadata.deletion_timestamp.is_none());
    assert_released(&kept_ns, "Namespace kept-ns");
    wait_deleted(&namespaces, "pruned-ns").await;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(harness.client.clone(), NS);
    let kept_claim = claims.get("kept-data").await.expect("PVC kept");
    assert!(kept_claim.metadata.deletion_timestamp.is_none());
    assert_released(&kept_claim, "PVC kept-data");
    wait_deleted(&claims, "pruned-data").await;

    let pinned = config_maps(&harness).get("pinned").await.expect("kept");
    assert_released(&pinned, "ConfigMap pinned");
    assert!(config_maps(&harness).get_opt("plain").await.unwrap().is_none());
}

#[tokio::test]
async fn a_second_app_cannot_take_an_object_another_app_owns() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let first_repo = harness.repo("first");
    let first_revision = commit_files(
        &first_repo,
        &[(
            "shared.yaml",
            config_map_yaml("shared", &[], &[("owner", "first")]),
        )],
        "shared",
    );
    apply_app(&harness, "first", &first_repo, "").await;
    harness.start_controller();
    harness
        .wait_for_phase(NS, "first", Phase::Healthy, &first_revision)
        .await;
    // Restarted, the controller knows the object from its watch cache's first list
    // rather than from the apply it made itself: an idle resync must not send it
    // either (items of a list come without apiVersion and kind).
    harness.kill_controller();
    harness.start_controller();
    let before = config_maps(&harness).get("shared").await.unwrap();
    let audit_mark = harness.control_plane.audit_writes().await.unwrap().len();

    let second_repo = harness.repo("second");
    let second_revision = commit_files(
        &second_repo,
        &[
            ("only.yaml", config_map_yaml("second-only", &[], &[("a", "b")])),
            (
                "shared.yaml",
                config_map_yaml("shared", &[], &[("owner", "second")]),
            ),
        ],
        "shared too",
    );
    apply_app(&harness, "second", &second_repo, "").await;
    let app = harness
        .wait_for(NS, "second", "Blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let s = status(&app);
    let block = s.blocked.as_ref().expect("status.blocked");
    assert_eq!(block.revision, second_revision);
    assert_eq!(block.reason, BlockReason::OwnershipConflict);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "OwnershipConflict")
    );
    assert!(
        ready.message.contains("ConfigMap shop/shared") && ready.message.contains("AppDeployment shop/first"),
        "{}",
        ready.message
    );
    assert!(s.current_revision.is_none());
    assert!(
        config_maps(&harness)
            .get_opt("second-only")
            .await
            .unwrap()
            .is_none(),
        "an object of the refused revision was applied"
    );

    // Several intervals later (the block is tried again), the first app's object is
    // as it was, and the second app never wrote to it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = config_maps(&harness).get("shared").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(data(&after).get("owner").map(String::as_str), Some("first"));
    assert_eq!(owner_of(&after).as_deref(), Some("shop/first"));
    let managers: Vec<String> = after
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m.contains("shop/second")),
        "{managers:?}"
    );
    let writes = harness.control_plane.audit_writes().await.unwrap();
    let to_shared: Vec<_> = writes[audit_mark..]
        .iter()
        .filter(|w| w.resource == "configmaps" && w.name.as_deref() == Some("shared") && !w.dry_run)
        .collect();
    assert!(
        to_shared.is_empty(),
        "writes to the owned object while the other app was refused: {:#?}\n{}",
        to_shared
            .iter()
            .map(|w| (w.received_at.to_string(), w.request_uri.clone(), w.code))
            .collect::<Vec<_>>(),
        harness.controller_log()
    );
    // Not even a dry run under the second app's field manager (the owner annotation
    // refuses it first); the first app's applies are found the same way.
    let by_manager = |manager: &str| -> Vec<&AuditedWrite> {
        writes
            .iter()
            .filter(|w| w.user == CONTROLLER_USER && w.name.as_deref() == Some("shared"))
            .filter(|w| sent_as_field_manager(w, manager))
            .collect()
    };
    assert!(!by_manager("bosun:shop/first").is_empty());
    let by_second = by_manager("bosun:shop/second");
    assert!(by_second.is_empty(), "{by_second:#?}");
    let app = harness.app(NS, "second").await;
    assert_eq!(status(&app).phase, Phase::Blocked);
    assert_eq!(
        status(&app)
            .history
            .iter()
            .filter(|h| h.revision == second_revision)
            .count(),
        1
    );
}

#[tokio::test]
async fn deleting_an_app_orphans_its_objects_by_default_and_a_new_app_takes_them_over() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let repo = harness.repo("app");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    apply_app(&harness, "keeper", &repo, "").await;
    harness.start_controller();
    let app = harness
        .wait_for_phase(NS, "keeper", Phase::Healthy, &revision)
        .await;
    assert!(!snapshot_secrets(&harness, &app).await.is_empty());
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), NS);
    let backend_uid = deployments.get("backend").await.unwrap().uid();

    let apps: Api<AppDeployment> = Api::namespaced(harness.client.clone(), NS);
    apps.delete("keeper", &DeleteParams::default()).await.unwrap();
    eventually("keeper gone", Duration::from_secs(60), || async {
        Ok(apps.get_opt("keeper").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    // Still running, same objects, released.
    let backend = deployments.get("backend").await.unwrap();
    assert_eq!(backend.uid(), backend_uid);
    assert!(backend.metadata.deletion_timestamp.is_none());
    assert_released(&backend, "Deployment backend");
    assert_eq!(
        backend.status.as_ref().and_then(|s| s.ready_replicas),
        Some(2),
        "{:?}",
        backend.status
    );
    assert_released(&deployments.get("worker").await.unwrap(), "Deployment worker");
    assert_released(
        &config_maps(&harness).get("litevault-config").await.unwrap(),
        "ConfigMap litevault-config",
    );
    // The snapshots were the app's own: they go with it (the garbage collector, which
    // here takes about 40 s: it learns of the CRD just installed at its next discovery).
    eventually("snapshot Secrets gone", GARBAGE_COLLECTION, || async {
        Ok(snapshot_secrets(&harness, &app).await.is_empty().then_some(()))
    })
    .await
    .unwrap();

    // A new app on the same repository takes the orphans over.
    apply_app(&harness, "heir", &repo, "").await;
    let heir = harness
        .wait_for_phase(NS, "heir", Phase::Healthy, &revision)
        .await;
    let backend = deployments.get("backend").await.unwrap();
    assert_eq!(backend.uid(), backend_uid, "taken over, not recreated");
    assert_eq!(owner_of(&backend).as_deref(), Some("shop/heir"));
    assert_eq!(app_label_of(&backend).as_deref(), Some("shop.heir"));
    assert_eq!(status(&heir).inventory.len(), 4, "{:?}", status(&heir).inventory);
    // Found rather than created: a later deletion with policy Delete keeps them.
    assert!(status(&heir).inventory.iter().all(|e| e.adopted));
}

#[tokio::test]
async fn deleting_an_app_with_policy_delete_removes_what_it_created_and_keeps_what_it_found() {
    let mut harness = Harness::start().await;
    set_up(&harness).await;
    let found = ConfigMap {
        metadata: ObjectMeta {
            name: Some("found".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("origin".to_string(), "by hand".to_string())])),
        ..Default::default()
    };
    config_maps(&harness)
        .create(&PostParams::default(), &found)
        .await
        .unwrap();
    let repo = harness.repo("app");
    for (path, contents) in ExampleRevision::good("1.0").files() {
        repo.write(&path, &contents).unwrap();
    }
    repo.write(
        "deploy/found.yaml",
        &config_map_yaml("found", &[], &[("level", "info")]),
    )
    .unwrap();
    let revision = repo.commit("v1.0 and found").unwrap();
    apply_app(&harness, "doomed", &repo, "  deletionPolicy: Delete\n").await;
    harness.start_controller();
    let app = harness
        .wait_for_phase(NS, "doomed", Phase::Healthy, &revision)
        .await;
    assert!(inventory_entry(&app, "ConfigMap", "found").unwrap().adopted);
    assert!(!snapshot_secrets(&harness, &app).await.is_empty());

    let apps: Api<AppDeployment> = Api::namespaced(harness.client.clone(), NS);
    apps.delete("doomed", &DeleteParams::default()).await.unwrap();
    eventually("doomed gone", Duration::from_secs(60), || async {
        Ok(apps.get_opt("doomed").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), NS);
    wait_deleted(&deployments, "backend").await;
    wait_deleted(&deployments, "worker").await;
    wait_deleted(&config_maps(&harness), "litevault-config").await;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(harness.client.clone(), NS);
    wait_deleted(&services, "backend").await;
    let found = config_maps(&harness)
        .get_opt("found")
        .await
        .unwrap()
        .expect("what bosun found is kept");
    assert!(found.metadata.deletion_timestamp.is_none());
    assert_released(&found, "ConfigMap found");
    assert_eq!(data(&found).get("origin").map(String::as_str), Some("by hand"));
    eventually("snapshot Secrets gone", GARBAGE_COLLECTION, || async {
        Ok(snapshot_secrets(&harness, &app).await.is_empty().then_some(()))
    })
    .await
    .unwrap();
}
