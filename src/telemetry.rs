//! Logging set-up: structured tracing, human-readable or JSON lines. `RUST_LOG`
//! overrides the default filter.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    init_with_default(json, "info,kube=warn,hyper=warn")
}

pub fn init_with_default(json: bool, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
