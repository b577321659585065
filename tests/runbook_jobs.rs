//! The runbook's Jobs end to end (README, "The runbook, step by step"): backup, migration and
//! downgrade Jobs run by the real `bosun` binary against the local control plane, whose
//! Job controller runs them while the pod simulator plays their pods' scripts
//! (`sh -c "echo …; exit N"`: a Job's pod logs each `echo` and ends at its `exit`).
//!
//! What is asserted comes from the API server: the controller's writes in its audit log
//! (each Job created once, in order with the Deployment's apply), the Jobs and
//! Deployments themselves, and the AppDeployment's status, Events and history.
//!
//! Every app runs in its own namespace with a Deployment `api` (the migrations' `from`)
//! reading a Secret, a ConfigMap and a ServiceAccount that exist before the revision, as
//! the seeds' databases and credentials do.
//!
//! - a good revision: backed up, then migrated, then applied, each Job once and built
//!   from the `api` container as it is applied; never migrated again (resyncs, a
//!   restart, a drift repair, the Job deleted, the same commit from another path);
//! - failures: a failing migration (its log line in the Event and the history), one
//!   past its timeout, an optional and a required backup that fail, and a failed
//!   revision retried by a person, whose Job runs again;
//! - restarts while a Job runs or right after it was recorded: adopted, never created
//!   twice;
//! - rollback policies: Keep, Downgrade (and a downgrade that fails), Hold.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, JobKind, Phase, condition, short_revision};
use bosun::jobs::job_name;
use bosun_devenv::{AuditedWrite, WorkRepo};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::{Harness, eventually, status};

const APP: &str = "shop";
const RUNBOOK: &str = "jobs";
/// Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(120);
/// Time for a Runbook change to reach the controller's cache before a commit that must
/// be deployed with it.
const RUNBOOK_SEEN: Duration = Duration::from_millis(1500);

/// The scripts the Jobs run (see bosun-devenv/src/script.rs).
const BACKUP_OK: &str = "echo pg_dump shop > /backup/shop.sql; echo backup written";
const BACKUP_FAILS: &str = "echo 'pg_dump: error: connection to server failed'; exit 2";
const MIGRATE_OK: &str = "echo running alembic upgrade head; echo done";
const MIGRATE_FAILS: &str = "echo 'ERROR: relation \"users\" already exists'; exit 1";
const MIGRATE_HANGS: &str = "sleep 3600";
/// A migration still running a few seconds after its Job was created.
const MIGRATE_SLOW: &str = "echo running alembic upgrade head; sleep 6; echo done";
const DOWNGRADE_OK: &str = "echo downgrading; echo ok";
const DOWNGRADE_FAILS: &str = "echo downgrading; exit 1";
/// The line a failed migration logs, which the Event and the history must show.
const MIGRATION_ERROR: &str = "relation \"users\" already exists";

// ---------------------------------------------------------------------------------------
// The app

/// One revision of the app: a Deployment `api` (with a sidecar) and a ConfigMap, the
/// same files under `deploy/` and `alt/` (a change of `spec.source.git.path` renders the
/// same objects again).
#[derive(Clone, Debug)]
struct Revision {
    version: String,
    image: String,
    /// The `api` Deployment says its migration cannot be undone.
    irreversible: bool,
}

impl Revision {
    fn good(version: &str) -> Self {
        Revision {
            version: version.into(),
            image: format!("example/shop-api:{version}"),
            irreversible: false,
        }
    }

    /// Its `api` container crash-loops: the workload gate fails.
    fn crash_looping(version: &str) -> Self {
        Revision {
            image: format!("example/shop-api:{version}-crashloop"),
            ..Self::good(version)
        }
    }

    fn irreversible(self) -> Self {
        Revision {
            irreversible: true,
            ..self
        }
    }

    fn commit_to(&self, repo: &WorkRepo) -> String {
        for dir in ["deploy", "alt"] {
            repo.write(&format!("{dir}/api.yaml"), &self.api()).unwrap();
            repo.write(&format!("{dir}/version.yaml"), &self.config_map())
                .unwrap();
        }
        repo.commit(&format!("v{}", self.version)).unwrap()
    }

    fn api(&self) -> String {
        let annotations = if self.irreversible {
            "  annotations:\n    bosun.dev/migration: irreversible\n"
        } else {
            ""
        };
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
{annotations}spec:
  replicas: 1
  selector:
    matchLabels:
      app: api
  template:
    metadata:
      labels:
        app: api
    spec:
      serviceAccountName: api-runner
      containers:
        - name: api
          image: {image}
          args: ["uvicorn", "app.main:app", "--port", "8000"]
          env:
            - name: ENV
              value: production
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: db
                  key: url
          envFrom:
            - configMapRef:
                name: api-settings
          volumeMounts:
            - name: uploads
              mountPath: /data/uploads
            - name: settings
              mountPath: /etc/api
              readOnly: true
        - name: log-shipper
          image: example/log-shipper:1
          volumeMounts:
            - name: shipper-buffer
              mountPath: /buffer
      volumes:
        - name: uploads
          emptyDir: {{}}
        - name: settings
          configMap:
            name: api-settings
        - name: shipper-buffer
          emptyDir: {{}}
"#,
            image = self.image
        )
    }

    fn config_map(&self) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-version\ndata:\n  version: \"{}\"\n",
            self.version
        )
    }
}

/// A Job step of the Runbook: `from: {workload: api}` running `script`.
fn job_step(script: &str) -> Value {
    json!({"from": {"workload": "api"}, "command": ["sh", "-c", script]})
}

