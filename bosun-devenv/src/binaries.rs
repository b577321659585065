//! Where the control-plane binaries are: environment variables, the cache under
//! `target/control-plane/bin` that `scripts/control-plane-bins.sh` fills, or PATH.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The script that builds and caches the control-plane binaries.
pub const BUILD_SCRIPT: &str = "scripts/control-plane-bins.sh";

/// Paths of the three control-plane programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// etcd 3.4 (Debian's `etcd-server`).
    pub etcd: PathBuf,
    /// kube-apiserver 1.20.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager 1.20.
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// Finds each binary: its environment variable (`ETCD`, `KUBE_APISERVER`,
    /// `KUBE_CONTROLLER_MANAGER`) first, then `<repo_root>/target/control-plane/bin`,
    /// then PATH. The error names the missing programs and the script to run.
    pub fn locate(repo_root: Option<&Path>) -> anyhow::Result<Self> {
        let cache = repo_root.map(|root| root.join("target/control-plane/bin"));
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let path_dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
        let mut missing = Vec::new();
        let mut find = |env: &str, name: &str| {
            let explicit = std::env::var_os(env).map(PathBuf::from);
            let found = locate_one(explicit.clone(), cache.as_deref(), &path_dirs, name);
            if found.is_none() {
                missing.push(match explicit {
                    Some(path) => format!("{name} ({env}={} is not a file)", path.display()),
                    None => format!("{name} (set {env}, or build it)"),
                });
            }
            found.unwrap_or_default()
        };
        let binaries = Self {
            etcd: find("ETCD", "etcd"),
            kube_apiserver: find("KUBE_APISERVER", "kube-apiserver"),
            kube_controller_manager: find("KUBE_CONTROLLER_MANAGER", "kube-controller-manager"),
        };
        if !missing.is_empty() {
            let searched =
                cache.map_or_else(|| "PATH".to_owned(), |dir| format!("{} and PATH", dir.display()));
            bail!(
                "control-plane binaries not found: {} (searched {searched}); \
                 run {BUILD_SCRIPT} from the repository root to build them",
                missing.join(", ")
            );
        }
        Ok(binaries)
    }
}

/// The first existing file among: the explicit path, `<cache>/<name>`, `<dir>/<name>`
/// for each PATH directory. An explicit path that does not exist is not replaced by
/// another candidate, so a typo in an environment variable is reported, not hidden.
fn locate_one(
    explicit: Option<PathBuf>,
    cache: Option<&Path>,
    path_dirs: &[PathBuf],
    name: &str,
) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.is_file().then_some(path);
    }
    cache
        .into_iter()
        .chain(path_dirs.iter().map(PathBuf::as_path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The root of the bosun repository: `BOSUN_REPO_ROOT` if set, else the first
/// directory from `start` upwards whose `Cargo.toml` declares the package `bosun`.
pub fn find_repo_root(start: &Path) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("BOSUN_REPO_ROOT") {
        return Some(PathBuf::from(root));
    }
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| declares_bosun_package(&manifest))
        })
        .map(Path::to_path_buf)
}

/// Whether a Cargo manifest's `[package]` table has `name = "bosun"`.
fn declares_bosun_package(manifest: &str) -> bool {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return value.trim().trim_matches('"') == "bosun";
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_the_bosun_manifest_only() {
        assert!(declares_bosun_package("[package]\nname = \"bosun\"\n"));
        assert!(!declares_bosun_package("[package]\nname = \"other\"\n"));
        assert!(!declares_bosun_package(
            "[dependencies]\nname = \"bosun\"\n[package]\nname = \"x\""
        ));
        assert!(!declares_bosun_package("[workspace]\nmembers = []\n"));
    }

    #[test]
    fn explicit_path_wins_and_is_not_replaced_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(cache.join("etcd"), "").unwrap();
        let explicit = dir.path().join("my-etcd");
        std::fs::write(&explicit, "").unwrap();

        let found = locate_one(Some(explicit.clone()), Some(&cache), &[], "etcd");
        assert_eq!(found, Some(explicit));
        let missing = locate_one(Some(dir.path().join("nope")), Some(&cache), &[], "etcd");
        assert_eq!(missing, None);
    }

    #[test]
    fn cache_comes_before_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let on_path = dir.path().join("bin");
        for d in [&cache, &on_path] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("etcd"), "").unwrap();
        }
        let found = locate_one(None, Some(&cache), std::slice::from_ref(&on_path), "etcd");
        assert_eq!(found, Some(cache.join("etcd")));
        let found = locate_one(None, None, std::slice::from_ref(&on_path), "etcd");
        assert_eq!(found, Some(on_path.join("etcd")));
        assert_eq!(locate_one(None, None, &[], "etcd"), None);
    }

    #[test]
    fn finds_root_from_a_subdirectory() {
        // This crate sits in the bosun workspace root (unless overridden by env).
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = crate_dir.parent().expect("bosun-devenv is inside the workspace");
        if std::env::var_os("BOSUN_REPO_ROOT").is_none() {
            assert_eq!(find_repo_root(&crate_dir.join("src")), Some(root.to_path_buf()));
        }
    }
}
