//! What identifies a block, so that a revision refused again for the same reason is the
//! same block however the refusal is worded this time.
//!
//! A block is identified by its reason and its message *normalised*: what differs
//! between two refusals of the same thing is taken out, and what is left is the object,
//! the field and the verdict. The alternative, a key parsed out of the message (kind,
//! object, field), was not chosen: refusals come from many places (render, RBAC,
//! ownership, preflight, the API server's validation, admission webhooks, 1.20's typed
//! patch errors) in as many formats, and a key parsed from text that does not follow the
//! expected shape would make two different refusals one block. Normalising errs the
//! other way (a wording we do not know stays a new block, as before) and gives the
//! status a message that reads well. What is taken out:
//!
//! - a long Go value dump (`spec.template: Invalid value: core.PodTemplateSpec{…3 KB…}:
//!   field is immutable`): the braces' content becomes `…`; it repeats the object the
//!   user wrote, and holds pointer addresses that differ on every request;
//! - any other pointer address (`(*int64)(0xc005d176a8)`) becomes `0x…`;
//! - causes the API server lists in no fixed order (an aggregate `[a, b]`, or 1.20's
//!   `errors:` followed by one indented line each) are sorted.
//!
//! The normalised message, cut to the status's budget, is what the status stores, so
//! comparing a new refusal with the stored block is comparing two normalised texts.

use crate::api::{BlockReason, BlockedRevision, within_budget};

/// A brace group longer than this is a value dump, elided.
const DUMP_BYTES: usize = 160;
/// A `0x` number with at least this many hex digits is an address.
const ADDRESS_DIGITS: usize = 6;

/// What the status stores of a refusal's `message`: normalised, within the budget.
pub fn block_message(message: &str) -> String {
    within_budget(&normalise(message))
}

/// Whether a refusal (`reason`, `message`) is the block already recorded: same reason,
/// same normalised message.
pub fn same_block(block: &BlockedRevision, reason: BlockReason, message: &str) -> bool {
    block.reason == reason && block.message == block_message(message)
}

/// How much of a refusal is normalised: the status keeps 1 KiB of it, a Go value dump
/// of a pod template is about 3 KiB, and brace matching is quadratic in the worst case
/// (a tenant's manifest quoted back as `{{{{…`), so the rest is not looked at.
const NORMALISED_BYTES: usize = 8 * 1024;

/// `message` without what changes between two refusals of the same thing.
pub fn normalise(message: &str) -> String {
    let message = crate::api::cut_to_bytes(message, NORMALISED_BYTES);
    let elided = elide_dumps(&message);
    let addresses = mask_addresses(&elided);
    let lines = sort_indented_lines(&addresses);
    sort_bracket_lists(&lines)
}

/// `Type{…}` for every brace group longer than [`DUMP_BYTES`] (outermost first).
fn elide_dumps(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'{'
            && let Some(end) = matching(bytes, index, b'{', b'}')
            && end - index > DUMP_BYTES
        {
            out.push_str("{…}");
            index = end + 1;
            continue;
        }
        let next = next_char_boundary(text, index);
        out.push_str(&text[index..next]);
        index = next;
    }
    out
}

/// `0x…` for every hexadecimal number of at least [`ADDRESS_DIGITS`] digits.
fn mask_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let starts_word = index == 0 || !bytes[index - 1].is_ascii_alphanumeric();
        if starts_word && bytes[index] == b'0' && bytes.get(index + 1) == Some(&b'x') {
            let digits = bytes[index + 2..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            if digits >= ADDRESS_DIGITS {
                out.push_str("0x…");
                index += 2 + digits;
                continue;
            }
        }
        let next = next_char_boundary(text, index);
        out.push_str(&text[index..next]);
        index = next;
    }
    out
}

