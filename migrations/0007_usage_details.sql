-- Prompt-cache writes and reasoning tokens, each counted apart (they are priced apart: Anthropic
-- charges cache writes above plain input; reasoning tokens are part of the output). Both are
-- already inside prompt_tokens / completion_tokens; these columns say how much of them.
alter table public.api_usage
  add column cache_write_tokens integer not null default 0 check (cache_write_tokens >= 0),
  add column reasoning_tokens integer not null default 0 check (reasoning_tokens >= 0);
