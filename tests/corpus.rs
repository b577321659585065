//! Manifests other people wrote, as users bring them (`../shared/corpus/`, see its
//! README), through the real `bosun` binary on a real (1.20) control plane:
//! `guestbook` and `sock-shop` become Healthy and then stay quiet (no write request over
//! several resyncs, counted from the API server's audit log); a new image in one
//! Deployment writes that Deployment only; manifests with numeric quantities stay quiet
//! too; `podinfo` is Blocked with a message naming the file and the reason, and nothing
//! of it is applied.
//!
//! Run with `--no-capture` to see what was measured (time to Healthy, requests per resync).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bosun::api::{BlockReason, Phase};
use bosun_devenv::example::workload_only_runbook_yaml;
use bosun_devenv::{AuditedWrite, CONTROLLER_USER, WorkRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::Value;
use support::{Harness, status};

/// Git interval of every app here: one resync per interval once Healthy.
const INTERVAL: Duration = Duration::from_secs(2);
const INTERVAL_TEXT: &str = "2s";
/// How many intervals an app must stay quiet.
const QUIET_INTERVALS: u32 = 4;
/// The Runbook of every app: only the workload gate, a 1 s verify window.
const RUNBOOK: &str = "quick";

/// `<repository root>/../shared/corpus/<name>`.
fn corpus(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(name);
    assert!(
        dir.is_dir(),
        "{} is missing: the corpus lives beside the repository",
        dir.display()
    );
    dir
}

/// Copies the corpus directory `name` (all its files but `leave_out`) to `deploy/` of
/// `repo`, as a user would commit it, and commits; returns the commit.
fn commit_corpus(repo: &WorkRepo, name: &str, leave_out: &[&str]) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(name))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let file_name = file.file_name().unwrap().to_str().unwrap().to_string();
        if leave_out.contains(&file_name.as_str()) {
            continue;
        }
        let contents = std::fs::read_to_string(&file).unwrap();
        repo.write(&format!("deploy/{file_name}"), &contents).unwrap();
    }
    repo.commit(&format!("{name} as found upstream")).unwrap()
}

/// A namespace, the Runbook and the AppDeployment `name` following `repo` (app and
/// objects in the same namespace).
async fn create_app(harness: &Harness, namespace: &str, name: &str, repo: &WorkRepo) {
    harness.namespace(namespace).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(namespace, RUNBOOK))
        .await;
    harness
        .apply_example_app(namespace, name, repo.name(), Some(RUNBOOK), INTERVAL_TEXT)
        .await;
}

/// Creates the app and waits for it to be Healthy at `revision`; returns how long that took.
async fn deploy_until_healthy(
    harness: &Harness,
    namespace: &str,
    name: &str,
    repo: &WorkRepo,
    revision: &str,
) -> Duration {
    let started = Instant::now();
    create_app(harness, namespace, name, repo).await;
    harness
        .wait_for_phase(namespace, name, Phase::Healthy, revision)
        .await;
    started.elapsed()
}

/// The controller starts with JSON logs: its "applied revision" lines say when each
/// apply (deploy or resync) ended and what it sent.
fn start_controller(harness: &mut Harness) {
    harness.start_controller_with(&["--log-json"], &[]);
}

/// Every write request the controller sent, dry runs included, oldest first.
async fn controller_requests(harness: &Harness) -> Vec<AuditedWrite> {
    let mut requests = harness
        .control_plane
        .audit_writes()
        .await
        .expect("audit log readable");
    requests.retain(|request| request.effective_user() == CONTROLLER_USER);
    requests
}

/// One apply of a revision, as the controller logged it.
#[derive(Debug)]
struct LoggedApply {
    at: Timestamp,
    owner: String,
    sent: u64,
    unchanged: u64,
}

/// The controller's "applied revision" log lines (deploys and resyncs).
fn logged_applies(harness: &Harness) -> Vec<LoggedApply> {
    let log = std::fs::read_to_string(harness.dir.path().join("controller-1.err.log")).unwrap_or_default();
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "applied revision")
        .map(|line| LoggedApply {
            at: line["timestamp"].as_str().unwrap_or_default().parse().unwrap(),
            owner: line["fields"]["owner"].as_str().unwrap_or_default().to_string(),
            sent: line["fields"]["sent"].as_u64().unwrap_or_default(),
            unchanged: line["fields"]["unchanged"].as_u64().unwrap_or_default(),
        })
        .collect()
}

