//! Backup, migration and downgrade Jobs against the real local control plane (1.20): the
//! Job controller of kube-controller-manager runs them, the pod simulator plays their
//! pods (a Job's pod succeeds after about a second, fails when its image contains
//! `fail`, never starts when it contains `errimagepull`), and `jobs::ensure` creates,
//! adopts, observes and cleans them up as the controller does, as the controller user.

mod support;

use std::time::Duration;

use anyhow::{Context, bail};
use bosun::api::{
    AppDeployment, BackupStep, ContainerRef, JobKind, JobStep, MigrateRollback, MigrateStep,
    MigrationRollbackPolicy,
};
use bosun::core::{Failure, FailureKind};
use bosun::failure::Classified;
use bosun::jobs::{self, JobError, JobRequest, JobState};
use bosun::render::Manifest;
use bosun_devenv::{ControlPlane, ControlPlaneOptions, PodSimulator};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{eventually, init_tracing};

/// Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(120);
const NS: &str = "shop";
const APP: &str = "web";
/// `bosun.dev/app` of the app.
const APP_LABEL: &str = "shop.web";
const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// A control plane with the pod simulator, bosun's CRDs, the namespace and the
/// AppDeployment the Jobs belong to (read back, so it has its uid).
struct Cluster {
    plane: ControlPlane,
    /// The test's own client (admin).
    admin: Client,
    /// The controller user's client, as the controller applies with.
    controller: Client,
    app: AppDeployment,
    _pods: PodSimulator,
}

impl Cluster {
    async fn start() -> Cluster {
        init_tracing();
        let plane = ControlPlane::start(ControlPlaneOptions::default())
            .await
            .expect("control plane");
        let admin = plane.client();
        let pods = PodSimulator::start(admin.clone());
        support::install_crds(&admin).await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
        namespaces
            .patch(NS, &PatchParams::apply("bosun-test"), &Patch::Apply(&namespace))
            .await
            .expect("namespace");
        let apps: Api<AppDeployment> = Api::namespaced(admin.clone(), NS);
        let app: AppDeployment = serde_saphyr::from_str(&bosun_devenv::example::app_deployment_yaml(
            NS,
            APP,
            "git://127.0.0.1/none",
            None,
            "1m",
        ))
        .expect("AppDeployment YAML");
        let app = apps
            .create(&PostParams::default(), &app)
            .await
            .expect("AppDeployment created");
        let controller = plane.controller_client().await.expect("controller client");
        Cluster {
            plane,
            admin,
            controller,
            app,
            _pods: pods,
        }
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.admin.clone(), NS)
    }

    /// The app's Jobs as the API server lists them.
    async fn app_jobs(&self) -> anyhow::Result<Vec<Job>> {
        Ok(self
            .jobs()
            .list(&ListParams::default().labels(&jobs::app_selector(APP_LABEL)))
            .await?
            .items)
    }

    /// Calls `ensure` until the Job is finished.
    async fn run_to_end(&self, job: &Job) -> anyhow::Result<JobState> {
        eventually(&format!("Job {} to finish", job.name_any()), WAIT, || async {
            let state = jobs::ensure(&self.controller, job).await?;
            Ok(state.is_finished().then_some(state))
        })
        .await
    }
}

/// The revision's Deployment the migration takes its container from.
fn revision_objects() -> Vec<Manifest> {
    vec![Manifest {
        object: json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "annotations": {"bosun.dev/migration": "irreversible"}},
            "spec": {
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {
                        "containers": [{
                            "name": "backend",
                            "image": "example/litevault-backend:1.4.0",
                            "env": [
                                {"name": "AUTH_MODE", "value": "clerk"},
                                {"name": "DATABASE_URL",
                                 "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                            ],
                            "envFrom": [{"configMapRef": {"name": "settings"}}],
                            "volumeMounts": [{"name": "uploads", "mountPath": "/data/uploads"}],
                        }],
                        "volumes": [{"name": "uploads", "emptyDir": {}}],
                    },
                },
            },
        }),
        file: "deploy/api.yaml".into(),
        line: 1,
    }]
}

/// What the seeds' migrations run.
const UPGRADE: &[&str] = &["uv", "run", "alembic", "upgrade", "head"];
/// A migration that logs and fails (a script the pod simulator plays out once it has
/// one; until then the image decides).
const FAILING: &[&str] = &["sh", "-c", "echo migrating; exit 3"];

