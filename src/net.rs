//! Accepted TCP connections: the listener that sets `TCP_NODELAY`, guards
//! every connection against a peer that stops reading and, where asked,
//! holds at most so many connections open at once.
//!
//! A write that makes no progress for `FLEETGATE_WRITE_TIMEOUT_SECS` ends
//! the connection (both directions shut down, so its reader sees the end
//! too). Engine.IO's websocket writer blocks inside a write to a peer that
//! stopped reading and only notices a closed session between writes, so
//! without this such a connection, its buffers and its session would live
//! until the peer went away by itself.
//!
//! A capped listener takes a place before it accepts, and the connection
//! gives it back when it closes: at the cap, new connections wait in the
//! kernel's accept queue instead of taking a descriptor each, so a flood
//! on one listener cannot starve the process's other listeners. While the
//! queue has room a waiting peer's connect succeeds and its request is
//! read once a place frees up; past that the kernel drops new attempts
//! and the peer's TCP retries them.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

use crate::metrics::{ListenerKind, names};

/// The gateway's listener (see the module docs).
pub struct Listener {
    inner: TcpListener,
    write_timeout: Duration,
    cap: Option<Cap>,
}

/// A listener's bound on open connections, and the label they count under.
struct Cap {
    /// `None`: counted, not bounded. Never closed, so acquiring only waits.
    places: Option<Arc<Semaphore>>,
    kind: ListenerKind,
}

impl Listener {
    pub fn new(inner: TcpListener, write_timeout: Duration) -> Self {
        Self { inner, write_timeout, cap: None }
    }

    /// Holds at most `max` connections open at once (0 = no bound), counted
    /// in `fleetgate_listener_connections{listener}`.
    pub fn capped(mut self, max: usize, kind: ListenerKind) -> Self {
        let places = (max > 0).then(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))));
        self.cap = Some(Cap { places, kind });
        self
    }
}

impl Cap {
    /// A place for the next connection, waiting for one to close at the cap.
    async fn place(&self) -> Option<OwnedSemaphorePermit> {
        let places = self.places.as_ref()?;
        if let Ok(place) = places.clone().try_acquire_owned() {
            return Some(place);
        }
        metrics::counter!(names::LISTENER_CAP_REACHED, "listener" => self.kind).increment(1);
        tracing::debug!(listener = self.kind.as_str(), "connection cap reached: accepting when one closes");
        places.clone().acquire_owned().await.ok()
    }
}

/// An accepted connection's share of its listener's cap: the place goes
/// back, and the gauge down, when the connection is dropped.
struct Open {
    _place: Option<OwnedSemaphorePermit>,
    kind: ListenerKind,
}

impl Open {
    fn new(place: Option<OwnedSemaphorePermit>, kind: ListenerKind) -> Self {
        metrics::gauge!(names::LISTENER_CONNECTIONS, "listener" => kind).increment(1.0);
        Self { _place: place, kind }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(names::LISTENER_CONNECTIONS, "listener" => self.kind).decrement(1.0);
    }
}

impl axum::serve::Listener for Listener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        // Taken before accepting: at the cap the connection stays queued in
        // the kernel, where it costs this process nothing.
        let mut place = match &self.cap {
            Some(cap) => cap.place().await,
            None => None,
        };
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Positions are small frames that must leave at once:
                    // without it, Nagle holds a frame sent right after
                    // another until the peer's delayed ACK (about 40 ms).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    let open = self.cap.as_ref().map(|cap| Open::new(place.take(), cap.kind));
                    let guarded = Guarded { tcp, timeout: self.write_timeout, stalled: None, dead: false, _open: open };
                    return (guarded, addr);
                }
                // Out of descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as handlers see it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, Listener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A connection whose writes may not stall for longer than its timeout.
pub struct Guarded {
    tcp: TcpStream,
    timeout: Duration,
    /// Armed while writes are blocked.
    stalled: Option<Pin<Box<Sleep>>>,
    dead: bool,
    /// Its place under the listener's cap, if the listener has one.
    _open: Option<Open>,
}

impl Guarded {
    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")
    }

    /// Passes a write's outcome through, timing how long it stays pending.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        self.dead = true;
        self.stalled = None;
        metrics::counter!(names::WRITE_TIMEOUTS).increment(1);
        // Wakes the connection's reader as well, which then ends the session.
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Both);
        Poll::Ready(Err(Self::timed_out()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.dead {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
