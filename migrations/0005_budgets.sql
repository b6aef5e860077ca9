-- Daily spend caps per user (tokens and USD) that concurrent requests cannot overrun: a chat
-- reserves an upper bound of its cost before calling the provider, under a row lock, and settles
-- with the real usage afterwards (releasing the rest). Used + reserved never passes the cap, and
-- a settled cost never exceeds its reservation, so neither can the spend.

create table chatedge.budget_days (
  user_id uuid not null references auth.users (id) on delete cascade,
  day date not null,
  tokens_used bigint not null default 0 check (tokens_used >= 0),
  usd_used numeric(14, 8) not null default 0 check (usd_used >= 0),
  tokens_reserved bigint not null default 0 check (tokens_reserved >= 0),
  usd_reserved numeric(14, 8) not null default 0 check (usd_reserved >= 0),
  primary key (user_id, day)
);
revoke all on chatedge.budget_days from public;

-- Reserves (p_tokens, p_usd) of today's budget (UTC). A null cap is no cap.
create function chatedge.budget_reserve(
  p_user uuid, p_tokens bigint, p_usd numeric, p_cap_tokens bigint, p_cap_usd numeric
) returns table (allowed boolean, day date, tokens_used bigint, usd_used numeric,
                 tokens_reserved bigint, usd_reserved numeric)
language plpgsql security definer set search_path = '' as $$
declare
  v_day date := (now() at time zone 'utc')::date;
  v chatedge.budget_days;
begin
  if p_user is null or p_tokens is null or p_tokens < 0 or p_usd is null or p_usd < 0 then
    raise exception 'budget_reserve: invalid arguments' using errcode = '22023';
  end if;
  insert into chatedge.budget_days (user_id, day) values (p_user, v_day) on conflict do nothing;
  select * into v from chatedge.budget_days b where b.user_id = p_user and b.day = v_day for update;
  if (p_cap_tokens is not null and v.tokens_used + v.tokens_reserved + p_tokens > p_cap_tokens)
     or (p_cap_usd is not null and v.usd_used + v.usd_reserved + p_usd > p_cap_usd) then
    return query select false, v_day, v.tokens_used, v.usd_used, v.tokens_reserved, v.usd_reserved;
    return;
  end if;
  update chatedge.budget_days b
     set tokens_reserved = b.tokens_reserved + p_tokens, usd_reserved = b.usd_reserved + p_usd
   where b.user_id = p_user and b.day = v_day
  returning * into v;
  return query select true, v_day, v.tokens_used, v.usd_used, v.tokens_reserved, v.usd_reserved;
end
$$;

-- Turns a reservation into real usage: releases (p_reserved_*), records (p_tokens, p_usd).
create function chatedge.budget_settle(
  p_user uuid, p_day date, p_reserved_tokens bigint, p_reserved_usd numeric, p_tokens bigint, p_usd numeric
) returns void
language sql security definer set search_path = '' as $$
  update chatedge.budget_days b
     set tokens_reserved = greatest(b.tokens_reserved - p_reserved_tokens, 0),
         usd_reserved = greatest(b.usd_reserved - p_reserved_usd, 0),
         tokens_used = b.tokens_used + greatest(p_tokens, 0),
         usd_used = b.usd_used + greatest(p_usd, 0)
   where b.user_id = p_user and b.day = p_day
$$;

-- Today's row for a user, for the rate-limit function's GET.
create function chatedge.budget_status(p_user uuid)
returns table (day date, tokens_used bigint, usd_used numeric, tokens_reserved bigint, usd_reserved numeric)
language sql stable security definer set search_path = '' as $$
  select b.day, b.tokens_used, b.usd_used, b.tokens_reserved, b.usd_reserved from chatedge.budget_days b
   where b.user_id = p_user and b.day = (now() at time zone 'utc')::date
$$;

revoke all on function chatedge.budget_reserve(uuid, bigint, numeric, bigint, numeric) from public;
revoke all on function chatedge.budget_settle(uuid, date, bigint, numeric, bigint, numeric) from public;
revoke all on function chatedge.budget_status(uuid) from public;
-- The functions' login role calls these outside the request's RLS transaction; users cannot.
grant execute on function chatedge.budget_reserve(uuid, bigint, numeric, bigint, numeric) to service_role, authenticator;
grant execute on function chatedge.budget_settle(uuid, date, bigint, numeric, bigint, numeric) to service_role, authenticator;
grant execute on function chatedge.budget_status(uuid) to service_role, authenticator;
