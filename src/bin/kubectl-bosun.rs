//! `kubectl bosun …`: kubectl finds this binary on PATH as a plugin. Everything it does
//! is in [`bosun::cli`].
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bosun::cli::run(bosun::cli::Cli::parse()).await
}
