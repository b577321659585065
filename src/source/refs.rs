//! Which commit a `spec.source.git.ref` means.

use semver::{Version, VersionReq};

use super::{Resolved, SourceError, field};
use crate::api::GitRef;

/// Branch when a ref names none (README, "A minimal example").
pub(crate) const DEFAULT_BRANCH: &str = "main";

/// A validated `spec.source.git.ref`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RefQuery {
    Branch(String),
    Tag(String),
    /// Lower-case hex, 7 to 40 digits.
    Commit(String),
    Semver {
        range: String,
        req: VersionReq,
    },
}

impl RefQuery {
    pub(crate) fn from_git_ref(reference: &GitRef) -> Result<RefQuery, SourceError> {
        let invalid = |message: String| SourceError::InvalidSpec {
            field: field::REF,
            message,
        };
        let set: Vec<&str> = [
            ("branch", &reference.branch),
            ("tag", &reference.tag),
            ("commit", &reference.commit),
            ("semver", &reference.semver),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .map(|(name, _)| name)
        .collect();
        if set.len() > 1 {
            return Err(invalid(format!(
                "set exactly one of branch, tag, commit, semver (found {})",
                set.join(", ")
            )));
        }
        let non_empty = |name: &str, value: &str| -> Result<String, SourceError> {
            let value = value.trim();
            if value.is_empty() {
                Err(invalid(format!("{name} must not be empty")))
            } else if !git2::Reference::is_valid_name(&format!("refs/heads/{value}")) {
                Err(invalid(format!("{name} {value:?} is not a valid Git ref name")))
            } else {
                Ok(value.to_string())
            }
        };
        if let Some(branch) = &reference.branch {
            return Ok(RefQuery::Branch(non_empty("branch", branch)?));
        }
        if let Some(tag) = &reference.tag {
            return Ok(RefQuery::Tag(non_empty("tag", tag)?));
        }
        if let Some(commit) = &reference.commit {
            let commit = commit.trim().to_ascii_lowercase();
            if !(7..=40).contains(&commit.len()) || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "commit {commit:?} must be a hexadecimal commit id of 7 to 40 digits"
                )));
            }
            return Ok(RefQuery::Commit(commit));
        }
        if let Some(range) = &reference.semver {
            let req = VersionReq::parse(range.trim())
                .map_err(|e| invalid(format!("semver {range:?} is not a version range: {e}")))?;
            return Ok(RefQuery::Semver {
                range: range.trim().to_string(),
                req,
            });
        }
        Ok(RefQuery::Branch(DEFAULT_BRANCH.to_string()))
    }

    /// How the query reads in messages: `branch main`, `semver >=1.2`.
    pub fn describe(&self) -> String {
        match self {
            RefQuery::Branch(name) => format!("branch {name}"),
            RefQuery::Tag(name) => format!("tag {name}"),
            RefQuery::Commit(id) => format!("commit {id}"),
            RefQuery::Semver { range, .. } => format!("semver {range}"),
        }
    }

    /// Resolves the query against the (already fetched) bare repository.
    pub(crate) fn resolve(&self, repo: &git2::Repository, url: &str) -> Result<Resolved, SourceError> {
        let not_found = |detail: String| SourceError::RefNotFound {
            url: url.to_string(),
            reference: self.describe(),
            detail,
        };
        let peel = |refname: &str| -> Result<Option<git2::Oid>, SourceError> {
            match repo.find_reference(refname) {
                Ok(reference) => reference
                    .peel_to_commit()
                    .map(|commit| Some(commit.id()))
                    .map_err(|e| SourceError::git(&format!("reading {refname}"), &e)),
                Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
                Err(e) => Err(SourceError::git(&format!("reading {refname}"), &e)),
            }
        };
        match self {
            RefQuery::Branch(name) => {
                let id = peel(&format!("refs/heads/{name}"))?.ok_or_else(|| not_found(String::new()))?;
                Ok(Resolved {
                    commit: id.to_string(),
                    reference: self.describe(),
                })
            }
            RefQuery::Tag(name) => {
                let id = peel(&format!("refs/tags/{name}"))?.ok_or_else(|| not_found(String::new()))?;
                Ok(Resolved {
                    commit: id.to_string(),
                    reference: self.describe(),
                })
            }
            RefQuery::Commit(prefix) => match repo.find_commit_by_prefix(prefix) {
                Ok(commit) => Ok(Resolved {
                    commit: commit.id().to_string(),
                    reference: format!("commit {}", short(&commit.id().to_string())),
                }),
                Err(e) if e.code() == git2::ErrorCode::Ambiguous => {
                    Err(not_found("the prefix matches more than one object".into()))
                }
                Err(e) if matches!(e.code(), git2::ErrorCode::NotFound | git2::ErrorCode::InvalidSpec) => {
                    Err(not_found(String::new()))
                }
                Err(e) => Err(SourceError::git(&format!("looking up commit {prefix}"), &e)),
            },
            RefQuery::Semver { range, req } => {
                let tags = repo
                    .tag_names(None)
                    .map_err(|e| SourceError::git("listing tags", &e))?;
                let names: Vec<&str> = tags.iter().flatten().flatten().collect();
                let (tag, _) = highest_matching_tag(req, names.iter().copied())
                    .ok_or_else(|| not_found(format!("no tag among {} matches", names.len())))?;
                let id = peel(&format!("refs/tags/{tag}"))?
                    .ok_or_else(|| not_found(format!("tag {tag} vanished")))?;
                Ok(Resolved {
                    commit: id.to_string(),
                    reference: format!("tag {tag} (semver {range})"),
                })
            }
        }
    }
}

