//! The Job of a backup, migration or downgrade (pure): the Runbook's [`JobStep`] made
//! concrete against the rendered objects of a revision.
//!
//! With `from: {workload, container}`, the Job's one container is that container of the
//! revision's workload, as far as running the same code against the same backing
//! services needs: image, `env`, `envFrom`, `volumeMounts` (and the pod's volumes those
//! mounts use), `workingDir`, `resources`, `securityContext`, `imagePullPolicy`; and of
//! the pod: `serviceAccountName`, `imagePullSecrets`, `securityContext`, `nodeSelector`,
//! `tolerations`, `automountServiceAccountToken`. The security contexts and resources
//! matter on real clusters: a namespace that enforces the `restricted` Pod Security
//! level, or has a ResourceQuota, admits the workload's pods and would refuse a Job pod
//! without them (the Job controller then retries creating it until the deadline). The
//! pod's labels and annotations are not taken: a Job pod must not join the workload's
//! Services, nor ask for its sidecars.
//!
//! The command and args are the Runbook's (a downgrade's: `migrate.rollback`'s); without
//! any, the image's entrypoint runs. `image` alone gives a bare container; with `from`,
//! it replaces the workload's image.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::name::{job_labels, job_name};
use crate::api::{AppDeployment, BackupStep, ContainerRef, JobKind, JobStep, MigrateStep, OWNER_ANNOTATION};
use crate::core::{Failure, FailureKind};
use crate::failure::Classified;
use crate::render::Manifest;
use crate::snapshot::{REVISION_ANNOTATION, app_label_value};

/// The annotation a revision puts on its migration's `from` workload (or, with `image`,
/// on any object) to say its migration cannot be undone.
pub const MIGRATION_ANNOTATION: &str = "bosun.dev/migration";
pub const IRREVERSIBLE: &str = "irreversible";

/// The workload kinds `from` may name, in the order a name is looked up in.
const WORKLOAD_KINDS: [(&str, &str); 5] = [
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
];

/// Everything one Job is built from.
#[derive(Clone, Copy, Debug)]
pub struct JobRequest<'a> {
    /// The AppDeployment the Job runs for (read from the API server: its uid owns the Job).
    pub app: &'a AppDeployment,
    pub kind: JobKind,
    /// The revision the Job runs for: the new one for a backup or migration, the failed
    /// newer one whose migration a downgrade undoes.
    pub revision: &'a str,
    pub step: &'a JobStep,
    /// What the container runs (a downgrade: `migrate.rollback.command` and `args`).
    pub command: &'a [String],
    pub args: &'a [String],
    /// The rendered objects of `revision`: where `from` is looked up.
    pub objects: &'a [Manifest],
}

impl<'a> JobRequest<'a> {
    /// The backup Job of `revision` (`spec.backup`).
    pub fn backup(
        app: &'a AppDeployment,
        backup: &'a BackupStep,
        revision: &'a str,
        objects: &'a [Manifest],
    ) -> Self {
        JobRequest {
            app,
            kind: JobKind::Backup,
            revision,
            step: &backup.job,
            command: &backup.job.command,
            args: &backup.job.args,
            objects,
        }
    }

    /// The migration Job of `revision` (`spec.migrate`).
    pub fn migrate(
        app: &'a AppDeployment,
        migrate: &'a MigrateStep,
        revision: &'a str,
        objects: &'a [Manifest],
    ) -> Self {
        JobRequest {
            app,
            kind: JobKind::Migrate,
            revision,
            step: &migrate.job,
            command: &migrate.job.command,
            args: &migrate.job.args,
            objects,
        }
    }

    /// The downgrade Job undoing the migration of `failed_revision`, run with that
    /// (newer) revision's image, which knows the migration; `objects` is its render.
    pub fn downgrade(
        app: &'a AppDeployment,
        migrate: &'a MigrateStep,
        failed_revision: &'a str,
        objects: &'a [Manifest],
    ) -> Self {
        let (command, args): (&[String], &[String]) = match &migrate.rollback {
            Some(rollback) => (&rollback.command, &rollback.args),
            None => (&[], &[]),
        };
        JobRequest {
            app,
            kind: JobKind::Downgrade,
            revision: failed_revision,
            step: &migrate.job,
            command,
            args,
            objects,
        }
    }