/// `verb resource[/subresource] namespace/name` of a request, for messages.
fn describe(request: &AuditedWrite) -> String {
    format!(
        "{}{} {}{} {}/{} -> {:?}",
        request.verb,
        if request.dry_run { " (dry run)" } else { "" },
        request.resource,
        request
            .subresource
            .as_ref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default(),
        request.namespace.as_deref().unwrap_or("-"),
        request.name.as_deref().unwrap_or("-"),
        request.code
    )
}

/// What a write of the controller was about, for one app whose AppDeployment and
/// objects share a namespace (no corpus app has a Secret of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WriteKind {
    /// The AppDeployment: its status or its finalizer.
    AppDeployment,
    Event,
    /// A snapshot Secret of a revision (created before apply, old ones deleted).
    Snapshot,
    /// One of the app's own objects.
    Object,
}

fn kind_of(request: &AuditedWrite) -> WriteKind {
    match request.resource.as_str() {
        "appdeployments" => WriteKind::AppDeployment,
        "events" => WriteKind::Event,
        "secrets" => WriteKind::Snapshot,
        _ => WriteKind::Object,
    }
}

fn count_by_kind<'a>(requests: impl IntoIterator<Item = &'a AuditedWrite>) -> BTreeMap<WriteKind, usize> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(kind_of(request)).or_default() += 1;
    }
    counts
}

/// What a quiet period looked like.
struct Quiet {
    /// Resyncs of each app in the period (its "applied revision" lines).
    resyncs: BTreeMap<String, usize>,
    /// Dry runs sent in each resync, in order, per app.
    dry_runs_per_resync: BTreeMap<String, Vec<usize>>,
}

