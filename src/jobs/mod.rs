//! Backup, migration and downgrade Jobs (README, "The runbook, step by step"): built
//! from the Runbook and the revision's own workloads, started once, adopted after a
//! restart, watched to their end, and cleaned up.
//!
//! - [`name`]: the Job's name and labels, deterministic from app, kind and revision,
//!   so a restarted controller finds the Job it started instead of starting another;
//! - [`build`]: the Job itself (pure): the container of `from: {workload, container}` of
//!   the rendered revision (or `image`), with the Runbook's command;
//! - [`state`]: what a Job's status says (running, succeeded, failed and why), which
//!   old Jobs cleanup may delete, and whether a Job runs past its deadline (pure);
//! - [`run`]: the I/O: [`ensure`] (read, else create; a Job past its deadline is
//!   touched so that an older Job controller ends it), [`observe`], the pod log tail,
//!   [`cleanup`].
//!
//! How the controller uses it, for one step (Backup, Migrate or Downgrade):
//! 1. `let request = JobRequest::migrate(&app, migrate_step, &revision, &manifests);`
//!    (`backup`, `downgrade` likewise; `manifests` is the render of the revision whose
//!    image runs: the new revision for backup and migrate, the failed newer one for
//!    a downgrade);
//! 2. `let job = build_job(&request)?` (a [`JobSpecError`] refuses the revision);
//! 3. each pass, `ensure(&client, &job).await` gives [`JobState::Running`] (wait for the
//!    next Job event), [`JobState::Succeeded`] or [`JobState::Failed`]: record
//!    `state.record(kind, revision, &job.name_any(), irreversible(&manifests, from))`
//!    in `status.jobs`, and put [`JobState::failure_message`] (reason, message, log
//!    tail) in the Event; a [`JobError`] is classified by [`JobError::classify`] like
//!    every other error (see [`crate::failure`]);
//! 4. after recording, `cleanup(&client, namespace, &app_label, history_limit)`.
//!
//! The controller learns about Job changes from one watch of every bosun Job:
//! [`WATCH_SELECTOR`]; [`owner_of`] says which AppDeployment a Job belongs to.

pub mod build;
pub mod name;
pub mod run;
pub mod state;

pub use build::{JobRequest, JobSpecError, build_job, irreversible};
pub use name::{
    JOB_KIND_LABEL, WATCH_SELECTOR, app_selector, job_labels, job_name, owner_of, revision_label_value,
};
pub use run::{JobError, cleanup, delete_failed_before, ensure, log_tail, observe};
pub use state::{
    DEADLINE_NUDGED_ANNOTATION, JobState, LOG_TAIL_LINES, deadline_overdue, jobs_to_delete, state_of,
};
