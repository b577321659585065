//! `kubectl bosun …` (the `kubectl-bosun` binary): look at apps, pin and unpin them,
//! suspend and resume them, let a quarantined revision try again, roll everything
//! changed since an incident back, and check a directory of manifests before it is
//! pushed.
//!
//! The controller is the one writer of `status`: every command here edits the spec
//! (`spec.pin`, `spec.suspend`) or sets an annotation the controller acts on
//! (`bosun.dev/retry`), never the status.

pub mod diff;
pub mod incident;
pub mod validate;
pub mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde::Serialize;

use crate::api::{AppDeployment, parse_duration, short_revision};
use crate::core::{RETRY_ANNOTATION, RETRY_AT_ANNOTATION, record::rfc3339};

/// The field manager of the CLI's spec and annotation edits.
pub const FIELD_MANAGER: &str = "kubectl-bosun";

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-bosun",
    bin_name = "kubectl bosun",
    about = "Look at and steer bosun's AppDeployments",
    version
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every kubectl user expects.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Phase, current and last healthy revision, and what became of the Git tip.
    Status {
        /// One AppDeployment (default: all in the namespace).
        app: Option<String>,
    },
    /// The revisions of an app, newest first, with each gate's verdict.
    History { app: String },
    /// Pin an app to a revision (default: its last healthy one); `--unpin` follows Git
    /// again. With `--all-namespaces --since 30m` (no APP): every app whose revision
    /// changed in the window goes back to its last healthy revision before it.
    Rollback {
        app: Option<String>,
        /// The revision to pin (a full or short commit id).
        #[arg(long, conflicts_with_all = ["unpin", "since"])]
        to: Option<String>,
        /// Remove the pin: back to following Git.
        #[arg(long, conflicts_with = "since")]
        unpin: bool,
        /// The incident window (`30m`, `2h`): apps whose revision changed since then.
        #[arg(long)]
        since: Option<String>,
        /// List what would be pinned; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Let a quarantined revision try again (default: the Git tip if it is quarantined,
    /// else the newest quarantined revision).
    Retry {
        app: String,
        /// The quarantined revision (full or short commit id).
        #[arg(long)]
        revision: Option<String>,
    },
    /// Stop following Git (`spec.suspend: true`).
    Suspend { app: String },
    /// Follow Git again (`spec.suspend: false`).
    Resume { app: String },
    /// Render a directory of manifests and check it against a Runbook's env contract
    /// (and, when a cluster is reachable, the Secrets it reads); exit code 1 on a miss.
    Validate {
        dir: PathBuf,
        /// The Runbook (YAML) whose env contract applies.
        #[arg(long)]
        runbook: PathBuf,
        /// Do not contact a cluster: Secret and ConfigMap references are not checked.
        #[arg(long)]
        offline: bool,
    },
    /// What the Git tip would change: a server-side dry run of each object against the
    /// live one.
    Diff {
        app: String,
        /// Read a `file://` source (the local file system), as a controller started
        /// with the same flag does; refused otherwise, like the controller refuses it.
        #[arg(long)]
        allow_file_sources: bool,
    },
}

