//! Engine.IO v4 / Socket.IO v5 over a websocket, framed by hand: the
//! handshake, the namespace connect with its `auth`, event and ack frames,
//! pings. The load tool drives thousands of sockets with these, so frames
//! are classified without a JSON parse and nothing here allocates per
//! delivery; a general client would cost the tool the core it is supposed
//! to leave to the server. Hand-written frames also show exactly what goes
//! over the wire, which is what the integration tests want to see.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, protocol::WebSocketConfig},
};

pub const NAMESPACE: &str = "/fleet";

pub type Ws = WebSocketStream<TcpStream>;

/// Where to open sockets: the TCP address and the websocket URL on it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub ws_url: String,
    pub http_base: String,
}

/// A server URL the tool cannot open sockets to.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}: TLS is not supported; point the tool at the server's plain port")]
    Tls(String),
    #[error("{0}: expected host:port")]
    NotHostPort(String),
    #[error("no server URL given")]
    Empty,
}

impl Target {
    /// Accepts `http://host:port`, `ws://host:port` or a bare `host:port`.
    pub fn parse(base: &str, path: &str) -> Result<Self, TargetError> {
        let rest = if let Some(r) = base.strip_prefix("http://").or_else(|| base.strip_prefix("ws://")) {
            r
        } else if base.starts_with("https://") || base.starts_with("wss://") {
            return Err(TargetError::Tls(base.to_owned()));
        } else {
            base
        };
        let addr = rest.split('/').next().unwrap_or_default();
        if addr.is_empty() || !addr.contains(':') {
            return Err(TargetError::NotHostPort(base.to_owned()));
        }
        Ok(Self::at(addr.to_owned(), path))
    }

    fn at(addr: String, path: &str) -> Self {
        let path = if path.ends_with('/') { path.to_owned() } else { format!("{path}/") };
        Self {
            ws_url: format!("ws://{addr}{path}?EIO=4&transport=websocket"),
            http_base: format!("http://{addr}"),
            addr,
        }
    }
}

/// The Socket.IO endpoint at its default path, `/socket.io/`.
impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::at(addr.to_string(), "/socket.io/")
    }
}

/// Parses a comma-separated list of targets (`--url a,b`).
pub fn targets(list: &[String], path: &str) -> Result<Vec<Target>, TargetError> {
    let out = list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Target::parse(s, path))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Err(TargetError::Empty);
    }
    Ok(out)
}

/// Why a socket did not reach its namespace; `kind` names the cause for
/// counting, `Display` says what happened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The websocket upgrade or a later read or write failed.
    #[error("connect: {0}")]
    Ws(#[source] Box<tungstenite::Error>),
    /// The server closed the connection before the namespace connect ended.
    #[error("connect: {0}")]
    Closed(&'static str),
    /// The server answered the namespace connect with `44` (its message).
    #[error("refused: {0}")]
    Refused(String),
    /// Something other than the Engine.IO / Socket.IO handshake came back.
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

impl ConnectError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Io(_) | ConnectError::Ws(_) | ConnectError::Closed(_) => "io",
            ConnectError::Refused(_) => "refused",
            ConnectError::Protocol(_) => "protocol",
            ConnectError::Timeout => "timeout",
        }
    }
}

impl From<tungstenite::Error> for ConnectError {
    fn from(e: tungstenite::Error) -> Self {
        ConnectError::Ws(Box::new(e))
    }
}

fn ws_config() -> WebSocketConfig {
    // The default 128 KiB read buffer per socket would make the tool's own
    // memory, not the server's, the limit of the idle scenario.
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Opens a websocket and completes the `/fleet` namespace connect with `auth`
/// (a JSON object, or empty for none). Returns once `40/fleet,` has arrived.
pub async fn open(target: &Target, auth: &str, timeout: Duration) -> Result<Ws, ConnectError> {
    let open = async { handshake(TcpStream::connect(&target.addr).await?, target, auth).await };
    tokio::time::timeout(timeout, open).await.unwrap_or(Err(ConnectError::Timeout))
}

/// [`open`] on a TCP connection the caller made (with its own socket
/// options), without a deadline.
pub async fn handshake(tcp: TcpStream, target: &Target, auth: &str) -> Result<Ws, ConnectError> {
    // Small frames both ways; Nagle would add its delay to every latency.
    tcp.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url.as_str(), tcp, Some(ws_config())).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
        Some(Ok(other)) => {
            return Err(ConnectError::Protocol(format!("expected the open packet, got {}", short(&other))));
        }
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ConnectError::Closed("closed before the open packet")),
    }
    ws.send(Message::text(format!("40{NAMESPACE},{auth}"))).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                if t == "2" {
                    ws.send(Message::text("3")).await?;
                } else if t.starts_with("40/fleet,") {
                    return Ok(ws);
                } else if let Some(err) = t.strip_prefix("44/fleet,") {
                    let msg = serde_json::from_str::<serde_json::Value>(err)
                        .ok()
                        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| err.to_owned());
                    return Err(ConnectError::Refused(msg));
                } else {
                    return Err(ConnectError::Protocol(format!("unexpected frame before connect: {}", clip(t))));
                }
            }
            Some(Ok(Message::Close(_))) | None => return Err(ConnectError::Closed("closed during connect")),
            Some(Ok(Message::Binary(_))) => return Err(ConnectError::Protocol("binary frame during connect".into())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

fn short(m: &Message) -> String {
    match m {
        Message::Text(t) => clip(t.as_str()),
        Message::Close(_) => "close".into(),
        other => format!("{} byte {} frame", other.len(), if other.is_binary() { "binary" } else { "control" }),
    }
}

pub fn clip(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_owned();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One incoming text frame, classified without a JSON parse.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO ping: answer `3`.
    Ping,
    /// `42/fleet,["name",…]`; `rest` is what follows the name.
    Event {
        name: &'a str,
        rest: &'a str,
    },
    /// `43/fleet,<id>[…]`; `body` is the argument array.
    Ack {
        id: u64,
        body: &'a str,
    },
    /// Namespace disconnect or Engine.IO close.
    Disconnect,
    Other,
}

/// Called on every frame the load tool receives: inlined across the crate
/// boundary like the private function it was.
#[inline]
pub fn classify(t: &str) -> Packet<'_> {
    if t == "2" {
        return Packet::Ping;
    }
    if let Some(rest) = t.strip_prefix("42/fleet,") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(rest) = rest.strip_prefix("[\"") else { return Packet::Other };
        let Some(end) = rest.find('"') else { return Packet::Other };
        return Packet::Event { name: &rest[..end], rest: &rest[end + 1..] };
    }
    if let Some(rest) = t.strip_prefix("43/fleet,") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(id) = rest[..digits].parse() else { return Packet::Other };
        return Packet::Ack { id, body: &rest[digits..] };
    }
    if t.starts_with("41/fleet,") || t == "1" {
        return Packet::Disconnect;
    }
    Packet::Other
}