    /// The Runbook field the step comes from, for messages.
    fn field(&self) -> &'static str {
        match self.kind {
            JobKind::Backup => "spec.backup",
            JobKind::Migrate | JobKind::Downgrade => "spec.migrate",
        }
    }
}

/// Why a Job cannot be built: the Runbook and the revision do not fit together. Each
/// message starts with the Runbook field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    #[error(
        "{field}.from.workload: the revision renders no Deployment, StatefulSet, DaemonSet, \
         Job or CronJob named {workload}"
    )]
    NoWorkload { field: &'static str, workload: String },
    #[error("{field}.from.container: {workload} has no container named {container} (it has: {available})")]
    NoContainer {
        field: &'static str,
        /// `Deployment shop/api (deploy/api.yaml:1)`.
        workload: String,
        container: String,
        available: String,
    },
    #[error("{field}.from.workload: {workload} has no pod template with a container")]
    NoPodTemplate { field: &'static str, workload: String },
    #[error("{field}.from.workload: the pod template of {workload} is unreadable: {message}")]
    UnreadablePodTemplate {
        field: &'static str,
        workload: String,
        message: String,
    },
    #[error(
        "{field}.from.container: container {container} of {workload} mounts volume {volume}, \
         {why}"
    )]
    UnusableVolume {
        field: &'static str,
        workload: String,
        container: String,
        volume: String,
        why: &'static str,
    },
    #[error("{field}: neither `from` nor `image` is given, so the Job has nothing to run")]
    NoImage { field: &'static str },
    #[error("{field}.timeout: {message}")]
    Timeout { field: &'static str, message: String },
    #[error(
        "spec.migrate.rollback.command: the Downgrade policy runs a command with the newer \
         revision's image, and none is given"
    )]
    NoDowngradeCommand,
    #[error("AppDeployment {name} has no {field}")]
    IncompleteApp { name: String, field: &'static str },
}

impl JobSpecError {
    /// Always a refusal: the same Runbook and revision give the same Job. Whether the
    /// revision or the Runbook must change says the kind.
    pub fn classify(&self) -> Classified {
        let kind = match self {
            JobSpecError::NoWorkload { .. }
            | JobSpecError::NoContainer { .. }
            | JobSpecError::NoPodTemplate { .. }
            | JobSpecError::UnreadablePodTemplate { .. }
            | JobSpecError::UnusableVolume { .. } => FailureKind::RevisionInvalid,
            JobSpecError::NoImage { .. }
            | JobSpecError::Timeout { .. }
            | JobSpecError::NoDowngradeCommand => FailureKind::RunbookInvalid,
            JobSpecError::IncompleteApp { .. } => FailureKind::SpecInvalid,
        };
        Classified::Refused(Failure::new(kind, self.to_string()))
    }
}

