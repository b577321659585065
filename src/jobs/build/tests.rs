use serde_json::{Value, json};

use super::*;
use crate::api::{AppDeploymentSpec, MigrateRollback, MigrationRollbackPolicy};
use crate::render::render;
use crate::source::SourceFile;

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// The revision's manifests, rendered as the controller renders them.
fn rendered(yaml: &str) -> Vec<Manifest> {
    render(&[SourceFile {
        path: "deploy/app.yaml".into(),
        content: yaml.as_bytes().to_vec(),
    }])
    .expect("the fixture renders")
}

fn app(namespace: &str, target: Option<&str>) -> AppDeployment {
    let mut app = AppDeployment::new(
        "web",
        AppDeploymentSpec {
            target_namespace: target.map(str::to_string),
            ..AppDeploymentSpec::default()
        },
    );
    app.metadata.namespace = Some(namespace.into());
    app.metadata.uid = Some("uid-web".into());
    app
}

/// The LiteVault backend: a Deployment with a sidecar, env from literals, a ConfigMap,
/// a Secret, `envFrom`, three volumes (one the chosen container does not mount), a
/// service account and pull Secrets.
const API: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  LOG_LEVEL: info
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  annotations:
    bosun.dev/migration: irreversible
spec:
  replicas: 2
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
      annotations: {sidecar.istio.io/inject: "true"}
    spec:
      serviceAccountName: api-runner
      imagePullSecrets:
        - name: registry
      securityContext:
        runAsNonRoot: true
      nodeSelector: {pool: apps}
      initContainers:
        - name: wait-for-db
          image: busybox:1.36
          command: ["sh", "-c", "until nc -z db 5432; do sleep 1; done"]
      containers:
        - name: proxy
          image: envoy:1.30
          volumeMounts:
            - name: proxy-config
              mountPath: /etc/envoy
        - name: backend
          image: registry.example.com/litevault/backend:1.4.0
          command: ["uv", "run", "uvicorn", "app.main:app"]
          workingDir: /srv
          env:
            - name: AUTH_MODE
              value: clerk
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef: {name: db, key: url}
            - name: MEMORY_LIMIT
              valueFrom:
                resourceFieldRef: {containerName: backend, resource: limits.memory}
          envFrom:
            - configMapRef: {name: settings}
            - secretRef: {name: api-keys}
          resources:
            limits: {memory: 512Mi}
          securityContext:
            allowPrivilegeEscalation: false
          volumeMounts:
            - name: uploads
              mountPath: /data/uploads
            - name: jwt
              mountPath: /etc/jwt
              readOnly: true
      volumes:
        - name: proxy-config
          configMap: {name: envoy}
        - name: uploads
          persistentVolumeClaim: {claimName: uploads}
        - name: jwt
          secret: {secretName: jwt}
"#;

fn migrate_step(from: Option<(&str, Option<&str>)>, image: Option<&str>) -> MigrateStep {
    MigrateStep {
        job: JobStep {
            from: from.map(|(workload, container)| ContainerRef {
                workload: workload.into(),
                container: container.map(str::to_string),
            }),
            image: image.map(str::to_string),
            command: vec!["uv".into(), "run".into(), "alembic".into()],
            args: vec!["upgrade".into(), "head".into()],
            timeout: None,
            backoff_limit: None,
        },
        rollback: Some(MigrateRollback {
            policy: MigrationRollbackPolicy::Downgrade,
            command: vec!["uv".into(), "run".into(), "alembic".into()],
            args: vec!["downgrade".into(), "-1".into()],
        }),
    }
}

fn to_json(job: &Job) -> Value {
    serde_json::to_value(job).unwrap()
}

