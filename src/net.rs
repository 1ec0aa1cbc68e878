//! Accepted TCP connections: the listener that sets `TCP_NODELAY` and
//! guards every connection against a peer that stops reading.
//!
//! A write that makes no progress for `FLEETGATE_WRITE_TIMEOUT_SECS` ends
//! the connection (both directions shut down, so its reader sees the end
//! too). Engine.IO's websocket writer blocks inside a write to a peer that
//! stopped reading and only notices a closed session between writes, so
//! without this such a connection, its buffers and its session would live
//! until the peer went away by itself.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

/// The gateway's listener (see the module docs).
pub struct Listener {
    inner: TcpListener,
    write_timeout: Duration,
}

impl Listener {
    pub fn new(inner: TcpListener, write_timeout: Duration) -> Self {
        Self { inner, write_timeout }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Positions are small frames that must leave at once:
                    // without it, Nagle holds a frame sent right after
                    // another until the peer's delayed ACK (about 40 ms).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    return (Guarded { tcp, timeout: self.write_timeout, stalled: None, dead: false }, addr);
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
        metrics::counter!(crate::metrics::names::WRITE_TIMEOUTS).increment(1);
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
