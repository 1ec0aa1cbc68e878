//! The websocket transport: the upgrade answer, the polling → websocket
//! upgrade handshake, and the connection itself.
//!
//! A websocket connection is one task, readiness-driven: it reads frames
//! as they arrive, writes what the socket's channel holds, and (for a
//! websocket opened directly) runs the heartbeat on the runtime's timer
//! wheel, instead of a reader, a writer and a heartbeat task each.
//!
//! Writes are coalesced by [`EngineIoConfig::ws_write_window`]: a
//! connection written nothing for a window is written at once; otherwise
//! what it is sent meanwhile waits, without waking the task, until the
//! window since its last write ends, then leaves in one vectored write,
//! in order. While a write is blocked the channel is not read, so a
//! client that does not read fills its channel and senders see it full.
//!
//! [`EngineIoConfig::ws_write_window`]: crate::config::EngineIoConfig::ws_write_window

mod frame;
mod io;

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use engineioxide_core::{Packet, ProtocolVersion, Sid, TransportType};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::{Instant, Sleep},
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::future::FutureExt as _;

use frame::OpCode;
pub use frame::ProtocolError;
use io::{Message, Reader, Writer};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, engine::EngineIo, errors::Error,
    handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};
use engineioxide_core::PacketBuf;

/// How long a closing connection may take to write what is left.
const CLOSING_FLUSH: Duration = Duration::from_secs(2);

/// Messages read per wake-up before the task lets others run.
const READS_PER_WAKE: usize = 64;

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    mut req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let ws_key = req
        .headers()
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();
    // Taken from the request's extensions, so the request parts need no copy.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();

    tokio::spawn(async move {
        let conn = match on_upgrade.await {
            Ok(conn) => hyper_util::rt::TokioIo::new(conn),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        // The handshake's state (the request parts, the upgrade) stays in
        // this short-lived task; the connection's own task holds only
        // what it needs while it lives.
        match open(engine.clone(), conn, protocol, sid, parts).await {
            Ok(Some(opened)) => {
                tokio::spawn(opened.serve());
            }
            Ok(None) => {}
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Serves the connection until it is closed.
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(opened) = open(engine, conn, protocol, sid, req_data).await? {
        opened.serve().await;
    }
    Ok(())
}

/// A websocket connection past its handshake, ready to be served.
struct Opened<H: EngineIoHandler, S> {
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    conn: S,
    reader: Reader,
    writer: Writer,
    own_heartbeat: bool,
}

/// Opens the connection: the polling → websocket upgrade handshake, or a
/// new session and its open packet. `None` when the session closed first.
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn open<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    mut conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<Option<Opened<H, S>>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = Reader::new(
        engine.config.ws_max_frame_size,
        engine.config.ws_max_message_size,
    );
    let mut writer = Writer::new();
    let (socket, own_heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let upgrade_fut =
                    upgrade_handshake::<H, S>(&socket, &mut conn, &mut reader, &mut writer);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // Its heartbeat task started with the polling session.
                (socket, false)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let open = make_open_packet(TransportType::Websocket, socket.id, &engine.config);
        writer.push_packet(Packet::Open(open), protocol);
        poll_fn(|cx| writer.poll_flush(cx, &mut conn))
            .await
            .map_err(Error::Io)?;
        let own = protocol == ProtocolVersion::V4;
        if !own {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        }
        (socket, own)
    };
    Ok(Some(Opened {
        engine,
        socket,
        conn,
        reader,
        writer,
        own_heartbeat,
    }))
}

impl<H: EngineIoHandler, S> Opened<H, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the connection until it is closed. The future is built from
    /// an `async` block over the fields, not an `async fn` taking `self`,
    /// so each part is stored once in it: it is what an idle connection
    /// costs.
    fn serve(self) -> impl Future<Output = ()> + Send + 'static {
        let Opened {
            engine,
            socket,
            mut conn,
            mut reader,
            mut writer,
            own_heartbeat,
        } = self;
        async move {
            // A polling request that was in progress during the upgrade may still hold the lock.
            let lock = socket.internal_rx.lock();
            let Some(mut internal_rx) = lock
                .with_cancellation_token(&socket.cancellation_token)
                .await
            else {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "session closed before the ws connection started");
                return;
            };

            let mut conn_state = Connection {
                engine: &engine,
                socket: &socket,
                reader: &mut reader,
                writer: &mut writer,
                window: engine.config.ws_write_window,
                last_write: None,
                waiting: false,
                heartbeat: own_heartbeat.then_some(Heartbeat {
                    interval: engine.config.ping_interval,
                    timeout: engine.config.ping_timeout,
                    awaiting_pong: false,
                }),
            };
            let mut cancelled = pin!(socket.cancellation_token.cancelled());
            let mut flush_at = pin!(tokio::time::sleep(Duration::ZERO));
            let mut ping_at = pin!(tokio::time::sleep(engine.config.ping_interval));
            let end = poll_fn(|cx| {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(End::Cancelled));
                }
                conn_state.poll(
                    cx,
                    &mut conn,
                    &mut internal_rx,
                    flush_at.as_mut(),
                    ping_at.as_mut(),
                )
            })
            .await;

            match end {
                Ok(End::Cancelled) => {
                    // Closed by the server: what was queued (the close packets
                    // among it) still goes out, within a bound.
                    conn_state.take_queued(&mut internal_rx);
                    drop(internal_rx);
                    conn_state.writer.push_close();
                    if conn_state
                        .writer
                        .flush_within(&mut conn, CLOSING_FLUSH)
                        .await
                    {
                        conn.shutdown().await.ok();
                    }
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "socket is closing");
                }
                Ok(End::Closed) => {
                    drop(internal_rx);
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "ws transport was closed");
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    conn_state
                        .writer
                        .flush_within(&mut conn, CLOSING_FLUSH)
                        .await;
                }
                Err(e) => {
                    drop(internal_rx);
                    let reason = Option::<DisconnectReason>::from(&e)
                        .unwrap_or(DisconnectReason::TransportError);
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws connection error: {:?}", e);
                    engine.close_session(socket.id, reason);
                }
            }
        }
    }
}