/// The Runbook `jobs` of `namespace`: `spec` (backup, migrate, ...) with a 1 s verify
/// window and only the workload gate.
fn runbook(namespace: &str, spec: Value) -> String {
    let mut full = json!({"verifyWindow": "1s"});
    for (key, value) in spec.as_object().expect("a spec object") {
        full[key] = value.clone();
    }
    json!({
        "apiVersion": "bosun.dev/v1alpha1",
        "kind": "Runbook",
        "metadata": {"name": RUNBOOK, "namespace": namespace},
        "spec": full,
    })
    .to_string()
}

/// What the app's pods read and nobody's revision creates: the Secret `db`, the
/// ConfigMap `api-settings`, the ServiceAccount `api-runner` (with its token: 1.20's
/// ServiceAccount admission refuses pods until then); then the Runbook and the app.
async fn set_up(harness: &Harness, namespace: &str, repo: &WorkRepo, runbook_spec: Value) {
    harness.namespace(namespace).await;
    let apply = |object: Value| {
        let client = harness.client.clone();
        async move {
            let kind = object["kind"].as_str().unwrap().to_string();
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let resource = match kind.as_str() {
                "Secret" => "secrets",
                "ConfigMap" => "configmaps",
                _ => "serviceaccounts",
            };
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                client,
                namespace,
                &kube::api::ApiResource {
                    group: String::new(),
                    version: "v1".into(),
                    api_version: "v1".into(),
                    kind: kind.clone(),
                    plural: resource.into(),
                },
            );
            api.patch(&name, &PatchParams::apply("bosun-test"), &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("{kind} {namespace}/{name}: {e}"));
        }
    };
    apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": namespace},
        "stringData": {"url": "postgres://shop@db:5432/shop"},
    }))
    .await;
    apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "api-settings", "namespace": namespace},
        "data": {"LOG_LEVEL": "INFO"},
    }))
    .await;
    apply(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "api-runner", "namespace": namespace},
    }))
    .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(harness.client.clone(), namespace);
    eventually("the ServiceAccount's token", WAIT, || async {
        let account = accounts.get("api-runner").await?;
        Ok(account.secrets.is_some_and(|s| !s.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    harness.apply_runbook(&runbook(namespace, runbook_spec)).await;
    harness
        .apply_example_app(namespace, APP, repo.name(), Some(RUNBOOK), "1s")
        .await;
}

// ---------------------------------------------------------------------------------------
// What the API server saw

/// The controller's requests to create Jobs in `namespace`, oldest first (refused
/// ones too: a create sent for a Job that exists is answered 409).
async fn job_creates(harness: &Harness, namespace: &str) -> Vec<AuditedWrite> {
    harness
        .controller_writes()
        .await
        .into_iter()
        .filter(|w| w.verb == "create" && w.resource == "jobs" && w.namespace.as_deref() == Some(namespace))
        .collect()
}

/// The names of the Jobs the controller created (accepted creates), oldest first.
fn created(creates: &[AuditedWrite]) -> Vec<String> {
    creates
        .iter()
        .filter(|w| w.succeeded())
        .map(|w| w.name.clone().unwrap_or_default())
        .collect()
}

/// The controller's accepted writes of Deployment `namespace/name` (applies), oldest
/// first.
async fn deployment_writes(harness: &Harness, namespace: &str, name: &str) -> Vec<AuditedWrite> {
    harness
        .controller_writes()
        .await
        .into_iter()
        .filter(|w| {
            matches!(w.verb.as_str(), "create" | "update" | "patch")
                && w.resource == "deployments"
                && w.subresource.is_none()
                && w.namespace.as_deref() == Some(namespace)
                && w.name.as_deref() == Some(name)
                && w.succeeded()
        })
        .collect()
}

fn job_of(namespace: &str, kind: JobKind, revision: &str) -> String {
    job_name(namespace, APP, kind, revision)
}

async fn get_job(harness: &Harness, namespace: &str, name: &str) -> Job {
    let jobs: Api<Job> = Api::namespaced(harness.client.clone(), namespace);
    jobs.get(name)
        .await
        .unwrap_or_else(|e| panic!("Job {namespace}/{name}: {e}"))
}

/// The Deployment `api` of `namespace`, if it exists.
async fn api_deployment(harness: &Harness, namespace: &str) -> Option<Deployment> {
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), namespace);
    deployments.get_opt("api").await.unwrap()
}

/// bosun's Events about the app in `namespace`.
async fn app_events(harness: &Harness, namespace: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), namespace);
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

/// `(type, reason, note)` of every Event, for messages.
fn describe_events(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e.type_.as_deref().unwrap_or("?"),
                e.reason.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// The Event of `reason` whose note names `revision` (published once the status that
/// records it is saved: waited for).
async fn event_about(harness: &Harness, namespace: &str, reason: &str, revision: &str) -> Event {
    let short = short_revision(revision);
    let found = eventually(
        &format!("a {reason} Event naming {short}"),
        Duration::from_secs(10),
        || async {
            Ok(app_events(harness, namespace).await.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason) && e.note.as_deref().unwrap_or("").contains(&short)
            }))
        },
    )
    .await;
    match found {
        Ok(event) => event,
        Err(error) => panic!(
            "{error} in {namespace}: {:#?}",
            describe_events(&app_events(harness, namespace).await)
        ),
    }
}

fn condition_of<'a>(
    app: &'a AppDeployment,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status(app).conditions.iter().find(|c| c.type_ == type_)
}

