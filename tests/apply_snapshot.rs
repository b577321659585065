//! The Apply stage and Healthy snapshots against a real (1.20) API server: ordered
//! server-side apply, no writes on an idle re-apply, drift repaired, prune limited to
//! what we still own, all-or-nothing validation, CRDs with their objects in one set,
//! and snapshot Secrets that round-trip, are retained, and are garbage-collected with
//! their AppDeployment.

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bosun::api::{APP_LABEL, AppDeployment, InventoryEntry, OWNER_ANNOTATION};
use bosun::apply::{Applier, ApplyError, ApplyOutcome, ApplyPlan, field_manager};
use bosun::core::FailureKind;
use bosun::failure::Classified;
use bosun::render::Manifest;
use bosun::snapshot::{self, SnapshotError};
use bosun_devenv::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::{Value, json};
use support::{eventually, init_tracing};

/// Generous: the machine is shared, and the garbage collector rediscovers new kinds
/// only every 30 s.
const WAIT: Duration = Duration::from_secs(180);

const NS: &str = "shop";
const OWNER: &str = "shop/app";
const APP_LABEL_VALUE: &str = "shop.app";

fn manifest(file: &str, line: usize, object: Value) -> Manifest {
    Manifest {
        object,
        file: file.to_string(),
        line,
    }
}

fn namespace(name: &str) -> Manifest {
    manifest(
        "ns.yaml",
        1,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
}

fn config_map(name: &str, value: &str) -> Manifest {
    manifest(
        &format!("{name}.yaml"),
        1,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
               "data": {"greeting": value}}),
    )
}

fn service() -> Manifest {
    manifest(
        "web.yaml",
        1,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"},
                        "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    )
}

fn deployment(replicas: i64) -> Manifest {
    manifest(
        "web.yaml",
        14,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web", "image": "example/ok:1",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}]
                    }]}
                }
            }
        }),
    )
}

/// Written in "Git order", not apply order: the applier sorts.
fn first_revision() -> Vec<Manifest> {
    vec![
        deployment(1),
        service(),
        config_map("settings", "hello"),
        config_map("taken", "mine"),
        namespace(NS),
    ]
}

async fn apply_set(
    applier: &Applier,
    manifests: &[Manifest],
    previous: &[InventoryEntry],
) -> Result<ApplyOutcome, ApplyError> {
    applier
        .apply(ApplyPlan {
            manifests,
            default_namespace: NS,
            owner: OWNER,
            app_label: APP_LABEL_VALUE,
            field_manager: &field_manager(OWNER),
            previous_inventory: previous,
        })
        .await
}

fn names(entries: &[InventoryEntry]) -> Vec<String> {
    entries.iter().map(ToString::to_string).collect()
}

async fn resource_version<K>(api: &Api<K>, name: &str) -> anyhow::Result<String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name)
        .await?
        .resource_version()
        .context("no resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_prune_validate_and_snapshot_on_a_real_api_server() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let applier = Applier::new(client.clone());

    let inventory = first_apply_creates_everything(&client, &applier).await?;
    idle_reapply_sends_nothing_and_drift_is_repaired(&client, &applier, &inventory).await?;
    let inventory = removed_objects_are_pruned_unless_taken_over(&client, &applier, &inventory).await?;
    invalid_revision_changes_nothing(&client, &applier, &inventory).await?;
    let app = crd_and_its_objects_apply_in_one_set(&client, &applier).await?;
    snapshots_round_trip_retain_and_go_with_their_app(&client, &app).await?;

    control_plane.stop();
    Ok(())
}

async fn first_apply_creates_everything(
    client: &Client,
    applier: &Applier,
) -> anyhow::Result<Vec<InventoryEntry>> {
    let outcome = apply_set(applier, &first_revision(), &[]).await?;
    assert_eq!(
        names(&outcome.sent),
        vec![
            "Namespace shop",
            "ConfigMap shop/settings",
            "ConfigMap shop/taken",
            "Service shop/web",
            "Deployment shop/web",
        ],
        "apply order"
    );
    assert_eq!(outcome.unchanged, 0);
    assert!(outcome.pruned.is_empty());
    let mut sorted = outcome.inventory.clone();
    sorted.sort();
    assert_eq!(outcome.inventory, sorted, "inventory is sorted");
    assert_eq!(outcome.inventory.len(), 5);

    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("web")
        .await?;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("settings")
        .await?;
    let service = Api::<Service>::namespaced(client.clone(), NS).get("web").await?;
    let namespace = Api::<Namespace>::all(client.clone()).get(NS).await?;
    for meta in [
        deployment.meta(),
        config_map.meta(),
        service.meta(),
        namespace.meta(),
    ] {
        let annotations = meta.annotations.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(annotations.get(OWNER_ANNOTATION).map(String::as_str), Some(OWNER));
        assert_eq!(labels.get(APP_LABEL).map(String::as_str), Some(APP_LABEL_VALUE));
        let managers: Vec<_> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.as_deref())
            .collect();
        assert!(
            managers.contains(&"bosun:shop/app"),
            "one field manager per app: {managers:?}"
        );
    }
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(1));
    Ok(outcome.inventory)
}

