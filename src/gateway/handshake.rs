//! What a socket keeps of its handshake request.
//!
//! Engine.IO keeps the handshake request's parts (URI, headers, the
//! router's extensions) for the whole life of a session. fleetgate reads
//! two things of them, through [`Limits::client_ip`]: the peer address and,
//! when `FLEETGATE_CLIENT_IP_HEADER` is set, that header. At thousands of
//! idle sockets the rest was about a tenth of each one's memory, and its
//! header values were slices of the connection's read buffer (8–16 KiB),
//! which they kept alive. So the socket keeps copies of those two and
//! nothing else.
//!
//! [`Limits::client_ip`]: super::limits::Limits::client_ip

use axum::{
    extract::ConnectInfo,
    http::{Extensions, HeaderMap, HeaderName, HeaderValue, Uri, request::Parts},
};

use crate::net::PeerAddr;

/// The trim applied to every socket's handshake parts (engineioxide's
/// `req_parts_filter`).
pub fn keep_only(client_ip_header: Option<&str>) -> impl Fn(&mut Parts) + Send + Sync + 'static {
    let header = client_ip_header.and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
    move |parts: &mut Parts| {
        let mut headers = HeaderMap::new();
        if let Some(name) = &header {
            for value in parts.headers.get_all(name) {
                // A copy, in its own allocation (see the module's doc).
                if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.append(name.clone(), value);
                }
            }
        }
        parts.headers = headers;
        let peer = parts.extensions.remove::<ConnectInfo<PeerAddr>>();
        parts.extensions = Extensions::new();
        if let Some(peer) = peer {
            parts.extensions.insert(peer);
        }
        parts.uri = Uri::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts() -> Parts {
        let mut req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("cookie", "a=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .body(())
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(PeerAddr("192.0.2.7:4000".parse().unwrap())));
        req.extensions_mut().insert(42u32);
        req.into_parts().0
    }

    #[test]
    fn keeps_the_peer_address_and_every_value_of_the_client_ip_header() {
        let mut p = parts();
        keep_only(Some("x-forwarded-for"))(&mut p);
        let forwarded: Vec<_> = p.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(p.headers.len(), 2);
        assert_eq!(p.extensions.get::<ConnectInfo<PeerAddr>>().unwrap().0.0.port(), 4000);
        assert!(p.extensions.get::<u32>().is_none());
        assert_eq!(p.uri, Uri::default());
    }

    #[test]
    fn without_a_client_ip_header_no_header_is_kept() {
        let mut p = parts();
        keep_only(None)(&mut p);
        assert!(p.headers.is_empty());
        assert!(p.extensions.get::<ConnectInfo<PeerAddr>>().is_some());
    }
}
