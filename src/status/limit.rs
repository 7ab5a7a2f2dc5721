//! The per-enrollment status report rate limit: a token bucket per enrollment, in memory (a
//! restart refills every bucket, which only lets a device send one burst more). Pure: the
//! caller passes the time.

use std::collections::HashMap;

use jiff::Timestamp;

/// Reports an enrollment may send at once. Real devices send a handful per check-in and a few
/// more while an update downloads and installs.
pub const REPORT_BURST: u32 = 30;
/// One more report is allowed every this many milliseconds (10 a minute, sustained).
pub const REPORT_REFILL_MILLIS: i64 = 6_000;
/// Past this many tracked enrollments, full buckets (enrollments quiet for a whole refill) are
/// dropped: a full bucket is the same as none, so this loses nothing.
const PRUNE_ABOVE: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in thousandths.
    milli_tokens: i64,
    at: Timestamp,
}

/// Token buckets by enrollment id.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    refill_millis: i64,
    buckets: HashMap<String, Bucket>,
    inserted_since_prune: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(REPORT_BURST, REPORT_REFILL_MILLIS)
    }
}

impl RateLimiter {
    pub fn new(burst: u32, refill_millis: i64) -> Self {
        RateLimiter {
            burst: burst.max(1),
            refill_millis: refill_millis.max(1),
            buckets: HashMap::new(),
            inserted_since_prune: 0,
        }
    }

    fn full(&self) -> i64 {
        i64::from(self.burst) * 1000
    }

    fn refilled(&self, bucket: Bucket, now: Timestamp) -> i64 {
        let elapsed = now
            .as_millisecond()
            .saturating_sub(bucket.at.as_millisecond())
            .max(0);
        let gained = elapsed.saturating_mul(1000) / self.refill_millis;
        bucket.milli_tokens.saturating_add(gained).min(self.full())
    }

    /// Takes one token for `enrollment` at `now`: `Ok` to accept the report, or `Err` with the
    /// whole seconds until the next token.
    pub fn take(&mut self, enrollment: &str, now: Timestamp) -> Result<(), u64> {
        let full = self.full();
        // A clock stepping back neither adds tokens nor moves the bucket's time back.
        let now = self.buckets.get(enrollment).map_or(now, |b| now.max(b.at));
        let tokens = match self.buckets.get(enrollment) {
            Some(bucket) => self.refilled(*bucket, now),
            None => {
                self.inserted_since_prune += 1;
                full
            }
        };
        if tokens < 1000 {
            let missing = 1000 - tokens;
            // Whole milliseconds, then whole seconds, rounded up (i64 has no stable div_ceil).
            let wait_millis = (missing * self.refill_millis + 999) / 1000;
            self.buckets.insert(
                enrollment.to_string(),
                Bucket {
                    milli_tokens: tokens,
                    at: now,
                },
            );
            return Err(u64::try_from((wait_millis + 999) / 1000)
                .unwrap_or(1)
                .max(1));
        }
        self.buckets.insert(
            enrollment.to_string(),
            Bucket {
                milli_tokens: tokens - 1000,
                at: now,
            },
        );
        if self.buckets.len() > PRUNE_ABOVE && self.inserted_since_prune > PRUNE_ABOVE / 10 {
            self.prune(now);
        }
        Ok(())
    }

    /// Drops the buckets that are full again.
    pub fn prune(&mut self, now: Timestamp) {
        let full = self.full();
        let buckets = std::mem::take(&mut self.buckets);
        self.buckets = buckets
            .into_iter()
            .filter(|(_, bucket)| self.refilled(*bucket, now) < full)
            .collect();
        self.inserted_since_prune = 0;
    }

    /// Enrollments tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000 + millis).expect("a timestamp")
    }

    #[test]
    fn a_burst_then_one_per_refill_and_enrollments_apart() {
        let mut limiter = RateLimiter::new(3, 1000);
        for _ in 0..3 {
            assert_eq!(limiter.take("A", at(0)), Ok(()));
        }
        assert_eq!(limiter.take("A", at(0)), Err(1));
        assert_eq!(
            limiter.take("B", at(0)),
            Ok(()),
            "another enrollment is not held"
        );
        assert_eq!(limiter.take("A", at(999)), Err(1));
        assert_eq!(limiter.take("A", at(1000)), Ok(()));
        assert_eq!(limiter.take("A", at(1000)), Err(1));
        // A clock going backwards never adds tokens.
        assert_eq!(limiter.take("A", at(-5000)), Err(1));
    }

    #[test]
    fn full_buckets_are_pruned() {
        let mut limiter = RateLimiter::new(2, 1000);
        limiter.take("A", at(0)).expect("allowed");
        limiter.take("B", at(1500)).expect("allowed");
        limiter.prune(at(2000));
        assert_eq!(limiter.tracked(), 1, "A is full again, B is not");
    }
}
