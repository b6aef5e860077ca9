//! GCRA (generic cell rate algorithm) as a pure function of (stored state, now, limit, cost).
//!
//! The state is one integer, the theoretical arrival time (TAT) in nanoseconds; no clock is read
//! here, so the same decision is reproducible in tests and identical whichever backend stores
//! the TAT (the Postgres function in `migrations/0004_rate_limits.sql` computes the same thing
//! under a row lock, with the database's clock).

/// A limit: `rate` requests per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per period.
    pub rate: u64,
    /// Period in nanoseconds.
    pub period_ns: u64,
    /// Requests admitted back to back on a fresh key.
    pub burst: u64,
}

impl Limit {
    /// `rate` per minute with `burst`.
    pub const fn per_minute(rate: u64, burst: u64) -> Self {
        Limit { rate, period_ns: 60_000_000_000, burst }
    }

    /// `rate` per hour with `burst`.
    pub const fn per_hour(rate: u64, burst: u64) -> Self {
        Limit { rate, period_ns: 3_600_000_000_000, burst }
    }

    /// Time between requests at the sustained rate, rounded up so that the rate is never
    /// exceeded by rounding.
    pub fn emission_ns(&self) -> u64 {
        self.period_ns.div_ceil(self.rate.max(1))
    }

    /// How far ahead of `now` the TAT may run: `burst` emission intervals.
    pub fn tolerance_ns(&self) -> u64 {
        self.emission_ns().saturating_mul(self.burst.max(1))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted.
    pub allowed: bool,
    /// TAT to store (unchanged when refused).
    pub tat_ns: u64,
    /// Requests that could still be admitted right now.
    pub remaining: u64,
    /// Until the key is back to a full burst.
    pub reset_after_ns: u64,
    /// When refused: the wait after which this request would be admitted.
    pub retry_after_ns: u64,
}

/// Decides a request of `cost` at `now_ns` against `limit`, given the stored TAT (`None` for a
/// fresh key). Integer arithmetic only; saturates instead of overflowing.
pub fn decide(stored_tat_ns: Option<u64>, now_ns: u64, limit: &Limit, cost: u64) -> Decision {
    let t = limit.emission_ns();
    let tau = limit.tolerance_ns();
    let tat = stored_tat_ns.unwrap_or(now_ns).max(now_ns);
    let new_tat = tat.saturating_add(t.saturating_mul(cost));
    // Admitted iff new_tat - tau <= now, i.e. the TAT stays within the tolerance window.
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at > now_ns {
        let debt = tat - now_ns;
        return Decision {
            allowed: false,
            tat_ns: tat,
            remaining: tau.saturating_sub(debt) / t.max(1),
            reset_after_ns: debt,
            retry_after_ns: allow_at - now_ns,
        };
    }
    let debt = new_tat - now_ns;
    Decision {
        allowed: true,
        tat_ns: new_tat,
        remaining: tau.saturating_sub(debt) / t.max(1),
        reset_after_ns: debt,
        retry_after_ns: 0,
    }
}

/// Seconds for headers: rounded up, so a client that waits that long is admitted.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let limit = Limit::per_minute(20, 5); // one every 3 s, 5 at once
        let mut tat = None;
        for i in 0..5 {
            let d = decide(tat, 0, &limit, 1);
            assert!(d.allowed, "burst request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = Some(d.tat_ns);
        }
        let refused = decide(tat, 0, &limit, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, 3 * SEC);
        assert_eq!(refused.tat_ns, tat.unwrap(), "a refusal stores nothing new");
        assert!(decide(tat, 3 * SEC, &limit, 1).allowed);
    }

    #[test]
    fn retry_after_is_exact_to_the_nanosecond() {
        let limit = Limit::per_minute(10, 1);
        let first = decide(None, 1000, &limit, 1);
        let refused = decide(Some(first.tat_ns), 1000, &limit, 1);
        let at = 1000 + refused.retry_after_ns;
        assert!(decide(Some(first.tat_ns), at, &limit, 1).allowed);
        assert!(!decide(Some(first.tat_ns), at - 1, &limit, 1).allowed);
    }

    #[test]
    fn cost_larger_than_burst_is_never_admitted() {
        let limit = Limit::per_minute(60, 5);
        assert!(!decide(None, 0, &limit, 6).allowed);
        assert!(decide(None, 0, &limit, 5).allowed);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let limit = Limit { rate: 1, period_ns: u64::MAX, burst: u64::MAX };
        let d = decide(Some(u64::MAX), u64::MAX, &limit, u64::MAX);
        assert!(d.tat_ns >= u64::MAX - 1 || !d.allowed);
        let zero = Limit { rate: 0, period_ns: 0, burst: 0 };
        let _ = decide(None, 5, &zero, 1);
    }

    proptest! {
        /// Over any request sequence, admitted <= rate x elapsed + burst.
        #[test]
        fn never_admits_more_than_rate_times_elapsed_plus_burst(
            rate in 1u64..100,
            burst in 1u64..20,
            period_s in 1u64..120,
            gaps in prop::collection::vec(0u64..5 * SEC, 1..400),
            costs in prop::collection::vec(1u64..4, 1..400),
        ) {
            let limit = Limit { rate, period_ns: period_s * SEC, burst };
            let (mut now, mut tat, mut admitted) = (0u64, None, 0u64);
            for (gap, cost) in gaps.iter().zip(costs.iter().cycle()) {
                now += gap;
                let d = decide(tat, now, &limit, *cost);
                if d.allowed {
                    admitted += cost;
                    tat = Some(d.tat_ns);
                }
                // admitted <= rate * now / period + burst, kept in integers.
                prop_assert!(admitted * limit.period_ns <= rate * now + burst * limit.period_ns,
                    "admitted {admitted} by t={now}");
            }
        }

        /// retry_after is exact: one request at that instant is admitted, one tick earlier is not.
        #[test]
        fn retry_after_is_exact(rate in 1u64..1000, burst in 1u64..10, period_s in 1u64..3600, start in 0u64..1_000_000 * SEC, used in 0u64..20) {
            let limit = Limit { rate, period_ns: period_s * SEC, burst };
            let mut tat = None;
            for _ in 0..used {
                let d = decide(tat, start, &limit, 1);
                if d.allowed { tat = Some(d.tat_ns); }
            }
            let d = decide(tat, start, &limit, 1);
            if !d.allowed {
                let at = start + d.retry_after_ns;
                prop_assert!(decide(tat, at, &limit, 1).allowed);
                prop_assert!(!decide(tat, at - 1, &limit, 1).allowed);
            }
        }
    }
}
