//! A circuit breaker: after a run of failures, stop calling a remote for a
//! while, then let one call through to see whether it is back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Calls are skipped until `until`.
    Open { until: Instant },
    /// One call, started at `since`, decides whether to close or reopen.
    Probing { since: Instant },
}

/// What [`Breaker::failure`] changed, for logging on state changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tripped {
    /// The breaker was closed and has just opened.
    Opened,
    /// A probe failed and the breaker opened again.
    Reopened,
    /// Still closed, below the threshold.
    No,
}

/// A circuit breaker shared by every caller of one remote.
#[derive(Debug)]
pub(super) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
    /// How long a probe may run before another caller may probe instead: a
    /// probe whose caller was cancelled never reports.
    probe_limit: Duration,
}

impl Breaker {
    /// Opens after `threshold` failures in a row (at least one) and stays
    /// open for `cool_down`; a probe that has not reported within
    /// `probe_limit` is taken as lost.
    pub fn new(threshold: u32, cool_down: Duration, probe_limit: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cool_down,
            probe_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go to the remote now. Once the cool-down has
    /// passed, exactly one caller is let through as the probe.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::Probing { since: now };
                true
            }
            State::Open { .. } => false,
            State::Probing { since } if now.duration_since(since) >= self.probe_limit => {
                *state = State::Probing { since: now };
                true
            }
            State::Probing { .. } => false,
        }
    }

    /// Records a successful call; returns whether the breaker was open or
    /// probing before, that is whether the remote has just come back.
    pub fn success(&self) -> bool {
        let mut state = self.lock();
        let recovered = !matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        recovered
    }

    /// Records a failed call.
    pub fn failure(&self) -> Tripped {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    *state = State::Open {
                        until: now + self.cool_down,
                    };
                    Tripped::Opened
                } else {
                    *state = State::Closed { failures };
                    Tripped::No
                }
            }
            State::Probing { .. } | State::Open { .. } => {
                *state = State::Open {
                    until: now + self.cool_down,
                };
                Tripped::Reopened
            }
        }
    }

    /// How long the breaker stays open before a probe.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }

    /// Whether calls are being skipped right now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let breaker = Breaker::new(3, Duration::from_millis(40), Duration::from_secs(60));
        assert!(breaker.admit());
        assert_eq!(breaker.failure(), Tripped::No);
        assert_eq!(breaker.failure(), Tripped::No);
        assert!(!breaker.is_open());
        assert_eq!(breaker.failure(), Tripped::Opened);
        assert!(breaker.is_open());
        assert!(!breaker.admit(), "open breaker let a call through");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.admit(), "no probe after the cool-down");
        assert!(!breaker.admit(), "a second probe while one is running");
        assert_eq!(breaker.failure(), Tripped::Reopened);
        assert!(!breaker.admit());
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.admit());
        assert!(breaker.success(), "recovery not reported");
        assert!(!breaker.is_open());
        assert!(breaker.admit());
        assert!(!breaker.success(), "closed breaker reported a recovery");
    }

    #[test]
    fn success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(breaker.failure(), Tripped::No);
        breaker.success();
        assert_eq!(breaker.failure(), Tripped::No);
        assert_eq!(breaker.failure(), Tripped::Opened);
    }

    #[test]
    fn replaces_a_lost_probe() {
        let breaker = Breaker::new(1, Duration::ZERO, Duration::from_millis(30));
        assert_eq!(breaker.failure(), Tripped::Opened);
        assert!(breaker.admit());
        assert!(!breaker.admit());
        std::thread::sleep(Duration::from_millis(50));
        assert!(breaker.admit(), "a lost probe blocked the breaker for good");
    }
}
