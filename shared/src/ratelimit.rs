//! GCRA (generic cell rate algorithm) as a pure function of (stored state, now, limit, cost).
//!
//! The state is one integer, the theoretical arrival time (TAT) in nanoseconds; no clock is read
//! here, so the same decision is reproducible in tests and identical whichever backend stores
//! the TAT (the Postgres function in `migrations/0004_rate_limits.sql` computes the same thing
//! under a row lock, with the database's clock).

use crate::ErrorCode;

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

impl Limit {
    /// Parses `<count>/<period>[:<burst>]`: `20/min`, `20/min:5`, `30/h`, `10/90s:3`, `1000/d`.
    /// The burst defaults to 1.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("rate limit '{spec}' must look like 20/min:5 (count/period[:burst])");
        let (rate_part, burst) = match spec.trim().split_once(':') {
            Some((r, b)) => (r, b.trim().parse::<u64>().map_err(|_| bad())?),
            None => (spec.trim(), 1),
        };
        let (count, period) = rate_part.split_once('/').ok_or_else(bad)?;
        let rate = count.trim().parse::<u64>().map_err(|_| bad())?;
        let period = period.trim();
        let digits: String = period.chars().take_while(|c| c.is_ascii_digit()).collect();
        let n = if digits.is_empty() { 1 } else { digits.parse::<u64>().map_err(|_| bad())? };
        let unit_s = match &period[digits.len()..] {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if rate == 0 || burst == 0 || n == 0 {
            return Err(bad());
        }
        Ok(Limit { rate, period_ns: n * unit_s * 1_000_000_000, burst })
    }

    /// The period in whole seconds (the `w` of `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        ceil_secs(self.period_ns)
    }
}

/// The named policies and their defaults; each is overridden by the variable
/// `ratelimit_<name>` (e.g. `ratelimit_chat = "20/min:5"`).
pub const DEFAULT_POLICIES: &[(&str, &str)] = &[
    // Chat completions per signed-in user.
    ("chat", "20/min:5"),
    // Supabase anonymous sign-ins (public visitors): stricter.
    ("chat_anonymous", "5/min:2"),
    // Chats paid with the caller's own provider key (x-provider-api-key), per key.
    ("chat_byok", "60/min:10"),
    // Code executions per user.
    ("code", "10/min:3"),
    // Uploads per user.
    ("upload", "30/h:10"),
    // Everything else (conversations CRUD) per user.
    ("api", "300/min:100"),
];

/// The default spec of a policy.
pub fn default_policy(name: &str) -> Option<&'static str> {
    DEFAULT_POLICIES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Who a check counts against, as a key component: `user:<id>`, `anon:<id>`, `ip:<addr>`,
/// `byok:<hash>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub String);

/// The client address for anonymous limits: Spin's `spin-client-addr` (host:port), or, behind
/// `trusted_proxies` proxies that each append the address they received from to
/// `X-Forwarded-For`, the entry the outermost trusted one appended (counted from the right, so
/// whatever the client wrote itself on the left is never taken).
pub fn client_ip(
    spin_client_addr: Option<&str>,
    forwarded_for: Option<&str>,
    trusted_proxies: usize,
) -> Option<String> {
    if trusted_proxies > 0 {
        let hops: Vec<&str> =
            forwarded_for.unwrap_or_default().split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
        if let Some(hop) = hops.len().checked_sub(trusted_proxies).and_then(|i| hops.get(i)).or(hops.first()) {
            if let Ok(ip) = hop.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
                return Some(ip.to_string());
            }
        }
    }
    let addr = spin_client_addr?.trim();
    // "[::1]:5000" or "1.2.3.4:5000" -> the address alone.
    let ip = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.is_empty() => host,
        _ => addr,
    };
    Some(ip.trim_start_matches('[').trim_end_matches(']').to_owned())
}

/// How many proxies in front of the app append to `X-Forwarded-For`: the variable
/// `ratelimit_trusted_proxies` (a count above 0), else 1 when the older
/// `ratelimit_trust_forwarded_for` is `true`, else 0 (the header is ignored). The manifest's
/// default count is `0`, so the older flag alone still takes effect.
pub fn trusted_proxies(count: Option<&str>, legacy_flag: Option<&str>) -> usize {
    let legacy = if legacy_flag.is_some_and(|v| v.trim() == "true") { 1 } else { 0 };
    count.and_then(|c| c.trim().parse().ok()).filter(|n| *n > 0).unwrap_or(legacy)
}

impl Subject {
    /// A signed-in user.
    pub fn user(id: &str) -> Self {
        Subject(format!("user:{id}"))
    }

    /// A client address. IPv6 clients are keyed by their /64 (one host usually holds a whole
    /// /64, so per-/128 keys would hand it 2^64 buckets); IPv4-mapped addresses count as IPv4.
    pub fn ip(addr: &str) -> Self {
        match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Subject(format!("ip:{v4}")),
                None => {
                    let s = v6.segments();
                    Subject(format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
                }
            },
            Ok(std::net::IpAddr::V4(v4)) => Subject(format!("ip:{v4}")),
            Err(_) => Subject(format!("ip:{addr}")),
        }
    }

    /// A caller's own provider key, by a digest (the key itself is never stored).
    pub fn provider_key(key: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.trim().as_bytes());
        Subject(format!("byok:{}", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>()))
    }
}

