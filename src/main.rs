//! The `bosun` binary: only wiring. See `bosun --help`.

use std::path::PathBuf;
use std::time::Duration;

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
        Command::Controller { cache_dir, log_json } => {
            bosun::telemetry::init(log_json);
            let config = kube::Config::infer().await?;
            let client = kube::Client::try_from(config.clone())?;
            let mut settings = bosun::controller::Settings::default();
            if let Some(dir) = cache_dir {
                settings.cache_dir = dir;
            }
            settings.verify_tick = Duration::from_secs(1);
            bosun::controller::run(client, config, settings).await?;
        }
        Command::Crds { out } => {
            bosun::crdgen::write_all(&out)?;
            println!("wrote CRDs to {}", out.display());
        }
    }
    Ok(())
}
