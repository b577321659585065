//! The verdict of one gate across its probes: thresholds of consecutive failures and
//! successes, and when the next probe is due. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

use crate::api::{Gate, Verdict};

use super::http::ProbeOutcome;

#[derive(Clone, Debug)]
pub struct GateTracker {
    period: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    last_probe: Option<Instant>,
    consecutive_failures: u32,
    consecutive_successes: u32,
    verdict: Verdict,
    last_message: Option<String>,
}

impl GateTracker {
    pub fn new(gate: &Gate) -> Self {
        Self {
            period: gate.period(),
            failure_threshold: gate.failure_threshold(),
            success_threshold: gate.success_threshold(),
            last_probe: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            verdict: Verdict::Pending,
            last_message: None,
        }
    }

    /// Whether a probe is due: never probed, or `periodSeconds` since the last one.
    /// A failed gate is never due again.
    pub fn due(&self, now: Instant) -> bool {
        self.verdict != Verdict::Failed && self.until_due(now).is_zero()
    }

    /// Time until the next probe is due (zero when due now).
    pub fn until_due(&self, now: Instant) -> Duration {
        match self.last_probe {
            None => Duration::ZERO,
            Some(last) => (last + self.period).saturating_duration_since(now),
        }
    }

    /// Counts one probe started at `now`. `failureThreshold` consecutive failures fail
    /// the gate for good (the revision is about to be rolled back; a later success must
    /// not hide that). `successThreshold` consecutive successes pass it; a failure after
    /// passing drops it back to pending until one of the thresholds is reached again.
    pub fn record(&mut self, outcome: &ProbeOutcome, now: Instant) -> Verdict {
        self.last_probe = Some(now);
        self.last_message = Some(outcome.message.clone());
        if self.verdict == Verdict::Failed {
            return self.verdict;
        }
        if outcome.passed {
            self.consecutive_failures = 0;
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            if self.consecutive_successes >= self.success_threshold {
                self.verdict = Verdict::Passed;
            }
        } else {
            self.consecutive_successes = 0;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.verdict = if self.consecutive_failures >= self.failure_threshold {
                Verdict::Failed
            } else {
                Verdict::Pending
            };
        }
        self.verdict
    }