fn migrate_step(
    from: Option<&str>,
    image: Option<&str>,
    timeout: Option<&str>,
    command: &[&str],
) -> MigrateStep {
    MigrateStep {
        job: JobStep {
            from: from.map(|workload| ContainerRef {
                workload: workload.into(),
                container: None,
            }),
            image: image.map(str::to_string),
            command: command.iter().map(|word| word.to_string()).collect(),
            args: vec![],
            timeout: timeout.map(str::to_string),
            backoff_limit: None,
        },
        rollback: Some(MigrateRollback {
            policy: MigrationRollbackPolicy::Downgrade,
            command: vec![
                "uv".into(),
                "run".into(),
                "alembic".into(),
                "downgrade".into(),
                "-1".into(),
            ],
            args: vec![],
        }),
    }
}

fn migration_job(cluster: &Cluster, step: &MigrateStep, revision: &str, objects: &[Manifest]) -> Job {
    jobs::build_job(&JobRequest::migrate(&cluster.app, step, revision, objects)).expect("Job builds")
}

/// One migration Job: created once, adopted by every later `ensure` (as after a restart
/// of the controller), run to success, owned by the AppDeployment; the API server counts
/// one Job and one successful create.
#[tokio::test]
async fn ensure_creates_the_job_once_and_adopts_it_after() -> anyhow::Result<()> {
    let cluster = Cluster::start().await;
    let objects = revision_objects();
    let step = migrate_step(Some("api"), None, None, UPGRADE);
    let job = migration_job(&cluster, &step, REVISION, &objects);
    assert_eq!(job.name_any(), "web-migrate-0123456789ab");

    let first = jobs::ensure(&cluster.controller, &job).await?;
    assert!(
        matches!(first, JobState::Running { ref since } if !since.is_empty()),
        "{first:?}"
    );
    let created = cluster.jobs().get(&job.name_any()).await?;

    // A restarted controller builds the same Job again and adopts the one running.
    let rebuilt = migration_job(&cluster, &step, REVISION, &objects);
    let state = jobs::ensure(&cluster.controller, &rebuilt).await?;
    assert!(!matches!(state, JobState::Failed { .. }), "{state:?}");
    let listed = cluster.app_jobs().await?;
    assert_eq!(listed.len(), 1, "exactly one Job: {:?}", names(&listed));
    assert_eq!(listed[0].uid(), created.uid());

    let finished = cluster.run_to_end(&job).await?;
    let JobState::Succeeded { finished_at } = &finished else {
        bail!("the migration should succeed: {finished:?}");
    };
    assert!(!finished_at.is_empty());
    // Finished, it stays finished: ensure neither re-runs nor replaces it.
    assert_eq!(jobs::ensure(&cluster.controller, &job).await?, finished);
    assert_eq!(
        jobs::observe(&cluster.controller, NS, &job.name_any()).await?,
        Some(finished)
    );
    assert_eq!(
        jobs::observe(&cluster.controller, NS, "web-migrate-ffffffffffff").await?,
        None
    );

    let stored = cluster.jobs().get(&job.name_any()).await?;
    assert_eq!(stored.uid(), created.uid());
    let owner = &stored.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("AppDeployment", APP));
    assert_eq!(Some(owner.uid.clone()), cluster.app.uid());
    assert_eq!(stored.labels()["bosun.dev/revision"], REVISION);
    assert_eq!(stored.labels()["bosun.dev/job-kind"], "migrate");
    let pod_spec = stored.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.containers[0].image.as_deref(),
        Some("example/litevault-backend:1.4.0")
    );
    assert_eq!(pod_spec.volumes.unwrap()[0].name, "uploads");

    // The controller asked to create the Job as often as it called ensure; the API
    // server created it once.
    let creates: Vec<_> = cluster
        .plane
        .controller_writes()
        .await?
        .into_iter()
        .filter(|w| w.resource == "jobs" && w.verb == "create")
        .collect();
    let created_ok = creates.iter().filter(|w| w.code == Some(201)).count();
    assert_eq!(created_ok, 1, "{creates:?}");
    assert!(
        creates.iter().all(|w| matches!(w.code, Some(201 | 409))),
        "{creates:?}"
    );
    Ok(())
}