/// Every run of consecutive indented lines sorted (1.20 lists the fields a typed patch
/// refused under `errors:`, one indented line each, in map order).
fn sort_indented_lines(text: &str) -> String {
    if !text.contains('\n') {
        return text.to_string();
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    let mut start = 0;
    while start < lines.len() {
        let indented = |line: &str| line.starts_with(' ') || line.starts_with('\t');
        if !indented(lines[start]) {
            start += 1;
            continue;
        }
        let end = (start..lines.len())
            .find(|&i| !indented(lines[i]))
            .unwrap_or(lines.len());
        lines[start..end].sort_unstable();
        start = end;
    }
    lines.join("\n")
}

/// The items of every `[a, b, c]` list sorted (the API server's aggregate of several
/// field errors, in the order its map gave them). Items are split at `, ` outside any
/// nested bracket, brace or parenthesis; `containers[0]` is a list of one.
fn sort_bracket_lists(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'['
            && let Some(end) = matching(bytes, index, b'[', b']')
        {
            let inner = sort_bracket_lists(&text[index + 1..end]);
            let mut items = split_top_level(&inner);
            items.sort_unstable();
            out.push('[');
            out.push_str(&items.join(", "));
            out.push(']');
            index = end + 1;
            continue;
        }
        let next = next_char_boundary(text, index);
        out.push_str(&text[index..next]);
        index = next;
    }
    out
}

