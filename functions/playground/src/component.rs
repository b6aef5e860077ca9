//! The Spin component: `GET`/`HEAD` of a known file, 404 for anything else. Never reads the body.

use futures::SinkExt;
use spin_sdk::http::{Fields, IncomingRequest, Method, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let path = req.path_with_query().unwrap_or_default();
    let path = path.split(['?', '#']).next().unwrap_or_default().to_owned();
    let method = req.method();
    // Errors in the one envelope every function answers with.
    let (status, content_type, body): (u16, &str, Vec<u8>) = match (crate::asset(&path), &method) {
        (Some(a), Method::Get | Method::Head) => (200, a.content_type, a.body.to_vec()),
        (Some(_), _) => (405, "application/json", shared::ApiError::method_not_allowed("GET, HEAD").body()),
        (None, _) => (404, "application/json", shared::ApiError::not_found("file").body()),
    };
    let mut headers = vec![
        ("content-type".to_owned(), content_type.as_bytes().to_vec()),
        ("content-security-policy".to_owned(), crate::CONTENT_SECURITY_POLICY.as_bytes().to_vec()),
        ("x-content-type-options".to_owned(), b"nosniff".to_vec()),
        ("referrer-policy".to_owned(), b"no-referrer".to_vec()),
        ("cache-control".to_owned(), b"no-cache".to_vec()),
    ];
    if status == 405 {
        headers.push(("allow".to_owned(), b"GET, HEAD".to_vec()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = response.set_status_code(status);
    let sink = response.take_body();
    out.set(response);
    if method != Method::Head {
        let mut sink = std::pin::pin!(sink);
        let _ = sink.send(body).await;
    }
}
