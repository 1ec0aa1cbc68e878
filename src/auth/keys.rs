//! The key set tokens are verified with: every key under its key id (`kid`)
//! and bound to the one algorithm it verifies, and the one key
//! `fleetgate token` signs with. Which key may verify a given token is
//! decided here; reading the keys from configuration is `load.rs`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// One key that verifies tokens.
pub struct VerifyingKey {
    /// `None` only for the plain `FLEETGATE_JWT_SECRET`, which predates key ids.
    pub(super) kid: Option<String>,
    /// The only algorithm this key verifies. The key fixes it, so a token's
    /// `alg` header can never make a public key act as an HMAC secret.
    pub(super) algorithm: Algorithm,
    pub(super) decoding: DecodingKey,
}

/// The key new tokens are signed with.
pub struct SigningKey {
    /// Written into the header, so verifiers holding several keys find this one.
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) encoding: EncodingKey,
}

/// The key material of one deployment.
pub struct Keys {
    pub(super) verifying: Vec<VerifyingKey>,
    pub(super) signing: Option<SigningKey>,
}

/// The token names a key id that is not configured.
#[derive(Debug)]
pub(super) struct UnknownKid;

impl Keys {
    /// One HS256 secret without a key id that both signs and verifies.
    pub fn hs256(secret: Vec<u8>) -> Self {
        Self {
            verifying: vec![VerifyingKey {
                kid: None,
                algorithm: Algorithm::HS256,
                decoding: DecodingKey::from_secret(&secret),
            }],
            signing: Some(SigningKey {
                kid: None,
                algorithm: Algorithm::HS256,
                encoding: EncodingKey::from_secret(&secret),
            }),
        }
    }

    /// `kid (alg)` of every verification key, for the startup log.
    pub(super) fn describe(&self) -> Vec<String> {
        self.verifying
            .iter()
            .map(|k| format!("{} ({:?})", k.kid.as_deref().unwrap_or("<no kid>"), k.algorithm))
            .collect()
    }

    /// The keys that may verify a token whose header carries `kid`:
    ///
    /// - a single configured key verifies every token, whatever `kid` an
    ///   issuer writes (deployments from before key rotation keep working);
    /// - otherwise a token with a `kid` is verified by that key alone, and
    ///   an unknown `kid` by none;
    /// - a token without `kid` may be verified by any key (tokens minted
    ///   before rotation have none, and must stay valid while it runs).
    ///
    /// The caller still skips keys whose algorithm differs from the token's.
    pub(super) fn candidates(&self, kid: Option<&str>) -> Result<&[VerifyingKey], UnknownKid> {
        match (kid, self.verifying.as_slice()) {
            (_, [_]) | (None, _) => Ok(&self.verifying),
            (Some(kid), all) => {
                all.iter().position(|k| k.kid.as_deref() == Some(kid)).map(|i| &all[i..=i]).ok_or(UnknownKid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: Option<&str>) -> VerifyingKey {
        VerifyingKey {
            kid: kid.map(str::to_owned),
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(b"x"),
        }
    }

    fn kids(keys: &[VerifyingKey]) -> Vec<Option<&str>> {
        keys.iter().map(|k| k.kid.as_deref()).collect()
    }

    #[test]
    fn one_key_verifies_whatever_the_kid() {
        let keys = Keys { verifying: vec![key(Some("a"))], signing: None };
        assert_eq!(kids(keys.candidates(Some("other")).unwrap()), [Some("a")]);
        assert_eq!(kids(keys.candidates(None).unwrap()), [Some("a")]);
    }

    #[test]
    fn several_keys_bind_the_kid() {
        let keys = Keys { verifying: vec![key(None), key(Some("a")), key(Some("b"))], signing: None };
        assert_eq!(kids(keys.candidates(Some("b")).unwrap()), [Some("b")]);
        assert!(matches!(keys.candidates(Some("c")), Err(UnknownKid)));
        assert_eq!(kids(keys.candidates(None).unwrap()), [None, Some("a"), Some("b")]);
    }
}
