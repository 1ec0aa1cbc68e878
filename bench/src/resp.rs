//! A few Redis commands over RESP without a client library: seeding a
//! fleet's geofences in their stored form and reading back which ones
//! the vehicles' last fixes are inside.

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Debug, PartialEq)]
pub enum Reply {
    Nil,
    Int(i64),
    Text(Vec<u8>),
    Error(String),
    Array(Vec<Reply>),
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .context("redis connect timed out")?
            .with_context(|| format!("connecting to redis at {addr}"))?;
        Ok(Self { stream, buf: Vec::new() })
    }

    /// Sends every command at once and reads their replies, in order.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> anyhow::Result<Vec<Reply>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&out).await.context("writing to redis")?;
        let mut replies = Vec::with_capacity(commands.len());
        let mut at = 0;
        while replies.len() < commands.len() {
            match parse(&self.buf, at)? {
                Some((reply, next)) => {
                    replies.push(reply);
                    at = next;
                }
                None => {
                    let mut chunk = [0u8; 65536];
                    let n = self.stream.read(&mut chunk).await.context("reading from redis")?;
                    if n == 0 {
                        bail!("redis closed the connection");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        self.buf.drain(..at);
        Ok(replies)
    }
}

/// One reply from `at`, and where the next begins; `None` while incomplete.
fn parse(buf: &[u8], at: usize) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(eol) = buf.get(at..).and_then(|b| b.windows(2).position(|w| w == b"\r\n")) else { return Ok(None) };
    let line = std::str::from_utf8(&buf[at + 1..at + eol]).context("redis reply is not UTF-8")?;
    let next = at + eol + 2;
    let number = || line.parse::<i64>().with_context(|| format!("redis reply: {line}"));
    Ok(match buf[at] {
        b'+' => Some((Reply::Text(line.as_bytes().to_vec()), next)),
        b'-' => Some((Reply::Error(line.to_owned()), next)),
        b':' => Some((Reply::Int(number()?), next)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Some((Reply::Text(buf[next..end].to_vec()), end + 2))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = next;
            for _ in 0..n {
                let Some((item, after)) = parse(buf, pos)? else { return Ok(None) };
                items.push(item);
                pos = after;
            }
            Some((Reply::Array(items), pos))
        }
        other => bail!("unexpected redis reply type {:?}", other as char),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let buf = b"*3\r\n$3\r\nabc\r\n$-1\r\n:7\r\n+OK\r\n-ERR no\r\n";
        let (a, next) = parse(buf, 0).unwrap().unwrap();
        assert_eq!(a, Reply::Array(vec![Reply::Text(b"abc".to_vec()), Reply::Nil, Reply::Int(7)]));
        let (b, next) = parse(buf, next).unwrap().unwrap();
        assert_eq!(b, Reply::Text(b"OK".to_vec()));
        assert_eq!(parse(buf, next).unwrap().unwrap().0, Reply::Error("ERR no".into()));
        assert!(parse(b"$5\r\nab", 0).unwrap().is_none());
        assert!(parse(b"*2\r\n:1\r\n", 0).unwrap().is_none());
    }
}
