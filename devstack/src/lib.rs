//! The embedded dev stack of `chatedge up` (what `supabase start` gives): a Postgres cluster,
//! secrets and tokens, the S3 protocol server, a local embedding model and the sandbox as a supervised child. None of it
//! is part of serving a manifest: the runtime library (`chatedge`) does not depend on this
//! crate; the `chatedge` binary's `up` command and the integration tests do.

pub mod embedder;
pub mod s3;
pub mod sandbox;
pub mod stack;
pub mod tokens;
