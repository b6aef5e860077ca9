-- Hardening after the security review (issue 12).
--
-- 1. Every policy checks ownership of each row it lets a user point at (a conversation, a
--    message), not just of the row itself.
-- 2. Columns a function vouches for are not writable by users: file_uploads' storage key, size,
--    hash and type (the function inserts those rows as service_role), a message's conversation
--    and author. code_executions is an audit trail: users may read and add, never change.
-- 3. Sizes are bounded by CHECK constraints (NOT VALID: rows already stored are not rechecked,
--    every new or changed row is).
-- 4. Budget reservations are rows of their own, so one that no request settles (a crashed
--    instance) can be found and released; chatedge.maintain() does that, marks assistant rows
--    left `pending` past the stream deadline `incomplete`, and sweeps idle limiter keys. The
--    bundled host calls it every minute; on Spin, schedule it (pg_cron: select
--    chatedge.maintain(360000) every minute).
-- 5. chatedge.rate_limit_peek(): several limits' state in one statement.

-- 1 + 2: messages ------------------------------------------------------------------------------
drop policy messages_update_own on public.messages;
create policy messages_update_own on public.messages for update to authenticated
  using (user_id = (select auth.uid()))
  with check (
    user_id = (select auth.uid())
    and exists (select 1 from public.conversations c
                where c.id = conversation_id and c.user_id = (select auth.uid()))
  );
revoke update on public.messages from authenticated;
grant update (content, status, provider, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,
              tool_calls, metadata) on public.messages to authenticated;

-- A conversation a row may name must be the caller's own (or none).
create function chatedge.owns_conversation(p_conversation uuid) returns boolean
language sql stable security invoker set search_path = '' as $$
  select p_conversation is null
      or exists (select 1 from public.conversations c where c.id = p_conversation and c.user_id = (select auth.uid()))
$$;
grant execute on function chatedge.owns_conversation(uuid) to authenticated, service_role;
grant usage on schema chatedge to authenticated;

-- file_uploads: written by the function (as service_role); users may rename or re-file their own.
drop policy file_uploads_insert_own on public.file_uploads;
drop policy file_uploads_update_own on public.file_uploads;
revoke insert, update on public.file_uploads from authenticated;
grant update (original_name, conversation_id) on public.file_uploads to authenticated;
create policy file_uploads_update_own on public.file_uploads for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()) and chatedge.owns_conversation(conversation_id));

-- code_executions: an audit trail, insert-only for users.
drop policy code_executions_insert_own on public.code_executions;
drop policy code_executions_update_own on public.code_executions;
drop policy code_executions_delete_own on public.code_executions;
revoke update, delete on public.code_executions from authenticated;
create policy code_executions_insert_own on public.code_executions for insert to authenticated
  with check (user_id = (select auth.uid()) and chatedge.owns_conversation(conversation_id));

-- visualizations: the conversation and the message they belong to must be the caller's.
drop policy visualizations_insert_own on public.visualizations;
drop policy visualizations_update_own on public.visualizations;
create policy visualizations_insert_own on public.visualizations for insert to authenticated
  with check (
    user_id = (select auth.uid()) and chatedge.owns_conversation(conversation_id)
    and (message_id is null or exists (select 1 from public.messages m
                                       where m.id = message_id and m.user_id = (select auth.uid())))
  );
create policy visualizations_update_own on public.visualizations for update to authenticated
  using (user_id = (select auth.uid()))
  with check (
    user_id = (select auth.uid()) and chatedge.owns_conversation(conversation_id)
    and (message_id is null or exists (select 1 from public.messages m
                                       where m.id = message_id and m.user_id = (select auth.uid())))
  );

-- 3: sizes ---------------------------------------------------------------------------------------
-- A reply is at most 4 MiB of text and tool arguments (shared::providers::MAX_REPLY_BYTES), so
-- its content fits 4 Mi characters; its tool calls as JSON text may be up to six times that
-- (every argument byte escaped as \u00XX) plus ids and names, hence 32 MiB.
alter table public.messages add constraint messages_content_size
  check (char_length(content) <= 4194304) not valid;