/// Waits [`QUIET_INTERVALS`] intervals and checks that the controller sent no write
/// request at all (dry runs are counted, not refused), that no app's status was
/// rewritten, and that every app did resync in that time.
async fn assert_quiet(harness: &Harness, apps: &[(&str, &str)]) -> Quiet {
    let app_versions = async || {
        let mut versions = Vec::new();
        for (namespace, name) in apps {
            versions.push(harness.app(namespace, name).await.metadata.resource_version);
        }
        versions
    };
    let versions_before = app_versions().await;
    let writes_before = harness.controller_writes().await.len();
    let requests_before = controller_requests(harness).await.len();
    let applies_before = logged_applies(harness).len();
    let window_start = Timestamp::now();

    tokio::time::sleep(INTERVAL * QUIET_INTERVALS + Duration::from_millis(500)).await;

    let writes: Vec<String> = harness
        .controller_writes()
        .await
        .iter()
        .skip(writes_before)
        .map(describe)
        .collect();
    assert!(
        writes.is_empty(),
        "an idle resync sent {} write request(s):\n{}",
        writes.len(),
        writes.join("\n")
    );
    assert_eq!(
        app_versions().await,
        versions_before,
        "an idle resync rewrote an AppDeployment"
    );

    // Dry runs are not writes; they are counted per resync.
    let requests: Vec<AuditedWrite> = controller_requests(harness)
        .await
        .into_iter()
        .skip(requests_before)
        .collect();
    let applies: Vec<LoggedApply> = logged_applies(harness).into_iter().skip(applies_before).collect();
    let mut quiet = Quiet {
        resyncs: BTreeMap::new(),
        dry_runs_per_resync: BTreeMap::new(),
    };
    for (namespace, name) in apps {
        let owner = format!("{namespace}/{name}");
        let mine: Vec<&LoggedApply> = applies.iter().filter(|a| a.owner == owner).collect();
        assert!(
            mine.len() >= (QUIET_INTERVALS - 1) as usize,
            "{owner} resynced {} times in {QUIET_INTERVALS} intervals of {INTERVAL:?}:\n{}",
            mine.len(),
            harness.controller_log()
        );
        assert!(
            mine.iter().all(|a| a.sent == 0 && a.unchanged > 0),
            "{owner}: {mine:?}"
        );
        // A resync's dry runs are those of its namespace sent since the one before it.
        let mut since = window_start;
        let mut per_resync = Vec::new();
        for apply in &mine {
            let dry_runs = requests
                .iter()
                .filter(|r| r.dry_run && r.namespace.as_deref() == Some(*namespace))
                .filter(|r| r.received_at >= since && r.received_at <= apply.at)
                .count();
            per_resync.push(dry_runs);
            since = apply.at;
        }
        quiet.resyncs.insert(owner.clone(), mine.len());
        quiet.dry_runs_per_resync.insert(owner, per_resync);
    }
    quiet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guestbook_and_sock_shop_become_healthy_then_stay_quiet() {
    let mut harness = Harness::start().await;
    start_controller(&mut harness);

    let guestbook = harness.repo("guestbook");
    let guestbook_revision = commit_corpus(&guestbook, "guestbook", &[]);
    let guestbook_time = deploy_until_healthy(
        &harness,
        "guestbook",
        "guestbook",
        &guestbook,
        &guestbook_revision,
    )
    .await;
    let after_guestbook = controller_requests(&harness).await;

    let sock_shop = harness.repo("sock-shop");
    let sock_shop_revision = commit_corpus(&sock_shop, "sock-shop", &[]);
    let sock_shop_time = deploy_until_healthy(
        &harness,
        "sock-shop",
        "sock-shop",
        &sock_shop,
        &sock_shop_revision,
    )
    .await;
    let after_sock_shop = controller_requests(&harness).await;

    // Every object is there; the Ingress through networking.k8s.io/v1, which 1.19+ serves.
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), "sock-shop");
    let services: Api<Service> = Api::namespaced(harness.client.clone(), "sock-shop");
    assert_eq!(
        deployments.list(&Default::default()).await.unwrap().items.len(),
        14
    );
    assert_eq!(services.list(&Default::default()).await.unwrap().items.len(), 14);
    let ingresses: Api<Ingress> = Api::namespaced(harness.client.clone(), "sock-shop");
    let ingress = ingresses.get("front-end-ingress").await.unwrap();
    assert_eq!(ingress.spec.unwrap().ingress_class_name.as_deref(), Some("nginx"));
    let app = harness.app("sock-shop", "sock-shop").await;
    assert_eq!(
        status(&app).inventory.len(),
        29,
        "14 Deployments, 14 Services, an Ingress"
    );

    let deploy_requests = |requests: &[AuditedWrite], namespace: &str| {
        let mine: Vec<&AuditedWrite> = requests
            .iter()
            .filter(|r| r.namespace.as_deref() == Some(namespace))
            .collect();
        let writes = count_by_kind(mine.iter().copied().filter(|r| !r.dry_run));
        let dry_runs = mine.iter().filter(|r| r.dry_run).count();
        (writes, dry_runs)
    };
    let (guestbook_writes, guestbook_dry_runs) = deploy_requests(&after_guestbook, "guestbook");
    let (sock_shop_writes, sock_shop_dry_runs) = deploy_requests(&after_sock_shop, "sock-shop");
    println!("guestbook: Healthy {guestbook_time:.1?} after the AppDeployment was created");
    println!("  deploy: writes {guestbook_writes:?}, dry runs {guestbook_dry_runs}");
    println!("sock-shop: Healthy {sock_shop_time:.1?} after the AppDeployment was created");
    println!("  deploy: writes {sock_shop_writes:?}, dry runs {sock_shop_dry_runs}");
    assert_eq!(guestbook_writes.get(&WriteKind::Object), Some(&2));
    assert_eq!(sock_shop_writes.get(&WriteKind::Object), Some(&29));

    let apps = [("guestbook", "guestbook"), ("sock-shop", "sock-shop")];
    let quiet = assert_quiet(&harness, &apps).await;
    println!(
        "quiet for {QUIET_INTERVALS} intervals of {INTERVAL:?}: resyncs {:?}, dry runs per resync {:?}, 0 writes",
        quiet.resyncs, quiet.dry_runs_per_resync
    );

    // A new image in one Deployment: only that Deployment is written.
    let carts = sock_shop.path().join("deploy/carts-dep.yaml");
    let manifest = std::fs::read_to_string(&carts).unwrap();
    assert!(manifest.contains("image: weaveworksdemos/carts:0.4.8"));
    std::fs::write(
        &carts,
        manifest.replace("weaveworksdemos/carts:0.4.8", "weaveworksdemos/carts:0.4.9"),
    )
    .unwrap();
    let before = controller_requests(&harness).await.len();
    let started = Instant::now();
    let new_revision = sock_shop.commit("carts 0.4.9").unwrap();
    harness
        .wait_for_phase("sock-shop", "sock-shop", Phase::Healthy, &new_revision)
        .await;
    let update_time = started.elapsed();
    let image = deployments
        .get("carts")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("weaveworksdemos/carts:0.4.9"));
    // The leader's Lease renewals are its heartbeat, not the update's requests.
    let update: Vec<AuditedWrite> = controller_requests(&harness)
        .await
        .into_iter()
        .skip(before)
        .filter(|r| r.resource != "leases")
        .collect();
    let object_writes: Vec<String> = update
        .iter()
        .filter(|r| !r.dry_run && kind_of(r) == WriteKind::Object)
        .map(describe)
        .collect();
    assert_eq!(
        object_writes,
        ["patch deployments sock-shop/carts -> Some(200)"],
        "a new image in Deployment carts must write that Deployment only, once"
    );
    assert!(
        update.iter().all(|r| r.namespace.as_deref() == Some("sock-shop")),
        "{:#?}",
        update.iter().map(describe).collect::<Vec<_>>()
    );
    let dry_runs: Vec<String> = update.iter().filter(|r| r.dry_run).map(describe).collect();
    println!(
        "sock-shop new carts image: Healthy after {update_time:.1?}; writes {:?}; dry runs {} ({})",
        count_by_kind(update.iter().filter(|r| !r.dry_run)),
        dry_runs.len(),
        dry_runs.join(", ")
    );

    // And quiet again.
    let quiet = assert_quiet(&harness, &apps).await;
    println!(
        "quiet again: resyncs {:?}, dry runs per resync {:?}, 0 writes",
        quiet.resyncs, quiet.dry_runs_per_resync
    );
}

