//! The sagas' clock: milliseconds since the epoch as the wall clock read when the host started,
//! carried forward by the monotonic clock. The state machine's deadlines (step timeouts,
//! retries, saga deadlines) and the in-memory timers both go by it, so a step of the system
//! clock — NTP correcting a wrong clock, an operator's `date -s`, a VM resumed — neither fires a
//! timer early (a jump forward would make every deadline look passed) nor holds it back (a jump
//! backwards would delay every timer by the jump). NTP's usual gentle correction (slewing) is
//! followed, because the monotonic clock is slewed with it. What is stored stays milliseconds
//! since the epoch, comparable across hosts and restarts; a step is reported once in the log.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How far the wall clock may move from the sagas' clock before it counts as a step.
const STEP_MS: i64 = 1_000;

/// The time the saga rules and timers go by (see the module).
pub struct Clock {
    /// The wall clock when `started`, in ms since the epoch.
    base_ms: i64,
    started: Instant,
    /// How far the test harness moved the clock ahead, in ms (0 in a host).
    ahead_ms: AtomicI64,
    /// The wall clock's distance from this clock when last reported, in ms.
    drift_ms: AtomicI64,
}

/// What one reading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The sagas' time, in ms since the epoch.
    pub now: i64,
    /// The wall clock stepped by this many ms (negative: backwards) since the last step seen.
    pub stepped_ms: Option<i64>,
}

impl Clock {
    /// A clock that starts at the wall clock's time now.
    pub fn new() -> Clock {
        Clock::starting(crate::storage::now_ms(), Instant::now())
    }

    /// A clock that reads `wall_ms` at `started`.
    pub fn starting(wall_ms: i64, started: Instant) -> Clock {
        Clock {
            base_ms: wall_ms,
            started,
            ahead_ms: AtomicI64::new(0),
            drift_ms: AtomicI64::new(0),
        }
    }

    /// The sagas' time now, in ms since the epoch; a step of the wall clock is logged.
    pub fn now(&self) -> i64 {
        let reading = self.read(Instant::now(), crate::storage::now_ms());
        if let Some(stepped_ms) = reading.stepped_ms {
            tracing::warn!(
                stepped_ms,
                "the system clock stepped; saga timers keep to the time elapsed since the host started"
            );
        }
        reading.now
    }

    /// The sagas' time at monotonic instant `at`, when the wall clock reads `wall_ms`: the wall
    /// clock only tells whether it stepped, never what time it is for the sagas.
    pub fn read(&self, at: Instant, wall_ms: i64) -> Reading {
        let elapsed = at.saturating_duration_since(self.started).as_millis() as i64;
        let now = self.base_ms + elapsed + self.ahead_ms.load(Ordering::Relaxed);
        let drift = wall_ms - (self.base_ms + elapsed);
        let last = self.drift_ms.load(Ordering::Relaxed);
        let stepped_ms = ((drift - last).abs() > STEP_MS
            && self
                .drift_ms
                .compare_exchange(last, drift, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then_some(drift - last);
        Reading { now, stepped_ms }
    }

    /// Moves the clock ahead (the test harness's way to let time pass).
    pub fn advance(&self, by: Duration) {
        self.ahead_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    /// A step timeout of 3 s set before the wall clock jumps back an hour comes due after
    /// exactly 3 s of elapsed time: not before (early), not an hour later (lost).
    #[test]
    fn a_backwards_jump_neither_fires_a_deadline_early_nor_holds_it_back() {
        let t0 = Instant::now();
        let wall0 = 1_700_000_000_000;
        let clock = Clock::starting(wall0, t0);
        let deadline = clock.read(t0, wall0).now + 3_000;
        let ms = |n: u64| t0 + Duration::from_millis(n);

        // One second later the wall clock is set back an hour.
        let jumped = clock.read(ms(1_000), wall0 + 1_000 - HOUR_MS);
        assert_eq!(
            jumped.now,
            wall0 + 1_000,
            "the sagas' time does not go back"
        );
        assert_eq!(jumped.stepped_ms, Some(-HOUR_MS), "the step is noticed");
        let later = clock.read(ms(1_500), wall0 + 1_500 - HOUR_MS);
        assert_eq!(later.stepped_ms, None, "and reported once");

        let before = clock.read(ms(2_999), wall0 + 2_999 - HOUR_MS).now;
        assert!(
            before < deadline,
            "not due before its 3 s: {before} < {deadline}"
        );
        let due = clock.read(ms(3_000), wall0 + 3_000 - HOUR_MS).now;
        assert!(due >= deadline, "due after its 3 s, not an hour later");
        // What a timer task sleeps for, computed after the jump, is what is left of the 3 s.
        assert_eq!(deadline - clock.read(ms(2_000), wall0 - HOUR_MS).now, 1_000);
    }

    /// A deadline set while the wall clock was an hour behind is not found passed when the wall
    /// clock is corrected forward again (it would fire at once if it went by the wall clock).
    #[test]
    fn a_correction_forward_after_a_backwards_jump_fires_nothing_early() {
        let t0 = Instant::now();
        let wall0 = 1_700_000_000_000;
        let clock = Clock::starting(wall0, t0);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        clock.read(ms(10), wall0 + 10 - HOUR_MS);
        let deadline = clock.read(ms(20), wall0 + 20 - HOUR_MS).now + 3_000;
        let corrected = clock.read(ms(30), wall0 + 30);
        assert_eq!(corrected.stepped_ms, Some(HOUR_MS));
        assert!(corrected.now < deadline, "not due 10 ms into its 3 s");
        assert!(clock.read(ms(3_020), wall0 + 3_020).now >= deadline);
    }

    #[test]
    fn the_harness_moves_it_ahead_and_it_follows_elapsed_time() {
        let t0 = Instant::now();
        let clock = Clock::starting(1_000, t0);
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.read(t0 + Duration::from_millis(5), 1_005).now, 61_005);
    }
}
