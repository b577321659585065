//! The `bosun` binary: only wiring. See `bosun --help`.

use std::path::PathBuf;

use bosun::controller::leader;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bosun",
    version,
    about = "GitOps reconciler that executes deployment runbooks and rolls bad revisions back by itself"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the controller's variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster).
    Controller {
        /// Directory of the shared Git clones.
        #[arg(long, env = "BOSUN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long, env = "BOSUN_LOG_JSON")]
        log_json: bool,
        /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or `RUST_LOG`-style
        /// directives (`info,bosun::gates=debug`). Unset: `RUST_LOG`, else `info`.
        #[arg(long, env = "BOSUN_LOG")]
        log_level: Option<String>,
        /// Address of the HTTP server: `/metrics` (OpenMetrics), `/healthz`, `/readyz`.
        #[arg(long, env = "BOSUN_LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
        listen_address: std::net::SocketAddr,
        /// How many AppDeployments are reconciled at once.
        #[arg(long, env = "BOSUN_CONCURRENCY", default_value_t = 16)]
        concurrency: u16,
        /// Apply apps that name no `serviceAccountName` as this ServiceAccount of their
        /// own namespace (the multi-tenant setting, as Flux's flag of the same name).
        /// Unset, such apps are Blocked, unless `--single-tenant`.
        #[arg(long, env = "BOSUN_DEFAULT_SERVICE_ACCOUNT")]
        default_service_account: Option<String>,
        /// One tenant only (the cluster's admins): an app that names no
        /// `serviceAccountName`, with no `--default-service-account`, is applied and read
        /// for as the controller itself, with the controller's rights. Without this flag
        /// such an app is Blocked: a missing setting must never mean the controller's rights.
        #[arg(long, env = "BOSUN_SINGLE_TENANT")]
        single_tenant: bool,
        /// Allow `file://` sources, which read the controller's own file system
        /// (demos and tests only).
        #[arg(long, env = "BOSUN_ALLOW_FILE_SOURCES")]
        allow_file_sources: bool,
        /// Reconcile only while holding the leader Lease, so that of several replicas
        /// one writes; `--leader-elect=false` for a single process that needs no Lease.
        #[arg(
            long,
            env = "BOSUN_LEADER_ELECT",
            default_value_t = true,
            num_args = 0..=1,
            default_missing_value = "true",
            action = clap::ArgAction::Set
        )]
        leader_elect: bool,
        /// The Lease (coordination.k8s.io/v1) the replicas elect their leader on.
        #[arg(long, env = "BOSUN_LEASE_NAME", default_value = "bosun-controller")]
        lease_name: String,
        /// The Lease's namespace. Default: `POD_NAMESPACE`, else the namespace of the
        /// client's context (in a pod, the pod's own namespace, from its
        /// ServiceAccount; out of cluster, the kubeconfig context's, else `default`).
        #[arg(long, env = "BOSUN_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// This replica's name in the Lease (unique per replica). Default: `POD_NAME`,
        /// else `HOSTNAME` (a pod's name), else the host's name.
        #[arg(long, env = "BOSUN_LEADER_ELECT_IDENTITY")]
        leader_elect_identity: Option<String>,
        /// Reconcile only the AppDeployments whose labels match this selector (e.g.
        /// `bosun.dev/shard=a`), as Flux's flag of the same name: run one controller
        /// (with its own `--lease-name`) per shard when one is not enough.
        #[arg(long, env = "BOSUN_WATCH_LABEL_SELECTOR")]
        watch_label_selector: Option<String>,
        /// Watch and reconcile only this namespace (a namespace-scoped install, whose
        /// RBAC grants nothing beyond it: ClusterRunbooks are then out of reach).
        /// Default: every namespace.
        #[arg(long, env = "BOSUN_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// Secret whose key `token` is the shared secret of Git push webhooks
        /// (`/hooks/github`, `/hooks/gitlab`, `/hooks/generic`); unset, there is no
        /// receiver.
        #[arg(long, env = "BOSUN_WEBHOOK_SECRET_NAME")]
        webhook_secret_name: Option<String>,
        /// Namespace of that Secret.
        #[arg(long, env = "BOSUN_WEBHOOK_SECRET_NAMESPACE", default_value = "bosun-system")]
        webhook_secret_namespace: String,
        /// Address the webhook receiver listens on, e.g. `0.0.0.0:9443`.
        #[arg(long, env = "BOSUN_WEBHOOK_LISTEN_ADDRESS", requires = "webhook_secret_name")]
        webhook_listen_address: Option<std::net::SocketAddr>,
        /// Bytes one Git clone may take on disk (`256Mi`, `1Gi` or a number); beyond
        /// it the fetch is cancelled, the clone removed and the app Blocked.
        #[arg(long, env = "BOSUN_GIT_MAX_REPO_BYTES", default_value = "256Mi", value_parser = bosun::source::parse_bytes)]
        git_max_repo_bytes: u64,
        /// Bytes all Git clones may take together: the least recently used clone not in
        /// use is removed to make room. Keep it under the cache volume's size.
        #[arg(long, env = "BOSUN_GIT_MAX_CACHE_BYTES", default_value = "768Mi", value_parser = bosun::source::parse_bytes)]
        git_max_cache_bytes: u64,
        /// Objects one fetch may bring.
        #[arg(long, env = "BOSUN_GIT_MAX_OBJECTS", default_value_t = 500_000)]
        git_max_objects: usize,
        /// Seconds one fetch may run before it is cancelled.
        #[arg(long, env = "BOSUN_GIT_MAX_FETCH_SECONDS", default_value_t = 300)]
        git_max_fetch_seconds: u64,
        /// Files and directories one read of a commit may visit under
        /// `spec.source.git.path`.
        #[arg(long, env = "BOSUN_GIT_MAX_FILES", default_value_t = 10_000)]
        git_max_files: usize,
        /// Bytes of manifests one read of a commit may load.
        #[arg(long, env = "BOSUN_GIT_MAX_MANIFEST_BYTES", default_value = "16Mi", value_parser = bosun::source::parse_bytes)]
        git_max_manifest_bytes: u64,
        /// Directories nested under `spec.source.git.path` one read may descend.
        #[arg(long, env = "BOSUN_GIT_MAX_DEPTH", default_value_t = 32)]
        git_max_depth: usize,
        /// Lets gates, metrics queries and notifications reach a CIDR, an address or a
        /// host name (`*.example.com`), optionally `:PORT`, that a built-in rule refuses
        /// (link-local, loopback, the controller's own addresses). Repeatable; never lifts
        /// the API server's or the controller's own listening addresses.
        #[arg(long = "egress-allow", env = "BOSUN_EGRESS_ALLOW", value_delimiter = ',')]
        egress_allow: Vec<bosun::egress::Rule>,
        /// Refuses gates, metrics queries and notifications a CIDR, an address or a host
        /// name, optionally `:PORT`; wins over every allow. Repeatable.
        #[arg(long = "egress-deny", env = "BOSUN_EGRESS_DENY", value_delimiter = ',')]
        egress_deny: Vec<bosun::egress::Rule>,
    },
    /// Run the example end to end on a local control plane: a good commit becomes
    /// Healthy, a bad one is flipped back by itself.
    #[cfg(feature = "devenv")]
    Demo {
        /// Stop right after the story instead of waiting for Ctrl-C.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print figures measured on a local control plane: commit→Healthy, flip-back,
    /// applying 50 objects.
    #[cfg(feature = "devenv")]
    Bench {
        /// Runs of each small measurement (apply 50 objects, commit → Healthy, flip-back);
        /// 0 skips them.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// App counts of the scale run, e.g. `10,100,1000` (each on fresh control planes,
        /// beside kubectl alone); empty skips it.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        scale: Vec<usize>,
        /// Seconds an idle controller is watched after all apps are Healthy.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
    },
    /// Write the CRD manifests generated from the Rust types.
    Crds {
        /// Directory to write to.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Controller {
            cache_dir,
            log_json,
            log_level,
            listen_address,
            concurrency,
            default_service_account,
            single_tenant,
            allow_file_sources,
            leader_elect,
            lease_name,
            lease_namespace,
            leader_elect_identity,
            watch_label_selector,
            watch_namespace,
            webhook_secret_name,
            webhook_secret_namespace,
            webhook_listen_address,
            git_max_repo_bytes,
            git_max_cache_bytes,
            git_max_objects,
            git_max_fetch_seconds,
            git_max_files,
            git_max_manifest_bytes,
            git_max_depth,
            egress_allow,
            egress_deny,
        } => {
            bosun::telemetry::init(log_json, log_level.as_deref()).map_err(anyhow::Error::msg)?;
            let mut config = kube::Config::infer().await?;
            let identity = leader_elect_identity.unwrap_or_else(leader::default_identity);
            // Every request names the replica that sent it (audit logs tell the
            // replicas apart; they share one ServiceAccount).
            config.headers.push((
                reqwest::header::USER_AGENT,
                reqwest::header::HeaderValue::from_str(&format!(
                    "bosun/{} ({identity})",
                    env!("CARGO_PKG_VERSION")
                ))?,
            ));
            let client = kube::Client::try_from(config.clone())?;
            let leader_election = leader_elect.then(|| leader::LeaderElection {
                lease_namespace: lease_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()))
                    .unwrap_or_else(|| config.default_namespace.clone()),
                lease_name,
                identity,
                timing: leader::Timing::default(),
                pod: ["POD_NAMESPACE", "POD_NAME"]
                    .map(|key| std::env::var(key).ok().filter(|value| !value.is_empty()))
                    .into_iter()
                    .collect::<Option<Vec<String>>>()
                    .map(|found| (found[0].clone(), found[1].clone())),
            });
            if let Some(problem) = default_service_account
                .as_deref()
                .and_then(bosun::api::service_account_name_problem)
            {
                anyhow::bail!(
                    "--default-service-account: {}",
                    problem.replace("spec.serviceAccountName: ", "")
                );
            }
            let mut settings = bosun::controller::Settings {
                concurrency: concurrency.max(1),
                default_service_account,
                single_tenant,
                allow_file_sources,
                listen_address: Some(listen_address),
                leader_election,
                watch_label_selector: watch_label_selector.filter(|s| !s.trim().is_empty()),
                watch_scope: match watch_namespace.filter(|ns| !ns.trim().is_empty()) {
                    Some(namespace) => bosun::controller::WatchScope::Namespace(namespace),
                    None => bosun::controller::WatchScope::Cluster,
                },
                webhook: webhook_secret_name.map(|secret_name| bosun::server::webhook::WebhookSettings {
                    secret_namespace: webhook_secret_namespace,
                    secret_name,
                    listen: webhook_listen_address,
                    body_limit: bosun::server::webhook::DEFAULT_BODY_LIMIT,
                }),
                git_budgets: bosun::source::GitBudgets {
                    max_repo_bytes: git_max_repo_bytes,
                    max_cache_bytes: git_max_cache_bytes,
                    max_objects: git_max_objects,
                    max_fetch_time: std::time::Duration::from_secs(git_max_fetch_seconds.max(1)),
                    tree: bosun::source::TreeBudget {
                        max_files: git_max_files,
                        max_bytes: git_max_manifest_bytes,
                        max_depth: git_max_depth,
                    },
                },
                egress_allow,
                egress_deny,
                ..Default::default()
            };
            if let Some(dir) = cache_dir {
                settings.cache_dir = dir;
            }
            if let Err(error) = bosun::controller::run(client, config, settings).await {
                // At once: a replica that lost the Lease must not finish what it was
                // doing (the runtime would wait for blocking Git fetches).
                let error = bosun::failure::error_chain(&error);
                tracing::error!(%error, "bosun controller stopped");
                eprintln!("Error: {error}");
                std::process::exit(1);
            }
        }
        #[cfg(feature = "devenv")]
        Command::Demo { no_wait } => {
            // The story is printed on stdout; the controller's own log goes to a file.
            let log = bosun::telemetry::init_to_file("demo")?;
            bosun::demo::run(bosun::demo::DemoOptions { wait: !no_wait, log }).await?;
        }
        #[cfg(feature = "devenv")]
        Command::Bench {
            runs,
            scale,
            idle_seconds,
        } => {
            let log = bosun::telemetry::init_to_file("bench")?;
            println!("bosun bench: the controller's own log goes to {}", log.display());
            bosun::bench::run(bosun::bench::BenchOptions {
                runs,
                scale,
                idle: std::time::Duration::from_secs(idle_seconds.max(1)),
            })
            .await?;
        }
        Command::Crds { out } => {
            bosun::crdgen::write_all(&out)?;
            println!("wrote CRDs to {}", out.display());
        }
    }
    Ok(())
}
