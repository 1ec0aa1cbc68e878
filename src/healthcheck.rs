//! `fleetgate healthcheck`: asks the local server's `/healthz` and exits 0
//! when it answers 200. Container runtimes run it as the image's health
//! check, and the runtime image has no shell or curl to do it otherwise.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach a server listening on `listen`: a wildcard address is
/// reached on loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Whether `GET /healthz` on `addr` answers 200 within the timeout.
pub async fn check(addr: SocketAddr) -> Result<(), String> {
    tokio::time::timeout(TIMEOUT, ask(addr)).await.map_err(|_| format!("no answer from {addr} within {TIMEOUT:?}"))?
}

async fn ask(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("/healthz answered {code}")),
        None => Err("/healthz: no HTTP status".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(target("0.0.0.0:3000".parse().unwrap()), "127.0.0.1:3000".parse().unwrap());
        assert_eq!(target("[::]:3000".parse().unwrap()), "[::1]:3000".parse().unwrap());
        assert_eq!(target("10.0.0.7:80".parse().unwrap()), "10.0.0.7:80".parse().unwrap());
    }
}