/// Every phase the AppDeployment passes through, from a watch of it (each status write
/// is an event).
fn record_phases(harness: &Harness, namespace: &str) -> Arc<Mutex<Vec<Phase>>> {
    let seen: Arc<Mutex<Vec<Phase>>> = Arc::default();
    let api: Api<AppDeployment> = Api::namespaced(harness.client.clone(), namespace);
    let record = seen.clone();
    tokio::spawn(async move {
        let stream = kube::runtime::watcher::watch_object(api, APP);
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(Some(app)) = item
                && let Some(phase) = app.status.map(|s| s.phase)
            {
                let mut seen = record.lock().unwrap();
                if seen.last() != Some(&phase) {
                    seen.push(phase);
                }
            }
        }
    });
    seen
}

async fn wait_for_phase(harness: &Harness, namespace: &str, phase: Phase, revision: &str) -> AppDeployment {
    harness
        .wait_for(
            namespace,
            APP,
            &format!("phase {phase} at {}", short_revision(revision)),
            WAIT,
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == phase
                        && s.current_revision.as_deref() == Some(revision)
                        && s.operation.is_none()
                })
            },
        )
        .await
}

/// Waits until the history entry of `revision` is finished in `phase`.
async fn wait_for_entry(harness: &Harness, namespace: &str, revision: &str, phase: Phase) -> AppDeployment {
    harness
        .wait_for(
            namespace,
            APP,
            &format!("{phase} entry of {}", short_revision(revision)),
            WAIT,
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.operation.is_none()
                        && s.history
                            .iter()
                            .any(|h| h.revision == revision && h.phase == phase && h.finished_at.is_some())
                })
            },
        )
        .await
}

/// Seconds from the start to the end of the newest history entry of `revision`.
fn entry_duration(app: &AppDeployment, revision: &str) -> i64 {
    let entry = status(app)
        .history
        .iter()
        .find(|h| h.revision == revision)
        .expect("a history entry");
    let at = |time: &str| time.parse::<Timestamp>().expect("an RFC 3339 time").as_second();
    at(entry.finished_at.as_deref().unwrap_or_default()) - at(&entry.started_at)
}

fn entry_message(app: &AppDeployment, revision: &str) -> String {
    status(app)
        .history
        .iter()
        .find(|h| h.revision == revision)
        .and_then(|h| h.message.clone())
        .unwrap_or_default()
}

/// The pod spec of a Job's template.
fn job_pod(job: &Job) -> &k8s_openapi::api::core::v1::PodSpec {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a Job pod spec")
}

fn deployment_pod(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a Deployment pod spec")
}

fn completion(job: &Job) -> Timestamp {
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .unwrap_or_else(|| panic!("Job {:?} has not completed", job.metadata.name))
}

/// A timestamp cut to the second: Job times have whole seconds.
fn second(time: Timestamp) -> i64 {
    time.as_second()
}

// ---------------------------------------------------------------------------------------
// 1 and 2: a good revision, once