#[test]
fn a_migration_from_a_workload_takes_its_container_and_what_the_container_needs() {
    let objects = rendered(API);
    let app = app("shop", None);
    let step = migrate_step(Some(("api", Some("backend"))), None);
    let job = build_job(&JobRequest::migrate(&app, &step, REVISION, &objects)).unwrap();
    let job = to_json(&job);

    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], "web-migrate-0123456789ab");
    assert_eq!(job["metadata"]["namespace"], "shop");
    let labels = json!({
        "bosun.dev/app": "shop.web",
        "bosun.dev/job-kind": "migrate",
        "bosun.dev/revision": REVISION,
    });
    assert_eq!(job["metadata"]["labels"], labels);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"], labels);
    assert_eq!(job["metadata"]["annotations"]["bosun.dev/owner"], "shop/web");
    assert_eq!(job["metadata"]["annotations"]["bosun.dev/revision"], REVISION);
    assert_eq!(
        job["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "bosun.dev/v1alpha1", "kind": "AppDeployment", "name": "web",
            "uid": "uid-web", "controller": true,
        }])
    );

    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    assert!(spec.get("ttlSecondsAfterFinished").is_none());
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "api-runner");
    assert_eq!(pod["imagePullSecrets"], json!([{ "name": "registry" }]));
    assert_eq!(pod["securityContext"], json!({ "runAsNonRoot": true }));
    assert_eq!(pod["nodeSelector"], json!({ "pool": "apps" }));
    assert!(pod.get("initContainers").is_none(), "{pod}");
    // Only the volumes the chosen container mounts.
    assert_eq!(
        pod["volumes"],
        json!([
            { "name": "uploads", "persistentVolumeClaim": { "claimName": "uploads" } },
            { "name": "jwt", "secret": { "secretName": "jwt" } },
        ])
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container["name"], "backend");
    assert_eq!(container["image"], "registry.example.com/litevault/backend:1.4.0");
    assert_eq!(container["command"], json!(["uv", "run", "alembic"]));
    assert_eq!(container["args"], json!(["upgrade", "head"]));
    assert_eq!(container["workingDir"], "/srv");
    assert_eq!(
        container["env"][0],
        json!({ "name": "AUTH_MODE", "value": "clerk" })
    );
    assert_eq!(
        container["env"][1]["valueFrom"]["secretKeyRef"],
        json!({ "name": "db", "key": "url" })
    );
    assert_eq!(
        container["env"][2]["valueFrom"]["resourceFieldRef"]["containerName"],
        "backend"
    );
    assert_eq!(
        container["envFrom"],
        json!([{ "configMapRef": { "name": "settings" } }, { "secretRef": { "name": "api-keys" } }])
    );
    assert_eq!(container["volumeMounts"].as_array().unwrap().len(), 2);
    assert_eq!(container["resources"], json!({ "limits": { "memory": "512Mi" } }));
    assert_eq!(
        container["securityContext"],
        json!({ "allowPrivilegeEscalation": false })
    );
    // Neither the workload's labels (its Service would select the Job's pod) nor its
    // pod annotations (sidecar injection).
    assert!(spec["template"]["metadata"].get("annotations").is_none());
}

#[test]
fn the_default_container_is_the_first_and_image_overrides_the_workloads() {
    let objects = rendered(API);
    let app = app("shop", None);
    let step = migrate_step(
        Some(("api", None)),
        Some("registry.example.com/litevault/migrator:1.4.0"),
    );
    let job = to_json(&build_job(&JobRequest::migrate(&app, &step, REVISION, &objects)).unwrap());
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "proxy");
    assert_eq!(
        container["image"],
        "registry.example.com/litevault/migrator:1.4.0"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"],
        json!([{ "name": "proxy-config", "configMap": { "name": "envoy" } }])
    );
}

#[test]
fn an_init_container_can_be_named() {
    let objects = rendered(API);
    let app = app("shop", None);
    let step = migrate_step(Some(("api", Some("wait-for-db"))), None);
    let job = to_json(&build_job(&JobRequest::migrate(&app, &step, REVISION, &objects)).unwrap());
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
}

#[test]
fn an_image_alone_gives_a_bare_container_in_the_target_namespace_without_owner() {
    let app = app("team", Some("shop"));
    let backup = BackupStep {
        job: JobStep {
            image: Some("postgres:15".into()),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["pg_dump \"$DATABASE_URL\" > /backup/litevault.sql".into()],
            timeout: Some("90s".into()),
            backoff_limit: Some(2),
            from: None,
        },
        required: true,
    };
    let job = build_job(&JobRequest::backup(&app, &backup, REVISION, &[])).unwrap();
    let job = to_json(&job);
    assert_eq!(job["metadata"]["name"], "web-backup-0123456789ab");
    assert_eq!(job["metadata"]["namespace"], "shop");
    assert_eq!(job["metadata"]["labels"]["bosun.dev/app"], "team.web");
    assert_eq!(job["metadata"]["annotations"]["bosun.dev/owner"], "team/web");
    // The AppDeployment lives in `team`: an owner reference across namespaces would
    // get the Job deleted by the garbage collector.
    assert!(job["metadata"].get("ownerReferences").is_none());
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 90);
    assert_eq!(
        job["spec"]["template"]["spec"],
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "backup",
                "image": "postgres:15",
                "command": ["sh", "-c"],
                "args": ["pg_dump \"$DATABASE_URL\" > /backup/litevault.sql"],
            }],
        })
    );
}

