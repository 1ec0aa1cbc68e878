//! Loading the verification (and, for `fleetgate token`, signing) keys.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no token key configured: set FLEETGATE_JWT_SECRET (HS256) or FLEETGATE_JWT_PUBLIC_KEY_FILE (RS256/ES256 PEM), or run with --demo"
    )]
    Missing,
    #[error("FLEETGATE_JWT_SECRET is set but empty")]
    EmptySecret,
    #[error("set only one of FLEETGATE_JWT_SECRET and FLEETGATE_JWT_PUBLIC_KEY_FILE")]
    Both,
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path} is neither an RSA nor an EC (P-256) public key in PEM form")]
    BadPublicKey { path: String },
    #[error("{path} is not a private key matching the public key's algorithm")]
    BadPrivateKey { path: String },
    #[error("minting needs a signing key: FLEETGATE_JWT_SECRET or FLEETGATE_JWT_PRIVATE_KEY_FILE")]
    NoSigningKey,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// HS256 secrets shorter than this are weak (RFC 7518 §3.2 asks for at
/// least the hash size); they are accepted with a warning.
const MIN_SECRET_BYTES: usize = 32;

/// The key material of one deployment.
pub struct Keys {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
}

impl Keys {
    pub fn hs256(secret: Vec<u8>) -> Self {
        Self {
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(&secret),
            encoding: Some(EncodingKey::from_secret(&secret)),
        }
    }

    /// Keys from configuration. In demo mode without configured keys a
    /// random secret is generated (tokens then come from the demo endpoint).
    pub fn from_config(config: &Config) -> Result<Self, KeyError> {
        match (&config.jwt_secret, &config.jwt_public_key_file) {
            (Some(_), Some(_)) => Err(KeyError::Both),
            (Some(secret), None) if secret.is_empty() => Err(KeyError::EmptySecret),
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    tracing::warn!(
                        "FLEETGATE_JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes: tokens are easy to forge"
                    );
                }
                Ok(Self::hs256(secret.as_bytes().to_vec()))
            }
            (None, Some(path)) => Self::from_pem(path, config.jwt_private_key_file.as_deref()),
            (None, None) if config.demo => {
                let secret: [u8; 32] = rand::random();
                Ok(Self::hs256(secret.to_vec()))
            }
            (None, None) => Err(KeyError::Missing),
        }
    }

    fn from_pem(public: &std::path::Path, private: Option<&std::path::Path>) -> Result<Self, KeyError> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|err| KeyError::Read { path: p.display().to_string(), err });
        let pem = read(public)?;
        let (algorithm, decoding) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else {
            return Err(KeyError::BadPublicKey { path: public.display().to_string() });
        };
        let encoding = match private {
            None => None,
            Some(p) => {
                let pem = read(p)?;
                let key = match algorithm {
                    Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                    _ => EncodingKey::from_ec_pem(&pem),
                };
                Some(key.map_err(|_| KeyError::BadPrivateKey { path: p.display().to_string() })?)
            }
        };
        Ok(Self { algorithm, decoding, encoding })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(super) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    pub(super) fn encoding(&self) -> Option<&EncodingKey> {
        self.encoding.as_ref()
    }
}
