-- Documents for retrieval (RAG) and semantic search (issue 16, seed 003's names).
--
-- file-upload extracts an uploaded document's text and splits it into document_chunks in the
-- upload's own transaction (processing_status 'pending'); chat-completion embeds the chunks
-- (pending -> processing -> completed | failed, with the reason) and searches them. Both write
-- as service_role after checking ownership through RLS; users may read and delete their own.
--
-- The vector parts need pgvector. On a server without it this migration still applies: the
-- tables exist without their embedding columns and the search functions are absent, and the
-- routes that need them answer 503 feature_unavailable (chatedge.vector_ready() says which).

alter table public.file_uploads
  add column processing_status text
    check (processing_status in ('pending', 'processing', 'completed', 'failed')),
  add column extracted_text text check (char_length(extracted_text) <= 20000000),
  add column chunk_count integer not null default 0,
  add column processing_error text check (char_length(processing_error) <= 2000);

create table public.document_chunks (
  id uuid primary key default gen_random_uuid(),
  file_id uuid not null references public.file_uploads (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  content text not null check (char_length(content) <= 100000),
  chunk_index integer not null check (chunk_index >= 0),
  page_number integer,
  heading text check (char_length(heading) <= 1000),
  token_count integer not null,
  metadata jsonb not null default '{}'::jsonb,
  -- Which model made the embedding: a switch to another model re-embeds.
  embedding_model text,
  created_at timestamptz not null default now(),
  unique (file_id, chunk_index)
);
create index document_chunks_user_idx on public.document_chunks (user_id, file_id);
-- The full-text half of hybrid search ('simple': no language's stemming assumed).
create index document_chunks_fts_idx on public.document_chunks using gin (to_tsvector('simple', content));

alter table public.document_chunks enable row level security;
grant all on public.document_chunks to service_role;
grant select, delete on public.document_chunks to authenticated;
create policy document_chunks_select_own on public.document_chunks for select to authenticated
  using (user_id = (select auth.uid()));
create policy document_chunks_delete_own on public.document_chunks for delete to authenticated
  using (user_id = (select auth.uid()));

alter table public.messages add column embedding_model text;

-- Whether the vector half is installed (the routes ask before they use it).
create function chatedge.vector_ready() returns boolean
language sql stable security invoker set search_path = '' as $$
  select exists (select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
                 where n.nspname = 'public' and p.proname = 'search_similar_chunks')
$$;
grant execute on function chatedge.vector_ready() to authenticated, service_role;
-- The schema pgvector's types live in (statements name `<schema>.vector`), null without it.
create function chatedge.vector_schema() returns text
language sql stable security invoker set search_path = '' as $$
  select n.nspname::text from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector' and chatedge.vector_ready()
$$;
grant execute on function chatedge.vector_schema() to authenticated, service_role;

do $migration$
declare
  ext_schema text;
begin
  if not exists (select 1 from pg_available_extensions where name = 'vector') then
    raise notice 'pgvector is not available: document search and retrieval stay off';
    return;
  end if;
  -- Supabase keeps extensions in their own schema.
  if exists (select 1 from pg_namespace where nspname = 'extensions') then
    create extension if not exists vector with schema extensions;
  else
    create extension if not exists vector;
  end if;
  select n.nspname into ext_schema from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector';

  -- text-embedding-3-small's width; smaller vectors are zero-padded (cosine is unchanged).
  execute format('alter table public.document_chunks add column embedding %I.vector(1536)', ext_schema);
  execute format('alter table public.messages add column embedding %I.vector(1536)', ext_schema);
  -- Vectors stay in the row (6 KB, under a page) rather than in TOAST: an exact scan reads
  -- half the bytes and never detoasts (measured: 100k chunks, 730 ms -> 370 ms a scan).
  alter table public.document_chunks alter column embedding set storage plain;
  alter table public.messages alter column embedding set storage plain;
  execute format('create index document_chunks_embedding_idx on public.document_chunks
                    using hnsw (embedding %I.vector_cosine_ops)', ext_schema);
  execute format('create index messages_embedding_idx on public.messages
                    using hnsw (embedding %I.vector_cosine_ops)', ext_schema);

  -- security invoker: RLS decides what a caller can find; match_user_id narrows it further
  -- (a service_role caller sees everything, so it must say whose chunks it means).
  execute format($f$
    create function public.search_similar_chunks(
      query_embedding %1$I.vector(1536), match_user_id uuid, match_threshold float8 default 0.0,
      match_count integer default 10, match_file_ids uuid[] default null,
      match_embedding_model text default null)
    returns table (id uuid, file_id uuid, chunk_index integer, page_number integer, heading text,
                   content text, similarity float8)
    language sql stable security invoker set search_path = public, %1$I as $body$
      -- The nearest, then the threshold: the same answer as filtering first, since similarity
      -- falls with distance, and the planner's guess at the threshold's selectivity (a third)
      -- cannot steer the plan off the index (it did, at hnsw.ef_search = 100).
      select n.* from (
        select c.id, c.file_id, c.chunk_index, c.page_number, c.heading, c.content,
               1 - (c.embedding <=> query_embedding) as similarity
          from public.document_chunks c
         where c.user_id = match_user_id and c.embedding is not null
           and (match_file_ids is null or c.file_id = any (match_file_ids))
           and (match_embedding_model is null or c.embedding_model = match_embedding_model)
         order by c.embedding <=> query_embedding
         limit least(greatest(match_count, 1), 100)) n
       where n.similarity >= match_threshold
       order by n.similarity desc
       limit least(greatest(match_count, 1), 100)
    $body$ $f$, ext_schema);

  execute format($f$
    create function public.search_similar_messages(
      query_embedding %1$I.vector(1536), match_user_id uuid, match_conversation_id uuid default null,
      match_threshold float8 default 0.0, match_count integer default 10,
      match_embedding_model text default null)
    returns table (id uuid, conversation_id uuid, role text, content text, created_at timestamptz,
                   similarity float8)
    language sql stable security invoker set search_path = public, %1$I as $body$
      select n.* from (
        select m.id, m.conversation_id, m.role, m.content, m.created_at,
               1 - (m.embedding <=> query_embedding) as similarity
          from public.messages m
         where m.user_id = match_user_id and m.embedding is not null
           and (match_conversation_id is null or m.conversation_id = match_conversation_id)
           and (match_embedding_model is null or m.embedding_model = match_embedding_model)
         order by m.embedding <=> query_embedding
         limit least(greatest(match_count, 1), 100)) n
       where n.similarity >= match_threshold
       order by n.similarity desc
       limit least(greatest(match_count, 1), 100)
    $body$ $f$, ext_schema);

  -- Hybrid: vector and full-text ranks fused by reciprocal rank (k = 60), each side taking its
  -- best 4 x match_count candidates.
  execute format($f$
    create function public.search_hybrid_chunks(
      query_embedding %1$I.vector(1536), query_text text, match_user_id uuid,
      match_count integer default 10, match_file_ids uuid[] default null,
      match_embedding_model text default null)
    returns table (id uuid, file_id uuid, chunk_index integer, page_number integer, heading text,
                   content text, similarity float8, score float8)
    language sql stable security invoker set search_path = public, %1$I as $body$
      with semantic as (
        select c.id, 1 - (c.embedding <=> query_embedding) as similarity,
               row_number() over (order by c.embedding <=> query_embedding) as r
          from public.document_chunks c
         where c.user_id = match_user_id and c.embedding is not null
           and (match_file_ids is null or c.file_id = any (match_file_ids))
           and (match_embedding_model is null or c.embedding_model = match_embedding_model)
         order by c.embedding <=> query_embedding
         limit least(greatest(match_count, 1), 100) * 4
      ), lexical as (
        select c.id, row_number() over (order by ts_rank_cd(to_tsvector('simple', c.content), q) desc) as r
          from public.document_chunks c, websearch_to_tsquery('simple', query_text) q
         where c.user_id = match_user_id and to_tsvector('simple', c.content) @@ q
           and (match_file_ids is null or c.file_id = any (match_file_ids))
           and (match_embedding_model is null or c.embedding_model = match_embedding_model)
         order by ts_rank_cd(to_tsvector('simple', c.content), q) desc
         limit least(greatest(match_count, 1), 100) * 4
      ), fused as (
        select coalesce(s.id, l.id) as id, s.similarity,
               coalesce(1.0 / (60 + s.r), 0) + coalesce(1.0 / (60 + l.r), 0) as score
          from semantic s full join lexical l on l.id = s.id
      )
      select c.id, c.file_id, c.chunk_index, c.page_number, c.heading, c.content,
             coalesce(f.similarity, 1 - (c.embedding <=> query_embedding)), f.score
        from fused f join public.document_chunks c on c.id = f.id
       order by f.score desc
       limit least(greatest(match_count, 1), 100)
    $body$ $f$, ext_schema);

  grant execute on function public.search_similar_chunks to authenticated, service_role;
  grant execute on function public.search_similar_messages to authenticated, service_role;
  grant execute on function public.search_hybrid_chunks to authenticated, service_role;
end
$migration$;
