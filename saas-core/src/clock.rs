//! Time as a dependency.
//!
//! Code that makes decisions on time (trials, grace periods, token expiry, retention)
//! takes a [`Clock`], so that tests move time instead of sleeping:
//!
//! ```
//! use chrono::{Duration, TimeZone, Utc};
//! use saas_core::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
//! let trial_ends = clock.now() + Duration::days(14);
//! clock.advance(Duration::days(15));
//! assert!(clock.now() > trial_ends);
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

impl<F> Clock for F
where
    F: Fn() -> DateTime<Utc> + Send + Sync + 'static,
{
    fn now(&self) -> DateTime<Utc> {
        self()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

/// A clock for tests: it stands still until it is set or advanced.
///
/// Clones share the same time, so a test can keep one handle and give another to the
/// code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock showing the current system time (then standing still).
    pub fn starting_now() -> Self {
        Self::new(Utc::now())
    }

    /// Sets the time. Moving backwards is allowed: tests of clock skew need it.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }

    /// Moves the time by `by` (which may be negative).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::starting_now();
        let b = a.clone();
        let t0 = a.now();
        b.advance(Duration::hours(1));
        assert_eq!(a.now() - t0, Duration::hours(1));
        a.set(t0);
        assert_eq!(b.now(), t0);
    }

    #[test]
    fn closures_and_arcs_are_clocks() {
        let fixed = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let c: Arc<dyn Clock> = Arc::new(move || fixed);
        assert_eq!(c.now(), fixed);
        assert!(SystemClock.now() > fixed);
    }
}
