-- Rate limiting, exact across any number of edge instances: one GCRA state (the theoretical
-- arrival time, ns) per key, updated under a row lock by one function call (one round trip),
-- with the database's clock. The same algorithm as shared/src/ratelimit.rs.

create table chatedge.rate_limits (
  key text primary key check (char_length(key) <= 512),
  tat_ns bigint not null,
  updated_at timestamptz not null default now()
);
-- Nobody reads or writes the table directly; only the function below does.
revoke all on chatedge.rate_limits from public;

create function chatedge.rate_limit_check(
  p_key text,
  p_emission_ns bigint,   -- period / rate, rounded up
  p_tolerance_ns bigint,  -- emission * burst
  p_cost bigint default 1
) returns table (allowed boolean, remaining bigint, reset_after_ns bigint, retry_after_ns bigint)
language plpgsql security definer set search_path = '' as $$
declare
  v_t bigint := greatest(p_emission_ns, 1);
  v_now bigint;
  v_tat bigint;
  v_new bigint;
  v_allow_at bigint;
begin
  if p_key is null or p_cost is null or p_cost < 0 or p_tolerance_ns is null or p_tolerance_ns < 0 then
    raise exception 'rate_limit_check: invalid arguments' using errcode = '22023';
  end if;
  -- Limiter state need not wait for the WAL flush: a crash can at most forget the last few
  -- milliseconds of decisions. (Transaction-local; the caller's own data is unaffected when it
  -- runs this in a transaction of its own, as the functions do.)
  perform set_config('synchronous_commit', 'off', true);
  insert into chatedge.rate_limits (key, tat_ns) values (p_key, 0) on conflict (key) do nothing;
  -- The lock serializes every check of this key; the clock is read after it is held, so
  -- decisions on one key see non-decreasing times.
  select r.tat_ns into v_tat from chatedge.rate_limits r where r.key = p_key for update;
  v_now := (extract(epoch from clock_timestamp()) * 1000000)::bigint * 1000;
  v_tat := greatest(v_tat, v_now);
  v_new := v_tat + v_t * p_cost;
  v_allow_at := v_new - p_tolerance_ns;
  if v_allow_at > v_now then
    return query select false, greatest(p_tolerance_ns - (v_tat - v_now), 0) / v_t, v_tat - v_now, v_allow_at - v_now;
  else
    update chatedge.rate_limits set tat_ns = v_new, updated_at = now() where key = p_key;
    return query select true, greatest(p_tolerance_ns - (v_new - v_now), 0) / v_t, v_new - v_now, 0::bigint;
  end if;
end
$$;

revoke all on function chatedge.rate_limit_check(text, bigint, bigint, bigint) from public;
grant usage on schema chatedge to service_role, authenticator;
-- authenticator (the functions' login role, as PostgREST's) may call it directly, before the
-- request's RLS transaction, so a check costs one statement.
grant execute on function chatedge.rate_limit_check(text, bigint, bigint, bigint) to service_role, authenticator;

-- Keys idle for a day hold no information (their TAT is in the past): sweep them.
create function chatedge.rate_limits_sweep() returns bigint
language sql security definer set search_path = '' as $$
  with d as (delete from chatedge.rate_limits where updated_at < now() - interval '1 day' returning 1)
  select count(*) from d
$$;
revoke all on function chatedge.rate_limits_sweep() from public;
grant execute on function chatedge.rate_limits_sweep() to service_role;
