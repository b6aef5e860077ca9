//! `GET /functions/v1/health`: a liveness probe for load balancers and SpinKube, and the
//! trivial component the benchmarks measure host overhead with. It never reads the request
//! body (spin-sdk's `Request` form would read all of it first, however large).

use spin_sdk::http::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(_req: IncomingRequest, out: ResponseOutparam) {
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), b"application/json".to_vec()),
        ("access-control-allow-origin".to_owned(), b"*".to_vec()),
    ])
    .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(200);
    let body = response.take_body();
    out.set(response);
    use futures::SinkExt;
    let mut body = std::pin::pin!(body);
    let _ = body.send(br#"{"status":"ok"}"#.to_vec()).await;
}