/// Runs one command; errors are printed, and make the exit code 1.
pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    match &cli.command {
        Command::Validate {
            dir,
            runbook,
            offline,
        } => {
            let cluster = if *offline {
                None
            } else {
                connect(global).await.ok()
            };
            return validate::run(dir, runbook, global.namespace.as_deref(), cluster).await;
        }
        Command::Status { app } => {
            let kube = connect(global).await?;
            status(&kube, global, app.as_deref()).await?;
        }
        Command::History { app } => {
            let kube = connect(global).await?;
            let app = kube.apps().get(app).await.with_context(|| kube.what(app))?;
            let history = app.status.map(|s| s.history).unwrap_or_default();
            match global.output {
                Output::Table => print!("{}", view::history_text(&history)),
                format => print_structured(format, &history)?,
            }
        }
        Command::Rollback {
            app: None,
            since: Some(since),
            dry_run,
            ..
        } => {
            let kube = connect(global).await?;
            incident_rollback(&kube, global, since, *dry_run).await?;
        }
        Command::Rollback { since: Some(_), .. } => {
            bail!(
                "--since rolls back every app changed in the window: give no APP (and -A for every namespace)"
            )
        }
        Command::Rollback { app: None, .. } => {
            bail!("rollback needs an APP, or --since for the incident rollback")
        }
        Command::Rollback {
            app: Some(app),
            to,
            unpin,
            dry_run,
            ..
        } => {
            let kube = connect(global).await?;
            rollback(&kube, app, to.as_deref(), *unpin, *dry_run).await?;
        }
        Command::Retry { app, revision } => {
            let kube = connect(global).await?;
            retry(&kube, app, revision.as_deref()).await?;
        }
        Command::Suspend { app } => {
            let kube = connect(global).await?;
            patch_spec(&kube, app, serde_json::json!({"spec": {"suspend": true}})).await?;
            println!(
                "{}: suspended (Git is not followed until `kubectl bosun resume {app}`)",
                kube.what(app)
            );
        }
        Command::Resume { app } => {
            let kube = connect(global).await?;
            patch_spec(&kube, app, serde_json::json!({"spec": {"suspend": false}})).await?;
            println!("{}: resumed (following Git)", kube.what(app));
        }
        Command::Diff {
            app,
            allow_file_sources,
        } => {
            let kube = connect(global).await?;
            let app = kube.apps().get(app).await.with_context(|| kube.what(app))?;
            let policy = crate::source::SourcePolicy {
                allow_file_sources: *allow_file_sources,
            };
            let changed = diff::run(&kube.client, &app, policy).await?;
            // As `kubectl diff`: 1 when something would change.
            return Ok(if changed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A client from the kubeconfig (flags first, then `$KUBECONFIG`, then the default
/// file, then in-cluster), and the namespace commands default to.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
}

impl Kube {
    pub fn apps(&self) -> Api<AppDeployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `AppDeployment shop/web`, for messages.
    pub fn what(&self, app: &str) -> String {
        format!("AppDeployment {}/{app}", self.namespace)
    }
}

pub async fn connect(global: &GlobalArgs) -> anyhow::Result<Kube> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if global.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok(Kube { client, namespace })
}

async fn status(kube: &Kube, global: &GlobalArgs, name: Option<&str>) -> anyhow::Result<()> {
    let apps: Vec<AppDeployment> = match name {
        Some(name) => vec![kube.apps().get(name).await.with_context(|| kube.what(name))?],
        None => list_apps(kube, global.all_namespaces).await?,
    };
    let rows: Vec<view::StatusRow> = apps.iter().map(view::StatusRow::of).collect();
    match (global.output, name) {
        (Output::Table, _) if rows.is_empty() => eprintln!("No AppDeployments found."),
        (Output::Table, _) => print!("{}", view::status_table(&rows, Timestamp::now())),
        (format, Some(_)) => print_structured(format, &rows[0])?,
        (format, None) => print_structured(format, &rows)?,
    }
    Ok(())
}

async fn list_apps(kube: &Kube, all_namespaces: bool) -> anyhow::Result<Vec<AppDeployment>> {
    let api = if all_namespaces {
        Api::all(kube.client.clone())
    } else {
        kube.apps()
    };
    let mut apps = api
        .list(&ListParams::default())
        .await
        .context("listing AppDeployments")?
        .items;
    apps.sort_by_key(|app| (app.namespace(), app.name_any()));
    Ok(apps)
}

/// Pins `app` (to `to`, or its last healthy revision), or removes the pin.
async fn rollback(
    kube: &Kube,
    name: &str,
    to: Option<&str>,
    unpin: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let what = kube.what(name);
    let app = kube.apps().get(name).await.with_context(|| what.clone())?;
    if unpin {
        if dry_run {
            println!("{what}: would remove the pin (dry run)");
            return Ok(());
        }
        patch_spec(kube, name, serde_json::json!({"spec": {"pin": null}})).await?;
        println!("{what}: unpinned, following Git again");
        return Ok(());
    }
    let status = app.status.clone().unwrap_or_default();
    let revision = match to {
        Some(to) => resolve_revision(&app, to),
        None => status.last_healthy_revision.clone().ok_or_else(|| {
            anyhow!("{what} has no healthy revision to roll back to (status.lastHealthyRevision is empty); give --to REV")
        })?,
    };
    if dry_run {
        println!(
            "{what}: would pin revision {} (dry run)",
            short_revision(&revision)
        );
        return Ok(());
    }
    pin(kube, &kube.namespace, name, &revision).await?;
    println!(
        "{what}: pinned to revision {} (Git is not followed until `kubectl bosun rollback {name} --unpin`)",
        short_revision(&revision)
    );
    Ok(())
}

/// A short commit id the app's status knows, made full; anything else as given (the
/// controller resolves a short pin in the repository).
fn resolve_revision(app: &AppDeployment, revision: &str) -> String {
    let status = app.status.clone().unwrap_or_default();
    let known = status
        .history
        .iter()
        .map(|entry| entry.revision.clone())
        .chain(status.last_healthy_revision.clone())
        .chain(status.current_revision.clone())
        .chain(status.quarantined.iter().map(|q| q.revision.clone()));
    let revision = revision.trim();
    let mut matches: Vec<String> = known.filter(|known| known.starts_with(revision)).collect();
    matches.sort();
    matches.dedup();
    match matches.as_slice() {
        [one] => one.clone(),
        _ => revision.to_string(),
    }
}

async fn pin(kube: &Kube, namespace: &str, name: &str, revision: &str) -> anyhow::Result<()> {
    let api: Api<AppDeployment> = Api::namespaced(kube.client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(serde_json::json!({"spec": {"pin": {"revision": revision}}})),
    )
    .await
    .with_context(|| format!("setting spec.pin.revision of AppDeployment {namespace}/{name}"))?;
    Ok(())
}

/// A JSON merge patch of the app's spec (never its status).
async fn patch_spec(kube: &Kube, name: &str, patch: serde_json::Value) -> anyhow::Result<()> {
    kube.apps()
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(patch))
        .await
        .with_context(|| format!("changing the spec of {}", kube.what(name)))?;
    Ok(())
}

/// Asks the controller to let a quarantined revision try again: the annotations
/// `bosun.dev/retry` (the revision) and `bosun.dev/retry-at` (now).
async fn retry(kube: &Kube, name: &str, revision: Option<&str>) -> anyhow::Result<()> {
    let what = kube.what(name);
    let app = kube.apps().get(name).await.with_context(|| what.clone())?;
    let status = app.status.clone().unwrap_or_default();
    let quarantined: Vec<&str> = status.quarantined.iter().map(|q| q.revision.as_str()).collect();
    let revision = match revision {
        Some(wanted) => {
            let found: Vec<&str> = quarantined
                .iter()
                .copied()
                .filter(|q| q.starts_with(wanted.trim()))
                .collect();
            match found.as_slice() {
                [one] => one.to_string(),
                [] => bail!(
                    "{what}: revision {wanted} is not quarantined (quarantined: {})",
                    list_or_none(&quarantined)
                ),
                _ => bail!("{what}: {wanted} names more than one quarantined revision; give more of it"),
            }
        }
        None => match status.desired_revision.as_deref() {
            Some(tip) if quarantined.contains(&tip) => tip.to_string(),
            _ => quarantined
                .first()
                .map(|q| q.to_string())
                .ok_or_else(|| anyhow!("{what}: no revision is quarantined"))?,
        },
    };
    let patch = serde_json::json!({"metadata": {"annotations": {
        RETRY_ANNOTATION: revision,
        RETRY_AT_ANNOTATION: rfc3339(Timestamp::now()),
    }}});
    kube.apps()
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(patch))
        .await
        .with_context(|| format!("annotating {what}"))?;
    println!(
        "{what}: retry of revision {} requested; the controller lifts its quarantine and deploys it if Git (or the pin) points at it",
        short_revision(&revision)
    );
    Ok(())
}