/// A checked request's state for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Policy name.
    pub policy: String,
    /// Its limit.
    pub limit: Limit,
    /// Admitted.
    pub allowed: bool,
    /// Requests still admissible now.
    pub remaining: u64,
    /// Until back to a full burst.
    pub reset_after_ns: u64,
    /// When refused, the wait until admission.
    pub retry_after_ns: u64,
}

impl Verdict {
    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and the
    /// `x-ratelimit-*` trio, on admitted and refused responses alike.
    pub fn headers(&self) -> Vec<(String, String)> {
        let reset = ceil_secs(self.reset_after_ns);
        vec![
            (
                "ratelimit-policy".into(),
                format!("\"{}\";q={};w={}", self.policy, self.limit.rate, self.limit.window_secs()),
            ),
            ("ratelimit".into(), format!("\"{}\";r={};t={}", self.policy, self.remaining, reset)),
            ("x-ratelimit-limit".into(), self.limit.rate.to_string()),
            ("x-ratelimit-remaining".into(), self.remaining.to_string()),
            ("x-ratelimit-reset".into(), reset.to_string()),
        ]
    }

    /// The 429 for a refused request: envelope, `Retry-After` and the headers above.
    pub fn rejection(&self) -> crate::ApiError {
        let retry = ceil_secs(self.retry_after_ns).max(1);
        let mut e = crate::ApiError::new(
            429,
            ErrorCode::RateLimited,
            format!("rate limit '{}' exceeded: retry in {retry} s", self.policy),
        )
        .with_detail("policy", &self.policy)
        .with_detail("retry_after_ms", self.retry_after_ns.div_ceil(1_000_000))
        .with_header("retry-after", retry.to_string());
        for (n, v) in self.headers() {
            e = e.with_header(&n, v);
        }
        e
    }
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

    #[test]
    fn limits_parse_from_variables() {
        assert_eq!(Limit::parse("20/min:5").unwrap(), Limit::per_minute(20, 5));
        assert_eq!(Limit::parse("30/h").unwrap(), Limit::per_hour(30, 1));
        assert_eq!(Limit::parse(" 10/90s:3 ").unwrap(), Limit { rate: 10, period_ns: 90 * SEC, burst: 3 });
        assert_eq!(Limit::parse("1000/d").unwrap().window_secs(), 86_400);
        for bad in ["", "20", "20/fortnight", "0/min", "5/min:0", "x/min", "5/min:y"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
        for (name, spec) in DEFAULT_POLICIES {
            assert!(Limit::parse(spec).is_ok(), "{name}");
        }
    }

    #[test]
    fn client_ip_takes_the_hop_the_trusted_proxies_appended() {
        assert_eq!(client_ip(Some("10.0.0.5:41234"), Some("1.2.3.4"), 0).as_deref(), Some("10.0.0.5"));
        // One proxy: it appended the real client last; what the client sent first is ignored.
        assert_eq!(client_ip(Some("10.0.0.5:41234"), Some("6.6.6.6, 1.2.3.4"), 1).as_deref(), Some("1.2.3.4"));
        assert_eq!(client_ip(Some("10.0.0.5:1"), Some("6.6.6.6, 1.2.3.4, 10.0.0.9"), 2).as_deref(), Some("1.2.3.4"));
        assert_eq!(client_ip(Some("10.0.0.5:1"), Some("1.2.3.4"), 3).as_deref(), Some("1.2.3.4"));
        assert_eq!(client_ip(Some("10.0.0.5:1"), Some("not-an-ip"), 1).as_deref(), Some("10.0.0.5"));
        assert_eq!(client_ip(Some("[::1]:5000"), None, 1).as_deref(), Some("::1"));
        assert_eq!(client_ip(None, None, 0), None);
        assert_eq!(trusted_proxies(None, Some("true")), 1);
        assert_eq!(trusted_proxies(Some("2"), Some("true")), 2);
        assert_eq!(trusted_proxies(None, None), 0);
        assert_eq!(
            trusted_proxies(Some("0"), Some("true")),
            1,
            "the manifest's default count leaves the flag in force"
        );
        assert_eq!(trusted_proxies(Some("0"), Some("false")), 0);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        assert_eq!(Subject::ip("2001:db8:1:2:aaaa::1"), Subject::ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(Subject::ip("2001:db8:1:2::1"), Subject::ip("2001:db8:1:3::1"));
        assert_eq!(Subject::ip("::ffff:1.2.3.4"), Subject::ip("1.2.3.4"));
        assert_ne!(Subject::ip("1.2.3.4"), Subject::ip("1.2.3.5"));
    }

    #[test]
    fn refusal_carries_every_header() {
        let v = Verdict {
            policy: "chat".into(),
            limit: Limit::per_minute(20, 5),
            allowed: false,
            remaining: 0,
            reset_after_ns: 14_500_000_000,
            retry_after_ns: 2_100_000_000,
        };
        let e = v.rejection();
        assert_eq!((e.status, e.code.as_str()), (429, "rate_limited"));
        let h = |n: &str| e.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(h("retry-after"), Some("3"));
        assert_eq!(h("ratelimit-policy"), Some("\"chat\";q=20;w=60"));
        assert_eq!(h("ratelimit"), Some("\"chat\";r=0;t=15"));
        assert_eq!(h("x-ratelimit-limit"), Some("20"));
        assert_eq!(h("x-ratelimit-remaining"), Some("0"));
        assert_eq!(h("x-ratelimit-reset"), Some("15"));
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