/// How a connection's loop ended.
enum End {
    /// The session was closed by the server.
    Cancelled,
    /// The client closed the connection (or the stream ended).
    Closed,
}

/// The heartbeat of a websocket opened directly (protocol v4): the server
/// pings every `interval` and expects the pong within `timeout`.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    awaiting_pong: bool,
}

/// The state of one connection between wake-ups.
struct Connection<'a, H: EngineIoHandler> {
    engine: &'a Arc<EngineIo<H>>,
    socket: &'a Arc<Socket<H::Data>>,
    reader: &'a mut Reader,
    writer: &'a mut Writer,
    window: Duration,
    last_write: Option<Instant>,
    /// Frames wait for the window to end (`flush_at`); the channel is not
    /// read meanwhile, so sending to this socket wakes nothing.
    waiting: bool,
    heartbeat: Option<Heartbeat>,
}

impl<H: EngineIoHandler> Connection<'_, H> {
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rx: &mut InternalRx,
        mut flush_at: std::pin::Pin<&mut Sleep>,
        mut ping_at: std::pin::Pin<&mut Sleep>,
    ) -> Poll<Result<End, Error>> {
        // Read.
        let mut budget = READS_PER_WAKE;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
            budget -= 1;
            match self.reader.poll_next(cx, io) {
                Poll::Ready(Ok(Some(msg))) => {
                    if let Some(end) = self.on_message(msg, ping_at.as_mut())? {
                        return Poll::Ready(Ok(end));
                    }
                }
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(End::Closed)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }

        // Heartbeat.
        if let Some(hb) = &mut self.heartbeat
            && ping_at.as_mut().poll(cx).is_ready()
        {
            if hb.awaiting_pong {
                return Poll::Ready(Err(Error::HeartbeatTimeout));
            }
            hb.awaiting_pong = true;
            let deadline = Instant::now() + hb.timeout;
            ping_at.as_mut().reset(deadline);
            // Registers the timer for the new deadline.
            let _ = ping_at.as_mut().poll(cx);
            self.writer.push_packet(Packet::Ping, self.socket.protocol);
        }

        // Write.
        loop {
            if !self.writer.is_empty() {
                match self.writer.poll_flush(cx, io) {
                    Poll::Ready(Ok(())) => self.last_write = Some(Instant::now()),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.waiting {
                if flush_at.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.waiting = false;
                self.take_queued(rx);
                continue;
            }
            match rx.buffered_rx.poll_recv(cx) {
                Poll::Ready(Some(packets)) => {
                    self.push(packets);
                    let now = Instant::now();
                    match self.last_write {
                        Some(t) if !self.window.is_zero() && now < t + self.window => {
                            self.waiting = true;
                            flush_at.as_mut().reset(t + self.window);
                        }
                        // Everything already queued leaves with it.
                        _ => self.take_queued(rx),
                    }
                }
                Poll::Ready(None) => return Poll::Ready(Ok(End::Closed)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn push(&mut self, packets: PacketBuf) {
        for p in packets {
            self.writer.push_packet(p, self.socket.protocol);
        }
    }

    /// Takes what the channel holds (the volatile packet last).
    fn take_queued(&mut self, rx: &mut InternalRx) {
        while let Ok(packets) = rx.buffered_rx.try_recv() {
            self.push(packets);
        }
    }

    /// Handles one message from the client; `Some` when the connection ends.
    fn on_message(
        &mut self,
        msg: Message,
        ping_at: std::pin::Pin<&mut Sleep>,
    ) -> Result<Option<End>, Error> {
        let socket = self.socket;
        match msg {
            Message::Text(text) => match Packet::parse(socket.protocol, text)? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    return Ok(Some(End::Closed));
                }
                Packet::Pong | Packet::Ping => self.on_pong(ping_at),
                Packet::Message(msg) => self.engine.handler.on_message(msg, socket.clone()),
                p => return Err(Error::BadPacket(p)),
            },
            Message::Binary(mut data) => {
                if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                    // The first byte is the message type, which we don't need.
                    data = data.split_off(1);
                }
                self.engine.handler.on_binary(data, socket.clone());
            }
            Message::Ping(payload) => self.writer.push_control(OpCode::Pong, payload),
            Message::Pong => {}
            Message::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                self.writer.push_close();
                return Ok(Some(End::Closed));
            }
        }
        Ok(None)
    }

    fn on_pong(&mut self, ping_at: std::pin::Pin<&mut Sleep>) {
        match &mut self.heartbeat {
            Some(hb) => {
                if hb.awaiting_pong {
                    hb.awaiting_pong = false;
                    // The next ping is due an interval after the last one.
                    let next = ping_at.deadline() - hb.timeout + hb.interval;
                    ping_at.reset(next);
                }
            }
            // A full channel means that the client is already known to be alive.
            None => {
                self.socket.heartbeat.signal();
            }
        }
    }
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, conn, reader, writer))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    conn: &mut S,
    reader: &mut Reader,
    writer: &mut Writer,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // The next packet should be a PingUpgrade packet
    let text = next_text(conn, reader).await?;
    match Packet::parse(socket.protocol, text)? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            writer.push_packet(Packet::PongUpgrade, socket.protocol);
            poll_fn(|cx| writer.poll_flush(cx, conn))
                .await
                .map_err(Error::Io)?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // The next packet should be an Upgrade packet
    let text = next_text(conn, reader).await?;
    match Packet::parse(socket.protocol, text)? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

