//! Names and labels of bosun's Jobs. A Job's name is a function of app, kind and
//! revision only, so whoever computes it (this controller now, a restarted one later)
//! finds the same Job: that is what makes "never a second Job" hold.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::{APP_LABEL, JobKind, OWNER_ANNOTATION};
use crate::snapshot::REVISION_LABEL;

/// Label with the Job's kind: `backup`, `migrate` or `downgrade`.
pub const JOB_KIND_LABEL: &str = "bosun.dev/job-kind";

/// Label selector of every Job bosun starts, whatever the app: the controller's one
/// watch of Jobs uses it and maps each Job to its app with [`owner_of`].
pub const WATCH_SELECTOR: &str = JOB_KIND_LABEL;

/// A Job's name becomes the `job-name` label of its pods, so it must be a label value,
/// and the pods' generated names must be DNS labels: 63 characters.
const MAX_NAME_LEN: usize = 63;
const MAX_LABEL_VALUE_LEN: usize = 63;
/// Characters of the revision in a Job's name (as [`crate::api::short_revision`]).
const REVISION_CHARS: usize = 12;

/// The Job of `kind` for `revision` of the app `app_namespace/app_name`:
/// `{app}-{kind}-{revision, 12 characters}`, e.g. `web-migrate-0123456789ab`.
///
/// An app name that is too long, or not a DNS label (AppDeployment names may contain
/// dots), is shortened and made one, followed by a hash of `namespace/name` that keeps
/// apps apart: `a-very-long-application-name-th-1a2b3c4d-migrate-0123456789ab`.
/// Two apps of one namespace never share a name; apps of different namespaces with
/// the same name that run Jobs in one target namespace would, and
/// [`ensure`](super::ensure) refuses to adopt the other app's Job.
///
/// Never change this function's output for existing inputs: a controller upgraded
/// mid-migration must find the Job the older one started.
pub fn job_name(app_namespace: &str, app_name: &str, kind: JobKind, revision: &str) -> String {
    let suffix = format!("-{}-{}", kind.as_str(), revision_part(revision));
    if is_dns_label(app_name) && app_name.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{app_name}{suffix}");
    }
    let hash = short_hash(&format!("{app_namespace}/{app_name}"));
    let room = MAX_NAME_LEN - suffix.len() - hash.len() - 1;
    let stem = dns_label_prefix(app_name, room);
    if stem.is_empty() {
        format!("{hash}{suffix}")
    } else {
        format!("{stem}-{hash}{suffix}")
    }
}

/// The labels of a Job and of its pods: the app (`bosun.dev/app`), the kind and the
/// revision ([`revision_label_value`]).
pub fn job_labels(app_label: &str, kind: JobKind, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.to_string(), app_label.to_string()),
        (JOB_KIND_LABEL.to_string(), kind.as_str().to_string()),
        (REVISION_LABEL.to_string(), revision_label_value(revision)),
    ])
}

/// The revision as a label value: a 40-character SHA-1 commit id whole; a 64-character
/// SHA-256 one (Git's newer object format) cut to the 63 a label value may hold. The
/// whole revision is also in the Job's `bosun.dev/revision` annotation.
pub fn revision_label_value(revision: &str) -> String {
    let cleaned: String = revision
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(MAX_LABEL_VALUE_LEN)
        .collect();
    cleaned
}

/// Selector of one app's Jobs (all kinds and revisions), `app_label` being the value of
/// its `bosun.dev/app` label.
pub fn app_selector(app_label: &str) -> String {
    format!("{APP_LABEL}={app_label},{JOB_KIND_LABEL}")
}

/// The AppDeployment (`namespace`, `name`) a Job of bosun belongs to, from its owner
/// annotation (a Job in another namespace has no owner reference to read it from).
pub fn owner_of(job: &Job) -> Option<(String, String)> {
    let owner = job.annotations().get(OWNER_ANNOTATION)?;
    let (namespace, name) = owner.split_once('/')?;
    Some((namespace.to_string(), name.to_string()))
}

/// The first characters of the revision, lowercase letters and digits only (commit ids
/// are hex; anything else is dropped so the name stays valid).
fn revision_part(revision: &str) -> String {
    let part: String = revision
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(REVISION_CHARS)
        .collect();
    if part.is_empty() { "0".to_string() } else { part }
}

