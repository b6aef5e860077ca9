//! The names of the variables the shared code reads, so each function can say exactly which
//! variables it uses (its `variables()`), and a test can hold spin.toml's
//! `[component.<name>.variables]` to that: Spin has no inheritance of application variables,
//! so every component maps what it reads, and only that.

/// JWT verification (`spin::auth_config`).
pub const AUTH: &[&str] =
    &["supabase_jwt_secret", "supabase_jwks_url", "supabase_jwks", "supabase_jwt_audience", "supabase_jwt_issuer"];
/// The database (the RLS transaction, the limiter's and the budget's statements).
pub const DATABASE: &[&str] = &["db_url"];
/// The limiter, besides one [`policy`] variable per policy a component enforces.
pub const LIMITER: &[&str] = &["ratelimit_backend", "ratelimit_fail_open"];
/// Daily spend budgets (`budget`).
pub const BUDGET: &[&str] = &["budget_daily_tokens", "budget_daily_usd"];

/// The variable holding policy `name`'s limit.
pub fn policy(name: &str) -> String {
    format!("ratelimit_{name}")
}

/// What every function behind sign-in reads: auth, the database and the limiter with `policies`.
pub fn signed_in(policies: &[&str]) -> Vec<String> {
    AUTH.iter()
        .chain(DATABASE)
        .chain(LIMITER)
        .map(|s| (*s).to_owned())
        .chain(policies.iter().map(|p| policy(p)))
        .collect()
}

/// Every name `read` asks for (answered as unset): how a test holds a function's declared list
/// of variables to what its settings reader really reads.
pub fn names_read(read: impl FnOnce(&dyn Fn(&str) -> Option<String>)) -> std::collections::BTreeSet<String> {
    let names = std::cell::RefCell::new(std::collections::BTreeSet::new());
    read(&|name: &str| {
        names.borrow_mut().insert(name.to_owned());
        None
    });
    names.into_inner()
}
