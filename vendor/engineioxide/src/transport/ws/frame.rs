//! RFC 6455 framing for the server side of a websocket: decoding the
//! masked frames a client sends, and the headers of the unmasked frames a
//! server sends.
//!
//! Server frames are not masked, so one encoded message is the same bytes
//! for every client: only the header (two to ten bytes, a function of the
//! length) is written per frame, the payload is shared. No extension is
//! negotiated (the upgrade answer carries no `Sec-WebSocket-Extensions`),
//! so every RSV bit must be zero.

use bytes::{Bytes, BytesMut};

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why a client's byte stream is not a websocket stream we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("unknown opcode")]
    UnknownOpCode,
    #[error("client frame not masked")]
    Unmasked,
    #[error("fragmented or oversized control frame")]
    BadControlFrame,
    #[error("frame larger than the limit")]
    FrameTooLarge,
    #[error("message larger than the limit")]
    MessageTooLarge,
    #[error("continuation frame without a message")]
    UnexpectedContinuation,
    #[error("new message inside a fragmented one")]
    UnfinishedMessage,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

/// The longest header of a server frame: two bytes plus a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// Writes the header of an unmasked, final frame carrying `len` bytes of
/// payload into `out`; returns how many bytes it took.
pub(crate) fn header(opcode: OpCode, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// One frame whose header has been read and whose payload is complete in
/// the buffer.
#[derive(Debug)]
pub(crate) struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    /// The payload, unmasked.
    pub payload: Bytes,
}

/// Parses one frame from the front of `buf`. `Ok(None)` when `buf` does
/// not hold a whole frame yet; otherwise the frame and the bytes it took.
pub(crate) fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::UnknownOpCode)?;
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = buf.get(2..4) else { return Ok(None) };
            (u16::from_be_bytes([bytes[0], bytes[1]]) as u64, 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else { return Ok(None) };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            (u64::from_be_bytes(be), 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(ProtocolError::BadControlFrame);
    }
    if len > max_frame as u64 {
        return Err(ProtocolError::FrameTooLarge);
    }
    let len = len as usize;
    let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let Some(masked) = buf.get(at..at + len) else { return Ok(None) };
    let mut payload = BytesMut::with_capacity(len);
    payload.extend_from_slice(masked);
    unmask(&mut payload, mask);
    Ok(Some((Frame { fin, opcode, payload: payload.freeze() }, at + len)))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with a fixed key.
    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode.bits()];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn decodes_the_rfc_example() {
        // RFC 6455 §5.7: a masked "Hello".
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (frame, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert!(frame.fin);
        assert_eq!(frame.opcode, OpCode::Text);
        assert_eq!(&frame.payload[..], b"Hello");
    }

    #[test]
    fn waits_for_every_part_of_a_frame() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = client_frame(true, OpCode::Binary, &payload);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut], 1 << 20).unwrap().is_none(), "len {len} cut {cut}");
            }
            let (frame, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(&frame.payload[..], &payload[..]);
        }
    }

    #[test]
    fn refuses_what_a_server_must_refuse() {
        let mut unmasked = client_frame(true, OpCode::Text, b"hi");
        unmasked[1] &= 0x7F;
        assert_eq!(decode(&unmasked, 1024).unwrap_err(), ProtocolError::Unmasked);
        let mut rsv = client_frame(true, OpCode::Text, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(decode(&rsv, 1024).unwrap_err(), ProtocolError::ReservedBits);
        let mut op = client_frame(true, OpCode::Text, b"hi");
        op[0] = 0x83;
        assert_eq!(decode(&op, 1024).unwrap_err(), ProtocolError::UnknownOpCode);
        let ping = client_frame(false, OpCode::Ping, b"");
        assert_eq!(decode(&ping, 1024).unwrap_err(), ProtocolError::BadControlFrame);
        let big_ping = client_frame(true, OpCode::Ping, &[0; 126]);
        assert_eq!(decode(&big_ping, 1024).unwrap_err(), ProtocolError::BadControlFrame);
        let big = client_frame(true, OpCode::Text, &[b'a'; 2000]);
        assert_eq!(decode(&big[..4], 1024).unwrap_err(), ProtocolError::FrameTooLarge);
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header(OpCode::Text, 125, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 125]);
        assert_eq!(header(OpCode::Binary, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
        assert_eq!(header(OpCode::Text, 65_536, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
