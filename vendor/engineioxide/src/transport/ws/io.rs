//! Reading messages from and writing frames to a websocket stream, with no
//! buffer held per connection while it is idle.
//!
//! [`Reader`] reads into a buffer shared by every connection of a thread and
//! keeps only the bytes of an incomplete frame. [`Writer`] queues outgoing
//! frames as a few header bytes plus a shared payload (the `Str` or `Bytes`
//! of the packet, never copied) and writes everything queued with one
//! vectored write.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use engineioxide_core::{Packet, ProtocolVersion, Str};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, MAX_HEADER, OpCode, ProtocolError};
use crate::errors::Error;

/// A whole message from the client.
#[derive(Debug)]
pub(crate) enum Message {
    Text(Str),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// Bytes read per call. Frames from clients are small; a larger frame
/// takes several reads.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Every connection of a thread reads through this one buffer.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// The read side of a connection.
pub(crate) struct Reader {
    /// An incomplete frame: empty, with nothing allocated, between frames.
    partial: Vec<u8>,
    /// A fragmented message so far, and its opcode.
    message: Option<(OpCode, BytesMut)>,
    /// Messages read but not yet taken.
    ready: VecDeque<Message>,
    max_frame: usize,
    max_message: usize,
}

impl Reader {
    pub(crate) fn new(max_frame: usize, max_message: usize) -> Self {
        Self {
            partial: Vec::new(),
            message: None,
            ready: VecDeque::new(),
            max_frame,
            max_message,
        }
    }

    /// The next message; `None` at the end of the stream.
    pub(crate) fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<Result<Option<Message>, Error>> {
        loop {
            if let Some(msg) = self.ready.pop_front() {
                if self.ready.is_empty() && self.ready.capacity() > 8 {
                    self.ready = VecDeque::new();
                }
                return Poll::Ready(Ok(Some(msg)));
            }
            let read = SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(false)),
                    Poll::Ready(Ok(())) => Poll::Ready(self.ingest(rb.filled()).map(|()| true)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => Poll::Pending,
                }
            });
            if !ready!(read)? {
                return Poll::Ready(Ok(None));
            }
        }
    }

    /// Takes freshly read bytes.
    fn ingest(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.partial.is_empty() {
            let used = self.decode(data)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.decode(&buf)?;
            buf.drain(..used);
            if buf.is_empty() && buf.capacity() > SCRATCH {
                buf = Vec::new();
            }
            self.partial = buf;
        }
        Ok(())
    }

    /// Decodes every whole frame at the front of `buf`; returns the bytes used.
    fn decode(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let mut used = 0;
        while let Some((frame, n)) = frame::decode(&buf[used..], self.max_frame)? {
            used += n;
            self.on_frame(frame)?;
        }
        Ok(used)
    }

    fn on_frame(&mut self, frame: frame::Frame) -> Result<(), Error> {
        match frame.opcode {
            OpCode::Ping => self.ready.push_back(Message::Ping(frame.payload)),
            OpCode::Pong => self.ready.push_back(Message::Pong),
            OpCode::Close => self.ready.push_back(Message::Close),
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::UnfinishedMessage.into());
                }
                if frame.payload.len() > self.max_message {
                    return Err(ProtocolError::MessageTooLarge.into());
                }
                if frame.fin {
                    self.complete(frame.opcode, frame.payload)?;
                } else {
                    self.message = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                }
            }
            OpCode::Continuation => {
                let Some((opcode, mut parts)) = self.message.take() else {
                    return Err(ProtocolError::UnexpectedContinuation.into());
                };
                if parts.len() + frame.payload.len() > self.max_message {
                    return Err(ProtocolError::MessageTooLarge.into());
                }
                parts.extend_from_slice(&frame.payload);
                if frame.fin {
                    self.complete(opcode, parts.freeze())?;
                } else {
                    self.message = Some((opcode, parts));
                }
            }
        }
        Ok(())
    }

    fn complete(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), Error> {
        let msg = if opcode == OpCode::Text {
            if std::str::from_utf8(&payload).is_err() {
                return Err(ProtocolError::InvalidUtf8.into());
            }
            // SAFETY: checked to be valid UTF-8 just above.
            Message::Text(unsafe { Str::from_bytes_unchecked(payload) })
        } else {
            Message::Binary(payload)
        };
        self.ready.push_back(msg);
        Ok(())
    }
}