async fn idle_reapply_sends_nothing_and_drift_is_repaired(
    client: &Client,
    applier: &Applier,
    inventory: &[InventoryEntry],
) -> anyhow::Result<()> {
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    let services = Api::<Service>::namespaced(client.clone(), NS);
    let namespaces = Api::<Namespace>::all(client.clone());
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    // The Deployment's status is written by its controller, so its resourceVersion
    // moves on its own; its generation only moves when its spec is written.
    let before = (
        resource_version(&config_maps, "settings").await?,
        resource_version(&services, "web").await?,
        resource_version(&namespaces, NS).await?,
        deployments.get("web").await?.metadata.generation,
    );

    let outcome = apply_set(applier, &first_revision(), inventory).await?;
    assert!(outcome.sent.is_empty(), "idle re-apply sent {:?}", outcome.sent);
    assert_eq!(outcome.unchanged, 5);
    assert!(outcome.pruned.is_empty());
    assert_eq!(outcome.inventory, inventory);
    let after = (
        resource_version(&config_maps, "settings").await?,
        resource_version(&services, "web").await?,
        resource_version(&namespaces, NS).await?,
        deployments.get("web").await?.metadata.generation,
    );
    assert_eq!(before, after, "nothing was written");

    // Someone edits a field bosun owns: the next apply notices and puts it back.
    config_maps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "edited by hand"}})),
        )
        .await?;
    let outcome = apply_set(applier, &first_revision(), inventory).await?;
    assert_eq!(names(&outcome.sent), vec!["ConfigMap shop/settings"]);
    let data = config_maps.get("settings").await?.data.unwrap_or_default();
    assert_eq!(data.get("greeting").map(String::as_str), Some("hello"));

    // A field removed from Git is sent too (a pure subset test would miss it).
    let mut without_label = first_revision();
    without_label[0].object["metadata"]["labels"] = json!({"tier": "front"});
    let outcome = apply_set(applier, &without_label, inventory).await?;
    assert_eq!(names(&outcome.sent), vec!["Deployment shop/web"]);
    let outcome = apply_set(applier, &first_revision(), inventory).await?;
    assert_eq!(names(&outcome.sent), vec!["Deployment shop/web"]);
    let labels = deployments.get("web").await?.metadata.labels.unwrap_or_default();
    assert!(!labels.contains_key("tier"), "removed label is gone: {labels:?}");
    Ok(())
}

async fn removed_objects_are_pruned_unless_taken_over(
    client: &Client,
    applier: &Applier,
    inventory: &[InventoryEntry],
) -> anyhow::Result<Vec<InventoryEntry>> {
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    // Another app took "taken" over: it must survive our prune.
    config_maps
        .patch(
            "taken",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {OWNER_ANNOTATION: "other/app"}}})),
        )
        .await?;

    let second: Vec<Manifest> = first_revision()
        .into_iter()
        .filter(|m| m.object["kind"] != "ConfigMap")
        .collect();
    let outcome = apply_set(applier, &second, inventory).await?;
    assert!(outcome.sent.is_empty(), "{:?}", outcome.sent);
    assert_eq!(names(&outcome.pruned), vec!["ConfigMap shop/settings"]);
    assert_eq!(names(&outcome.prune_skipped), vec!["ConfigMap shop/taken"]);
    assert_eq!(outcome.inventory.len(), 3);
    assert!(config_maps.get_opt("settings").await?.is_none(), "pruned");
    assert!(config_maps.get_opt("taken").await?.is_some(), "not ours: kept");

    // Pruning again finds nothing left to do (NotFound and foreign objects are fine).
    let again = apply_set(applier, &second, inventory).await?;
    assert!(again.pruned.is_empty());
    Ok(outcome.inventory)
}

async fn invalid_revision_changes_nothing(
    client: &Client,
    applier: &Applier,
    inventory: &[InventoryEntry],
) -> anyhow::Result<()> {
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);

    // The ConfigMap comes first in apply order; the Deployment is invalid.
    let bad = vec![
        namespace(NS),
        service(),
        deployment(-1),
        config_map("fresh", "new"),
    ];
    let error = apply_set(applier, &bad, inventory)
        .await
        .err()
        .context("a negative replica count must be refused")?;
    assert_eq!(error.reason(), "DryRunFailed", "{error}");
    assert!(
        matches!(error.classify(), Classified::Refused(ref f) if f.kind == FailureKind::RevisionInvalid),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("Deployment shop/web"), "{text}");
    assert!(text.contains("web.yaml:14"), "{text}");
    assert!(text.contains("replicas"), "{text}");
    assert!(config_maps.get_opt("fresh").await?.is_none(), "nothing applied");
    let replicas = deployments.get("web").await?.spec.and_then(|s| s.replicas);
    assert_eq!(replicas, Some(1));

    // A kind the server does not know is refused before anything is sent, too.
    let unknown = vec![
        config_map("fresh", "new"),
        manifest(
            "gizmo.yaml",
            3,
            json!({"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"}}),
        ),
    ];
    let error = apply_set(applier, &unknown, inventory)
        .await
        .err()
        .context("an unknown kind must be refused")?;
    assert_eq!(error.reason(), "UnknownKind", "{error}");
    assert!(error.to_string().contains("Gizmo g (gizmo.yaml:3)"), "{error}");
    assert!(config_maps.get_opt("fresh").await?.is_none(), "nothing applied");
    Ok(())
}

