//! `verifyWindow`: every gate keeps passing for the whole window. The window starts when
//! all gates pass and starts over whenever one stops passing, so a gate that fails two
//! probes in three never lets a revision through. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct VerifyWindow {
    /// Since when every gate has been passing without a break.
    passing_since: Option<Instant>,
}

/// Where a window stands after one observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Not every gate passes now: the window has not started (or started over).
    NotPassing,
    /// Every gate has passed for `held`, less than the window.
    Holding { held: Duration, remaining: Duration },
    /// Every gate has passed for the whole window.
    Complete,
}

impl VerifyWindow {
    pub fn observe(&mut self, all_passing: bool, now: Instant, window: Duration) -> WindowState {
        if !all_passing {
            self.passing_since = None;
            return WindowState::NotPassing;
        }
        let since = *self.passing_since.get_or_insert(now);
        let held = now.saturating_duration_since(since);
        if held >= window {
            WindowState::Complete
        } else {
            WindowState::Holding {
                held,
                remaining: window - held,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn passing_for_the_whole_window_completes_it() {
        let start = Instant::now();
        let mut window = VerifyWindow::default();
        assert_eq!(
            window.observe(true, start, WINDOW),
            WindowState::Holding {
                held: Duration::ZERO,
                remaining: WINDOW
            }
        );
        assert!(matches!(
            window.observe(true, at(start, 9), WINDOW),
            WindowState::Holding { .. }
        ));
        assert_eq!(window.observe(true, at(start, 10), WINDOW), WindowState::Complete);
    }

    #[test]
    fn a_gate_that_drops_back_restarts_the_window() {
        let start = Instant::now();
        let mut window = VerifyWindow::default();
        // Fails two probes in three, one probe every 4 s, over far more than the window
        // (the last round fails).
        for round in 0..30u64 {
            let passing = round % 3 == 1;
            let state = window.observe(passing, at(start, round * 4), WINDOW);
            assert_ne!(state, WindowState::Complete, "round {round}");
        }
        // Then it keeps passing: the window counts from the first passing probe after the
        // last failure.
        window.observe(true, at(start, 200), WINDOW);
        assert!(matches!(
            window.observe(true, at(start, 205), WINDOW),
            WindowState::Holding { held, .. } if held == Duration::from_secs(5)
        ));
        assert_eq!(
            window.observe(true, at(start, 210), WINDOW),
            WindowState::Complete
        );
    }

    #[test]
    fn an_empty_window_completes_at_the_first_passing_round() {
        let mut window = VerifyWindow::default();
        assert_eq!(
            window.observe(true, Instant::now(), Duration::ZERO),
            WindowState::Complete
        );
        assert_eq!(
            window.observe(false, Instant::now(), Duration::ZERO),
            WindowState::NotPassing
        );
    }
}
