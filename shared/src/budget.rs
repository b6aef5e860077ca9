//! Daily spend caps per user: reserve an upper bound before a provider call, settle with the real
//! usage after, release on failure (migrations/0005_budgets.sql). Concurrent requests can never
//! spend past a cap: the reservation is taken under a row lock against used + reserved.

use crate::spin::{required_variable, variable};
use crate::ApiError;
use crate::ErrorCode;
use spin_sdk::pg4::{Connection, DbValue, ParameterValue, RowSet};

/// The caps in force (`budget_daily_tokens`, `budget_daily_usd`); `None` when neither is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    /// Tokens (prompt + completion) per UTC day.
    pub tokens: Option<u64>,
    /// USD per UTC day.
    pub usd: Option<f64>,
}

/// The configured caps, if any.
pub fn caps() -> Result<Option<Caps>, ApiError> {
    let parse_err = |name: &str| ApiError::internal(format!("server misconfigured: {name} must be a number"));
    let tokens = match variable("budget_daily_tokens") {
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| parse_err("budget_daily_tokens"))?),
        None => None,
    };
    let usd = match variable("budget_daily_usd") {
        Some(v) => Some(
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| parse_err("budget_daily_usd"))?,
        ),
        None => None,
    };
    Ok((tokens.is_some() || usd.is_some()).then_some(Caps { tokens, usd }))
}

/// A reservation; released (settled at zero) when dropped unsettled, so no path leaks it (and
/// one whose instance dies is released by `chatedge.maintain`, from its `budget_holds` row).
pub struct Hold {
    hold_id: String,
    user_id: String,
    day: String,
    tokens: u64,
    settled: bool,
}

fn unavailable() -> ApiError {
    ApiError::unavailable(ErrorCode::BudgetUnavailable, "the spend budget could not be checked; retry shortly")
}

/// A USD amount as a `numeric` parameter (Spin's driver takes only a decimal for one).
fn usd_decimal(usd: f64) -> ParameterValue {
    ParameterValue::Decimal(format!("{:.8}", if usd.is_finite() { usd.max(0.0) } else { 0.0 }))
}

