//! The time the operator acts on: the system clock, or a virtual one that tests and the fleet
//! simulation set by hand. Core logic takes `now` as a parameter; only the edges (the loops, the
//! store's receipt times, the HTTP handlers) read a `Clock`, so a whole operator can be moved
//! through months in seconds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::{SignedDuration, Timestamp};

/// A clock: the system's (the default) or a virtual one shared by everything cloned from it.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A virtual clock standing at `start` until it is set or advanced.
    pub fn manual(start: Timestamp) -> Self {
        Clock(Some(Arc::new(AtomicI64::new(to_millis(start)))))
    }

    pub fn now(&self) -> Timestamp {
        match &self.0 {
            None => Timestamp::now(),
            Some(millis) => {
                Timestamp::from_millisecond(millis.load(Ordering::SeqCst)).unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// Moves a virtual clock to `at` (backwards too: tests check that deadlines do not follow);
    /// the system clock ignores it.
    pub fn set(&self, at: Timestamp) {
        if let Some(millis) = &self.0 {
            millis.store(to_millis(at), Ordering::SeqCst);
        }
    }

    /// Moves a virtual clock by `by`.
    pub fn advance(&self, by: SignedDuration) {
        self.set(self.now().checked_add(by).unwrap_or(Timestamp::MAX));
    }

    pub fn is_virtual(&self) -> bool {
        self.0.is_some()
    }
}

fn to_millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Clock(system)"),
            Some(_) => write!(f, "Clock(virtual, {})", self.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_clock_moves_only_when_told_and_is_shared_by_clones() {
        let start: Timestamp = "2025-09-16T00:00:00Z".parse().expect("time");
        let clock = Clock::manual(start);
        let copy = clock.clone();
        assert_eq!(copy.now(), start);
        clock.advance(SignedDuration::from_hours(25));
        assert_eq!(copy.now(), "2025-09-17T01:00:00Z".parse().expect("time"));
        copy.set(start);
        assert_eq!(clock.now(), start);
        assert!(clock.is_virtual() && !Clock::system().is_virtual());
    }
}