/// A Job of the same name that is not this app's is neither adopted nor replaced; a Job
/// the API server refuses (422) is a refusal naming the Job and the field.
#[tokio::test]
async fn a_foreign_job_is_not_adopted_and_a_refused_spec_names_the_job() -> anyhow::Result<()> {
    let cluster = Cluster::start().await;
    let backup = BackupStep {
        job: JobStep {
            image: Some("postgres:15".into()),
            command: vec!["sh".into(), "-c".into(), "pg_dump > /backup/db.sql".into()],
            ..JobStep::default()
        },
        required: true,
    };
    let job = jobs::build_job(&JobRequest::backup(&cluster.app, &backup, REVISION, &[]))?;
    // Someone else's Job under that name, made by hand.
    let foreign: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job.name_any(), "labels": {"team": "ops"}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "dump", "image": "example/ok:1"}],
        }}},
    }))?;
    let foreign = cluster.jobs().create(&PostParams::default(), &foreign).await?;

    let error = jobs::ensure(&cluster.controller, &job)
        .await
        .expect_err("another's Job is not adopted");
    assert!(matches!(error, JobError::NotOurs { .. }), "{error:?}");
    let Classified::Refused(Failure {
        kind: FailureKind::OwnershipConflict,
        message,
    }) = error.classify()
    else {
        bail!("an ownership conflict: {error}");
    };
    assert_eq!(
        message,
        format!(
            "Job shop/web-backup-0123456789ab exists and is not the backup Job of revision \
             {REVISION} of AppDeployment shop/web: it has none of bosun's labels; bosun neither \
             adopts nor replaces it"
        )
    );
    let still = cluster.jobs().get(&job.name_any()).await?;
    assert_eq!(still.uid(), foreign.uid());
    assert_eq!(still.labels().get("team").map(String::as_str), Some("ops"));

    // A Runbook stored past the CRD's schema (minimum 0) with a negative backoff limit.
    let mut step = migrate_step(None, Some("example/migrator:1"), None, UPGRADE);
    step.job.backoff_limit = Some(-1);
    let refused = migration_job(&cluster, &step, REVISION, &[]);
    let error = jobs::ensure(&cluster.controller, &refused)
        .await
        .expect_err("the API server refuses the Job");
    let Classified::Refused(Failure {
        kind: FailureKind::RevisionInvalid,
        message,
    }) = error.classify()
    else {
        bail!("a refusal: {error}");
    };
    assert!(
        message.starts_with("creating Job shop/web-migrate-0123456789ab: ")
            && message.contains("spec.backoffLimit"),
        "{message}"
    );
    assert!(cluster.jobs().get_opt(&refused.name_any()).await?.is_none());
    Ok(())
}

/// A migration that fails says why, with what could be read of its log; one that runs
/// past its timeout is failed by the Job controller's deadline.
#[tokio::test]
async fn failed_and_timed_out_jobs_report_reason_and_log_tail() -> anyhow::Result<()> {
    let cluster = Cluster::start().await;
    let failing = migrate_step(None, Some("example/fail-migration:1"), None, FAILING);
    let job = migration_job(&cluster, &failing, REVISION, &[]);
    let state = cluster.run_to_end(&job).await?;
    let JobState::Failed { reason, log_tail, .. } = &state else {
        bail!("the migration should fail: {state:?}");
    };
    assert_eq!(reason, "BackoffLimitExceeded");
    // The pod simulator binds no pod to a node yet, and the API server answers the
    // log of an unbound pod with nothing: the tail says so.
    assert_eq!(log_tail.len(), 1, "{log_tail:?}");
    assert!(
        log_tail[0].starts_with(&format!("the log of pod {NS}/{}-", job.name_any()))
            && log_tail[0].ends_with(" is empty"),
        "{log_tail:?}"
    );
    let message = state.failure_message().unwrap();
    assert!(message.starts_with("BackoffLimitExceeded: "), "{message}");
    assert!(message.ends_with(" is empty"), "{message}");

    // An identity that may read Jobs and list pods but not read their logs (an app's
    // ServiceAccount with a narrow Role) still learns that and why the Job failed.
    let migrator = "system:serviceaccount:shop:migrator";
    grant(
        &cluster,
        migrator,
        json!([
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        ]),
    )
    .await?;
    let narrow = cluster.plane.impersonating_client(migrator).await?;
    // The authorizer learns of the new binding from a watch: retry until it has.
    let seen = eventually("the narrow identity to read the Job", WAIT, || async {
        Ok(jobs::ensure(&narrow, &job).await.ok())
    })
    .await?;
    let JobState::Failed { reason, log_tail, .. } = &seen else {
        bail!("still failed: {seen:?}");
    };
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(log_tail.len(), 1, "{log_tail:?}");
    assert!(
        log_tail[0].starts_with(&format!("the log of pod {NS}/{}-", job.name_any()))
            && log_tail[0].contains(" could not be read: ")
            && log_tail[0].contains("forbidden"),
        "{log_tail:?}"
    );

    // A pod whose image never pulls runs forever; the deadline ends it.
    let stuck = migrate_step(None, Some("example/errimagepull:1"), Some("3s"), UPGRADE);
    let other_revision = "1111111111111111111111111111111111111111";
    let job = migration_job(&cluster, &stuck, other_revision, &[]);
    assert_eq!(job.spec.as_ref().unwrap().active_deadline_seconds, Some(3));
    let state = cluster.run_to_end(&job).await?;
    let JobState::Failed { reason, message, .. } = &state else {
        bail!("the migration should time out: {state:?}");
    };
    assert_eq!(reason, "DeadlineExceeded", "{state:?}");
    assert!(message.contains("deadline"), "{message}");
    Ok(())
}