/// Quantities written as numbers, as many charts do: the server stores strings.
const NUMERIC_QUANTITIES: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1073741824
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: compute
spec:
  replicas: 2
  selector:
    matchLabels:
      app: compute
  template:
    metadata:
      labels:
        app: compute
    spec:
      containers:
        - name: worker
          image: example/compute:1.0
          resources:
            requests:
              cpu: 0.5
              memory: 268435456
            limits:
              cpu: 1
              memory: 268435456
          volumeMounts:
            - name: data
              mountPath: /data
      volumes:
        - name: data
          persistentVolumeClaim:
            claimName: data
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_quantities_become_healthy_then_stay_quiet() {
    let mut harness = Harness::start().await;
    start_controller(&mut harness);
    let repo = harness.repo("compute");
    repo.write("deploy/compute.yaml", NUMERIC_QUANTITIES).unwrap();
    let revision = repo.commit("numeric quantities").unwrap();
    let time = deploy_until_healthy(&harness, "compute", "compute", &repo, &revision).await;

    // The server keeps the strings render made of the numbers.
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), "compute");
    let deployment = serde_json::to_value(deployments.get("compute").await.unwrap()).unwrap();
    let resources = &deployment["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources,
        &serde_json::json!({"requests": {"cpu": "500m", "memory": "268435456"},
                            "limits": {"cpu": "1", "memory": "268435456"}})
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(harness.client.clone(), "compute");
    let claim = serde_json::to_value(claims.get("data").await.unwrap()).unwrap();
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1073741824");

    let deploy = controller_requests(&harness).await;
    println!(
        "numeric quantities: Healthy {time:.1?} after the AppDeployment was created; writes {:?}, dry runs {}",
        count_by_kind(deploy.iter().filter(|r| !r.dry_run)),
        deploy.iter().filter(|r| r.dry_run).count()
    );
    let quiet = assert_quiet(&harness, &[("compute", "compute")]).await;
    println!(
        "quiet for {QUIET_INTERVALS} intervals of {INTERVAL:?}: resyncs {:?}, dry runs per resync {:?}, 0 writes",
        quiet.resyncs, quiet.dry_runs_per_resync
    );
}

/// Waits until the app is Blocked; returns the block's message.
async fn wait_for_block(harness: &Harness, namespace: &str, name: &str, revision: &str) -> (String, bool) {
    let app = harness
        .wait_for(namespace, name, "Blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == revision)
            })
        })
        .await;
    let block = status(&app).blocked.clone().unwrap();
    assert_eq!(block.reason, BlockReason::RevisionInvalid);
    assert!(status(&app).inventory.is_empty(), "{:?}", status(&app).inventory);
    (block.message, block.retry)
}

