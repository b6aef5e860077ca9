//! chatedge's host: serves a Spin manifest (spin.toml) without Spin installed, with Spin's
//! variables, Postgres and outbound HTTP capabilities, plus migrations and the embedded dev stack.

pub mod devstack;
pub mod keyvalue;
pub mod maintenance;
pub mod manifest;
pub mod migrate;
pub mod outbound;
pub mod pgtls;
pub mod postgres;
pub mod redis_outbound;
pub mod router;
pub mod runtime;
pub mod runtime_config;
pub mod s3dev;
pub mod sandbox;
pub mod server;
pub mod sqlite;
pub mod tokens;
pub mod variables;

/// Host bindings of the Spin interfaces (WIT in `host/wit`).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "chatedge:host/spin-host",
        imports: { default: async | trappable },
        with: {
            "spin:postgres/postgres@4.0.0.connection": crate::postgres::PgConnection,
            "spin:postgres/postgres@3.0.0.connection": crate::postgres::PgConnection,
            "fermyon:spin/key-value@2.0.0.store": crate::keyvalue::Bucket,
            "wasi:keyvalue/store@0.2.0-draft2.bucket": crate::keyvalue::Bucket,
            "wasi:keyvalue/atomics@0.2.0-draft2.cas": crate::keyvalue::Cas,
            "fermyon:spin/sqlite@2.0.0.connection": crate::sqlite::SqliteConnection,
            "fermyon:spin/redis@2.0.0.connection": crate::redis_outbound::RedisConnection,
        },
    });
}