/// Highest version among tags that parse as semver (a leading `v` allowed) and match
/// `req`. Between equal versions (`v1.0.0` and `1.0.0`) the greater name wins, so the
/// choice does not depend on listing order.
pub(crate) fn highest_matching_tag<'a>(
    req: &VersionReq,
    tags: impl IntoIterator<Item = &'a str>,
) -> Option<(&'a str, Version)> {
    tags.into_iter()
        .filter_map(|tag| {
            let version = Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()?;
            req.matches(&version).then_some((tag, version))
        })
        .max_by(|(tag_a, a), (tag_b, b)| a.cmp(b).then_with(|| tag_a.cmp(tag_b)))
}

pub(crate) fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_ref(
        branch: Option<&str>,
        tag: Option<&str>,
        commit: Option<&str>,
        semver: Option<&str>,
    ) -> GitRef {
        GitRef {
            branch: branch.map(Into::into),
            tag: tag.map(Into::into),
            commit: commit.map(Into::into),
            semver: semver.map(Into::into),
        }
    }

    #[test]
    fn none_set_means_branch_main() {
        assert_eq!(
            RefQuery::from_git_ref(&GitRef::default()).unwrap(),
            RefQuery::Branch("main".into())
        );
    }

    #[test]
    fn more_than_one_set_names_the_field() {
        let err = RefQuery::from_git_ref(&git_ref(Some("main"), Some("v1"), None, None)).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        let message = err.to_string();
        assert!(message.starts_with("spec.source.git.ref"), "{message}");
        assert!(message.contains("branch, tag"), "{message}");
    }

    #[test]
    fn each_kind_is_validated() {
        assert_eq!(
            RefQuery::from_git_ref(&git_ref(None, Some("v1.2.0"), None, None)).unwrap(),
            RefQuery::Tag("v1.2.0".into())
        );
        assert_eq!(
            RefQuery::from_git_ref(&git_ref(None, None, Some("ABCDEF1"), None)).unwrap(),
            RefQuery::Commit("abcdef1".into())
        );
        for bad in ["abc", "xyz1234", &"a".repeat(41)] {
            assert!(
                RefQuery::from_git_ref(&git_ref(None, None, Some(bad), None)).is_err(),
                "{bad}"
            );
        }
        assert!(RefQuery::from_git_ref(&git_ref(None, None, None, Some("not a range"))).is_err());
        assert!(RefQuery::from_git_ref(&git_ref(Some("bad..name"), None, None, None)).is_err());
        assert!(RefQuery::from_git_ref(&git_ref(Some(" "), None, None, None)).is_err());
    }

    #[test]
    fn semver_picks_highest_match() {
        let req = VersionReq::parse(">=1.0.0, <2").unwrap();
        let tags = [
            "v0.9.0",
            "v1.0.0",
            "1.4.2",
            "v1.10.0",
            "v2.0.0",
            "latest",
            "v1.11.0-rc.1",
        ];
        let (tag, version) = highest_matching_tag(&req, tags).unwrap();
        assert_eq!(tag, "v1.10.0");
        assert_eq!(version, Version::new(1, 10, 0));
        assert!(highest_matching_tag(&VersionReq::parse(">=3").unwrap(), tags).is_none());
    }

    #[test]
    fn semver_tie_is_deterministic() {
        let req = VersionReq::parse("^1").unwrap();
        let a = highest_matching_tag(&req, ["v1.0.0", "1.0.0"]).unwrap().0;
        let b = highest_matching_tag(&req, ["1.0.0", "v1.0.0"]).unwrap().0;
        assert_eq!(a, b);
    }
}