#[tokio::test]
async fn a_good_revision_is_backed_up_and_migrated_once_before_its_workloads() {
    let mut harness = Harness::start().await;
    let ns = "shop";
    let repo = harness.repo("shop");
    let v1 = Revision::good("1.0").commit_to(&repo);
    let phases = record_phases(&harness, ns);
    set_up(
        &harness,
        ns,
        &repo,
        json!({
            "env": [{"name": "FEATURE_FLAGS", "default": "none", "inject": true}],
            "backup": job_step(BACKUP_OK),
            "migrate": job_step(MIGRATE_OK),
        }),
    )
    .await;
    let started = Instant::now();
    harness.start_controller();
    let app = wait_for_phase(&harness, ns, Phase::Healthy, &v1).await;
    let first_healthy = started.elapsed();

    // One backup Job, then one migration Job, then the Deployment.
    let backup = job_of(ns, JobKind::Backup, &v1);
    let migrate = job_of(ns, JobKind::Migrate, &v1);
    let creates = job_creates(&harness, ns).await;
    assert_eq!(created(&creates), [backup.clone(), migrate.clone()]);
    let api_writes = deployment_writes(&harness, ns, "api").await;
    assert_eq!(
        api_writes.len(),
        1,
        "the api Deployment applied once: {api_writes:#?}"
    );
    let (backup_sent, migrate_sent) = (creates[0].received_at, creates[1].received_at);
    let applied = api_writes[0].received_at;
    assert!(
        backup_sent < migrate_sent && migrate_sent < applied,
        "backup {backup_sent}, migration {migrate_sent}, apply {applied}"
    );
    // Each started after the one before it had finished.
    let backup_job = get_job(&harness, ns, &backup).await;
    let migrate_job = get_job(&harness, ns, &migrate).await;
    let migrate_created = migrate_job.metadata.creation_timestamp.clone().unwrap().0;
    assert!(second(completion(&backup_job)) <= second(migrate_created));
    assert!(second(completion(&migrate_job)) <= second(applied));

    // The Job runs the api container as the Deployment runs it, with the Runbook's command.
    let deployment = api_deployment(&harness, ns).await.expect("Deployment api");
    let pod = deployment_pod(&deployment);
    let api = &pod.containers[0];
    for job in [&backup_job, &migrate_job] {
        let job_pod = job_pod(job);
        let container = &job_pod.containers[0];
        let name = job.metadata.name.as_deref().unwrap();
        assert_eq!(job_pod.containers.len(), 1, "{name}: the sidecar stays out");
        assert_eq!(container.image.as_deref(), Some("example/shop-api:1.0"), "{name}");
        assert_eq!(container.env, api.env, "{name}: env as the api container has it");
        assert!(
            container
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "FEATURE_FLAGS" && e.value.as_deref() == Some("none")),
            "{name}: the Runbook's injected default is in the Job too: {:?}",
            container.env
        );
        assert_eq!(container.env_from, api.env_from, "{name}");
        assert_eq!(container.volume_mounts, api.volume_mounts, "{name}");
        let volumes: Vec<&str> = job_pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            ["uploads", "settings"],
            "{name}: the mounted volumes only"
        );
        assert_eq!(
            job_pod.service_account_name.as_deref(),
            Some("api-runner"),
            "{name}"
        );
        assert_eq!(job_pod.restart_policy.as_deref(), Some("Never"), "{name}");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0), "{name}");
        assert_eq!(spec.active_deadline_seconds, Some(600), "{name}: the default 10m");
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("AppDeployment", APP));
    }
    let command = |job: &Job| job_pod(job).containers[0].command.clone().unwrap_or_default();
    assert_eq!(command(&backup_job), ["sh", "-c", BACKUP_OK]);
    assert_eq!(command(&migrate_job), ["sh", "-c", MIGRATE_OK]);

    // Status, conditions, Events, phases.
    let s = status(&app);
    let recorded: Vec<(JobKind, &str, bool)> = s
        .jobs
        .iter()
        .map(|j| (j.kind, j.job.as_str(), j.succeeded))
        .collect();
    assert_eq!(
        recorded,
        [
            (JobKind::Migrate, migrate.as_str(), true),
            (JobKind::Backup, backup.as_str(), true)
        ]
    );
    assert!(
        s.jobs
            .iter()
            .all(|j| j.revision == v1 && !j.finished_at.is_empty())
    );
    let migrated = condition_of(&app, condition::MIGRATION_SUCCEEDED).expect("MigrationSucceeded");
    assert_eq!(migrated.status, "True", "{migrated:?}");
    assert!(migrated.message.contains(&migrate), "{migrated:?}");
    event_about(&harness, ns, "BackedUp", &v1).await;
    event_about(&harness, ns, "Migrated", &v1).await;
    let seen = phases.lock().unwrap().clone();
    let position = |phase: Phase| seen.iter().position(|p| *p == phase);
    assert!(
        matches!(
            (position(Phase::BackingUp), position(Phase::Migrating), position(Phase::Verifying)),
            (Some(b), Some(m), Some(v)) if b < m && m < v
        ),
        "phases seen: {seen:?}"
    );

    // 2. Never twice: resyncs, a restart, a drift repair, the Job deleted by hand, a
    // re-deploy of the same commit from another path.
    tokio::time::sleep(Duration::from_secs(4)).await;
    harness.kill_controller();
    harness.start_controller();
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), ns);
    let scale = json!({"spec": {"replicas": 3}});
    deployments
        .patch("api", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    eventually("the drift repaired", WAIT, || async {
        let replicas = deployments.get("api").await?.spec.and_then(|s| s.replicas);
        Ok((replicas == Some(1)).then_some(()))
    })
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(harness.client.clone(), ns);
    jobs.delete(&migrate, &DeleteParams::background()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_path_change = harness.app(ns, APP).await;
    let repath = json!({"spec": {"source": {"git": {"path": "alt"}}}});
    let apps: Api<AppDeployment> = Api::namespaced(harness.client.clone(), ns);
    apps.patch(APP, &PatchParams::default(), &Patch::Merge(&repath))
        .await
        .unwrap();
    let app = harness
        .wait_for(ns, APP, "the same commit deployed from alt/", WAIT, |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Healthy
                    && s.operation.is_none()
                    && s.current_spec_digest != status(&before_path_change).current_spec_digest
            })
        })
        .await;
    assert_eq!(status(&app).current_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        status(&app).history.iter().filter(|h| h.revision == v1).count(),
        2,
        "the re-deploy of the same commit is a history entry of its own"
    );
    let creates = job_creates(&harness, ns).await;
    assert_eq!(
        created(&creates),
        [backup.clone(), migrate.clone()],
        "no Job created again: {creates:#?}"
    );
    assert!(
        jobs.get_opt(&migrate).await.unwrap().is_none(),
        "the migration Job deleted by hand was not created again"
    );
    let migrations = status(&app)
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Migrate)
        .count();
    assert_eq!(migrations, 1, "{:?}", status(&app).jobs);

    // The next commit backs up and migrates, once.
    let committed = Instant::now();
    let v2 = Revision::good("2.0").commit_to(&repo);
    let app = wait_for_phase(&harness, ns, Phase::Healthy, &v2).await;
    let commit_to_healthy = committed.elapsed();
    let creates = job_creates(&harness, ns).await;
    assert_eq!(
        created(&creates),
        [
            backup.clone(),
            migrate.clone(),
            job_of(ns, JobKind::Backup, &v2),
            job_of(ns, JobKind::Migrate, &v2)
        ]
    );
    assert_eq!(
        creates.len(),
        4,
        "every create accepted: none sent for a Job that exists: {creates:#?}"
    );
    assert_eq!(harness.image_of(ns, "api").await, "example/shop-api:2.0");
    assert_eq!(status(&app).jobs.len(), 4);
    println!(
        "measured: first revision Healthy {first_healthy:?} after the controller started; \
         commit to Healthy with backup and migration {commit_to_healthy:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 3, 4 and 7: failed Jobs

#[tokio::test]
async fn failed_and_timed_out_jobs_leave_the_workloads_alone() {
    let mut harness = Harness::start().await;
    // 3. A migration that fails, after a healthy revision.
    let fails = "migrate-fails";
    let fails_repo = harness.repo(fails);
    let fails_v1 = Revision::good("1.0").commit_to(&fails_repo);
    set_up(
        &harness,
        fails,
        &fails_repo,
        json!({"migrate": job_step(MIGRATE_OK)}),
    )
    .await;
    // 4. A migration that runs past its timeout.
    let hangs = "migrate-hangs";
    let hangs_repo = harness.repo(hangs);
    let hangs_v1 = Revision::good("1.0").commit_to(&hangs_repo);
    let mut hanging = job_step(MIGRATE_HANGS);
    hanging["timeout"] = json!("3s");
    set_up(&harness, hangs, &hangs_repo, json!({"migrate": hanging.clone()})).await;
    // 4. The same, on a Job controller that misses the deadline: the Job controller of
    // Kubernetes before 1.25 checks a Job's deadline once, at the time it first had;
    // a deadline made longer before then is never checked again (kubernetes#90553).
    let overdue = "migrate-overdue";
    let overdue_repo = harness.repo(overdue);
    let overdue_v1 = Revision::good("1.0").commit_to(&overdue_repo);
    set_up(&harness, overdue, &overdue_repo, json!({"migrate": hanging})).await;
    let stretched = tokio::spawn(stretch_deadline(
        harness.client.clone(),
        overdue,
        job_of(overdue, JobKind::Migrate, &overdue_v1),
    ));
    // 7. A backup that fails: optional, then required.
    let optional = "backup-optional";
    let optional_repo = harness.repo(optional);
    let optional_v1 = Revision::good("1.0").commit_to(&optional_repo);
    let mut optional_backup = job_step(BACKUP_FAILS);
    optional_backup["required"] = json!(false);
    set_up(
        &harness,
        optional,
        &optional_repo,
        json!({"backup": optional_backup, "migrate": job_step(MIGRATE_OK)}),
    )
    .await;
    let required = "backup-required";
    let required_repo = harness.repo(required);
    let required_v1 = Revision::good("1.0").commit_to(&required_repo);
    set_up(
        &harness,
        required,
        &required_repo,
        json!({"backup": job_step(BACKUP_FAILS), "migrate": job_step(MIGRATE_OK)}),
    )
    .await;
    harness.start_controller();

    // 3. The failing migration of v2: Failed, v1 keeps running, v2 quarantined.
    wait_for_phase(&harness, fails, Phase::Healthy, &fails_v1).await;
    harness
        .apply_runbook(&runbook(fails, json!({"migrate": job_step(MIGRATE_FAILS)})))
        .await;
    // The Runbook's watch delivers the change well before the next look at Git (1 s)
    // after the commit below.
    tokio::time::sleep(RUNBOOK_SEEN).await;
    let committed = Instant::now();
    let fails_v2 = Revision::good("2.0").commit_to(&fails_repo);
    let app = wait_for_entry(&harness, fails, &fails_v2, Phase::Failed).await;
    let commit_to_failed = committed.elapsed();
    let s = status(&app);
    assert_eq!(s.phase, Phase::Failed, "{s:?}");
    assert_eq!(s.current_revision.as_deref(), Some(fails_v1.as_str()));
    assert!(
        s.quarantined.iter().any(|q| q.revision == fails_v2),
        "{:?}",
        s.quarantined
    );
    let message = entry_message(&app, &fails_v2);
    assert!(message.contains(MIGRATION_ERROR), "history: {message}");
    let failed = event_about(&harness, fails, "Failed", &fails_v2).await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(
        failed.note.as_deref().unwrap_or("").contains(MIGRATION_ERROR),
        "{failed:?}"
    );
    let migrated = condition_of(&app, condition::MIGRATION_SUCCEEDED).expect("MigrationSucceeded");
    assert_eq!(migrated.status, "False", "{migrated:?}");
    assert_eq!(harness.image_of(fails, "api").await, "example/shop-api:1.0");
    assert_eq!(deployment_writes(&harness, fails, "api").await.len(), 1);
    assert!(
        !s.jobs.iter().any(|j| j.revision == fails_v2 && j.succeeded),
        "{:?}",
        s.jobs
    );
    // Fixed: the next commit migrates and deploys.
    harness
        .apply_runbook(&runbook(fails, json!({"migrate": job_step(MIGRATE_OK)})))
        .await;
    tokio::time::sleep(RUNBOOK_SEEN).await;
    let fails_v3 = Revision::good("3.0").commit_to(&fails_repo);
    let app = wait_for_phase(&harness, fails, Phase::Healthy, &fails_v3).await;
    assert_eq!(harness.image_of(fails, "api").await, "example/shop-api:3.0");
    assert_eq!(
        created(&job_creates(&harness, fails).await),
        [
            job_of(fails, JobKind::Migrate, &fails_v1),
            job_of(fails, JobKind::Migrate, &fails_v2),
            job_of(fails, JobKind::Migrate, &fails_v3)
        ]
    );
    assert_eq!(
        condition_of(&app, condition::MIGRATION_SUCCEEDED).map(|c| c.status.as_str()),
        Some("True")
    );

    // 4. The migration that hangs: its deadline ends it, nothing is applied.
    let app = wait_for_entry(&harness, hangs, &hangs_v1, Phase::Failed).await;
    let timed_out_after = entry_duration(&app, &hangs_v1);
    let s = status(&app);
    assert_eq!(s.phase, Phase::Failed);
    let message = entry_message(&app, &hangs_v1);
    assert!(message.contains("DeadlineExceeded"), "history: {message}");
    let failed = event_about(&harness, hangs, "Failed", &hangs_v1).await;
    assert!(failed.note.as_deref().unwrap_or("").contains("DeadlineExceeded"));
    assert!(api_deployment(&harness, hangs).await.is_none(), "nothing applied");
    assert!(s.quarantined.iter().any(|q| q.revision == hangs_v1));
    assert_eq!(
        created(&job_creates(&harness, hangs).await),
        [job_of(hangs, JobKind::Migrate, &hangs_v1)]
    );

    // 4. The Job the Job controller would leave running is touched, and so ended.
    stretched.await.unwrap();
    let app = wait_for_entry(&harness, overdue, &overdue_v1, Phase::Failed).await;
    let overdue_after = entry_duration(&app, &overdue_v1);
    let message = entry_message(&app, &overdue_v1);
    assert!(message.contains("DeadlineExceeded"), "history: {message}");
    let job = get_job(&harness, overdue, &job_of(overdue, JobKind::Migrate, &overdue_v1)).await;
    assert!(
        job.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(bosun::jobs::DEADLINE_NUDGED_ANNOTATION),
        "the Job was touched"
    );
    assert!(
        api_deployment(&harness, overdue).await.is_none(),
        "nothing applied"
    );

    // 7. An optional backup that fails: a warning, and the revision goes on.
    let app = wait_for_phase(&harness, optional, Phase::Healthy, &optional_v1).await;
    let warning = event_about(&harness, optional, "BackupFailed", &optional_v1).await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .note
            .as_deref()
            .unwrap_or("")
            .contains("connection to server failed"),
        "{warning:?}"
    );
    let backups: Vec<bool> = status(&app)
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Backup)
        .map(|j| j.succeeded)
        .collect();
    assert_eq!(backups, [false]);
    assert_eq!(
        created(&job_creates(&harness, optional).await),
        [
            job_of(optional, JobKind::Backup, &optional_v1),
            job_of(optional, JobKind::Migrate, &optional_v1)
        ]
    );
    assert_eq!(harness.image_of(optional, "api").await, "example/shop-api:1.0");

    // 7. A required backup that fails: Failed, no migration, nothing applied.
    let app = wait_for_entry(&harness, required, &required_v1, Phase::Failed).await;
    assert_eq!(status(&app).phase, Phase::Failed);
    let message = entry_message(&app, &required_v1);
    assert!(
        message.contains("connection to server failed"),
        "history: {message}"
    );
    assert_eq!(
        created(&job_creates(&harness, required).await),
        [job_of(required, JobKind::Backup, &required_v1)],
        "no migration after a failed required backup"
    );
    assert!(api_deployment(&harness, required).await.is_none());
    // A person fixes what failed and retries the revision (a pin overrides the
    // quarantine): the backup runs again, in a new Job, and the revision deploys.
    let backup = job_of(required, JobKind::Backup, &required_v1);
    let failed_uid = get_job(&harness, required, &backup).await.metadata.uid;
    harness
        .apply_runbook(&runbook(
            required,
            json!({"backup": job_step(BACKUP_OK), "migrate": job_step(MIGRATE_OK)}),
        ))
        .await;
    tokio::time::sleep(RUNBOOK_SEEN).await;
    let apps: Api<AppDeployment> = Api::namespaced(harness.client.clone(), required);
    let pin = json!({"spec": {"pin": {"revision": required_v1}}});
    apps.patch(APP, &PatchParams::default(), &Patch::Merge(&pin))
        .await
        .unwrap();
    let app = wait_for_phase(&harness, required, Phase::Healthy, &required_v1).await;
    assert_ne!(
        get_job(&harness, required, &backup).await.metadata.uid,
        failed_uid,
        "the backup ran again"
    );
    assert_eq!(
        created(&job_creates(&harness, required).await),
        [
            backup.clone(),
            backup.clone(),
            job_of(required, JobKind::Migrate, &required_v1)
        ]
    );
    let backups: Vec<bool> = status(&app)
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Backup)
        .map(|j| j.succeeded)
        .collect();
    assert_eq!(backups, [true]);
    println!(
        "measured: commit to Failed with a failing migration {commit_to_failed:?}; \
         a revision whose migration has a 3s timeout Failed {timed_out_after}s after it started, \
         {overdue_after}s when the Job controller missed the deadline"
    );
}