/// `text` split at `, ` where no bracket, brace or parenthesis is open.
fn split_top_level(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut items = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'[' | b'{' | b'(' => depth += 1,
            b']' | b'}' | b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 && bytes.get(index + 1) == Some(&b' ') => {
                items.push(&text[start..index]);
                start = index + 2;
                index += 2;
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    items.push(&text[start..]);
    items
}

/// The index of the byte closing the group opened at `open_at`, counting only `open`
/// and `close` (ASCII, so never inside a multi-byte character).
fn matching(bytes: &[u8], open_at: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (index, &byte) in bytes.iter().enumerate().skip(open_at) {
        if byte == open {
            depth += 1;
        } else if byte == close {
            depth -= 1;
            if depth == 0 {
                return Some(index);
            }
        }
    }
    None
}

fn next_char_boundary(text: &str, index: usize) -> usize {
    let mut next = index + 1;
    while next < text.len() && !text.is_char_boundary(next) {
        next += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_message_is_normalised_only_as_far_as_the_status_needs() {
        let hostile = "{".repeat(1024 * 1024);
        let normalised = normalise(&hostile);
        assert!(normalised.len() <= NORMALISED_BYTES, "{}", normalised.len());
        assert!(block_message(&hostile).len() <= crate::api::MESSAGE_BUDGET_BYTES);
    }

    /// The shape of 1.20's refusal of a Job template edit (shortened), with the
    /// addresses of one request.
    fn immutable_template(address: &str) -> String {
        let containers = "Containers:[]core.Container{core.Container{Name:\"migrate\", Image:\"example/migrate:2\", \
             Command:[]string(nil), Args:[]string(nil), WorkingDir:\"\", Ports:[]core.ContainerPort(nil), \
             Resources:core.ResourceRequirements{Limits:core.ResourceList(nil), Requests:core.ResourceList(nil)}}}";
        format!(
            "dry run of Job shop/migrate (deploy/job.yaml:1): Job.batch \"migrate\" is invalid: spec.template: \
             Invalid value: core.PodTemplateSpec{{ObjectMeta:v1.ObjectMeta{{Name:\"\", Labels:map[string]string{{\"job-name\":\"migrate\"}}}}, \
             Spec:core.PodSpec{{{containers}, TerminationGracePeriodSeconds:(*int64)({address}), \
             ActiveDeadlineSeconds:(*int64)(nil)}}}}: field is immutable"
        )
    }

    #[test]
    fn a_go_value_dump_is_elided_and_the_verdict_kept() {
        let message = block_message(&immutable_template("0xc005d176a8"));
        assert_eq!(
            message,
            "dry run of Job shop/migrate (deploy/job.yaml:1): Job.batch \"migrate\" is invalid: spec.template: \
             Invalid value: core.PodTemplateSpec{…}: field is immutable"
        );
        assert_eq!(message, block_message(&immutable_template("0xc00a1b2c3d")));
    }

    #[test]
    fn addresses_are_masked_and_short_numbers_kept() {
        assert_eq!(
            normalise("TerminationGracePeriodSeconds:(*int64)(0xc005d176a8), mode 0x1ff"),
            "TerminationGracePeriodSeconds:(*int64)(0x…), mode 0x1ff"
        );
    }

    #[test]
    fn causes_listed_in_any_order_are_one_text() {
        let a = "Deployment.apps \"frontend\" is invalid: [spec.template.spec.containers[0].livenessProbe: \
                 Required value: must specify a handler type, spec.template.spec.containers[0].readinessProbe: \
                 Required value: must specify a handler type]";
        let b = "Deployment.apps \"frontend\" is invalid: [spec.template.spec.containers[0].readinessProbe: \
                 Required value: must specify a handler type, spec.template.spec.containers[0].livenessProbe: \
                 Required value: must specify a handler type]";
        assert_ne!(a, b);
        assert_eq!(normalise(a), normalise(b));
        assert!(normalise(a).contains("containers[0].livenessProbe"));
        let typed = |first: &str, second: &str| {
            format!(
                "failed to create typed patch object: errors:\n  {first}: field not declared in schema\n  {second}: field not declared in schema"
            )
        };
        let (x, y) = (
            ".spec.template.spec.containers[name=\"server\"].livenessProbe.grpc",
            ".spec.template.spec.containers[name=\"server\"].readinessProbe.grpc",
        );
        assert_eq!(normalise(&typed(x, y)), normalise(&typed(y, x)));
    }

    #[test]
    fn different_refusals_stay_different() {
        let field = |name: &str| {
            format!("ConfigMap \"a\" is invalid: data[{name}]: Invalid value: \"{name}\": a valid config key")
        };
        assert_ne!(block_message(&field("x y")), block_message(&field("x z")));
        let block = BlockedRevision {
            revision: "a".into(),
            reason: BlockReason::RevisionInvalid,
            message: block_message("spec.replicas: Invalid value: -1"),
            ..Default::default()
        };
        assert!(same_block(
            &block,
            BlockReason::RevisionInvalid,
            "spec.replicas: Invalid value: -1"
        ));
        assert!(!same_block(
            &block,
            BlockReason::Forbidden,
            "spec.replicas: Invalid value: -1"
        ));
        assert!(!same_block(
            &block,
            BlockReason::RevisionInvalid,
            "spec.replicas: Invalid value: -2"
        ));
    }

    #[test]
    fn a_message_is_kept_within_the_budget_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let kept = block_message(&long);
        assert!(kept.len() <= crate::api::MESSAGE_BUDGET_BYTES, "{}", kept.len());
        assert!(kept.ends_with('…'));
        // Unbalanced brackets and braces are left as they are.
        assert_eq!(normalise("a [b, {c"), "a [b, {c");
    }

    mod properties {
        //! Any sequence of re-checks of one blocked revision, each finding the same
        //! refusal worded anew (other addresses, causes in another order) or no answer,
        //! writes the status at most once (when the block is first recorded), publishes
        //! one `Blocked` Event, and never pushes a Healthy entry out of the history.

        use std::collections::BTreeMap;
        use std::time::Duration;

        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        use proptest::prelude::*;

        use crate::api::{AppDeploymentStatus, HistoryEntry, Phase, Step};
        use crate::core::record::{self, RecordInput};
        use crate::core::tests::{A, B, DIGEST, t0};
        use crate::core::{
            Decision, DesiredRevision, Failure, FailureKind, Input, Recheck, StepOutcome, StepPlan,
            StepResult, decide,
        };

        const HISTORY_LIMIT: usize = 10;

        /// Healthy on A after `deploys` healthy deploys (A last), every entry Healthy.
        fn healthy_history(deploys: usize) -> AppDeploymentStatus {
            let mut status = AppDeploymentStatus {
                observed_generation: Some(1),
                current_spec_digest: Some(DIGEST.into()),
                last_healthy_spec_digest: Some(DIGEST.into()),
                last_healthy_snapshot: Some("app-aaaa".into()),
                phase: Phase::Healthy,
                ..Default::default()
            };
            record::set_current_revision(&mut status, A);
            status.last_healthy_revision = Some(A.into());
            status.history = (0..deploys)
                .map(|i| HistoryEntry {
                    revision: if i == 0 { A.into() } else { format!("{i:040}") },
                    phase: Phase::Healthy,
                    started_at: "2026-01-01T00:00:00Z".into(),
                    finished_at: Some("2026-01-01T00:01:00Z".into()),
                    ..Default::default()
                })
                .collect();
            status
        }

        /// One wording of refusal `which`: the same refusal, told with `seed`'s addresses
        /// and order of causes.
        fn refusal(which: usize, seed: u64) -> Failure {
            let address = format!("0xc{:09x}", seed & 0xf_ffff_ffff);
            let (first, second) = ("livenessProbe", "readinessProbe");
            let (first, second) = if seed.is_multiple_of(2) {
                (first, second)
            } else {
                (second, first)
            };
            match which {
                0 => Failure::new(
                    FailureKind::RevisionInvalid,
                    format!(
                        "dry run of Job shop/seed (deploy/job.yaml:1): Job.batch \"seed\" is invalid: spec.template: \
                         Invalid value: core.PodTemplateSpec{{Spec:core.PodSpec{{Containers:[]core.Container{{\
                         core.Container{{Name:\"seed\", Image:\"example/seed:2\", Command:[]string{{\"/seed\"}}}}}}, \
                         TerminationGracePeriodSeconds:(*int64)({address}), RestartPolicy:\"Never\", \
                         DNSPolicy:\"ClusterFirst\", Hostname:\"{padding}\", \
                         SecurityContext:(*core.PodSecurityContext)({address})}}}}: field is immutable",
                        padding = " ".repeat((seed % 3000) as usize)
                    ),
                ),
                1 => Failure::new(
                    FailureKind::RevisionInvalid,
                    format!(
                        "dry run of Deployment shop/frontend (deploy/frontend.yaml:1): Deployment.apps \"frontend\" is \
                         invalid: [spec.template.spec.containers[0].{first}: Required value: must specify a handler \
                         type, spec.template.spec.containers[0].{second}: Required value: must specify a handler type]"
                    ),
                ),
                _ => Failure::new(
                    FailureKind::RevisionInvalid,
                    format!(
                        "dry run of Deployment shop/frontend (deploy/frontend.yaml:1): failed to create typed patch \
                         object: errors:\n  .spec.template.spec.containers[name=\"server\"].{first}.grpc: field not \
                         declared in schema\n  .spec.template.spec.containers[name=\"server\"].{second}.grpc: field \
                         not declared in schema"
                    ),
                ),
            }
        }

        /// What one re-check finds.
        #[derive(Clone, Debug)]
        enum Check {
            Refused(u64),
            Transient,
        }

        fn check() -> impl Strategy<Value = Check> {
            prop_oneof![4 => any::<u64>().prop_map(Check::Refused), 1 => Just(Check::Transient)]
        }

        /// One pass as the controller makes it: decide, record, run the step or the
        /// re-check, until a decision ends the pass. Returns whether the status changed
        /// (one write: the pass writes what it learned when it ends) and the Events.
        fn pass(
            status: &mut AppDeploymentStatus,
            now: Timestamp,
            block_retry_due: bool,
            mut step_outcome: impl FnMut(Step) -> StepOutcome,
            mut recheck_finds: impl FnMut() -> Recheck,
        ) -> (bool, Vec<record::Notice>) {
            let before = status.clone();
            let mut notices = Vec::new();
            let mut outcome = None;
            let mut recheck = None;
            let mut due = block_retry_due;
            for _ in 0..40 {
                let rechecked = recheck.is_some();
                let input = Input {
                    status,
                    generation: Some(1),
                    suspended: false,
                    automatic_rollback: true,
                    desired: DesiredRevision::Known {
                        revision: B.into(),
                        pinned: false,
                    },
                    spec_digest: DIGEST,
                    problem: None,
                    outcome: outcome.take(),
                    now,
                    step_deadline: Duration::from_secs(600),
                    // Due: an interval of a second has passed since the block (with the
                    // second of slack, always); not due: an interval of ten days.
                    interval: if due {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(10 * 24 * 3600)
                    },
                    block_checked_at: None,
                    config_changed_at: None,
                    recheck: recheck.take(),
                    plan: StepPlan::default(),
                    // Drift was just repaired: no resync falls due in these passes.
                    last_resync: Some(now),
                    rollout_on_secret_change: false,
                    secret_data: BTreeMap::new(),
                    retry: None,
                };
                let decision = decide(&input);
                if rechecked {
                    due = false;
                }
                let context = RecordInput {
                    now,
                    generation: Some(1),
                    history_limit: HISTORY_LIMIT,
                    spec_digest: DIGEST,
                    desired: Some(B),
                };
                notices.extend(record::record(status, &decision, &context));
                match decision {
                    Decision::Run(step) => outcome = Some(step_outcome(step)),
                    Decision::RecheckBlock { .. } => recheck = Some(recheck_finds()),
                    ref d if d.continues() => {}
                    _ => return (*status != before, notices),
                }
            }
            panic!("a pass did not end: {status:#?}");
        }

        fn healthy_entries(status: &AppDeploymentStatus) -> Vec<HistoryEntry> {
            status
                .history
                .iter()
                .filter(|e| e.phase == Phase::Healthy)
                .cloned()
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn rechecks_of_one_blocked_revision_write_at_most_once_and_keep_every_healthy_entry(
                deploys in 1..=HISTORY_LIMIT,
                which in 0..3usize,
                first in any::<u64>(),
                checks in prop::collection::vec((check(), any::<bool>(), 0..20u8), 1..40),
            ) {
                let mut status = healthy_history(deploys);
                let healthy = healthy_entries(&status);
                let mut now = t0();
                let mut writes = 0;
                let mut blocked_events = 0;
                // Git moves to B, refused at the inventory's dry run: blocked.
                let (written, notices) = pass(
                    &mut status,
                    now,
                    false,
                    |step| match step {
                        Step::Render => StepOutcome::Done(StepResult::Rendered {
                            render_digest: "r".into(),
                            objects: 1,
                        }),
                        Step::Snapshot => StepOutcome::Done(StepResult::SnapshotStored { name: "app-bbbb".into() }),
                        Step::Preflight => StepOutcome::Done(StepResult::PreflightPassed),
                        _ => StepOutcome::Refused(refusal(which, first)),
                    },
                    || Recheck::Clear,
                );
                writes += usize::from(written);
                blocked_events += notices.iter().filter(|n| n.reason == "Blocked").count();
                prop_assert!(status.blocked.as_ref().is_some_and(|b| b.revision == B && b.retry), "{status:#?}");
                let healthy_when_blocked = healthy_entries(&status);
                for (found, due, seconds) in checks {
                    now += SignedDuration::from_secs(seconds.into());
                    let (written, notices) = pass(
                        &mut status,
                        now,
                        due,
                        |step| panic!("no step runs while B is blocked: {step}"),
                        || match &found {
                            Check::Refused(seed) => Recheck::Refused(refusal(which, *seed)),
                            Check::Transient => Recheck::Transient("connection refused".into()),
                        },
                    );
                    writes += usize::from(written);
                    blocked_events += notices.iter().filter(|n| n.reason == "Blocked").count();
                    prop_assert!(notices.is_empty(), "a re-check announced {notices:?}");
                }
                prop_assert_eq!(writes, 1, "status writes");
                prop_assert_eq!(blocked_events, 1);
                prop_assert_eq!(status.history.iter().filter(|e| e.revision == B).count(), 1);
                // Every Healthy entry that fits beside B's one entry is still there.
                let kept = healthy_entries(&status);
                prop_assert_eq!(&kept, &healthy_when_blocked);
                prop_assert_eq!(&kept[..], &healthy[..healthy.len().min(HISTORY_LIMIT - 1)]);
                prop_assert!(status.blocked.as_ref().is_some_and(|b| b.message.len() <= crate::api::MESSAGE_BUDGET_BYTES));
            }
        }
    }
}
