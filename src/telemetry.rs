//! Logging set-up: structured tracing, human-readable or JSON lines.
//!
//! The level comes from `--log-level` (or `BOSUN_LOG`), else from `RUST_LOG`, else
//! [`DEFAULT_FILTER`]. `--log-level` takes a plain level (`debug`: bosun at debug, the
//! Kubernetes client and HTTP libraries no more verbose than `warn`) or `RUST_LOG`-style
//! directives used as written (`info,bosun::gates=debug`).
//!
//! Every pass logs inside a `reconcile` span naming the app's `namespace`, `app` and
//! `revision`; in JSON each line carries them under `span` (and `spans`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The filter when neither `--log-level` nor `RUST_LOG` says otherwise.
pub(crate) const DEFAULT_FILTER: &str = "info,kube=warn,hyper=warn";

/// Libraries whose debug lines are about HTTP plumbing rather than bosun's work: a
/// plain `--log-level` makes them no more verbose than `warn`.
const NOISY: [&str; 3] = ["kube", "hyper", "h2"];

/// Starts logging to stderr. `level` is `--log-level` (clap reads `BOSUN_LOG` into it);
/// an unusable value is an error naming it.
pub fn init(json: bool, level: Option<&str>) -> Result<(), String> {
    let directives = filter_directives(level, std::env::var("RUST_LOG").ok().as_deref())?;
    let filter = EnvFilter::try_new(&directives).map_err(|e| format!("log filter {directives:?}: {e}"))?;
    // Colours only on a terminal: a log file or `kubectl logs` gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// The filter directives: `--log-level` first, then `RUST_LOG`, then the default. A
/// plain word is read as a level, and one that is not a level is refused (`EnvFilter`
/// would take it for a module name and log nothing of bosun's).
pub(crate) fn filter_directives(level: Option<&str>, rust_log: Option<&str>) -> Result<String, String> {
    let Some(level) = level.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(rust_log
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .unwrap_or(DEFAULT_FILTER)
            .to_string());
    };
    if level.contains(['=', ',']) {
        return Ok(level.to_string());
    }
    let parsed: LevelFilter = level.parse().map_err(|_| {
        format!(
            "--log-level {level:?}: not a level (error, warn, info, debug, trace, off) nor directives such as \"info,bosun=debug\""
        )
    })?;
    let quiet = parsed.min(LevelFilter::WARN);
    let mut directives = parsed.to_string().to_lowercase();
    for target in NOISY {
        directives.push_str(&format!(",{target}={}", quiet.to_string().to_lowercase()));
    }
    Ok(directives)
}

/// Logs (info and up, `RUST_LOG` overrides) to a new file in the temporary directory
/// instead of the terminal: for `bosun demo` and `bosun bench`, whose printed story
/// the controller's own lines must not interrupt. Returns the file's path.
pub fn init_to_file(name: &str) -> std::io::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("bosun-{name}-{}.log", std::process::id()));
    let file = std::fs::File::create(&path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        assert_eq!(filter_directives(None, None).unwrap(), DEFAULT_FILTER);
        assert_eq!(filter_directives(None, Some("warn")).unwrap(), "warn");
        assert_eq!(filter_directives(Some(""), Some("warn")).unwrap(), "warn");
        assert_eq!(
            filter_directives(Some("debug"), Some("warn")).unwrap(),
            "debug,kube=warn,hyper=warn,h2=warn"
        );
    }

    #[test]
    fn a_plain_level_keeps_the_http_libraries_quiet_but_never_louder_than_asked() {
        assert_eq!(
            filter_directives(Some("ERROR"), None).unwrap(),
            "error,kube=error,hyper=error,h2=error"
        );
        assert_eq!(
            filter_directives(Some("trace"), None).unwrap(),
            "trace,kube=warn,hyper=warn,h2=warn"
        );
    }

    #[test]
    fn directives_are_used_as_written_and_a_word_that_is_no_level_is_refused() {
        assert_eq!(
            filter_directives(Some("info,bosun::gates=debug"), None).unwrap(),
            "info,bosun::gates=debug"
        );
        let error = filter_directives(Some("verbose"), None).unwrap_err();
        assert!(error.contains("\"verbose\""), "{error}");
        for directives in [DEFAULT_FILTER, "debug,kube=warn,hyper=warn,h2=warn"] {
            assert!(EnvFilter::try_new(directives).is_ok(), "{directives}");
        }
    }
}