/// The AppDeployment CRD, a new Namespace and an AppDeployment in it, in one set: the
/// CRD becomes Established before its object is sent, and neither the object nor the
/// namespace's content trips the dry run.
async fn crd_and_its_objects_apply_in_one_set(
    client: &Client,
    applier: &Applier,
) -> anyhow::Result<AppDeployment> {
    let crd = serde_json::to_value(AppDeployment::crd())?;
    let set = vec![
        manifest(
            "app.yaml",
            1,
            json!({
                "apiVersion": "bosun.dev/v1alpha1", "kind": "AppDeployment",
                "metadata": {"name": "app"},
                "spec": {"source": {"git": {"url": "file:///srv/git/app", "ref": {"branch": "main"}}}}
            }),
        ),
        manifest("crd.yaml", 1, crd),
        namespace("team"),
    ];
    let outcome = applier
        .apply(ApplyPlan {
            manifests: &set,
            default_namespace: "team",
            owner: "bosun-system/platform",
            app_label: "bosun-system.platform",
            field_manager: &field_manager("bosun-system/platform"),
            previous_inventory: &[],
        })
        .await?;
    assert_eq!(
        names(&outcome.sent),
        vec![
            "Namespace team",
            "CustomResourceDefinition appdeployments.bosun.dev",
            "AppDeployment team/app",
        ]
    );
    let app = Api::<AppDeployment>::namespaced(client.clone(), "team")
        .get("app")
        .await?;
    assert!(app.uid().is_some());
    Ok(app)
}

async fn snapshots_round_trip_retain_and_go_with_their_app(
    client: &Client,
    app: &AppDeployment,
) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(client.clone(), "team");
    let first = "1111111111111111111111111111111111111111";
    let second = "2222222222222222222222222222222222222222";
    let first_manifests = first_revision();
    let second_manifests = vec![service(), deployment(2)];

    let first_name = snapshot::store(client, app, first, "d1", &first_manifests).await?;
    let second_name = snapshot::store(client, app, second, "d1", &second_manifests).await?;
    assert_eq!(first_name, snapshot::secret_name("app", first, "d1"));
    let version = resource_version(&secrets, &first_name).await?;
    snapshot::store(client, app, first, "d1", &first_manifests).await?;
    assert_eq!(
        resource_version(&secrets, &first_name).await?,
        version,
        "storing again changes nothing"
    );

    let secret = secrets.get(&first_name).await?;
    assert_eq!(secret.type_.as_deref(), Some(snapshot::SNAPSHOT_SECRET_TYPE));
    let owner = &secret.owner_references()[0];
    assert_eq!(Some(owner.uid.clone()), app.uid());
    assert_eq!(owner.controller, Some(true));

    // Another render of the same commit (a changed path) has a Secret of its own.
    let other_render = snapshot::store(client, app, first, "d2", &second_manifests).await?;
    assert_ne!(other_render, first_name);
    let loaded = snapshot::load(client, "team", &first_name, first).await?;
    ensure!(loaded.len() == first_manifests.len(), "all manifests back");
    for (stored, original) in loaded.iter().zip(&first_manifests) {
        assert_eq!(stored.object, original.object);
        assert_eq!((&stored.file, stored.line), (&original.file, original.line));
    }
    let loaded = snapshot::load(client, "team", &second_name, second).await?;
    assert_eq!(loaded[1].object["spec"]["replicas"], 2);

    let missing = "3333333333333333333333333333333333333333";
    match snapshot::load(
        client,
        "team",
        &snapshot::secret_name("app", missing, "d1"),
        missing,
    )
    .await
    {
        Err(error @ SnapshotError::NotFound { .. }) => {
            assert!(error.to_string().contains("app-rev-333333333333"), "{error}");
        }
        other => bail!("expected NotFound, got {other:?}"),
    }

    snapshot::retain(client, app, std::slice::from_ref(&second_name)).await?;
    assert!(secrets.get_opt(&first_name).await?.is_none(), "not kept: deleted");
    assert!(
        secrets.get_opt(&other_render).await?.is_none(),
        "not kept: deleted"
    );
    assert!(secrets.get_opt(&second_name).await?.is_some(), "kept");

    // The snapshot is owned by the AppDeployment: the garbage collector removes it.
    Api::<AppDeployment>::namespaced(client.clone(), "team")
        .delete("app", &DeleteParams::background())
        .await?;
    eventually(
        "the snapshot to be garbage-collected with its app",
        WAIT,
        || async { Ok(secrets.get_opt(&second_name).await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}