fn text(v: Option<&DbValue>) -> String {
    match v {
        Some(DbValue::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int(v: Option<&DbValue>) -> i64 {
    match v {
        Some(DbValue::Int64(n)) => *n,
        _ => 0,
    }
}

fn connect() -> Result<Connection, ApiError> {
    Connection::open(&required_variable("db_url")?).map_err(|_| unavailable())
}

fn seconds_to_utc_midnight() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    86_400 - now % 86_400
}

/// Runs one statement for [`reserve_with`]: a transaction's or a connection's.
pub type Query<'a> = dyn FnMut(&str, &[ParameterValue]) -> Result<RowSet, ApiError> + 'a;

/// A reservation taken inside a transaction that has not committed yet; it becomes a [`Hold`]
/// once that transaction commits (a rolled-back reservation never existed, so nothing must be
/// released for it).
pub struct Reserved {
    hold_id: String,
    user_id: String,
    day: String,
    tokens: u64,
}

impl Reserved {
    /// The reservation's transaction committed: from now on it must be settled or released.
    pub fn committed(self) -> Hold {
        Hold { hold_id: self.hold_id, user_id: self.user_id, day: self.day, tokens: self.tokens, settled: false }
    }
}

/// Reserves `tokens` / `usd` of `user_id`'s day through `query`, which must run as a role
/// allowed to call `chatedge.budget_reserve` (the login role or `service_role`). Refused: 429
/// `budget_exceeded` with a Retry-After until the day turns (UTC) and where the budget stands.
pub fn reserve_with(
    query: &mut Query<'_>,
    user_id: &str,
    caps: Caps,
    tokens: u64,
    usd: f64,
) -> Result<Reserved, ApiError> {
    let rows = query(
        "select allowed, day::text, tokens_used, usd_used::text, tokens_reserved, usd_reserved::text, hold_id::text \
         from chatedge.budget_reserve($1, $2, $3, $4, $5)",
        &[
            ParameterValue::Uuid(user_id.to_owned()),
            ParameterValue::Int64(tokens.min(i64::MAX as u64) as i64),
            usd_decimal(usd),
            caps.tokens.map(|t| ParameterValue::Int64(t.min(i64::MAX as u64) as i64)).unwrap_or(ParameterValue::DbNull),
            caps.usd.map(usd_decimal).unwrap_or(ParameterValue::DbNull),
        ],
    )?;
    let row = rows.rows.first().ok_or_else(unavailable)?;
    let day = text(row.get(1));
    if !matches!(row.first(), Some(DbValue::Boolean(true))) {
        let retry = seconds_to_utc_midnight();
        return Err(ApiError::new(
            429,
            ErrorCode::BudgetExceeded,
            "today's spend budget is used up; it resets at 00:00 UTC",
        )
        .with_detail("day", &day)
        .with_detail("tokens_used", int(row.get(2)))
        .with_detail("tokens_reserved", int(row.get(4)))
        .with_detail("tokens_cap", caps.tokens)
        .with_detail("usd_used", text(row.get(3)))
        .with_detail("usd_cap", caps.usd)
        .with_detail("requested_tokens", tokens)
        .with_header("retry-after", retry.to_string()));
    }
    Ok(Reserved { hold_id: text(row.get(6)), user_id: user_id.to_owned(), day, tokens })
}

/// Reserves on a connection of its own (one autocommit statement). Only for callers that hold
/// no other pooled connection at the time: a second one per request can exhaust the pool.
pub fn reserve(user_id: &str, caps: Caps, tokens: u64, usd: f64) -> Result<Hold, ApiError> {
    let conn = connect()?;
    let mut query = |sql: &str, params: &[ParameterValue]| {
        conn.query(sql, params).map_err(|e| {
            eprintln!("budget: {e:?}");
            unavailable()
        })
    };
    Ok(reserve_with(&mut query, user_id, caps, tokens, usd)?.committed())
}

impl Hold {
    /// The statement and parameters that settle this hold with the real usage, for the caller to
    /// run inside its own transaction (atomic with the usage rows). Call [`Hold::settled`] after
    /// that transaction commits.
    pub fn settle_statement(&self, tokens: u64, usd: f64) -> (&'static str, Vec<ParameterValue>) {
        (
            // `$3::text::date`: the day travels as text (the driver has no date-from-text), cast
            // by the statement.
            "select chatedge.budget_settle($1, $2, $3::text::date, $4, $5)",
            vec![
                ParameterValue::Uuid(self.hold_id.clone()),
                ParameterValue::Uuid(self.user_id.clone()),
                ParameterValue::Str(self.day.clone()),
                ParameterValue::Int64(tokens.min(i64::MAX as u64) as i64),
                usd_decimal(usd),
            ],
        )
    }

    /// Marks the hold settled (its statement committed).
    pub fn settled(&mut self) {
        self.settled = true;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (sql, params) = self.settle_statement(0, 0.0);
        let released = connect().ok().map(|c| c.execute(sql, &params).is_ok());
        if released != Some(true) {
            eprintln!("budget: could not release a reservation of {} tokens", self.tokens);
        }
    }
}

/// Today's budget of `user_id` for display: caps, used and reserved.
pub fn status(user_id: &str) -> Result<serde_json::Value, ApiError> {
    let caps = caps()?;
    let conn = connect()?;
    // Aggregated into one row: a query with no rows never returns on Spin 4.0.2 (its
    // spin:postgres@4 waits for the columns, sent with the first row).
    let rows = conn
        .query(
            "select max(s.day)::text, coalesce(max(s.tokens_used), 0)::int8, coalesce(max(s.usd_used), 0)::text, \
             coalesce(max(s.tokens_reserved), 0)::int8, coalesce(max(s.usd_reserved), 0)::text, count(*) \
             from chatedge.budget_status($1) s",
            &[ParameterValue::Uuid(user_id.to_owned())],
        )
        .map_err(|e| unavailable().logged(format!("{e:?}")))?;
    let row = rows.rows.first().filter(|r| matches!(r.get(5), Some(DbValue::Int64(n)) if *n > 0));
    Ok(serde_json::json!({
        "tokens_cap": caps.and_then(|c| c.tokens),
        "usd_cap": caps.and_then(|c| c.usd),
        "tokens_used": row.map(|r| int(r.get(1))).unwrap_or(0),
        "usd_used": row.map(|r| text(r.get(2))).unwrap_or_else(|| "0.00000000".into()),
        "tokens_reserved": row.map(|r| int(r.get(3))).unwrap_or(0),
        "resets_in_seconds": seconds_to_utc_midnight(),
    }))
}
