//! Reading manifests out of a commit's tree (no work tree), with
//! `spec.source.git.path` and every symlink confined to the repository.
//!
//! Symlinks are resolved the way a file system would — a link's target is taken
//! relative to the link's directory, `..` climbs — but on the commit's tree, so
//! nothing outside the repository can ever be read: a target that is absolute or
//! climbs above the root is an error naming the link.
//!
//! The walk has a budget ([`TreeBudget`]): Git trees are content-addressed, so one
//! tree object can be named any number of times, and a dozen objects (a few KiB) can
//! describe 10^8 files. Every entry visited counts (not only manifests: a bomb of
//! README files costs the same time), as do the bytes of the manifests read (their
//! size is read from the object header before the content) and the depth of nesting.

use std::collections::HashSet;

use git2::{ObjectType, Oid, Repository, Tree};

use super::{SourceError, SourceFile, field};

/// Link expansions allowed while resolving one path (Linux's ELOOP limit).
const MAX_LINK_EXPANSIONS: usize = 40;
const FILEMODE_LINK: i32 = 0o120000;
const FILEMODE_COMMIT: i32 = 0o160000;

/// How much of a commit one read may walk: the figures `--git-max-files`,
/// `--git-max-manifest-bytes` and `--git-max-depth` set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeBudget {
    /// Entries (files, directories, symlinks) visited under `spec.source.git.path`.
    pub max_files: usize,
    /// Bytes of manifest files read.
    pub max_bytes: u64,
    /// Directories nested under `spec.source.git.path` (through symlinks too).
    pub max_depth: usize,
}

impl Default for TreeBudget {
    /// 10,000 entries: an app's manifest directory holds tens; a whole monorepo read
    /// from its root holds more and needs `spec.source.git.path`. 16 MiB of manifests:
    /// the largest CRD bundles are a few MiB, and with 16 apps rendering at once
    /// (`--concurrency`) that stays far below the chart's 512 MiB memory limit. Depth 32:
    /// manifests are rarely nested more than 4 deep; Linux's symlink limit is 40.
    fn default() -> Self {
        TreeBudget {
            max_files: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_depth: 32,
        }
    }
}

/// Manifest file extensions read by render.
pub(crate) fn is_manifest_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Checks `spec.source.git.path` and splits it into components (`""`, `.` → root).
pub(crate) fn validate_path(path: Option<&str>) -> Result<Vec<String>, SourceError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let invalid = |message: &str| SourceError::InvalidPath {
        path: path.to_string(),
        message: message.to_string(),
    };
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(invalid("must be relative to the repository root, not absolute"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL character"));
    }
    let mut components = Vec::new();
    for component in path.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => {
                return Err(invalid(
                    "must not contain `..`: it has to stay inside the repository",
                ));
            }
            other => components.push(other.to_string()),
        }
    }
    Ok(components)
}

/// What a path resolves to inside the commit.
enum Node {
    Tree { oid: Oid, real: Vec<String> },
    Blob { oid: Oid },
}

/// A path component still to be walked, and the link whose target it came from
/// (`None`: from the user's `path`), so an escape can name the culprit.
struct Pending {
    name: String,
    via: Option<LinkInfo>,
}

#[derive(Clone)]
struct LinkInfo {
    link: String,
    target: String,
}

/// Resolves `components` (relative to `start`, a real directory path) on the commit's
/// tree, following symlinks. Returns `None` when something on the way does not exist.
fn resolve(
    repo: &Repository,
    root: &Tree<'_>,
    start: &[String],
    components: Vec<String>,
) -> Result<Option<Node>, SourceError> {
    let mut real: Vec<String> = start.to_vec();
    let mut pending: Vec<Pending> = components
        .into_iter()
        .rev()
        .map(|name| Pending { name, via: None })
        .collect();
    let mut expansions = 0;
    while let Some(Pending { name, via }) = pending.pop() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if real.pop().is_none() {
                    return Err(escape(via, "climbs above the repository root"));
                }
                continue;
            }
            _ => {}
        }
        let dir = tree_at(repo, root, &real)?;
        let Some(entry) = dir.get_name(&name) else {
            return Ok(None);
        };
        let mode = entry.filemode();
        let is_last = pending.is_empty();
        if mode == FILEMODE_LINK {
            expansions += 1;
            let link_path = join(&real, &name);
            let target = read_link(repo, entry.id(), &link_path)?;
            if expansions > MAX_LINK_EXPANSIONS {
                return Err(SourceError::SymlinkEscape {
                    link: link_path,
                    target,
                    message: format!("more than {MAX_LINK_EXPANSIONS} symlinks to follow (a loop?)"),
                });
            }
            let info = LinkInfo {
                link: link_path,
                target: target.clone(),
            };
            if target.starts_with('/') {
                return Err(escape(
                    Some(info),
                    "absolute target points outside the repository",
                ));
            }
            // The link's target replaces it; the rest of the path follows.
            for part in target.split('/').rev() {
                pending.push(Pending {
                    name: part.to_string(),
                    via: Some(info.clone()),
                });
            }
            continue;
        }
        match entry.kind() {
            Some(ObjectType::Tree) => real.push(name),
            Some(ObjectType::Blob) if is_last => return Ok(Some(Node::Blob { oid: entry.id() })),
            // A file in the middle of a path, or a submodule: nothing to read there.
            _ => return Ok(None),
        }
    }
    let oid = tree_at(repo, root, &real)?.id();
    Ok(Some(Node::Tree { oid, real }))
}