alter table public.messages add constraint messages_tool_calls_size
  check (tool_calls is null or octet_length(tool_calls::text) <= 33554432) not valid;
alter table public.messages add constraint messages_metadata_size
  check (metadata is null or octet_length(metadata::text) <= 65536) not valid;
alter table public.code_executions add constraint code_executions_code_size
  check (octet_length(code) <= 4194304) not valid;
alter table public.code_executions add constraint code_executions_status_size
  check (char_length(status) <= 32) not valid;
alter table public.visualizations add constraint visualizations_spec_size
  check (octet_length(spec::text) <= 1048576) not valid;
alter table public.visualizations add constraint visualizations_kind_size
  check (char_length(kind) <= 64) not valid;
alter table public.user_sessions add constraint user_sessions_user_agent_size
  check (char_length(user_agent) <= 1024) not valid;
alter table public.file_uploads add constraint file_uploads_key_size
  check (char_length(storage_key) <= 300) not valid;
alter table public.file_uploads add constraint file_uploads_mime_size
  check (char_length(mime_type) <= 128) not valid;

-- 4: budget holds, the sweep --------------------------------------------------------------------
create table chatedge.budget_holds (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  day date not null,
  tokens bigint not null check (tokens >= 0),
  usd numeric(14, 8) not null check (usd >= 0),
  created_at timestamptz not null default now()
);
create index budget_holds_created_idx on chatedge.budget_holds (created_at);
revoke all on chatedge.budget_holds from public;

drop function chatedge.budget_reserve(uuid, bigint, numeric, bigint, numeric);
drop function chatedge.budget_settle(uuid, date, bigint, numeric, bigint, numeric);

-- Reserves (p_tokens, p_usd) of today's budget (UTC) as a hold; a null cap is no cap. Returns
-- the hold's id when admitted (null when refused) and where the day stands.
create function chatedge.budget_reserve(
  p_user uuid, p_tokens bigint, p_usd numeric, p_cap_tokens bigint, p_cap_usd numeric
) returns table (allowed boolean, hold_id uuid, day date, tokens_used bigint, usd_used numeric,
                 tokens_reserved bigint, usd_reserved numeric)
language plpgsql security definer set search_path = '' as $$
declare
  v_day date := (now() at time zone 'utc')::date;
  v chatedge.budget_days;
  v_hold uuid;
begin
  if p_user is null or p_tokens is null or p_tokens < 0 or p_usd is null or p_usd < 0 then
    raise exception 'budget_reserve: invalid arguments' using errcode = '22023';
  end if;
  insert into chatedge.budget_days (user_id, day) values (p_user, v_day) on conflict do nothing;
  select * into v from chatedge.budget_days b where b.user_id = p_user and b.day = v_day for update;
  if (p_cap_tokens is not null and v.tokens_used + v.tokens_reserved + p_tokens > p_cap_tokens)
     or (p_cap_usd is not null and v.usd_used + v.usd_reserved + p_usd > p_cap_usd) then
    return query select false, null::uuid, v_day, v.tokens_used, v.usd_used, v.tokens_reserved, v.usd_reserved;
    return;
  end if;
  update chatedge.budget_days b
     set tokens_reserved = b.tokens_reserved + p_tokens, usd_reserved = b.usd_reserved + p_usd
   where b.user_id = p_user and b.day = v_day
  returning * into v;
  insert into chatedge.budget_holds (user_id, day, tokens, usd) values (p_user, v_day, p_tokens, p_usd)
  returning id into v_hold;
  return query select true, v_hold, v_day, v.tokens_used, v.usd_used, v.tokens_reserved, v.usd_reserved;
end
$$;