/// The payload of a queued frame: shared, never copied.
enum Body {
    Empty,
    Str(Str),
    Bytes(Bytes),
}

impl Body {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Str(s) => s.as_bytes(),
            Body::Bytes(b) => b,
        }
    }
}

/// A queued frame: its header (plus the Engine.IO packet type byte, where
/// the payload is a message) and its payload.
struct Frame {
    head: [u8; MAX_HEADER + 1],
    head_len: u8,
    body: Body,
}

impl Frame {
    fn new(opcode: OpCode, prefix: Option<u8>, body: Body) -> Self {
        let mut head = [0u8; MAX_HEADER + 1];
        let mut h = [0u8; MAX_HEADER];
        let len = body.as_bytes().len() + usize::from(prefix.is_some());
        let n = frame::header(opcode, len, &mut h);
        head[..n].copy_from_slice(&h[..n]);
        let mut head_len = n;
        if let Some(p) = prefix {
            head[n] = p;
            head_len += 1;
        }
        Self {
            head,
            head_len: head_len as u8,
            body,
        }
    }

    fn len(&self) -> usize {
        self.head_len as usize + self.body.as_bytes().len()
    }
}

/// The most slices one vectored write takes (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 128;

/// The write side of a connection.
pub(crate) struct Writer {
    queue: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    sent: usize,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            sent: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues an Engine.IO packet as its websocket frame.
    pub(crate) fn push_packet(&mut self, packet: Packet, protocol: ProtocolVersion) {
        let frame = match packet {
            // Sent to end a pending polling request during an upgrade;
            // nothing to send on a websocket.
            Packet::Noop => return,
            Packet::Message(msg) => Frame::new(OpCode::Text, Some(b'4'), Body::Str(msg)),
            Packet::Binary(bin) | Packet::BinaryV3(bin) if protocol == ProtocolVersion::V3 => {
                // v3 binary frames start with the packet type.
                Frame::new(OpCode::Binary, Some(0x04), Body::Bytes(bin))
            }
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                Frame::new(OpCode::Binary, None, Body::Bytes(bin))
            }
            p => Frame::new(OpCode::Text, None, Body::Bytes(Bytes::from(String::from(p)))),
        };
        self.queue.push_back(frame);
    }

    /// Queues a websocket control frame.
    pub(crate) fn push_control(&mut self, opcode: OpCode, payload: Bytes) {
        let body = if payload.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(payload)
        };
        self.queue.push_back(Frame::new(opcode, None, body));
    }

    /// Queues a close frame with status 1000 (normal closure).
    pub(crate) fn push_close(&mut self) {
        const NORMAL_CLOSURE: [u8; 2] = 1000u16.to_be_bytes();
        self.push_control(OpCode::Close, Bytes::from_static(&NORMAL_CLOSURE));
    }

    /// Writes everything queued; ready once it has all gone.
    pub(crate) fn poll_flush<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (i, f) in self.queue.iter().enumerate() {
                if n + 2 > MAX_SLICES {
                    break;
                }
                let skip = if i == 0 { self.sent } else { 0 };
                let head = &f.head[..f.head_len as usize];
                if skip < head.len() {
                    slices[n] = io::IoSlice::new(&head[skip..]);
                    n += 1;
                }
                let body = f.body.as_bytes();
                let body_skip = skip.saturating_sub(head.len());
                if body_skip < body.len() {
                    slices[n] = io::IoSlice::new(&body[body_skip..]);
                    n += 1;
                }
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        if self.queue.capacity() > 0 {
            // An idle connection holds no frame slots.
            self.queue = VecDeque::new();
        }
        Pin::new(&mut *io).poll_flush(cx)
    }

    /// Writes everything queued, giving up after `bound`; whether the
    /// write ended (done or failed) within it.
    pub(crate) async fn flush_within<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        bound: std::time::Duration,
    ) -> bool {
        let flush = std::future::poll_fn(|cx| self.poll_flush(cx, io));
        tokio::time::timeout(bound, flush).await.is_ok()
    }

    fn advance(&mut self, mut written: usize) {
        while let Some(front) = self.queue.front() {
            let left = front.len() - self.sent;
            if written < left {
                self.sent += written;
                return;
            }
            written -= left;
            self.sent = 0;
            self.queue.pop_front();
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::WsProtocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_queued_frames_in_order_in_few_writes() {
        let (mut server, mut client) = tokio::io::duplex(1 << 16);
        let mut w = Writer::new();
        w.push_packet(Packet::Message(Str::from("hello")), ProtocolVersion::V4);
        w.push_packet(Packet::Noop, ProtocolVersion::V4);
        w.push_packet(Packet::Ping, ProtocolVersion::V4);
        let long = "x".repeat(300);
        w.push_packet(Packet::Message(Str::from(long.clone())), ProtocolVersion::V4);
        poll_fn(|cx| w.poll_flush(cx, &mut server)).await.unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut want = vec![0x81, 6, b'4'];
        want.extend_from_slice(b"hello");
        want.extend_from_slice(&[0x81, 1, b'2']);
        want.extend_from_slice(&[0x81, 126, 1, 45, b'4']);
        want.extend_from_slice(long.as_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn a_partial_write_resumes_where_it_stopped() {
        let mut w = Writer::new();
        w.push_packet(Packet::Message(Str::from("abc")), ProtocolVersion::V4);
        w.push_packet(Packet::Message(Str::from("def")), ProtocolVersion::V4);
        w.advance(3);
        assert_eq!(w.sent, 3);
        w.advance(3);
        assert_eq!(w.queue.len(), 1);
        assert_eq!(w.sent, 0);
        w.advance(6);
        assert!(w.is_empty());
    }

    #[test]
    fn reassembles_fragments_and_keeps_control_frames_between() {
        let mask = [1u8, 2, 3, 4];
        let frame = |b0: u8, payload: &[u8]| {
            let mut v = vec![b0, 0x80 | payload.len() as u8];
            v.extend_from_slice(&mask);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            v
        };
        let mut bytes = frame(0x01, b"4hel");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b"lo"));
        let mut r = Reader::new(1 << 20, 1 << 20);
        // Byte by byte: every split point of the stream.
        for b in &bytes {
            r.ingest(std::slice::from_ref(b)).unwrap();
        }
        assert!(matches!(r.ready.pop_front(), Some(Message::Ping(p)) if &p[..] == b"p"));
        assert!(matches!(r.ready.pop_front(), Some(Message::Text(t)) if t.as_str() == "4hello"));
        assert!(r.partial.is_empty());
    }

    #[test]
    fn refuses_invalid_utf8_and_oversized_messages() {
        let mask = [0u8; 4];
        let frame = |b0: u8, payload: &[u8]| {
            let mut v = vec![b0, 0x80 | payload.len() as u8];
            v.extend_from_slice(&mask);
            v.extend_from_slice(payload);
            v
        };
        let mut r = Reader::new(1 << 20, 1 << 20);
        assert!(r.ingest(&frame(0x81, &[0xff, 0xfe])).is_err());
        let mut r = Reader::new(1 << 20, 4);
        let mut bytes = frame(0x01, b"123");
        bytes.extend(frame(0x80, b"45"));
        assert!(r.ingest(&bytes).is_err());
    }
}
