-- The application schema (seed 001), with the indexes its queries use.

-- gen_random_uuid() is built in from Postgres 13; older servers need pgcrypto (which a server
-- built without OpenSSL, like the pinned one with pgvector, does not have).
do $$ begin
  if current_setting('server_version_num')::int < 130000 then create extension if not exists pgcrypto; end if;
end $$;

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  display_name text check (char_length(display_name) <= 100),
  avatar_url text check (char_length(avatar_url) <= 2048),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table public.conversations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  title text not null default 'New conversation' check (char_length(title) between 1 and 200),
  provider text check (char_length(provider) <= 64),
  model text check (char_length(model) <= 128),
  temperature double precision check (temperature between 0 and 2),
  max_tokens integer check (max_tokens > 0),
  system_prompt text check (char_length(system_prompt) <= 32000),
  archived_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
-- list: newest first per user, keyset on (created_at, id)
create index conversations_user_created_idx on public.conversations (user_id, created_at desc, id desc);

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null check (role in ('system', 'user', 'assistant', 'tool')),
  content text not null default '',
  status text not null default 'complete' check (status in ('pending', 'complete', 'incomplete', 'error')),
  provider text,
  model text,
  prompt_tokens integer check (prompt_tokens >= 0),
  completion_tokens integer check (completion_tokens >= 0),
  cost_usd numeric(14, 8) check (cost_usd >= 0),
  latency_ms integer check (latency_ms >= 0),
  tool_calls jsonb,
  metadata jsonb,
  created_at timestamptz not null default now()
);
-- history and context: a conversation's messages in order, keyset on (created_at, id)
create index messages_conversation_created_idx on public.messages (conversation_id, created_at, id);
create index messages_user_idx on public.messages (user_id);

create table public.code_executions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete set null,
  language text not null check (language in ('python', 'javascript', 'typescript')),
  code text not null,
  status text not null,
  exit_code integer,
  stdout_bytes integer not null default 0,
  stderr_bytes integer not null default 0,
  duration_ms integer,
  created_at timestamptz not null default now()
);
create index code_executions_user_created_idx on public.code_executions (user_id, created_at desc);

create table public.file_uploads (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete set null,
  original_name text not null check (char_length(original_name) <= 1024),
  storage_key text not null unique,
  mime_type text not null,
  size_bytes bigint not null check (size_bytes > 0),
  sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
  status text not null default 'stored' check (status in ('stored', 'deleted')),
  created_at timestamptz not null default now()
);
create index file_uploads_user_created_idx on public.file_uploads (user_id, created_at desc, id desc);

create table public.visualizations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete cascade,
  message_id uuid references public.messages (id) on delete set null,
  kind text not null,
  spec jsonb not null,
  created_at timestamptz not null default now()
);
create index visualizations_conversation_idx on public.visualizations (conversation_id, created_at);
create index visualizations_user_idx on public.visualizations (user_id);

create table public.user_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  user_agent text,
  client_ip inet
);
create index user_sessions_user_idx on public.user_sessions (user_id, last_seen_at desc);

create table public.api_usage (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete set null,
  message_id uuid references public.messages (id) on delete set null,
  provider text not null,
  model text not null,
  prompt_tokens integer not null default 0 check (prompt_tokens >= 0),
  completion_tokens integer not null default 0 check (completion_tokens >= 0),
  cached_tokens integer not null default 0 check (cached_tokens >= 0),
  cost_usd numeric(14, 8) not null default 0 check (cost_usd >= 0),
  latency_ms integer,
  status text not null,
  created_at timestamptz not null default now()
);
-- per-user usage over a time window (budgets, dashboards)
create index api_usage_user_created_idx on public.api_usage (user_id, created_at);

-- A profile for every new user, as Supabase's starter templates do.
create function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  insert into public.profiles (id) values (new.id) on conflict do nothing;
  return new;
end
$$;
create trigger on_auth_user_created after insert on auth.users
  for each row execute function public.handle_new_user();