/// The Job of `request`, ready to create.
pub fn build_job(request: &JobRequest<'_>) -> Result<Job, JobSpecError> {
    let app = request.app;
    let app_name = app.name_any();
    let app_namespace = app.namespace().ok_or_else(|| JobSpecError::IncompleteApp {
        name: app_name.clone(),
        field: "namespace",
    })?;
    let field = request.field();
    if request.kind == JobKind::Downgrade && request.command.is_empty() {
        return Err(JobSpecError::NoDowngradeCommand);
    }
    let timeout = request
        .step
        .timeout()
        .map_err(|message| JobSpecError::Timeout { field, message })?;
    let target_namespace = app
        .spec
        .target_namespace
        .clone()
        .unwrap_or_else(|| app_namespace.clone());

    let (namespace, mut pod_spec) = match &request.step.from {
        Some(from) => {
            let source = SourceContainer::find(request.objects, from, field)?;
            let namespace = source
                .workload
                .namespace()
                .map_or(target_namespace, str::to_string);
            (namespace, source.job_pod_spec(request, field)?)
        }
        None => {
            let Some(image) = &request.step.image else {
                return Err(JobSpecError::NoImage { field });
            };
            let container = Container {
                name: request.kind.as_str().to_string(),
                image: Some(image.clone()),
                ..Container::default()
            };
            (
                target_namespace,
                PodSpec {
                    containers: vec![container],
                    ..PodSpec::default()
                },
            )
        }
    };
    let container = &mut pod_spec.containers[0];
    container.command = non_empty(request.command);
    container.args = non_empty(request.args);
    pod_spec.restart_policy = Some("Never".to_string());

    let labels = job_labels(
        &app_label_value(&app_namespace, &app_name),
        request.kind,
        request.revision,
    );
    let owner_references = if namespace == app_namespace {
        let uid = app.uid().ok_or_else(|| JobSpecError::IncompleteApp {
            name: app_name.clone(),
            field: "uid (it must be read from the API server)",
        })?;
        Some(vec![OwnerReference {
            api_version: AppDeployment::api_version(&()).to_string(),
            kind: AppDeployment::kind(&()).to_string(),
            name: app_name.clone(),
            uid,
            controller: Some(true),
            // Needs `update` on appdeployments/finalizers where that admission plugin is
            // on, and nothing waits on a Job's deletion: leave unset.
            block_owner_deletion: None,
        }])
    } else {
        // An owner reference may only name an owner in the dependent's own namespace: the
        // garbage collector treats one to another namespace as pointing at nothing and
        // deletes the Job (Kubernetes 1.20+ also reports `OwnerRefInvalidNamespace`). A Job
        // in another namespace is kept by its labels and `cleanup` alone.
        None
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                &app_namespace,
                &app_name,
                request.kind,
                request.revision,
            )),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (
                    OWNER_ANNOTATION.to_string(),
                    format!("{app_namespace}/{app_name}"),
                ),
                (REVISION_ANNOTATION.to_string(), request.revision.to_string()),
            ])),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(request.step.backoff_limit.unwrap_or(0)),
            // Whole seconds, rounded up: `500ms` still gets a second.
            active_deadline_seconds: Some(timeout.as_secs_f64().ceil().max(1.0) as i64),
            // No `ttlSecondsAfterFinished`: the app's status records the outcome, and
            // `cleanup` deletes old Jobs once they are recorded.
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// Whether the revision marks its migration irreversible: the `from` workload carries
/// `bosun.dev/migration: irreversible`, or, for a migration given as `image` alone
/// (`from` is `None`), any object of the revision does.
pub fn irreversible(objects: &[Manifest], from: Option<&ContainerRef>) -> bool {
    let marked = |manifest: &Manifest| {
        manifest
            .object
            .pointer("/metadata/annotations")
            .and_then(|annotations| annotations.get(MIGRATION_ANNOTATION))
            .and_then(Value::as_str)
            .is_some_and(|value| value.trim().eq_ignore_ascii_case(IRREVERSIBLE))
    };
    match from {
        Some(from) => find_workload(objects, &from.workload).is_some_and(marked),
        None => objects.iter().any(marked),
    }
}

/// The workload `name` among the rendered objects (Deployment first, CronJob last,
/// when several kinds share the name).
fn find_workload<'m>(objects: &'m [Manifest], name: &str) -> Option<&'m Manifest> {
    WORKLOAD_KINDS.iter().find_map(|(group, kind)| {
        objects
            .iter()
            .find(|m| m.group() == *group && m.kind() == *kind && m.name() == name)
    })
}

/// The `from` container, found in its workload's pod template.
struct SourceContainer<'m> {
    workload: &'m Manifest,
    pod: PodSpec,
    container: Container,
}

