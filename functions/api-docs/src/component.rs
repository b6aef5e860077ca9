//! The Spin component: answers the document, cacheable, to anyone (it holds no secrets). Like
//! `health` it never reads the request body.

use futures::SinkExt;
use spin_sdk::http::{Fields, IncomingRequest, Method, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let (status, body): (u16, Vec<u8>) = match req.method() {
        Method::Get | Method::Head => (200, crate::document().to_string().into_bytes()),
        Method::Options => (204, Vec::new()),
        _ => (405, shared::ApiError::method_not_allowed("GET, HEAD, OPTIONS").body()),
    };
    let mut headers = vec![
        ("content-type".to_owned(), b"application/json".to_vec()),
        ("access-control-allow-origin".to_owned(), b"*".to_vec()),
        ("cache-control".to_owned(), b"public, max-age=300".to_vec()),
    ];
    if status == 405 {
        headers.push(("allow".to_owned(), b"GET, HEAD, OPTIONS".to_vec()));
    }
    if status == 204 {
        headers.push(("access-control-allow-methods".to_owned(), b"GET, HEAD, OPTIONS".to_vec()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = response.set_status_code(status);
    let sink = response.take_body();
    out.set(response);
    if req.method() != Method::Head && !body.is_empty() {
        let mut sink = std::pin::pin!(sink);
        let _ = sink.send(body).await;
    }
}
