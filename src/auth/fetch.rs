//! The bounded HTTPS GET a JWKS is fetched with: connect and total
//! timeouts, a size limit, a few redirects (never to plain HTTP), TLS by
//! rustls against the system's CA certificates. Also where a JWKS URL is
//! checked at start-up.

use std::{net::IpAddr, sync::Arc, time::Duration};

use reqwest::{Url, redirect};

use super::load::KeyError;

/// Largest JWKS document read; a provider's set is a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the whole request, body included: a verifying token waits on it.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 3;

/// Why a fetch brought no document.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// An HTTP client for one JWKS URL.
pub struct Fetcher {
    client: reqwest::Client,
    url: Url,
}

/// `FLEETGATE_JWT_JWKS_URL` checked: an absolute `https://` URL, or
/// `http://` to a loopback address only (a JWKS fetched in the clear can
/// be replaced on the way, and with it every token's trust); no
/// credentials in it, since the URL is logged.
pub fn jwks_url(value: &str) -> Result<Url, KeyError> {
    let bad = |why: &str| KeyError::JwksUrl { why: why.to_owned() };
    let url = Url::parse(value.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not supported (a JWKS is public, and the URL is logged)"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(bad("http:// is accepted for loopback addresses only; use https://")),
        other => Err(bad(&format!("scheme {other}: expected https://"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    // IPv6 hosts come bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Fetcher {
    pub fn new(url: Url) -> Result<Self, KeyError> {
        let tls = tls_config(url.scheme() == "https")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            .redirect(redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if attempt.url().scheme() != "https" && !is_loopback(attempt.url()) {
                    attempt.error("redirect to a non-https address refused")
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("fleetgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KeyError::JwksClient(e.to_string()))?;
        Ok(Self { client, url })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The document's bytes, read up to [`MAX_JWKS_BYTES`].
    pub async fn get(&self) -> Result<Vec<u8>, FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// rustls with the ring provider, given explicitly so the client never
/// depends on a process-wide default, and the system's CA certificates
/// (which honour `SSL_CERT_FILE` / `SSL_CERT_DIR` for a private CA).
/// Also the webhook client's. With `https`, finding no CA certificate is
/// an error.
pub fn tls_config(https: bool) -> Result<rustls::ClientConfig, KeyError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if https && added == 0 {
        return Err(KeyError::JwksClient(
            "no CA certificates found on this system (install ca-certificates, or point SSL_CERT_FILE at a PEM bundle)"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KeyError::JwksClient(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let ok = |s: &str| jwks_url(s).map(|u| u.to_string()).map_err(|e| e.to_string());
        assert!(ok("https://id.example.com/realms/fleet/protocol/openid-connect/certs").is_ok());
        assert!(ok("http://127.0.0.1:8080/jwks.json").is_ok());
        assert!(ok("http://localhost/jwks.json").is_ok());
        assert!(ok("http://[::1]:9/jwks").is_ok());
        for (bad, says) in [
            ("http://keycloak.auth.svc/certs", "loopback"),
            ("ftp://example.com/jwks", "scheme ftp"),
            ("not a url", "FLEETGATE_JWT_JWKS_URL"),
            ("https://user:pw@example.com/jwks", "credentials"),
            ("/jwks.json", "FLEETGATE_JWT_JWKS_URL"),
        ] {
            let e = ok(bad).unwrap_err();
            assert!(e.contains(says) && e.contains("FLEETGATE_JWT_JWKS_URL"), "{bad}: {e}");
        }
    }
}
