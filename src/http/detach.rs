//! Copies the URI and header values of Socket.IO requests out of the
//! connection's read buffer.
//!
//! hyper parses a request head in place: its URI and header values are
//! slices of the connection's read buffer (8–16 KiB). Engine.IO keeps the
//! handshake request's parts for the whole life of a session, so without a
//! copy every open socket pins that buffer: measured, 16 KiB of a 33 KiB
//! idle connection. A copy is a few hundred bytes, once per request.

use axum::{
    extract::{OriginalUri, Request},
    http::{HeaderMap, HeaderValue, Uri},
};

/// Whether `path` is served by Socket.IO under `prefix` (e.g. `/socket.io/`).
fn is_socketio(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix) || path.len() + 1 == prefix.len() && prefix.starts_with(path)
}

/// Rebuilds the request's URI and header values in their own allocations
/// when it is a Socket.IO request.
pub fn detach(mut req: Request, socketio_path: &str) -> Request {
    if !is_socketio(req.uri().path(), socketio_path) {
        return req;
    }
    if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
        // The router's copy of the URI shares the buffer too.
        if let Some(original) = req.extensions_mut().get_mut::<OriginalUri>() {
            original.0 = uri.clone();
        }
        *req.uri_mut() = uri;
    }
    let headers = std::mem::take(req.headers_mut());
    let mut owned = HeaderMap::with_capacity(headers.len());
    let mut last = None;
    for (name, value) in headers {
        // `None` repeats the previous name (a header sent several times).
        if let Some(name) = name {
            last = Some(name);
        }
        if let (Some(name), Ok(value)) = (&last, HeaderValue::from_bytes(value.as_bytes())) {
            owned.append(name.clone(), value);
        }
    }
    *req.headers_mut() = owned;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_requests_keep_their_headers_and_query() {
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("cookie", "a=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = detach(req, "/socket.io/");
        assert_eq!(req.uri().query(), Some("EIO=4&transport=websocket"));
        assert_eq!(req.headers().get("cookie").unwrap(), "a=1");
        let forwarded: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded, ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn only_the_socketio_path_is_matched() {
        assert!(is_socketio("/socket.io/", "/socket.io/"));
        assert!(is_socketio("/socket.io", "/socket.io/"));
        assert!(!is_socketio("/api/v1/fleets", "/socket.io/"));
    }
}
