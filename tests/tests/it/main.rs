//! chatedge's integration tests, one binary (one link, one process, one Postgres server whose
//! databases are cloned from a migrated template; see `chatedge_tests::TestDb`). Each module is
//! one area; run one with `cargo test -p chatedge-tests --test it <module>::`.

mod anthropic_sdk;
mod auth;
mod chat;
mod code;
mod conformance;
mod conversations;
mod documents;
mod embeddings;
mod host;
mod interpreter;
mod manifest;
mod messages;
mod metrics;
mod openai_sdk;
mod openapi;
mod pg_types;
mod playground;
mod ratelimit;
mod responses;
mod spin;
mod traces;
mod uploads;
