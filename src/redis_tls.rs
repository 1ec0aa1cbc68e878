//! TLS to Redis: the trust roots and the optional client certificate
//! (`FLEETGATE_REDIS_TLS_*`), read once at start-up and handed to both
//! drivers in the form each takes (rustls `ClientConfig` for fred, PEM
//! bytes for redis-rs), and the start-up check that turns a handshake that
//! fails into an error saying which setting to look at.
//!
//! Both drivers use rustls with ring as the crypto provider, chosen here
//! rather than left to whichever provider a dependency enables.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::Config;

/// Why the TLS settings of Redis cannot be used. Each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {}: {err}", path.display())]
    Read { setting: &'static str, path: std::path::PathBuf, err: std::io::Error },
    #[error("{setting}: not PEM certificates: {err}")]
    NotPem { setting: &'static str, err: rustls::pki_types::pem::Error },
    #[error("{setting}: holds no PEM certificate")]
    NoCertificate { setting: &'static str },
    #[error("FLEETGATE_REDIS_TLS_CA_FILE: not a usable CA certificate: {0}")]
    UnusableCa(rustls::Error),
    #[error("no system root certificates found for TLS to Redis: set FLEETGATE_REDIS_TLS_CA_FILE")]
    NoSystemRoots,
    #[error("FLEETGATE_REDIS_TLS_CERT_FILE is set without FLEETGATE_REDIS_TLS_KEY_FILE")]
    CertWithoutKey,
    #[error("FLEETGATE_REDIS_TLS_KEY_FILE is set without FLEETGATE_REDIS_TLS_CERT_FILE")]
    KeyWithoutCert,
    #[error("FLEETGATE_REDIS_TLS_KEY_FILE: no PEM private key: {0}")]
    NoKey(rustls::pki_types::pem::Error),
    #[error("FLEETGATE_REDIS_TLS_CERT_FILE and FLEETGATE_REDIS_TLS_KEY_FILE do not make a pair: {0}")]
    NotAPair(rustls::Error),
    #[error("TLS to Redis: {0}")]
    Protocol(rustls::Error),
}

/// The TLS settings of a Redis target: PEM as read from the files.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// `FLEETGATE_REDIS_TLS_CA_FILE`; `None`: the system roots.
    ca_pem: Option<Vec<u8>>,
    ca_file: Option<String>,
    /// `FLEETGATE_REDIS_TLS_CERT_FILE` and `_KEY_FILE`, for mutual TLS.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

// Keys and certificates stay out of logs and panics.
impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca_file)
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// Makes ring the process's rustls provider. redis-rs builds its rustls
/// configurations with the process default, so this runs before any
/// connection; a second call (tests, or another library first) is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RedisTls {
    /// `rediss://` with no TLS files: the system roots, no client certificate.
    pub fn system_roots() -> Self {
        Self { ca_pem: None, ca_file: None, client: None }
    }

    /// The TLS files the configuration names, read and checked: `None` when
    /// none is set (a `rediss://` target then trusts the system roots).
    pub fn from_config(config: &Config) -> Result<Option<Self>, TlsError> {
        let ca_file = config.redis_tls_ca_file.as_deref();
        let cert_file = config.redis_tls_cert_file.as_deref();
        let key_file = config.redis_tls_key_file.as_deref();
        if ca_file.is_none() && cert_file.is_none() && key_file.is_none() {
            return Ok(None);
        }
        let ca_pem = ca_file.map(|path| read("FLEETGATE_REDIS_TLS_CA_FILE", path)).transpose()?;
        if let Some(pem) = &ca_pem {
            let roots = parse_certificates("FLEETGATE_REDIS_TLS_CA_FILE", pem)?;
            let mut store = RootCertStore::empty();
            for root in roots {
                store.add(root).map_err(TlsError::UnusableCa)?;
            }
        }
        let client = match (cert_file, key_file) {
            (None, None) => None,
            (Some(_), None) => return Err(TlsError::CertWithoutKey),
            (None, Some(_)) => return Err(TlsError::KeyWithoutCert),
            (Some(cert), Some(key)) => {
                let cert = read("FLEETGATE_REDIS_TLS_CERT_FILE", cert)?;
                parse_certificates("FLEETGATE_REDIS_TLS_CERT_FILE", &cert)?;
                let key = read("FLEETGATE_REDIS_TLS_KEY_FILE", key)?;
                PrivateKeyDer::from_pem_slice(&key).map_err(TlsError::NoKey)?;
                Some((cert, key))
            }
        };
        let tls = Self { ca_pem, ca_file: ca_file.map(|p| p.display().to_string()), client };
        // The pair must match, which only a configuration build checks.
        tls.client_config()?;
        Ok(Some(tls))
    }

    /// The rustls configuration (fred's side): the given CA or the system
    /// roots, and the client certificate if any.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for root in parse_certificates("FLEETGATE_REDIS_TLS_CA_FILE", pem)? {
                    roots.add(root).map_err(TlsError::UnusableCa)?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(TlsError::NoSystemRoots);
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = parse_certificates("FLEETGATE_REDIS_TLS_CERT_FILE", cert)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(TlsError::NoKey)?;
                builder.with_client_auth_cert(chain, key).map_err(TlsError::NotAPair)
            }
        }
    }

    /// fred's TLS settings. Certificates are checked against the host name
    /// or address each node is reached by (seeds, `CLUSTER SLOTS`, Sentinel).
    pub fn fred_config(&self) -> Result<fred::types::config::TlsConfig, TlsError> {
        Ok(fred::types::config::TlsConfig {
            connector: fred::types::config::TlsConnector::from(self.client_config()?),
            hostnames: fred::types::config::TlsHostMapping::None,
        })
    }

    /// redis-rs's TLS settings (PEM; `None` roots: the system's).
    pub fn redis_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// Turns a driver's connection error at start-up into one that names the