#[test]
fn a_downgrade_runs_the_rollback_command_for_the_failed_revision() {
    let objects = rendered(API);
    let app = app("shop", None);
    let step = migrate_step(Some(("api", Some("backend"))), None);
    let failed = "fedcba9876543210fedcba9876543210fedcba98";
    let job = to_json(&build_job(&JobRequest::downgrade(&app, &step, failed, &objects)).unwrap());
    assert_eq!(job["metadata"]["name"], "web-downgrade-fedcba987654");
    assert_eq!(job["metadata"]["labels"]["bosun.dev/job-kind"], "downgrade");
    assert_eq!(job["metadata"]["labels"]["bosun.dev/revision"], failed);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["uv", "run", "alembic"]));
    assert_eq!(container["args"], json!(["downgrade", "-1"]));
    assert_eq!(container["image"], "registry.example.com/litevault/backend:1.4.0");

    let no_command = MigrateStep {
        rollback: None,
        ..step
    };
    assert_eq!(
        build_job(&JobRequest::downgrade(&app, &no_command, failed, &objects)).unwrap_err(),
        JobSpecError::NoDowngradeCommand
    );
}

#[test]
fn a_workload_in_its_own_namespace_takes_the_job_there() {
    let objects = rendered(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  namespace: jobs
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          serviceAccount: reporter
          containers:
            - name: report
              image: reporter:2
"#,
    );
    let app = app("shop", None);
    let step = migrate_step(Some(("nightly", None)), None);
    let job = to_json(&build_job(&JobRequest::migrate(&app, &step, REVISION, &objects)).unwrap());
    assert_eq!(job["metadata"]["namespace"], "jobs");
    assert!(job["metadata"].get("ownerReferences").is_none());
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "reporter");
    assert_eq!(pod["containers"][0]["image"], "reporter:2");
}

#[test]
fn errors_name_the_field_the_workload_and_what_there_is() {
    let objects = rendered(API);
    let app = app("shop", None);
    let error = |step: &MigrateStep| {
        build_job(&JobRequest::migrate(&app, step, REVISION, &objects))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        error(&migrate_step(Some(("worker", None)), None)),
        "spec.migrate.from.workload: the revision renders no Deployment, StatefulSet, \
         DaemonSet, Job or CronJob named worker"
    );
    // A ConfigMap of that name is no workload.
    assert!(error(&migrate_step(Some(("settings", None)), None)).contains("named settings"));
    assert_eq!(
        error(&migrate_step(Some(("api", Some("migrator"))), None)),
        "spec.migrate.from.container: Deployment api (deploy/app.yaml:9) has no container \
         named migrator (it has: proxy, backend, wait-for-db (init))"
    );
    assert_eq!(
        error(&migrate_step(None, None)),
        "spec.migrate: neither `from` nor `image` is given, so the Job has nothing to run"
    );
    let mut slow = migrate_step(None, Some("migrator:1"));
    slow.job.timeout = Some("forever".into());
    assert!(
        error(&slow).starts_with("spec.migrate.timeout: "),
        "{}",
        error(&slow)
    );

    let backup = BackupStep {
        job: JobStep {
            from: Some(ContainerRef {
                workload: "db".into(),
                container: None,
            }),
            ..JobStep::default()
        },
        required: true,
    };
    let sts = rendered(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: postgres
          image: postgres:15
          volumeMounts:
            - name: data
              mountPath: /var/lib/postgresql/data
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests: {storage: 1Gi}
"#,
    );
    let refused = build_job(&JobRequest::backup(&app, &backup, REVISION, &sts)).unwrap_err();
    assert!(
        refused.to_string().starts_with(
            "spec.backup.from.container: container postgres of StatefulSet db (deploy/app.yaml:2) \
             mounts volume data, a volumeClaimTemplate of the StatefulSet"
        ),
        "{refused}"
    );
    assert!(matches!(
        refused.classify(),
        Classified::Refused(Failure {
            kind: FailureKind::RevisionInvalid,
            ..
        })
    ));
}

#[test]
fn an_app_not_read_from_the_api_server_cannot_own_a_job() {
    let mut app = app("shop", None);
    app.metadata.uid = None;
    let step = migrate_step(None, Some("migrator:1"));
    assert!(matches!(
        build_job(&JobRequest::migrate(&app, &step, REVISION, &[])),
        Err(JobSpecError::IncompleteApp { .. })
    ));
}

#[test]
fn irreversible_reads_the_from_workload_or_any_object_for_an_image() {
    let objects = rendered(API);
    let api = ContainerRef {
        workload: "api".into(),
        container: None,
    };
    assert!(irreversible(&objects, Some(&api)));
    assert!(irreversible(&objects, None));
    let unmarked = rendered(&API.replace("bosun.dev/migration: irreversible", "team: core"));
    assert!(!irreversible(&unmarked, Some(&api)));
    assert!(!irreversible(&unmarked, None));
    let other = ContainerRef {
        workload: "worker".into(),
        container: None,
    };
    assert!(!irreversible(&objects, Some(&other)));
    // On another object only: not the migration's workload.
    let elsewhere = rendered(&format!(
        "{}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: schema\n  annotations:\n    bosun.dev/migration: irreversible\n",
        API.replace("bosun.dev/migration: irreversible", "team: core")
    ));
    assert!(!irreversible(&elsewhere, Some(&api)));
    assert!(irreversible(&elsewhere, None));
}
