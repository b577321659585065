//! Logging set-up: structured tracing, human-readable or JSON lines. `RUST_LOG`
//! overrides the default filter.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    init_with_default(json, "info,kube=warn,hyper=warn")
}

pub fn init_with_default(json: bool, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: a log file or `kubectl logs` gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Logs (info and up, `RUST_LOG` overrides) to a new file in the temporary directory
/// instead of the terminal: for `bosun demo` and `bosun bench`, whose printed story
/// the controller's own lines must not interrupt. Returns the file's path.
pub fn init_to_file(name: &str) -> std::io::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("bosun-{name}-{}.log", std::process::id()));
    let file = std::fs::File::create(&path)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(path)
}