fn escape(via: Option<LinkInfo>, message: &str) -> SourceError {
    match via {
        Some(LinkInfo { link, target }) => SourceError::SymlinkEscape {
            link,
            target,
            message: message.to_string(),
        },
        None => SourceError::InvalidSpec {
            field: field::PATH,
            message: message.to_string(),
        },
    }
}

fn tree_at<'r>(repo: &'r Repository, root: &Tree<'r>, real: &[String]) -> Result<Tree<'r>, SourceError> {
    if real.is_empty() {
        return Ok(root.clone());
    }
    let path = real.join("/");
    let entry = root
        .get_path(std::path::Path::new(&path))
        .map_err(|e| SourceError::git(&format!("reading directory {path}"), &e))?;
    repo.find_tree(entry.id())
        .map_err(|e| SourceError::git(&format!("reading directory {path}"), &e))
}

fn read_link(repo: &Repository, oid: Oid, link_path: &str) -> Result<String, SourceError> {
    let blob = repo
        .find_blob(oid)
        .map_err(|e| SourceError::git(&format!("reading symlink {link_path}"), &e))?;
    Ok(String::from_utf8_lossy(blob.content()).into_owned())
}

fn join(dir: &[String], name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", dir.join("/"))
    }
}

/// Every manifest file under `path` in `commit`, recursively, sorted by path.
pub(crate) fn read_manifests(
    repo: &Repository,
    commit: Oid,
    path: Option<&str>,
    budget: TreeBudget,
) -> Result<Vec<SourceFile>, SourceError> {
    let components = validate_path(path)?;
    let commit = repo
        .find_commit(commit)
        .map_err(|e| SourceError::git(&format!("reading commit {commit}"), &e))?;
    let root = commit
        .tree()
        .map_err(|e| SourceError::git("reading the commit's tree", &e))?;
    let shown = components.join("/");
    let not_dir = |message: &str| SourceError::InvalidPath {
        path: path.unwrap_or_default().to_string(),
        message: message.to_string(),
    };
    let (oid, real) = match resolve(repo, &root, &[], components)? {
        Some(Node::Tree { oid, real }) => (oid, real),
        Some(Node::Blob { .. }) => return Err(not_dir("is a file, not a directory")),
        None => {
            return Err(not_dir(&format!(
                "does not exist in commit {}",
                super::refs::short(&commit.id().to_string())
            )));
        }
    };
    let odb = repo
        .odb()
        .map_err(|e| SourceError::git("opening the object database", &e))?;
    let mut walk = Walk {
        repo,
        odb,
        root: &root,
        files: Vec::new(),
        on_stack: HashSet::new(),
        budget,
        entries: 0,
        bytes: 0,
        within: format!(
            "{} of commit {}",
            if shown.is_empty() {
                "the repository root".to_string()
            } else {
                format!("spec.source.git.path {:?}", path.unwrap_or_default())
            },
            super::refs::short(&commit.id().to_string())
        ),
    };
    walk.directory(oid, real, &shown, 0)?;
    let mut files = walk.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

struct Walk<'a, 'r> {
    repo: &'r Repository,
    odb: git2::Odb<'r>,
    root: &'a Tree<'r>,
    files: Vec<SourceFile>,
    /// Real paths of the directories being walked: a symlink back to one is a loop.
    on_stack: HashSet<Vec<String>>,
    budget: TreeBudget,
    /// Entries visited and manifest bytes read so far.
    entries: usize,
    bytes: u64,
    /// What is walked, for messages: `spec.source.git.path "deploy" of commit 1a2b3c4`.
    within: String,
}

impl Walk<'_, '_> {
    /// `real`: the directory's path in the repository with links resolved;
    /// `shown`: the path as the user sees it (through symlinked directories).
    fn directory(
        &mut self,
        oid: Oid,
        real: Vec<String>,
        shown: &str,
        depth: usize,
    ) -> Result<(), SourceError> {
        if depth > self.budget.max_depth {
            return Err(SourceError::BudgetExceeded {
                limit: "--git-max-depth",
                message: format!(
                    "{} nests directories more than {} deep (--git-max-depth={}), at {}",
                    self.within,
                    self.budget.max_depth,
                    self.budget.max_depth,
                    abbreviate(shown)
                ),
            });
        }
        let tree = self
            .repo
            .find_tree(oid)
            .map_err(|e| SourceError::git(&format!("reading directory {shown}"), &e))?;
        self.on_stack.insert(real.clone());
        for entry in tree.iter() {
            self.entries += 1;
            if self.entries > self.budget.max_files {
                return Err(SourceError::BudgetExceeded {
                    limit: "--git-max-files",
                    message: format!(
                        "{} holds more than {} files and directories (--git-max-files={}); the walk stopped at {}",
                        self.within,
                        self.budget.max_files,
                        self.budget.max_files,
                        abbreviate(shown)
                    ),
                });
            }
            let Ok(name) = entry.name().map(str::to_string) else {
                continue; // not UTF-8: cannot be a manifest name we could report
            };
            let shown_path = if shown.is_empty() {
                name.clone()
            } else {
                format!("{shown}/{name}")
            };
            let mode = entry.filemode();
            if mode == FILEMODE_COMMIT {
                continue; // submodule: its content is not in this repository
            }
            if mode == FILEMODE_LINK {
                let node = resolve(self.repo, self.root, &real, vec![name.clone()])?;
                match node {
                    Some(Node::Tree {
                        oid,
                        real: target_real,
                    }) => {
                        if is_ancestor_or_self(&target_real, &real) || self.on_stack.contains(&target_real) {
                            let link = join(&real, &name);
                            let target = read_link(self.repo, entry.id(), &link)?;
                            return Err(SourceError::SymlinkEscape {
                                link,
                                target,
                                message: "leads back to a directory being read (a loop)".into(),
                            });
                        }
                        self.directory(oid, target_real, &shown_path, depth + 1)?;
                    }
                    Some(Node::Blob { oid }) if is_manifest_name(&name) => {
                        self.push_blob(oid, shown_path)?;
                    }
                    Some(Node::Blob { .. }) => {}
                    None if is_manifest_name(&name) => {
                        let link = join(&real, &name);
                        let target = read_link(self.repo, entry.id(), &link)?;
                        return Err(SourceError::SymlinkEscape {
                            link,
                            target,
                            message: "target does not exist in the commit".into(),
                        });
                    }
                    None => {}
                }
                continue;
            }
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let mut child = real.clone();
                    child.push(name);
                    self.directory(entry.id(), child, &shown_path, depth + 1)?;
                }
                Some(ObjectType::Blob) if is_manifest_name(&name) => {
                    self.push_blob(entry.id(), shown_path)?;
                }
                _ => {}
            }
        }
        self.on_stack.remove(&real);
        Ok(())
    }

    fn push_blob(&mut self, oid: Oid, path: String) -> Result<(), SourceError> {
        // The size from the object's header: a huge blob is refused before it is read.
        let (size, _) = self
            .odb
            .read_header(oid)
            .map_err(|e| SourceError::git(&format!("reading {path}"), &e))?;
        let size = size as u64;
        if self.bytes.saturating_add(size) > self.budget.max_bytes {
            return Err(SourceError::BudgetExceeded {
                limit: "--git-max-manifest-bytes",
                message: format!(
                    "the manifests of {} exceed {} (--git-max-manifest-bytes={}): {} after {} files, and {} is {}",
                    self.within,
                    human_bytes(self.budget.max_bytes),
                    self.budget.max_bytes,
                    human_bytes(self.bytes),
                    self.files.len(),
                    abbreviate(&path),
                    human_bytes(size)
                ),
            });
        }
        self.bytes += size;
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|e| SourceError::git(&format!("reading {path}"), &e))?;
        self.files.push(SourceFile {
            path,
            content: blob.content().to_vec(),
        });
        Ok(())
    }
}

