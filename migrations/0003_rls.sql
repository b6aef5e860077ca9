-- Row-level security: every table on, policies by (select auth.uid()) (evaluated once per
-- statement, not per row). api_usage is written only by the service role.

grant usage on schema public to anon, authenticated, service_role;

do $$
declare t text;
begin
  foreach t in array array['profiles', 'conversations', 'messages', 'code_executions', 'file_uploads',
                           'visualizations', 'user_sessions', 'api_usage'] loop
    execute format('alter table public.%I enable row level security', t);
    execute format('grant all on public.%I to service_role', t);
  end loop;
end
$$;

grant select, update on public.profiles to authenticated;
create policy profiles_select_own on public.profiles for select to authenticated
  using (id = (select auth.uid()));
create policy profiles_update_own on public.profiles for update to authenticated
  using (id = (select auth.uid())) with check (id = (select auth.uid()));

-- Tables a user owns outright: all four operations on their own rows.
do $$
declare t text;
begin
  foreach t in array array['conversations', 'code_executions', 'file_uploads', 'visualizations', 'user_sessions'] loop
    execute format('grant select, insert, update, delete on public.%I to authenticated', t);
    execute format('create policy %I on public.%I for select to authenticated using (user_id = (select auth.uid()))', t || '_select_own', t);
    execute format('create policy %I on public.%I for insert to authenticated with check (user_id = (select auth.uid()))', t || '_insert_own', t);
    execute format('create policy %I on public.%I for update to authenticated using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()))', t || '_update_own', t);
    execute format('create policy %I on public.%I for delete to authenticated using (user_id = (select auth.uid()))', t || '_delete_own', t);
  end loop;
end
$$;

-- Messages: a user's own, and only inside a conversation that is theirs.
grant select, insert, update, delete on public.messages to authenticated;
create policy messages_select_own on public.messages for select to authenticated
  using (user_id = (select auth.uid()));
create policy messages_insert_own on public.messages for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and exists (select 1 from public.conversations c
                where c.id = conversation_id and c.user_id = (select auth.uid()))
  );
create policy messages_update_own on public.messages for update to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));
create policy messages_delete_own on public.messages for delete to authenticated
  using (user_id = (select auth.uid()));

-- Usage: users read their own; only the service role writes.
grant select on public.api_usage to authenticated;
create policy api_usage_select_own on public.api_usage for select to authenticated
  using (user_id = (select auth.uid()));