-- Turns a hold into real usage: releases what it reserved (if the sweep has not already) and
-- records (p_tokens, p_usd) on the hold's day. Returns whether the hold was still there.
create function chatedge.budget_settle(p_hold uuid, p_user uuid, p_day date, p_tokens bigint, p_usd numeric)
returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  v_hold chatedge.budget_holds;
begin
  delete from chatedge.budget_holds h where h.id = p_hold returning * into v_hold;
  update chatedge.budget_days b
     set tokens_reserved = greatest(b.tokens_reserved - coalesce(v_hold.tokens, 0), 0),
         usd_reserved = greatest(b.usd_reserved - coalesce(v_hold.usd, 0), 0),
         tokens_used = b.tokens_used + greatest(p_tokens, 0),
         usd_used = b.usd_used + greatest(p_usd, 0)
   where b.user_id = p_user and b.day = p_day;
  return v_hold.id is not null;
end
$$;

revoke all on function chatedge.budget_reserve(uuid, bigint, numeric, bigint, numeric) from public;
revoke all on function chatedge.budget_settle(uuid, uuid, date, bigint, numeric) from public;
grant execute on function chatedge.budget_reserve(uuid, bigint, numeric, bigint, numeric) to service_role, authenticator;
grant execute on function chatedge.budget_settle(uuid, uuid, date, bigint, numeric) to service_role, authenticator;

-- What no request finished: assistant rows still pending after p_stale_ms (their instance is
-- gone) become `incomplete`, their holds are released, idle limiter keys go. One JSON row.
create function chatedge.maintain(p_stale_ms bigint) returns json
language plpgsql security definer set search_path = '' as $$
declare
  v_cutoff timestamptz := now() - make_interval(secs => greatest(p_stale_ms, 60000) / 1000.0);
  v_messages bigint;
  v_holds bigint;
  v_keys bigint;
begin
  with m as (
    update public.messages
       set status = 'incomplete',
           metadata = coalesce(metadata, '{}'::jsonb) || '{"error": "the exchange never finished"}'::jsonb
     where status = 'pending' and created_at < v_cutoff
    returning 1)
  select count(*) into v_messages from m;
  with h as (delete from chatedge.budget_holds where created_at < v_cutoff returning *),
       r as (select user_id, day, sum(tokens) as tokens, sum(usd) as usd from h group by user_id, day),
       u as (update chatedge.budget_days b
                set tokens_reserved = greatest(b.tokens_reserved - r.tokens, 0),
                    usd_reserved = greatest(b.usd_reserved - r.usd, 0)
               from r where b.user_id = r.user_id and b.day = r.day returning 1)
  select (select count(*) from h) into v_holds;
  select chatedge.rate_limits_sweep() into v_keys;
  return json_build_object('stale_messages', v_messages, 'released_holds', v_holds, 'idle_limiter_keys', v_keys);
end
$$;
revoke all on function chatedge.maintain(bigint) from public;
grant execute on function chatedge.maintain(bigint) to service_role, authenticator;

-- 5: several limits at once ----------------------------------------------------------------------
-- The state of each key (in the order given), without consuming anything: what remains of its
-- burst and until when it is full again. One row per key, a fresh key at its full burst.
create function chatedge.rate_limit_peek(p_keys text[], p_emission_ns bigint[], p_tolerance_ns bigint[])
returns table (ord bigint, remaining bigint, reset_after_ns bigint)
language sql stable security definer set search_path = '' as $$
  with now_ns as (select (extract(epoch from clock_timestamp()) * 1000000)::bigint * 1000 as v),
       k as (select u.key, u.emission, u.tolerance, u.ord
               from unnest(p_keys, p_emission_ns, p_tolerance_ns) with ordinality as u(key, emission, tolerance, ord))
  select k.ord,
         greatest(k.tolerance - greatest(coalesce(r.tat_ns, 0) - n.v, 0), 0) / greatest(k.emission, 1),
         greatest(coalesce(r.tat_ns, 0) - n.v, 0)
    from k cross join now_ns n left join chatedge.rate_limits r on r.key = k.key
   order by k.ord
$$;
revoke all on function chatedge.rate_limit_peek(text[], bigint[], bigint[]) from public;
grant execute on function chatedge.rate_limit_peek(text[], bigint[], bigint[]) to service_role, authenticator;
