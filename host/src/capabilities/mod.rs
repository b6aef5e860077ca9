//! The Spin interfaces the host gives components, one module per capability as Spin splits its
//! factors: what each does is Spin's behaviour, checked against Spin's own implementation and
//! conformance suite.

pub mod http_pool;
pub mod keyvalue;
pub mod outbound;
pub mod postgres;
pub mod redis_outbound;
pub mod sqlite;
pub mod stdio;
pub mod variables;