/// Requests of the controller about podinfo's own objects (dry runs included).
fn podinfo_requests<'a>(requests: &'a [AuditedWrite], namespace: &str) -> Vec<&'a AuditedWrite> {
    requests
        .iter()
        .filter(|r| r.namespace.as_deref() == Some(namespace) && kind_of(r) == WriteKind::Object)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podinfo_is_blocked_naming_the_file_and_nothing_of_it_is_applied() {
    let mut harness = Harness::start().await;
    start_controller(&mut harness);

    // As committed upstream: a kustomization.yaml beside the manifests.
    let with_kustomization = harness.repo("podinfo");
    let revision = commit_corpus(&with_kustomization, "podinfo", &[]);
    create_app(&harness, "podinfo", "podinfo", &with_kustomization).await;
    let (message, retry) = wait_for_block(&harness, "podinfo", "podinfo", &revision).await;
    println!("podinfo: {message}");
    assert!(
        message.starts_with(
            "deploy/kustomization.yaml:1: `kustomization.yaml` is kustomize input, not a Kubernetes object"
        ),
        "{message}"
    );
    assert!(message.contains("bosun applies plain manifests"), "{message}");
    assert!(message.contains("`kustomize build deploy`"), "{message}");
    assert!(!retry, "the same files render the same way");

    // Without it: the HPA's autoscaling/v2, which API servers serve from 1.23 on.
    let plain = harness.repo("podinfo-plain");
    let plain_revision = commit_corpus(&plain, "podinfo", &["kustomization.yaml"]);
    let autoscaling_v2_served = harness
        .client
        .list_api_group_resources("autoscaling/v2")
        .await
        .is_ok();
    create_app(&harness, "podinfo-plain", "podinfo", &plain).await;
    if autoscaling_v2_served {
        // 1.23+: the whole revision applies.
        harness
            .wait_for_phase("podinfo-plain", "podinfo", Phase::Healthy, &plain_revision)
            .await;
        return;
    }
    let (message, retry) = wait_for_block(&harness, "podinfo-plain", "podinfo", &plain_revision).await;
    println!("podinfo without kustomization.yaml: {message}");
    assert!(
        message.starts_with(
            "HorizontalPodAutoscaler podinfo (deploy/hpa.yaml:1): API version autoscaling/v2 is not \
             served by this API server"
        ),
        "{message}"
    );
    let version = harness.client.apiserver_version().await.unwrap();
    if version.minor.trim_end_matches('+') == "20" {
        // What 1.20 serves of the group, as its discovery says.
        assert!(
            message.ends_with(
                "it serves HorizontalPodAutoscaler as autoscaling/v1, autoscaling/v2beta1, autoscaling/v2beta2"
            ),
            "{message}"
        );
    }
    assert!(retry, "an API server may come to serve it");

    // A blocked revision that may pass is tried again each interval: still nothing applied.
    tokio::time::sleep(INTERVAL * 3).await;
    let requests = controller_requests(&harness).await;
    for namespace in ["podinfo", "podinfo-plain"] {
        let touched: Vec<String> = podinfo_requests(&requests, namespace)
            .into_iter()
            .map(describe)
            .collect();
        assert!(
            touched.is_empty(),
            "bosun sent requests about podinfo's objects in {namespace}:\n{}",
            touched.join("\n")
        );
        let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), namespace);
        let services: Api<Service> = Api::namespaced(harness.client.clone(), namespace);
        assert!(deployments.get_opt("podinfo").await.unwrap().is_none());
        assert!(services.get_opt("podinfo").await.unwrap().is_none());
    }
    // Refused at render: not even a snapshot was stored.
    let kustomization_writes = count_by_kind(
        requests
            .iter()
            .filter(|r| !r.dry_run && r.namespace.as_deref() == Some("podinfo")),
    );
    assert_eq!(kustomization_writes.get(&WriteKind::Snapshot), None);
    let plain_writes = count_by_kind(
        requests
            .iter()
            .filter(|r| !r.dry_run && r.namespace.as_deref() == Some("podinfo-plain")),
    );
    // Each attempt renders again and stores the (same) snapshot again.
    let attempts = requests
        .iter()
        .filter(|r| {
            !r.dry_run && r.namespace.as_deref() == Some("podinfo-plain") && kind_of(r) == WriteKind::Snapshot
        })
        .count();
    println!(
        "bosun's own writes: podinfo {kustomization_writes:?}; podinfo without kustomization.yaml \
         {plain_writes:?} over {attempts} attempts"
    );
}
