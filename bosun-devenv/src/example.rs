//! The example app of the demo and the tests, modelled on the LiteVault runbook:
//! a FastAPI backend, an enrichment worker, a Service and a ConfigMap, plus a
//! Runbook whose gate is "curl /health, expect {"status":"ok"}".

use super::WorkRepo;

/// Every file a revision of the example app may have.
const ALL_FILES: [&str; 3] = ["deploy/backend.yaml", "deploy/worker.yaml", "deploy/config.yaml"];

/// One revision of the example app's manifests, as files for a Git repository.
#[derive(Clone, Debug)]
pub struct ExampleRevision {
    /// Shown in the ConfigMap and in the image tags.
    pub version: String,
    pub backend_image: String,
    pub worker_image: String,
    /// Whether `deploy/config.yaml` (a ConfigMap) is part of the revision.
    pub with_config_map: bool,
}

impl ExampleRevision {
    pub fn good(version: &str) -> Self {
        ExampleRevision {
            version: version.into(),
            backend_image: format!("example/litevault-backend:{version}"),
            worker_image: format!("example/litevault-worker:{version}"),
            with_config_map: true,
        }
    }

    /// The backend starts but its /health answers `degraded`.
    pub fn unhealthy(version: &str) -> Self {
        ExampleRevision {
            backend_image: format!("example/litevault-backend:{version}-unhealthy"),
            ..Self::good(version)
        }
    }

    /// The backend container crashes at start (CrashLoopBackOff).
    pub fn crash_looping(version: &str) -> Self {
        ExampleRevision {
            backend_image: format!("example/litevault-backend:{version}-crashloop"),
            ..Self::good(version)
        }
    }

    /// Makes this revision the repository's content (files of other revisions that
    /// this one lacks are removed) and commits it; returns the commit id.
    pub fn commit_to(&self, repo: &WorkRepo, message: &str) -> anyhow::Result<String> {
        for stale in ALL_FILES {
            if repo.path().join(stale).exists() {
                repo.remove(stale)?;
            }
        }
        for (path, contents) in self.files() {
            repo.write(&path, &contents)?;
        }
        repo.commit(message)
    }

    /// `(path, contents)` of every manifest file, under `deploy/`.
    pub fn files(&self) -> Vec<(String, String)> {
        let [backend, worker, config] = ALL_FILES;
        let mut files = vec![
            (backend.to_string(), self.backend()),
            (worker.to_string(), self.worker()),
        ];
        if self.with_config_map {
            files.push((config.to_string(), self.config_map()));
        }
        files
    }

    fn config_map(&self) -> String {
        format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: litevault-config
data:
  ENV: production
  AUTH_MODE: clerk
  LLM_PROVIDER: litellm
  LOG_LEVEL: WARNING
  APP_VERSION: "{version}"
"#,
            version = self.version
        )
    }

    fn backend(&self) -> String {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
  labels:
    app: litevault
    component: backend
spec:
  replicas: 2
  selector:
    matchLabels:
      app: litevault
      component: backend
  template:
    metadata:
      labels:
        app: litevault
        component: backend
    spec:
      containers:
        - name: api
          image: {image}
          args: ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
          ports:
            - containerPort: 8000
          env:
            - name: ENV
              value: production
            - name: AUTH_MODE
              value: clerk
---
apiVersion: v1
kind: Service
metadata:
  name: backend
  labels:
    app: litevault
spec:
  selector:
    app: litevault
    component: backend
  ports:
    - name: http
      port: 8000
      targetPort: 8000
"#,
            image = self.backend_image
        )
    }

    fn worker(&self) -> String {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: worker
  labels:
    app: litevault
    component: worker
spec:
  replicas: 1
  selector:
    matchLabels:
      app: litevault
      component: worker
  template:
    metadata:
      labels:
        app: litevault
        component: worker
    spec:
      containers:
        - name: enrichment
          image: {image}
          args: ["python", "-m", "app.worker"]
"#,
            image = self.worker_image
        )
    }
}

/// The example Runbook: `GET <health_url>` must answer `{"status":"ok"}`; three
/// failures in a row roll the app back.
pub fn runbook_yaml(namespace: &str, name: &str, health_url: &str, verify_window: &str) -> String {
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: {name}
  namespace: {namespace}
spec:
  verifyWindow: {verify_window}
  rollback:
    automatic: true
  gates:
    - name: health
      periodSeconds: 1
      timeoutSeconds: 2
      failureThreshold: 3
      http:
        url: {health_url}
        expect:
          status: [200]
          json:
            status: ok
"#
    )
}

/// [`runbook_yaml`] with the LiteVault runbook's migration step: `uv run alembic
/// upgrade head` in a Job made from the new revision's `backend` container, before
/// the revision is applied. On rollback the schema stays as the newer revision left
/// it (`Keep`: the runbook's migrations are additive).
pub fn runbook_with_migration_yaml(
    namespace: &str,
    name: &str,
    health_url: &str,
    verify_window: &str,
) -> String {
    format!(
        "{}{MIGRATION}",
        runbook_yaml(namespace, name, health_url, verify_window)
    )
}

/// The `spec.migrate` of [`runbook_with_migration_yaml`].
const MIGRATION: &str = r#"  migrate:
    from:
      workload: backend
      container: api
    command: [uv, run, alembic, upgrade, head]
    rollback:
      policy: Keep
"#;

/// A Runbook with no gates but the (always-on) workload gate and a 1s verify window.
pub fn workload_only_runbook_yaml(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  verifyWindow: 1s\n"
    )
}

/// The AppDeployment following `url` (manifests under `deploy/`).
pub fn app_deployment_yaml(
    namespace: &str,
    name: &str,
    url: &str,
    runbook: Option<&str>,
    interval: &str,
) -> String {
    let runbook_ref = runbook
        .map(|runbook| format!("  runbookRef:\n    kind: Runbook\n    name: {runbook}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: AppDeployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  source:
    git:
      url: {url}
      ref:
        branch: main
      path: deploy
      interval: {interval}
{runbook_ref}  revisionHistoryLimit: 10
"#
    )
}
