//! chatedge's host: serves a Spin manifest (spin.toml) without Spin installed, with Spin's
//! variables, Postgres and outbound HTTP capabilities, plus migrations. The dev stack of
//! `chatedge up` is the `chatedge-devstack` crate, which only the binary uses.

pub mod admin;
pub mod capabilities;
pub mod maintenance;
pub mod manifest;
pub mod metrics;
pub mod migrate;
pub mod pgtls;
pub mod router;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod telemetry;

/// Host bindings of the Spin interfaces (WIT in `host/wit`).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "chatedge:host/spin-host",
        imports: { default: async | trappable },
        with: {
            "spin:postgres/postgres@4.0.0.connection": crate::capabilities::postgres::PgConnection,
            "spin:postgres/postgres@3.0.0.connection": crate::capabilities::postgres::PgConnection,
            "fermyon:spin/key-value@2.0.0.store": crate::capabilities::keyvalue::Bucket,
            "wasi:keyvalue/store@0.2.0-draft2.bucket": crate::capabilities::keyvalue::Bucket,
            "wasi:keyvalue/atomics@0.2.0-draft2.cas": crate::capabilities::keyvalue::Cas,
            "fermyon:spin/sqlite@2.0.0.connection": crate::capabilities::sqlite::SqliteConnection,
            "fermyon:spin/redis@2.0.0.connection": crate::capabilities::redis_outbound::RedisConnection,
        },
    });
}