/// Cleanup keeps the newest N of the app's Jobs, never deletes one still running, never
/// another app's, and their pods go with them.
#[tokio::test]
async fn cleanup_keeps_the_newest_and_never_a_running_job() -> anyhow::Result<()> {
    let cluster = Cluster::start().await;
    let ok = migrate_step(None, Some("example/migrator:1"), None, UPGRADE);
    let stuck = migrate_step(None, Some("example/errimagepull:1"), Some("10m"), UPGRADE);
    let revisions = ["1", "2", "3", "4"].map(|digit| digit.repeat(40));
    let mut names = Vec::new();
    for (index, revision) in revisions.iter().enumerate() {
        // The second-oldest never finishes.
        let step = if index == 1 { &stuck } else { &ok };
        let job = migration_job(&cluster, step, revision, &[]);
        jobs::ensure(&cluster.controller, &job).await?;
        names.push(job.name_any());
        // Creation times have a resolution of one second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Another app's Job in the same namespace.
    let mut other_app = cluster.app.clone();
    other_app.metadata.name = Some("api".into());
    let mut other = jobs::build_job(&JobRequest::migrate(&other_app, &ok, &revisions[0], &[]))?;
    // That app does not exist: an owner reference to it would let the garbage collector
    // delete the Job as an orphan, whatever cleanup does.
    other.metadata.owner_references = None;
    jobs::ensure(&cluster.controller, &other).await?;

    for (index, name) in names.iter().enumerate() {
        if index == 1 {
            continue;
        }
        eventually(&format!("Job {name} to succeed"), WAIT, || async {
            let state = jobs::observe(&cluster.controller, NS, name).await?;
            Ok(matches!(state, Some(JobState::Succeeded { .. })).then_some(()))
        })
        .await?;
    }
    let oldest_pods = pods_of(&cluster, &names[0]).await?;
    assert_eq!(oldest_pods.len(), 1, "the oldest Job's pod");

    let deleted = jobs::cleanup(&cluster.controller, NS, APP_LABEL, 2).await?;
    assert_eq!(deleted, [names[0].clone()]);
    let left = names_of(&cluster.app_jobs().await?);
    assert_eq!(left, [names[1].clone(), names[2].clone(), names[3].clone()]);

    let deleted = jobs::cleanup(&cluster.controller, NS, APP_LABEL, 0).await?;
    assert_eq!(deleted, [names[3].clone(), names[2].clone()]);
    assert_eq!(names_of(&cluster.app_jobs().await?), [names[1].clone()]);
    assert!(cluster.jobs().get_opt(&other.name_any()).await?.is_some());

    // Background propagation: the garbage collector takes the pods after their Job.
    eventually("the deleted Job's pod to be gone", WAIT, || async {
        Ok(pods_of(&cluster, &names[0]).await?.is_empty().then_some(()))
    })
    .await
    .context("pods of deleted Jobs")?;
    Ok(())
}

/// The downgrade Job runs the rollback command of the failed revision with its image.
#[tokio::test]
async fn irreversible_and_downgrade_read_the_failed_revision() -> anyhow::Result<()> {
    let objects = revision_objects();
    let from = ContainerRef {
        workload: "api".into(),
        container: None,
    };
    assert!(jobs::irreversible(&objects, Some(&from)));
    let cluster = Cluster::start().await;
    let step = migrate_step(Some("api"), None, None, UPGRADE);
    let job = jobs::build_job(&JobRequest::downgrade(&cluster.app, &step, REVISION, &objects))?;
    assert_eq!(job.name_any(), "web-downgrade-0123456789ab");
    let state = cluster.run_to_end(&job).await?;
    assert!(matches!(state, JobState::Succeeded { .. }), "{state:?}");
    let stored = cluster.jobs().get(&job.name_any()).await?;
    assert_eq!(stored.labels()["bosun.dev/job-kind"], JobKind::Downgrade.as_str());
    let container = &stored.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.command.as_deref().unwrap(),
        ["uv", "run", "alembic", "downgrade", "-1"]
    );
    Ok(())
}

/// A Role with `rules` in the test namespace, bound to `user`.
async fn grant(cluster: &Cluster, user: &str, rules: serde_json::Value) -> anyhow::Result<()> {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "migrator"},
        "rules": rules,
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "migrator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "migrator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))?;
    Api::<Role>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(cluster.admin.clone(), NS)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

async fn pods_of(cluster: &Cluster, job: &str) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), NS);
    Ok(pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items)
}

fn names(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.name_any()).collect()
}

/// Names sorted, for comparing sets.
fn names_of(jobs: &[Job]) -> Vec<String> {
    let mut names = names(jobs);
    names.sort();
    names
}