/// setting to look at (`tls`: the target's TLS settings, `None` for
/// `rediss://` with the system roots).
pub fn explain(tls: Option<&RedisTls>, target: &str, error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    let roots = match tls.and_then(|t| t.ca_file.as_deref()) {
        Some(file) => format!("the CA in FLEETGATE_REDIS_TLS_CA_FILE ({file})"),
        None => "the system root certificates (set FLEETGATE_REDIS_TLS_CA_FILE for a private CA)".to_owned(),
    };
    if lower.contains("certificate") && (lower.contains("unknownissuer") || lower.contains("unknown issuer")) {
        format!("the TLS certificate of Redis at {target} does not verify against {roots}: {error}")
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        format!(
            "the TLS certificate of Redis at {target} is not valid for that name (connect by a name or address the \
             certificate lists): {error}"
        )
    } else if lower.contains("expired") || lower.contains("badsignature") || lower.contains("invalid peer certificate")
    {
        format!("the TLS certificate of Redis at {target} does not verify: {error}")
    } else if lower.contains("certificaterequired")
        || lower.contains("certificate required")
        || lower.contains("handshakefailure")
        || lower.contains("unknownca")
        || lower.contains("bad certificate")
        || lower.contains("badcertificate")
    {
        let has_cert = tls.is_some_and(|t| t.client.is_some());
        if has_cert {
            format!(
                "Redis at {target} refused the client certificate in FLEETGATE_REDIS_TLS_CERT_FILE (is it signed by \
                 the CA Redis trusts?): {error}"
            )
        } else {
            format!(
                "Redis at {target} requires a client certificate: set FLEETGATE_REDIS_TLS_CERT_FILE and \
                 FLEETGATE_REDIS_TLS_KEY_FILE: {error}"
            )
        }
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") || lower.contains("peer") {
        format!("TLS to Redis at {target} failed (is that port serving TLS?): {error}")
    } else {
        format!("cannot reach Redis at {target}: {error}")
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read { setting, path: path.to_owned(), err })
}

fn parse_certificates(setting: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::NotPem { setting, err })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { setting });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        crate::config::Cli::parse_from(std::iter::once("fleetgate").chain(args.iter().copied())).config
    }

    #[test]
    fn missing_or_unparsable_files_name_their_setting() {
        install_crypto_provider();
        let err =
            RedisTls::from_config(&config(&["--redis-tls-ca-file", "/nonexistent/ca.pem"])).unwrap_err().to_string();
        assert!(err.starts_with("FLEETGATE_REDIS_TLS_CA_FILE: cannot read"), "{err}");
        let junk = std::env::temp_dir().join(format!("fleetgate-junk-{}.pem", std::process::id()));
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk_path = junk.to_str().unwrap();
        let err = RedisTls::from_config(&config(&["--redis-tls-ca-file", junk_path])).unwrap_err().to_string();
        assert!(err.contains("FLEETGATE_REDIS_TLS_CA_FILE") && err.contains("no PEM certificate"), "{err}");
        let err = RedisTls::from_config(&config(&["--redis-tls-cert-file", junk_path])).unwrap_err().to_string();
        assert!(err.contains("without FLEETGATE_REDIS_TLS_KEY_FILE"), "{err}");
        let _ = std::fs::remove_file(junk);
        assert_eq!(RedisTls::from_config(&config(&[])).unwrap(), None);
    }

    #[test]
    fn handshake_failures_are_explained_by_setting() {
        let unknown = explain(None, "r:6380", "invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("does not verify against the system root certificates"), "{unknown}");
        let no_cert = explain(None, "r:6380", "received fatal alert: CertificateRequired");
        assert!(no_cert.contains("set FLEETGATE_REDIS_TLS_CERT_FILE"), "{no_cert}");
    }
}
