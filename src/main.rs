//! The `bosun` binary: only wiring. See `bosun --help`.

use std::path::PathBuf;

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
        /// Unset, such apps are applied as the controller itself.
        #[arg(long, env = "BOSUN_DEFAULT_SERVICE_ACCOUNT")]
        default_service_account: Option<String>,
        /// Allow `file://` sources, which read the controller's own file system
        /// (demos and tests only).
        #[arg(long, env = "BOSUN_ALLOW_FILE_SOURCES")]
        allow_file_sources: bool,
        /// Secret whose key `token` is the shared secret of Git push webhooks
        /// (`/hooks/github`, `/hooks/gitlab`, `/hooks/generic`); unset, there is no
        /// receiver.
        #[arg(long, env = "BOSUN_WEBHOOK_SECRET_NAME")]
        webhook_secret_name: Option<String>,
        /// Namespace of that Secret.
        #[arg(long, env = "BOSUN_WEBHOOK_SECRET_NAMESPACE", default_value = "bosun-system")]
        webhook_secret_namespace: String,
        /// A port of its own for the webhook receiver, e.g. `0.0.0.0:9443` (to expose the
        /// webhooks beyond the cluster without `/metrics`); unset, they are served on
        /// `--listen-address`.
        #[arg(long, env = "BOSUN_WEBHOOK_LISTEN_ADDRESS", requires = "webhook_secret_name")]
        webhook_listen_address: Option<std::net::SocketAddr>,
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
            allow_file_sources,
            webhook_secret_name,
            webhook_secret_namespace,
            webhook_listen_address,
        } => {
            bosun::telemetry::init(log_json, log_level.as_deref()).map_err(anyhow::Error::msg)?;
            let config = kube::Config::infer().await?;
            let client = kube::Client::try_from(config.clone())?;
            let mut settings = bosun::controller::Settings {
                concurrency: concurrency.max(1),
                default_service_account,
                allow_file_sources,
                webhook: webhook_secret_name.map(|secret_name| bosun::server::webhook::WebhookSettings {
                    secret_namespace: webhook_secret_namespace,
                    secret_name,
                    listen: webhook_listen_address,
                    body_limit: bosun::server::webhook::DEFAULT_BODY_LIMIT,
                }),
                listen_address: Some(listen_address),
                ..Default::default()
            };
            if let Some(dir) = cache_dir {
                settings.cache_dir = dir;
            }
            bosun::controller::run(client, config, settings).await?;
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
