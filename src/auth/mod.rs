//! Who a client is: JWT verification (section 2 of the contract), the roles
//! a token can carry, and minting tokens for operators and the demo.

mod keys;
mod token;

pub use keys::{KeyError, Keys};
pub use token::{Claims, Role};

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::Serialize;

use crate::{
    config::Config,
    error::{ApiError, ErrorCode},
    ids,
};

/// Tokens longer than this are refused unread: no legitimate claim set is
/// this large, and parsing attacker-sized input is work for nothing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verifies tokens with the configured key and a fixed algorithm list.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
}

impl Authenticator {
    pub fn new(keys: Keys, config: &Config) -> Self {
        let mut validation = Validation::new(keys.algorithm());
        // One algorithm only: the key decides it, the token header never does.
        validation.algorithms = vec![keys.algorithm()];
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self { keys, validation }
    }

    /// Checks a token and returns its claims, or the contract's code for why not.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::new(ErrorCode::InvalidToken, "token too large"));
        }
        let data = jsonwebtoken::decode::<token::RawClaims>(token, self.keys.decoding(), &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::new(ErrorCode::TokenExpired, "token has expired"),
                ErrorKind::ImmatureSignature => ApiError::new(ErrorCode::InvalidToken, "token is not valid yet"),
                ErrorKind::InvalidIssuer => ApiError::new(ErrorCode::InvalidToken, "wrong issuer"),
                ErrorKind::InvalidAudience => ApiError::new(ErrorCode::InvalidToken, "wrong audience"),
                ErrorKind::InvalidSignature => ApiError::new(ErrorCode::InvalidToken, "bad signature"),
                ErrorKind::InvalidAlgorithm => ApiError::new(ErrorCode::InvalidToken, "algorithm not accepted"),
                ErrorKind::MissingRequiredClaim(c) => {
                    ApiError::new(ErrorCode::InvalidToken, format!("missing claim {c}"))
                }
                _ => ApiError::new(ErrorCode::InvalidToken, "malformed token"),
            },
        )?;
        data.claims.validate()
    }

    /// Mints a token for `claims` (their `exp` included); needs a signing
    /// key (HS256 secret or a private key file).
    pub fn mint(&self, claims: &Claims, config: &Config) -> Result<String, KeyError> {
        #[derive(Serialize)]
        struct Out<'a> {
            sub: &'a str,
            fleet: &'a str,
            role: Role,
            #[serde(skip_serializing_if = "Option::is_none")]
            vehicle: Option<&'a str>,
            exp: i64,
            iat: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let now = ids::now_ms() / 1000;
        let out = Out {
            sub: &claims.sub,
            fleet: &claims.fleet,
            role: claims.role,
            vehicle: claims.vehicle.as_deref(),
            exp: claims.exp,
            iat: now,
            iss: config.jwt_issuer.as_deref(),
            aud: config.jwt_audience.as_deref(),
        };
        let key = self.keys.encoding().ok_or(KeyError::NoSigningKey)?;
        let header = Header::new(self.keys.algorithm());
        jsonwebtoken::encode(&header, &out, key).map_err(|e| KeyError::Sign(e.to_string()))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.keys.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["fleetgate"];
        args.extend_from_slice(extra);
        crate::config::Cli::parse_from(args).config
    }

    fn auth(cfg: &Config) -> Authenticator {
        Authenticator::new(Keys::hs256(b"test-secret".to_vec()), cfg)
    }

    fn claims(role: Role) -> Claims {
        Claims { sub: "bus-1".into(), fleet: "demo".into(), role, vehicle: None, exp: ids::now_ms() / 1000 + 60 }
    }

    #[test]
    fn round_trip_and_vehicle_defaults_to_sub() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        let t = a.mint(&claims(Role::Vehicle), &cfg).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.fleet, "demo");
        assert_eq!(c.vehicle.as_deref(), Some("bus-1"));
    }

    #[test]
    fn rejects_alg_none_and_other_secrets() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZmxlZXQiOiJkZW1vIiwicm9sZSI6InZpZXdlciIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(a.verify(none).unwrap_err().code, ErrorCode::InvalidToken);
        let other = Authenticator::new(Keys::hs256(b"other".to_vec()), &cfg);
        let t = other.mint(&claims(Role::Viewer), &cfg).unwrap();
        assert_eq!(a.verify(&t).unwrap_err().code, ErrorCode::InvalidToken);
        assert_eq!(a.verify("garbage").unwrap_err().code, ErrorCode::InvalidToken);
        assert_eq!(a.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err().code, ErrorCode::InvalidToken);
    }

    #[test]
    fn enforces_issuer_and_audience() {
        let strict = config(&["--jwt-issuer", "fleet-auth", "--jwt-audience", "fleetgate"]);
        let lax = config(&[]);
        let t = auth(&lax).mint(&claims(Role::Viewer), &lax).unwrap();
        assert_eq!(auth(&strict).verify(&t).unwrap_err().code, ErrorCode::InvalidToken);
        let t = auth(&strict).mint(&claims(Role::Viewer), &strict).unwrap();
        auth(&strict).verify(&t).unwrap();
    }
}
