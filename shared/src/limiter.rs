//! The rate limiter as the functions use it: a policy from variables, a subject, and the GCRA
//! state in one of two stores behind one function.
//!
//! - `postgres` (default): `chatedge.rate_limit_check` (migrations/0004), one statement with
//!   the database's clock, exact across any number of edge instances.
//! - `kv`: the `default` key-value store through `wasi:keyvalue` compare-and-swap, for hosts whose
//!   store is shared (Spin's Redis-backed store); the decision is [`crate::ratelimit::decide`]
//!   with this instance's clock.

use crate::ratelimit::{decide, default_policy, Limit, Subject, Verdict};
use crate::spin::{required_variable, variable};
use crate::ApiError;
use crate::ErrorCode;
use spin_sdk::pg4::{Connection, DbValue, ParameterValue};
use spin_sdk::wit::wasi::keyvalue::{atomics, store};

/// How many compare-and-swap rounds a contended KV check may take before it gives up.
const MAX_CAS_ROUNDS: usize = 64;

const CHECK: &str =
    "select allowed, remaining, reset_after_ns, retry_after_ns from chatedge.rate_limit_check($1, $2, $3, $4)";

/// The limit of policy `name`: variable `ratelimit_<name>`, else the built-in default.
pub fn policy_limit(name: &str) -> Result<Limit, ApiError> {
    let spec = variable(&format!("ratelimit_{name}"))
        .or_else(|| default_policy(name).map(str::to_owned))
        .ok_or_else(|| ApiError::internal(format!("no rate-limit policy '{name}'")))?;
    Limit::parse(&spec).map_err(|e| ApiError::internal(format!("server misconfigured: ratelimit_{name}: {e}")))
}

/// Checks `cost` units of policy `name` for `subject`. Admitted: the verdict (its headers go on
/// the response). Refused: the 429. Store unreachable: 503, unless the policy is listed in
/// `ratelimit_fail_open` (comma separated, `all` for every policy; default `api`), in which case
/// the request passes unlimited (and unlabelled). Expensive routes (chat, code) fail closed.
pub fn enforce(name: &str, subject: &Subject, cost: u64) -> Result<Option<Verdict>, ApiError> {
    let limit = policy_limit(name)?;
    match check(name, limit, &format!("{name}:{}", subject.0), cost) {
        Ok(v) => {
            crate::metrics::emit(&crate::metrics::Event::RateLimit { policy: name.to_owned(), admitted: v.allowed });
            if v.allowed {
                Ok(Some(v))
            } else {
                Err(v.rejection())
            }
        }
        Err(reason) => {
            eprintln!("rate limiter unavailable ({name}): {reason}");
            let open = variable("ratelimit_fail_open").unwrap_or_else(|| "api".to_owned());
            if open.split(',').map(str::trim).any(|p| p == name || p == "all") {
                Ok(None)
            } else {
                Err(ApiError::unavailable(
                    ErrorCode::RateLimiterUnavailable,
                    "the rate limiter is unavailable; retry shortly",
                ))
            }
        }
    }
}

/// The current state of policy `name` for `subject` without consuming anything.
pub fn peek(name: &str, subject: &Subject) -> Result<Verdict, ApiError> {
    let limit = policy_limit(name)?;
    check(name, limit, &format!("{name}:{}", subject.0), 0)
        .map_err(|_| ApiError::unavailable(ErrorCode::RateLimiterUnavailable, "the rate limiter is unavailable"))
}