/// A path short enough for a message (a bomb's paths are as long as it is deep).
fn abbreviate(path: &str) -> String {
    const MAX: usize = 120;
    if path.is_empty() {
        return "the top directory".into();
    }
    if path.len() <= MAX {
        return path.to_string();
    }
    let mut cut = MAX;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &path[..cut], path.len())
}

/// `1536` → `1.5 KiB`: figures in messages, with the exact byte count beside them.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn is_ancestor_or_self(candidate: &[String], of: &[String]) -> bool {
    candidate.len() <= of.len() && of[..candidate.len()] == *candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components() {
        assert_eq!(validate_path(None).unwrap(), Vec::<String>::new());
        assert_eq!(validate_path(Some("")).unwrap(), Vec::<String>::new());
        assert_eq!(validate_path(Some(".")).unwrap(), Vec::<String>::new());
        assert_eq!(
            validate_path(Some("./deploy//prod/")).unwrap(),
            vec!["deploy", "prod"]
        );
    }

    #[test]
    fn path_must_stay_inside() {
        for bad in ["../x", "/etc", "deploy/../../x", "a/..", "\\windows"] {
            let err = validate_path(Some(bad)).unwrap_err();
            assert_eq!(err.reason(), "InvalidPath", "{bad}");
            assert!(err.to_string().contains("spec.source.git.path"), "{err}");
        }
    }

    #[test]
    fn manifest_names() {
        assert!(is_manifest_name("app.yaml"));
        assert!(is_manifest_name("APP.YML"));
        assert!(is_manifest_name("x.json"));
        assert!(!is_manifest_name("README.md"));
        assert!(!is_manifest_name("yaml"));
    }
}