/// RFC 1123 label: lowercase letters, digits and `-`, starting and ending with a letter
/// or digit, at most 63 characters.
pub(crate) fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// At most `max` characters of `text` made into a DNS label: lowercase, anything but
/// letters and digits turned into `-`, no `-` at either end.
fn dns_label_prefix(text: &str, max: usize) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    mapped.trim_matches('-').to_string()
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";
    const KINDS: [JobKind; 3] = [JobKind::Backup, JobKind::Migrate, JobKind::Downgrade];

    /// The exact names, written out: a change here strands running Jobs of every
    /// controller being upgraded.
    #[test]
    fn names_are_fixed_forever() {
        assert_eq!(
            job_name("shop", "web", JobKind::Migrate, REVISION),
            "web-migrate-0123456789ab"
        );
        assert_eq!(
            job_name("shop", "web", JobKind::Backup, REVISION),
            "web-backup-0123456789ab"
        );
        assert_eq!(
            job_name("shop", "web", JobKind::Downgrade, REVISION),
            "web-downgrade-0123456789ab"
        );
        assert_eq!(
            job_name("shop", "web.v2", JobKind::Migrate, REVISION),
            format!("web-v2-{}-migrate-0123456789ab", short_hash("shop/web.v2"))
        );
        let long = "a-very-long-application-name-that-goes-on-and-on-and-on";
        let name = job_name("shop", long, JobKind::Downgrade, REVISION);
        assert_eq!(
            name,
            format!(
                "a-very-long-application-name-th-{}-downgrade-0123456789ab",
                short_hash(&format!("shop/{long}"))
            )
        );
        assert_eq!(name.len(), 63);
    }

    #[test]
    fn the_longest_plain_name_fits_exactly() {
        // 63 - len("-downgrade-0123456789ab") = 40.
        let app = "a".repeat(40);
        assert_eq!(
            job_name("n", &app, JobKind::Downgrade, REVISION),
            format!("{app}-downgrade-0123456789ab")
        );
        let longer = "a".repeat(41);
        let name = job_name("n", &longer, JobKind::Downgrade, REVISION);
        assert!(name.len() <= 63 && name.contains(&short_hash(&format!("n/{longer}"))));
    }

    #[test]
    fn labels_carry_app_kind_and_the_whole_sha1_revision() {
        let labels = job_labels("shop.web", JobKind::Migrate, REVISION);
        assert_eq!(labels[APP_LABEL], "shop.web");
        assert_eq!(labels[JOB_KIND_LABEL], "migrate");
        assert_eq!(labels[REVISION_LABEL], REVISION);
        let sha256 = "f".repeat(64);
        assert_eq!(revision_label_value(&sha256), "f".repeat(63));
        assert_eq!(
            app_selector("shop.web"),
            "bosun.dev/app=shop.web,bosun.dev/job-kind"
        );
    }

    fn app_names() -> impl Strategy<Value = String> {
        // AppDeployment names: DNS-1123 subdomains (dots allowed), up to 253 characters.
        prop_oneof![
            "[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?",
            "[a-z0-9]([-a-z0-9.]{0,120}[a-z0-9])?",
            "[a-z0-9]{1,3}",
        ]
    }

    fn kinds() -> impl Strategy<Value = JobKind> {
        prop::sample::select(KINDS.to_vec())
    }

    proptest! {
        #[test]
        fn every_name_is_a_dns_label_of_at_most_63(
            namespace in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            app in app_names(),
            kind in kinds(),
            revision in "[0-9a-f]{40}|[0-9a-f]{64}",
        ) {
            let name = job_name(&namespace, &app, kind, &revision);
            prop_assert!(name.len() <= 63, "{name} is {} long", name.len());
            prop_assert!(is_dns_label(&name), "{name} is not a DNS label");
            prop_assert_eq!(&name, &job_name(&namespace, &app, kind, &revision));
            let suffix = format!("-{}-{}", kind.as_str(), &revision[..12]);
            prop_assert!(name.ends_with(&suffix), "{} does not end with {}", name, suffix);
            let label = revision_label_value(&revision);
            prop_assert!(label.len() <= 63 && revision.starts_with(&label));
        }

        #[test]
        fn apps_of_one_namespace_and_kinds_never_share_a_name(
            namespace in "[a-z0-9]{1,10}",
            first in app_names(),
            second in app_names(),
            first_kind in kinds(),
            second_kind in kinds(),
            revision in "[0-9a-f]{40}",
        ) {
            prop_assume!(first != second || first_kind != second_kind);
            prop_assert_ne!(
                job_name(&namespace, &first, first_kind, &revision),
                job_name(&namespace, &second, second_kind, &revision)
            );
        }
    }

    #[test]
    fn revisions_differing_in_the_first_12_characters_differ() {
        let other = "1123456789abcdef0123456789abcdef01234567";
        assert_ne!(
            job_name("shop", "web", JobKind::Migrate, REVISION),
            job_name("shop", "web", JobKind::Migrate, other)
        );
    }
}