impl<'m> SourceContainer<'m> {
    fn find(objects: &'m [Manifest], from: &ContainerRef, field: &'static str) -> Result<Self, JobSpecError> {
        let workload = find_workload(objects, &from.workload).ok_or_else(|| JobSpecError::NoWorkload {
            field,
            workload: from.workload.clone(),
        })?;
        let template_path = if workload.kind() == "CronJob" {
            "/spec/jobTemplate/spec/template/spec"
        } else {
            "/spec/template/spec"
        };
        let pod: PodSpec = match workload.object.pointer(template_path) {
            Some(value) => serde_json::from_value(value.clone()).map_err(|error| {
                JobSpecError::UnreadablePodTemplate {
                    field,
                    workload: workload.id(),
                    message: error.to_string(),
                }
            })?,
            None => {
                return Err(JobSpecError::NoPodTemplate {
                    field,
                    workload: workload.id(),
                });
            }
        };
        // Containers first; an init container (often where a migration already runs)
        // only by name.
        let container = match &from.container {
            None => pod.containers.first().cloned(),
            Some(name) => pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
                .find(|c| c.name == *name)
                .cloned(),
        };
        let Some(container) = container else {
            return Err(match &from.container {
                Some(name) => JobSpecError::NoContainer {
                    field,
                    workload: workload.id(),
                    container: name.clone(),
                    available: container_names(&pod),
                },
                None => JobSpecError::NoPodTemplate {
                    field,
                    workload: workload.id(),
                },
            });
        };
        Ok(SourceContainer {
            workload,
            pod,
            container,
        })
    }

    /// The pod of the Job: the source container and what it needs of its pod.
    fn job_pod_spec(self, request: &JobRequest<'_>, field: &'static str) -> Result<PodSpec, JobSpecError> {
        let SourceContainer {
            workload,
            pod,
            container: source,
        } = self;
        let mounted: Vec<&str> = source
            .volume_mounts
            .iter()
            .flatten()
            .map(|mount| mount.name.as_str())
            .collect();
        let pod_volumes = pod.volumes.unwrap_or_default();
        for volume in &mounted {
            if pod_volumes.iter().any(|v| v.name == *volume) {
                continue;
            }
            let why = if claim_template_names(workload).any(|name| name == *volume) {
                "a volumeClaimTemplate of the StatefulSet: each replica has its own claim, \
                 which a Job cannot share; take the Job from a container without it, or use `image`"
            } else {
                "which its pod does not define"
            };
            return Err(JobSpecError::UnusableVolume {
                field,
                workload: workload.id(),
                container: source.name.clone(),
                volume: volume.to_string(),
                why,
            });
        }
        let volumes: Vec<_> = pod_volumes
            .into_iter()
            .filter(|v| mounted.contains(&v.name.as_str()))
            .collect();
        let container = Container {
            // The source's name: `resourceFieldRef.containerName` in its env names it.
            name: source.name,
            image: request.step.image.clone().or(source.image),
            image_pull_policy: source.image_pull_policy,
            env: source.env,
            env_from: source.env_from,
            volume_mounts: source.volume_mounts,
            working_dir: source.working_dir,
            resources: source.resources,
            security_context: source.security_context,
            ..Container::default()
        };
        Ok(PodSpec {
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            // `serviceAccount` is the deprecated spelling some manifests still use.
            service_account_name: pod.service_account_name.or(pod.service_account),
            image_pull_secrets: pod.image_pull_secrets,
            security_context: pod.security_context,
            node_selector: pod.node_selector,
            tolerations: pod.tolerations,
            automount_service_account_token: pod.automount_service_account_token,
            ..PodSpec::default()
        })
    }
}

fn claim_template_names(workload: &Manifest) -> impl Iterator<Item = &str> {
    workload
        .object
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|claim| claim.pointer("/metadata/name").and_then(Value::as_str))
}

fn container_names(pod: &PodSpec) -> String {
    let mut names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
    names.extend(
        pod.init_containers
            .iter()
            .flatten()
            .map(|c| format!("{} (init)", c.name)),
    );
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn non_empty(values: &[String]) -> Option<Vec<String>> {
    (!values.is_empty()).then(|| values.to_vec())
}

#[cfg(test)]
mod tests;