/// Makes the deadline of Job `namespace/name` 2 s longer as soon as bosun created it,
/// before the Job controller's one check of the first deadline: on Kubernetes before
/// 1.25 the Job controller then never ends it by itself.
async fn stretch_deadline(client: kube::Client, namespace: &'static str, name: String) {
    let jobs: Api<Job> = Api::namespaced(client, namespace);
    let job = eventually("the Job to stretch", WAIT, || async {
        Ok(jobs.get_opt(&name).await?)
    })
    .await
    .unwrap();
    let deadline = job.spec.and_then(|s| s.active_deadline_seconds).unwrap();
    let patch = json!({"spec": {"activeDeadlineSeconds": deadline + 2}});
    jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// 5. A restarted controller adopts the running migration

/// Runs a controller armed to abort after `boundary` of the app in `namespace` until it
/// does.
async fn abort_after(harness: &mut Harness, namespace: &str, boundary: &str) {
    use std::os::unix::process::ExitStatusExt;
    let switch = format!("{namespace}/{APP}@{boundary}");
    harness.start_controller_with(&[], &[(bosun::controller::fault::ENV, &switch)]);
    let exit = harness.wait_for_controller_exit(WAIT).await;
    let log = harness.controller_log();
    assert_eq!(exit.signal(), Some(6), "SIGABRT at {switch}\n{log}");
    assert!(
        log.contains(&format!("aborting after {boundary} of {namespace}/{APP}")),
        "{log}"
    );
}

fn job_still_runs(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .is_none()
        && !bosun::jobs::state_of(job).is_finished()
}

#[tokio::test]
async fn a_restarted_controller_adopts_the_running_job_and_never_starts_another() {
    let mut harness = Harness::start().await;
    // The migration of `adopt` is running when the controller stops.
    let ns = "adopt";
    let repo = harness.repo(ns);
    let v1 = Revision::good("1.0").commit_to(&repo);
    set_up(&harness, ns, &repo, json!({"migrate": job_step(MIGRATE_SLOW)})).await;
    abort_after(&mut harness, ns, "deploy/migrate-running").await;
    let migrate = job_of(ns, JobKind::Migrate, &v1);
    let app = harness.app(ns, APP).await;
    let s = status(&app);
    assert_eq!(
        (s.phase, s.operation.as_ref().map(|op| op.step)),
        (Phase::Migrating, Some(bosun::api::Step::Migrate)),
        "{s:?}"
    );
    assert!(s.jobs.is_empty(), "nothing recorded while it runs: {:?}", s.jobs);
    assert!(
        job_still_runs(&get_job(&harness, ns, &migrate).await),
        "the Job still runs when the controller comes back"
    );

    // `recorded` stops right after its migration was recorded; meanwhile the next
    // controller adopts `adopt`'s Job.
    let recorded = "recorded";
    let recorded_repo = harness.repo(recorded);
    let recorded_v1 = Revision::good("1.0").commit_to(&recorded_repo);
    set_up(
        &harness,
        recorded,
        &recorded_repo,
        json!({"backup": job_step(BACKUP_OK), "migrate": job_step(MIGRATE_OK)}),
    )
    .await;
    abort_after(&mut harness, recorded, "deploy/migrate").await;
    let app = harness.app(recorded, APP).await;
    assert_eq!(status(&app).jobs.len(), 2, "{:?}", status(&app).jobs);

    // `downgrade` stops while its downgrade Job runs, in a rollback.
    let down = "downgrade";
    let down_repo = harness.repo(down);
    let down_v1 = Revision::good("1.0").commit_to(&down_repo);
    let mut migration = job_step(MIGRATE_OK);
    migration["rollback"] = json!({
        "policy": "Downgrade",
        "command": ["sh", "-c", "echo downgrading; sleep 6; echo ok"],
    });
    set_up(&harness, down, &down_repo, json!({"migrate": migration})).await;
    let switch = format!("{down}/{APP}@rollback/downgrade-running");
    harness.start_controller_with(&[], &[(bosun::controller::fault::ENV, &switch)]);
    wait_for_phase(&harness, down, Phase::Healthy, &down_v1).await;
    let down_v2 = Revision::crash_looping("2.0").commit_to(&down_repo);
    let exit = harness.wait_for_controller_exit(WAIT).await;
    assert!(
        harness.controller_log().contains(&format!(
            "aborting after rollback/downgrade-running of {down}/{APP}"
        )),
        "{exit:?}\n{}",
        harness.controller_log()
    );
    let downgrade = job_of(down, JobKind::Downgrade, &down_v2);
    assert!(job_still_runs(&get_job(&harness, down, &downgrade).await));

    harness.start_controller();
    // Each Job was created once, and no create was sent for a Job that exists.
    let app = wait_for_phase(&harness, ns, Phase::Healthy, &v1).await;
    let creates = job_creates(&harness, ns).await;
    assert_eq!(created(&creates), std::slice::from_ref(&migrate));
    assert_eq!(
        creates.len(),
        1,
        "no create sent for the adopted Job: {creates:#?}"
    );
    let jobs: Vec<(&str, bool)> = status(&app)
        .jobs
        .iter()
        .map(|j| (j.job.as_str(), j.succeeded))
        .collect();
    assert_eq!(jobs, [(migrate.as_str(), true)]);
    assert_eq!(deployment_writes(&harness, ns, "api").await.len(), 1);
    assert_eq!(harness.image_of(ns, "api").await, "example/shop-api:1.0");

    wait_for_phase(&harness, recorded, Phase::Healthy, &recorded_v1).await;
    let creates = job_creates(&harness, recorded).await;
    assert_eq!(
        created(&creates),
        [
            job_of(recorded, JobKind::Backup, &recorded_v1),
            job_of(recorded, JobKind::Migrate, &recorded_v1)
        ]
    );
    assert_eq!(creates.len(), 2, "{creates:#?}");

    let app = wait_for_phase(&harness, down, Phase::RolledBack, &down_v1).await;
    let creates = job_creates(&harness, down).await;
    assert_eq!(
        created(&creates),
        [
            job_of(down, JobKind::Migrate, &down_v1),
            job_of(down, JobKind::Migrate, &down_v2),
            downgrade.clone()
        ]
    );
    assert_eq!(creates.len(), 3, "{creates:#?}");
    assert!(
        status(&app)
            .jobs
            .iter()
            .any(|j| j.job == downgrade && j.succeeded),
        "{:?}",
        status(&app).jobs
    );
    assert_eq!(harness.image_of(down, "api").await, "example/shop-api:1.0");
    let writes = deployment_writes(&harness, down, "api").await;
    assert_eq!(writes.len(), 3, "v1, v2, v1 again: {writes:#?}");
}

// ---------------------------------------------------------------------------------------
// 6. Rollback policies

#[tokio::test]
async fn rollback_keeps_downgrades_or_holds_the_schema_as_the_runbook_says() {
    let mut harness = Harness::start().await;
    let migrate_with = |rollback: Value| {
        let mut step = job_step(MIGRATE_OK);
        step["rollback"] = rollback;
        json!({ "migrate": step })
    };
    let cases = [
        ("keep", json!({"policy": "Keep"}), false),
        (
            "downgrade",
            json!({"policy": "Downgrade", "command": ["sh", "-c", DOWNGRADE_OK]}),
            false,
        ),
        (
            "downgrade-fails",
            json!({"policy": "Downgrade", "command": ["sh", "-c", DOWNGRADE_FAILS]}),
            false,
        ),
        ("hold", json!({"policy": "Hold"}), true),
    ];
    let mut apps = Vec::new();
    for (ns, rollback, irreversible) in cases {
        let repo = harness.repo(ns);
        let good = Revision::good("1.0").commit_to(&repo);
        set_up(&harness, ns, &repo, migrate_with(rollback)).await;
        apps.push((ns, repo, good, irreversible));
    }
    harness.start_controller();
    let mut bad = Vec::new();
    for (ns, repo, good, irreversible) in &apps {
        wait_for_phase(&harness, ns, Phase::Healthy, good).await;
        let mut revision = Revision::crash_looping("2.0");
        if *irreversible {
            revision = revision.irreversible();
        }
        bad.push(revision.commit_to(repo));
    }
    let good_image = "example/shop-api:1.0";
    let bad_image = "example/shop-api:2.0-crashloop";

    // Keep: flipped back, the schema left as it is.
    let (ns, _, good, _) = &apps[0];
    let app = wait_for_phase(&harness, ns, Phase::RolledBack, good).await;
    assert_eq!(harness.image_of(ns, "api").await, good_image);
    assert_eq!(
        created(&job_creates(&harness, ns).await),
        [
            job_of(ns, JobKind::Migrate, good),
            job_of(ns, JobKind::Migrate, &bad[0])
        ],
        "no downgrade Job under Keep"
    );
    assert!(status(&app).jobs.iter().all(|j| j.kind == JobKind::Migrate));

    // Downgrade: the failed revision's image downgrades before the workloads flip back.
    let (ns, _, good, _) = &apps[1];
    let app = wait_for_phase(&harness, ns, Phase::RolledBack, good).await;
    assert_eq!(harness.image_of(ns, "api").await, good_image);
    let downgrade = job_of(ns, JobKind::Downgrade, &bad[1]);
    let creates = job_creates(&harness, ns).await;
    assert_eq!(
        created(&creates),
        [
            job_of(ns, JobKind::Migrate, good),
            job_of(ns, JobKind::Migrate, &bad[1]),
            downgrade.clone()
        ]
    );
    let job = get_job(&harness, ns, &downgrade).await;
    let container = &job_pod(&job).containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(bad_image),
        "the failed revision's image"
    );
    assert_eq!(
        container.command.clone().unwrap_or_default(),
        ["sh", "-c", DOWNGRADE_OK]
    );
    let writes = deployment_writes(&harness, ns, "api").await;
    assert_eq!(writes.len(), 3, "applied v1, v2, v1 again: {writes:#?}");
    let downgrade_sent = creates[2].received_at;
    assert!(
        writes[1].received_at < downgrade_sent && downgrade_sent < writes[2].received_at,
        "the downgrade Job ({downgrade_sent}) between the bad apply ({}) and the flip back ({})",
        writes[1].received_at,
        writes[2].received_at
    );
    assert!(second(completion(&job)) <= second(writes[2].received_at));
    let record = status(&app)
        .jobs
        .iter()
        .find(|j| j.kind == JobKind::Downgrade)
        .expect("the downgrade recorded");
    assert!(record.succeeded && record.revision == bad[1]);
    event_about(&harness, ns, "Downgraded", &bad[1]).await;

    // Downgrade failing: Failed, and the workloads stay where they are.
    let (ns, _, _, _) = &apps[2];
    let app = wait_for_entry(&harness, ns, &bad[2], Phase::Failed).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(harness.image_of(ns, "api").await, bad_image);
    assert_eq!(deployment_writes(&harness, ns, "api").await.len(), 2);
    let message = entry_message(&app, &bad[2]);
    assert!(
        message.contains("downgrade") && message.contains("downgrading"),
        "history: {message}"
    );
    event_about(&harness, ns, "Failed", &bad[2]).await;

    // Hold: an irreversible migration is not flipped back.
    let (ns, _, _, _) = &apps[3];
    let app = wait_for_entry(&harness, ns, &bad[3], Phase::Failed).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.current_revision.as_deref(), Some(bad[3].as_str()));
    assert_eq!(harness.image_of(ns, "api").await, bad_image);
    assert_eq!(deployment_writes(&harness, ns, "api").await.len(), 2);
    let message = entry_message(&app, &bad[3]);
    assert!(
        message.contains("irreversible") && message.contains("Hold"),
        "history: {message}"
    );
    let ready = condition_of(&app, condition::READY).expect("Ready");
    assert!(ready.message.contains("irreversible"), "{ready:?}");
    assert!(
        s.jobs
            .iter()
            .any(|j| j.kind == JobKind::Migrate && j.revision == bad[3] && j.irreversible),
        "{:?}",
        s.jobs
    );
    assert!(
        created(&job_creates(&harness, ns).await)
            .iter()
            .all(|name| !name.contains("-downgrade-"))
    );
}
