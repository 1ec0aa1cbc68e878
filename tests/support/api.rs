//! The HTTP API as several test files drive it: JSON in and out with a
//! bearer token, a dispatcher's position and room message, the error code
//! of a reply envelope.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{Server, http_request_as, token_for};

/// A request with an optional JSON body: the status and the reply parsed
/// (`Null` when it is not JSON).
pub fn http_json(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, bearer: &str) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let reply = http_request_as(addr, method, path, body.as_deref(), Some(bearer));
    let (status, text) =
        reply.unwrap_or_else(|| panic!("no reply to {method} {path} ({} bytes)", body.map_or(0, |b| b.len())));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `error.code` of a reply envelope (`<none>` without one).
pub fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("<none>")
}

/// Stores a position of `vehicle` through the HTTP API as a dispatcher of
/// `fleet` (one `position` event); it must be accepted.
pub fn put_location(server: &Server, fleet: &str, vehicle: &str, ts: i64) {
    let path = format!("/api/v1/fleets/{fleet}/vehicles/{vehicle}/location");
    let body = json!({ "lat": 37.5, "lon": 127.0, "ts": ts });
    let (status, reply) = http_json(server.addr, "PUT", &path, Some(&body), &token_for(fleet, "dispatcher", "ops"));
    assert_eq!((status, &reply["data"]["accepted"]), (200, &json!(true)), "{reply}");
}

/// Posts a message to `fleet`'s room `ops` as a dispatcher (one `chat` event).
pub fn post_chat(server: &Server, fleet: &str, text: &str) {
    let path = format!("/api/v1/fleets/{fleet}/rooms/ops/messages");
    let body = json!({ "text": text });
    let (status, reply) = http_json(server.addr, "POST", &path, Some(&body), &token_for(fleet, "dispatcher", "ops"));
    assert_eq!(status, 200, "{reply}");
}