/// The current state of several policies for `subject` without consuming anything: one
/// statement on the `postgres` backend, one read per policy on `kv`.
pub fn peek_many(names: &[&str], subject: &Subject) -> Result<Vec<Verdict>, ApiError> {
    let unavailable = || ApiError::unavailable(ErrorCode::RateLimiterUnavailable, "the rate limiter is unavailable");
    let limits = names.iter().map(|n| policy_limit(n).map(|l| (*n, l))).collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<String> = limits.iter().map(|(n, _)| format!("{n}:{}", subject.0)).collect();
    match variable("ratelimit_backend").as_deref() {
        Some("kv") => {
            limits.iter().zip(&keys).map(|((n, l), k)| check(n, *l, k, 0).map_err(|_| unavailable())).collect()
        }
        None | Some("postgres") => {
            let url = required_variable("db_url")?;
            let conn = Connection::open(&url).map_err(|_| unavailable())?;
            let ns = |f: fn(&Limit) -> u64| {
                ParameterValue::ArrayInt64(limits.iter().map(|(_, l)| Some(f(l).min(i64::MAX as u64) as i64)).collect())
            };
            let rows = conn
                .query(
                    "select remaining, reset_after_ns from chatedge.rate_limit_peek($1, $2, $3) order by ord",
                    &[
                        ParameterValue::ArrayStr(keys.iter().cloned().map(Some).collect()),
                        ns(Limit::emission_ns),
                        ns(Limit::tolerance_ns),
                    ],
                )
                .map_err(|e| unavailable().logged(format!("{e:?}")))?;
            if rows.rows.len() != limits.len() {
                return Err(unavailable().logged("rate_limit_peek returned the wrong number of rows"));
            }
            limits
                .iter()
                .zip(&rows.rows)
                .map(|((name, limit), row)| {
                    Ok(Verdict {
                        policy: (*name).to_owned(),
                        limit: *limit,
                        allowed: true,
                        remaining: int(row.first()).map_err(|e| unavailable().logged(e))?,
                        reset_after_ns: int(row.get(1)).map_err(|e| unavailable().logged(e))?,
                        retry_after_ns: 0,
                    })
                })
                .collect()
        }
        Some(other) => Err(ApiError::internal(format!("unknown ratelimit_backend '{other}'"))),
    }
}

/// One decision against the configured store (`ratelimit_backend`: `postgres` or `kv`).
pub fn check(policy: &str, limit: Limit, key: &str, cost: u64) -> Result<Verdict, String> {
    let (allowed, remaining, reset_after_ns, retry_after_ns) = match variable("ratelimit_backend").as_deref() {
        Some("kv") => check_kv(limit, key, cost)?,
        None | Some("postgres") => check_postgres(limit, key, cost)?,
        Some(other) => return Err(format!("unknown ratelimit_backend '{other}'")),
    };
    Ok(Verdict { policy: policy.to_owned(), limit, allowed, remaining, reset_after_ns, retry_after_ns })
}

fn int(v: Option<&DbValue>) -> Result<u64, String> {
    match v {
        Some(DbValue::Int64(n)) => Ok((*n).max(0) as u64),
        other => Err(format!("unexpected column {other:?}")),
    }
}

fn check_postgres(limit: Limit, key: &str, cost: u64) -> Result<(bool, u64, u64, u64), String> {
    let url = required_variable("db_url").map_err(|e| e.message)?;
    let conn = Connection::open(&url).map_err(|e| format!("{e:?}"))?;
    let rows = conn
        .query(
            CHECK,
            &[
                ParameterValue::Str(key.to_owned()),
                ParameterValue::Int64(limit.emission_ns().min(i64::MAX as u64) as i64),
                ParameterValue::Int64(limit.tolerance_ns().min(i64::MAX as u64) as i64),
                ParameterValue::Int64(cost.min(i64::MAX as u64) as i64),
            ],
        )
        .map_err(|e| format!("{e:?}"))?;
    let row = rows.rows.first().ok_or("no row")?;
    let allowed = matches!(row.first(), Some(DbValue::Boolean(true)));
    Ok((allowed, int(row.get(1))?, int(row.get(2))?, int(row.get(3))?))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn check_kv(limit: Limit, key: &str, cost: u64) -> Result<(bool, u64, u64, u64), String> {
    let bucket = store::open("default").map_err(|e| format!("open: {e:?}"))?;
    let key = format!("ratelimit:{key}");
    for _ in 0..MAX_CAS_ROUNDS {
        let cas = atomics::Cas::new(&bucket, &key).map_err(|e| format!("cas: {e:?}"))?;
        let stored = cas
            .current()
            .map_err(|e| format!("get: {e:?}"))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        let d = decide(stored, now_ns(), &limit, cost);
        if !d.allowed || cost == 0 {
            return Ok((d.allowed, d.remaining, d.reset_after_ns, d.retry_after_ns));
        }
        match atomics::swap(cas, &d.tat_ns.to_be_bytes()) {
            Ok(()) => return Ok((true, d.remaining, d.reset_after_ns, 0)),
            Err(atomics::CasError::CasFailed(_)) => continue, // someone else moved the TAT: decide again
            Err(atomics::CasError::StoreError(e)) => return Err(format!("swap: {e:?}")),
        }
    }
    Err("too much contention on one key".into())
}