    /// Fails the gate without a probe (it cannot be probed at all).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.verdict = Verdict::Failed;
        self.last_message = Some(message.into());
    }

    /// Passes the gate without a probe: it has nothing to judge (it does not apply).
    /// A gate that failed stays failed.
    pub fn pass(&mut self, message: impl Into<String>) {
        if self.verdict != Verdict::Failed {
            self.verdict = Verdict::Passed;
            self.last_message = Some(message.into());
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The message of the last probe, as it came.
    pub fn last_message(&self) -> Option<&str> {
        self.last_message.as_deref()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// What `status` shows for this gate: the last probe's message, with the count
    /// towards a threshold where one is running.
    pub fn summary(&self) -> String {
        let Some(message) = self.last_message.as_deref() else {
            return "not probed yet".into();
        };
        match self.verdict {
            Verdict::Failed if self.consecutive_failures > 0 => format!(
                "{} consecutive failed probes: {message}",
                self.consecutive_failures
            ),
            Verdict::Pending if self.consecutive_failures > 0 => format!(
                "failed {} of {} probes in a row: {message}",
                self.consecutive_failures, self.failure_threshold
            ),
            Verdict::Pending if self.consecutive_successes > 0 => format!(
                "passed {} of {} probes in a row: {message}",
                self.consecutive_successes, self.success_threshold
            ),
            _ => message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(failure_threshold: u32, success_threshold: u32) -> Gate {
        Gate {
            name: "health".into(),
            period_seconds: Some(5),
            failure_threshold: Some(failure_threshold),
            success_threshold: Some(success_threshold),
            ..Gate::default()
        }
    }

    fn ok() -> ProbeOutcome {
        ProbeOutcome::passed("GET http://x/health: 200")
    }

    fn bad() -> ProbeOutcome {
        ProbeOutcome::failed("GET http://x/health: status 503, expected 2xx (empty body)")
    }

    /// Feeds outcomes one period apart and returns the verdict after each.
    fn run(tracker: &mut GateTracker, outcomes: &[ProbeOutcome]) -> Vec<Verdict> {
        let start = Instant::now();
        outcomes
            .iter()
            .enumerate()
            .map(|(i, outcome)| tracker.record(outcome, start + Duration::from_secs(5 * i as u64)))
            .collect()
    }

    use Verdict::{Failed, Passed, Pending};

    #[test]
    fn fails_at_exactly_the_failure_threshold() {
        let mut tracker = GateTracker::new(&gate(3, 1));
        assert_eq!(
            run(&mut tracker, &[bad(), bad(), bad()]),
            [Pending, Pending, Failed]
        );
        assert_eq!(tracker.verdict(), Failed);
        assert!(
            tracker.summary().starts_with("3 consecutive failed probes: "),
            "{}",
            tracker.summary()
        );
    }

    #[test]
    fn a_success_in_between_resets_the_failure_count() {
        let mut tracker = GateTracker::new(&gate(3, 1));
        let verdicts = run(&mut tracker, &[bad(), bad(), ok(), bad(), bad(), bad()]);
        assert_eq!(verdicts, [Pending, Pending, Passed, Pending, Pending, Failed]);
    }

    #[test]
    fn passes_at_the_success_threshold_and_stays_passed_while_passing() {
        let mut tracker = GateTracker::new(&gate(3, 2));
        assert_eq!(run(&mut tracker, &[ok(), ok(), ok()]), [Pending, Passed, Passed]);
    }

    #[test]
    fn a_failure_after_passing_drops_back_to_pending_until_a_threshold() {
        let mut tracker = GateTracker::new(&gate(2, 2));
        let verdicts = run(&mut tracker, &[ok(), ok(), bad(), ok(), ok()]);
        assert_eq!(verdicts, [Pending, Passed, Pending, Pending, Passed]);
        assert_eq!(tracker.consecutive_successes(), 2);
    }

    #[test]
    fn failed_is_final() {
        let mut tracker = GateTracker::new(&gate(1, 1));
        assert_eq!(run(&mut tracker, &[bad(), ok(), ok()]), [Failed, Failed, Failed]);
        assert!(!tracker.due(Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn due_after_each_period() {
        let mut tracker = GateTracker::new(&gate(3, 1));
        let start = Instant::now();
        assert!(tracker.due(start), "never probed: due at once");
        tracker.record(&ok(), start);
        assert!(!tracker.due(start + Duration::from_secs(4)));
        assert_eq!(
            tracker.until_due(start + Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert!(tracker.due(start + Duration::from_secs(5)));
        assert_eq!(tracker.until_due(start + Duration::from_secs(6)), Duration::ZERO);
    }

    #[test]
    fn defaults_from_the_gate() {
        let tracker = GateTracker::new(&Gate::default());
        assert_eq!(tracker.period, Duration::from_secs(5));
        assert_eq!(tracker.failure_threshold, 3);
        assert_eq!(tracker.success_threshold, 1);
        assert_eq!(tracker.verdict(), Pending);
        assert_eq!(tracker.summary(), "not probed yet");
        assert_eq!(tracker.last_message(), None);
    }

    #[test]
    fn summary_counts_towards_the_threshold() {
        let mut tracker = GateTracker::new(&gate(3, 1));
        run(&mut tracker, &[bad()]);
        assert_eq!(
            tracker.summary(),
            "failed 1 of 3 probes in a row: GET http://x/health: status 503, expected 2xx (empty body)"
        );
        run(&mut tracker, &[ok()]);
        assert_eq!(tracker.summary(), "GET http://x/health: 200");
        assert_eq!(tracker.last_message(), Some("GET http://x/health: 200"));
    }

    #[test]
    fn fail_without_probe() {
        let mut tracker = GateTracker::new(&gate(3, 1));
        tracker.fail("no probe configured");
        assert_eq!(tracker.verdict(), Failed);
        assert_eq!(tracker.summary(), "no probe configured");
    }
}