/// Calls `f` with every `"ts"` value in `s`: one per position, whether the
/// event is a single `locationupdate` or a `locations` batch. Ids in the
/// contract cannot contain quotes, so the key cannot appear inside a value.
pub fn scan_ts(s: &str, mut f: impl FnMut(i64)) -> usize {
    const KEY: &str = "\"ts\":";
    let mut n = 0;
    let mut rest = s;
    while let Some(at) = rest.find(KEY) {
        rest = rest[at + KEY.len()..].trim_start();
        let len =
            rest.bytes().take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')).count();
        let num = &rest[..len];
        let ts = num.parse::<i64>().ok().or_else(|| num.parse::<f64>().ok().map(|v| v as i64));
        if let Some(ts) = ts {
            f(ts);
            n += 1;
        }
        rest = &rest[len..];
    }
    n
}

/// The error code of a failed envelope (`{"ok":false,"error":{"code":…}}`),
/// for counting failures by cause.
pub fn error_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let env = if v.is_array() { v.get(0).cloned()? } else { v };
            env.get("error")?.get("code")?.as_str().map(str::to_owned)
        })
        .unwrap_or_else(|| "malformed".to_owned())
}

/// `42/fleet,[<id>]["name",<payload>]`; `name` is written as it is (event
/// names are plain words) and `payload` must be JSON text.
#[inline]
pub fn event(ack: Option<u64>, name: &str, payload: &str) -> String {
    match ack {
        Some(id) => format!("42{NAMESPACE},{id}[\"{name}\",{payload}]"),
        None => format!("42{NAMESPACE},[\"{name}\",{payload}]"),
    }
}

/// Why [`await_ack`] returned without the ack.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// Reading or writing the websocket failed (the caller's `?` on its
    /// own send lands here too).
    #[error("websocket: {0}")]
    Ws(#[source] Box<tungstenite::Error>),
    #[error("disconnected while waiting for an ack")]
    Disconnected,
    #[error("closed while waiting for an ack")]
    Closed,
    #[error("no ack within {0:?}")]
    Timeout(Duration),
}

impl From<tungstenite::Error> for AckError {
    fn from(e: tungstenite::Error) -> Self {
        AckError::Ws(Box::new(e))
    }
}

/// Reads until the ack with `id` and returns its argument array; answers
/// pings and skips events on the way.
pub async fn await_ack(ws: &mut Ws, id: u64, timeout: Duration) -> Result<String, AckError> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match classify(t.as_str()) {
                    Packet::Ping => ws.send(Message::text("3")).await?,
                    Packet::Ack { id: got, body } if got == id => return Ok(body.to_owned()),
                    Packet::Disconnect => return Err(AckError::Disconnected),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => return Err(AckError::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(Err(AckError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        assert_eq!(classify("2"), Packet::Ping);
        assert_eq!(
            classify(r#"42/fleet,["locationupdate",{"ts":1}]"#),
            Packet::Event { name: "locationupdate", rest: r#",{"ts":1}]"# }
        );
        assert_eq!(classify(r#"43/fleet,17[{"ok":true}]"#), Packet::Ack { id: 17, body: r#"[{"ok":true}]"# });
        assert_eq!(classify("41/fleet,"), Packet::Disconnect);
        assert_eq!(classify("40/fleet,{}"), Packet::Other);
    }

    #[test]
    fn finds_every_ts() {
        let batch = r#",{"fleet":"f","items":[{"vehicleId":"a","ts":1732200000000,"receivedAt":5},{"ts": 1.7e12}]}]"#;
        let mut seen = Vec::new();
        assert_eq!(scan_ts(batch, |t| seen.push(t)), 2);
        assert_eq!(seen, [1_732_200_000_000, 1_700_000_000_000]);
    }

    #[test]
    fn targets_from_urls() {
        let t = Target::parse("http://127.0.0.1:3000", "/socket.io").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000");
        assert_eq!(t.ws_url, "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket");
        assert!(Target::parse("https://x:1", "/").is_err());
        assert_eq!(targets(&["a:1,b:2".into()], "/socket.io/").unwrap().len(), 2);
        assert!(matches!(targets(&[" , ".into()], "/"), Err(TargetError::Empty)));
        let local = Target::from(SocketAddr::from(([127, 0, 0, 1], 3000)));
        assert_eq!(local.ws_url, t.ws_url);
    }

    #[test]
    fn error_codes() {
        assert_eq!(error_code(r#"[{"ok":false,"error":{"code":"forbidden","message":"x"}}]"#), "forbidden");
        assert_eq!(error_code("nope"), "malformed");
    }
}