fn list_or_none(revisions: &[&str]) -> String {
    if revisions.is_empty() {
        "none".into()
    } else {
        revisions
            .iter()
            .map(|r| short_revision(r))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `rollback [-A] --since 30m [--dry-run]`.
async fn incident_rollback(
    kube: &Kube,
    global: &GlobalArgs,
    since: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let window = parse_duration(since).map_err(|e| anyhow!("--since {since}: {e}"))?;
    let window = k8s_openapi::jiff::SignedDuration::try_from(window.max(Duration::from_secs(1)))?;
    let window_start = Timestamp::now() - window;
    let apps = list_apps(kube, global.all_namespaces).await?;
    let plans = incident::plan(&apps, window_start);
    match global.output {
        Output::Table if plans.is_empty() => {
            println!(
                "No AppDeployment changed revision since {}.",
                rfc3339(window_start)
            );
        }
        Output::Table => print!("{}", incident::table(&plans)),
        format => print_structured(format, &plans)?,
    }
    if dry_run {
        if global.output == Output::Table && !plans.is_empty() {
            println!("(dry run: nothing changed)");
        }
        return Ok(());
    }
    let mut failures = Vec::new();
    for plan in plans.iter().filter(|plan| plan.pins()) {
        let Some(target) = &plan.target else { continue };
        match pin(kube, &plan.namespace, &plan.name, target).await {
            Ok(()) => eprintln!(
                "AppDeployment {}/{}: pinned to revision {}",
                plan.namespace,
                plan.name,
                short_revision(target)
            ),
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

fn print_structured<T: Serialize>(format: Output, value: &T) -> anyhow::Result<()> {
    match format {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml | Output::Table => print!("{}", serde_saphyr::to_string(value)?),
    }
    Ok(())
}
