//! HS256 tokens with the contract's claims, minted locally so no token
//! endpoint sits in the measured path.

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    fleet: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle: Option<&'a str>,
    exp: u64,
}

pub struct Minter {
    key: EncodingKey,
    header: Header,
    exp: u64,
}

impl Minter {
    /// Tokens live an hour: longer than any run, short enough not to matter if one leaks from a log.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(!secret.is_empty(), "empty JWT secret: pass --secret or set FLEETGATE_JWT_SECRET");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("clock")?.as_secs();
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            exp: now + 3600,
        })
    }

    pub fn mint(&self, role: &str, sub: &str, fleet: &str) -> anyhow::Result<String> {
        let vehicle = (role == "vehicle").then_some(sub);
        jsonwebtoken::encode(&self.header, &Claims { sub, fleet, role, vehicle, exp: self.exp }, &self.key)
            .context("signing a token")
    }

    /// The handshake `auth` object.
    pub fn auth(&self, role: &str, sub: &str, fleet: &str) -> anyhow::Result<String> {
        Ok(serde_json::json!({ "token": self.mint(role, sub, fleet)? }).to_string())
    }
}
