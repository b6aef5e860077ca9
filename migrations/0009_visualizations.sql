-- Charts kept (issue 17): every image an execution leaves in /out is stored in the upload
-- bucket under the user's prefix, and a visualizations row records it beside its execution.
--
-- code-execution writes the execution and its visualizations in one transaction, as the user
-- (RLS), after the objects are stored; a failed transaction removes the objects again.

alter table public.visualizations
  add column execution_id uuid references public.code_executions (id) on delete cascade,
  add column storage_key text unique check (char_length(storage_key) <= 300),
  add column mime_type text check (char_length(mime_type) <= 100),
  add column size_bytes bigint check (size_bytes >= 0);
create index visualizations_execution_idx on public.visualizations (execution_id);

-- Executions in a session (issue 17) name it: the sandbox's id, kept only while it is live.
alter table public.code_executions
  add column session_id text check (char_length(session_id) <= 64);

-- The execution must be the caller's too.
drop policy visualizations_insert_own on public.visualizations;
create policy visualizations_insert_own on public.visualizations for insert to authenticated
  with check (
    user_id = (select auth.uid()) and chatedge.owns_conversation(conversation_id)
    and (message_id is null or exists (select 1 from public.messages m
                                       where m.id = message_id and m.user_id = (select auth.uid())))
    and (execution_id is null or exists (select 1 from public.code_executions e
                                         where e.id = execution_id and e.user_id = (select auth.uid())))
  );

-- What a row points at is fixed once written: users may relabel a chart (kind, spec) or move it
-- to another of their conversations and messages, never repoint its object or execution.
revoke update on public.visualizations from authenticated;
grant update (kind, spec, conversation_id, message_id) on public.visualizations to authenticated;
