//! `GET /functions/v1/health`: a liveness probe for load balancers and SpinKube, and the
//! trivial component the benchmarks measure host overhead with.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(_req: Request) -> impl IntoResponse {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("access-control-allow-origin", "*")
        .body(r#"{"status":"ok"}"#)
        .build()
}