/// The next message during the upgrade handshake, which must be text.
async fn next_text<S: AsyncRead + Unpin>(
    conn: &mut S,
    reader: &mut Reader,
) -> Result<engineioxide_core::Str, Error> {
    match poll_fn(|cx| reader.poll_next(cx, conn)).await? {
        Some(Message::Text(text)) => Ok(text),
        _other => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade: {_other:?}");
            Err(Error::Upgrade)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use engineioxide_core::Str;
    use http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::config::EngineIoConfig;

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[derive(Debug, Default)]
    struct StubHandler {
        messages: std::sync::Mutex<Vec<String>>,
    }
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, msg: Str, _: Arc<Socket<()>>) {
            self.messages.lock().unwrap().push(msg.to_string());
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn engine(window: Duration) -> Arc<EngineIo<StubHandler>> {
        let config = EngineIoConfig::builder()
            .ws_write_window(window)
            .ping_interval(Duration::from_secs(60))
            .build();
        Arc::new(EngineIo::new(Arc::new(StubHandler::default()), config))
    }

    fn masked_text(text: &str) -> Vec<u8> {
        let mask = [9u8, 8, 7, 6];
        let mut v = vec![0x81, 0x80 | text.len() as u8];
        v.extend_from_slice(&mask);
        v.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    /// Reads one unmasked server text frame (short form).
    async fn read_text(client: &mut DuplexStream) -> String {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81);
        let mut body = vec![0u8; head[1] as usize];
        client.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    }

    async fn open(
        engine: &Arc<EngineIo<StubHandler>>,
    ) -> (DuplexStream, Arc<Socket<()>>, tokio::task::JoinHandle<()>) {
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let parts = Request::<()>::default().into_parts().0;
        let e = engine.clone();
        let task = tokio::spawn(async move {
            on_init(e, server, ProtocolVersion::V4, None, parts)
                .await
                .unwrap();
        });
        let open = read_text(&mut client).await;
        let open: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
        let sid = open["sid"].as_str().unwrap().parse().unwrap();
        let socket = engine.get_socket(sid).unwrap();
        (client, socket, task)
    }

    #[tokio::test]
    async fn messages_flow_both_ways() {
        let engine = engine(Duration::ZERO);
        let (mut client, socket, _task) = open(&engine).await;
        client.write_all(&masked_text("4hello")).await.unwrap();
        socket.emit(Str::from("world")).unwrap();
        let got = tokio::time::timeout(TIMEOUT, read_text(&mut client))
            .await
            .unwrap();
        assert_eq!(got, "4world");
        tokio::time::timeout(TIMEOUT, async {
            while engine.handler.messages.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(engine.handler.messages.lock().unwrap()[0], "hello");
    }

    #[tokio::test]
    async fn frames_inside_the_window_leave_together_in_order() {
        let engine = engine(Duration::from_millis(200));
        let (mut client, socket, _task) = open(&engine).await;
        // The open packet was the last write: these wait for the window.
        for i in 0..5 {
            socket.emit(Str::from(format!("m{i}"))).unwrap();
        }
        for i in 0..5 {
            let got = tokio::time::timeout(TIMEOUT, read_text(&mut client))
                .await
                .unwrap();
            assert_eq!(got, format!("4m{i}"));
        }
    }

    #[tokio::test]
    async fn a_server_close_sends_what_was_queued_then_a_close_frame() {
        let engine = engine(Duration::ZERO);
        let (mut client, socket, task) = open(&engine).await;
        socket.emit(Str::from("bye")).unwrap();
        socket.close(DisconnectReason::ClosingServer);
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        // "4bye", "1", then a close frame with status 1000, in some order of
        // arrival that keeps the packets before the close frame.
        assert!(rest.ends_with(&[0x88, 2, 0x03, 0xE8]), "{rest:?}");
    }

    #[tokio::test]
    async fn a_client_close_frame_ends_the_session() {
        let engine = engine(Duration::ZERO);
        let (mut client, socket, task) = open(&engine).await;
        client
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert!(engine.get_socket(socket.id).is_none());
    }

    #[tokio::test]
    async fn a_protocol_error_ends_the_session() {
        let engine = engine(Duration::ZERO);
        let (mut client, socket, task) = open(&engine).await;
        // Unmasked client frame.
        client.write_all(&[0x81, 0x01, b'4']).await.unwrap();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert!(engine.get_socket(socket.id).is_none());
    }
}
