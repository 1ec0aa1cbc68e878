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

    /// [`Keys::candidates`] when an identity provider's set (`remote`)
    /// verifies too. Key ids always bind then (an issuer's `kid` is how its
    /// keys are told apart, and a kid not held is what triggers a refresh):
    /// a `kid` selects the configured key of that id, else the provider's;
    /// a token without `kid` may be verified by any key of either.
    pub(super) fn candidates_with<'a>(
        &'a self,
        kid: Option<&str>,
        remote: &'a [VerifyingKey],
    ) -> Result<Vec<&'a VerifyingKey>, UnknownKid> {
        let all = || self.verifying.iter().chain(remote.iter());
        match kid {
            None => Ok(all().collect()),
            Some(kid) => all().find(|k| k.kid.as_deref() == Some(kid)).map(|k| vec![k]).ok_or(UnknownKid),
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

    #[test]
    fn with_a_provider_kids_always_bind() {
        let keys = Keys { verifying: vec![key(Some("local"))], signing: None };
        let remote = [key(Some("idp-1")), key(Some("local")), key(None)];
        fn names(ks: Vec<&VerifyingKey>) -> Vec<Option<&str>> {
            ks.into_iter().map(|k| k.kid.as_deref()).collect()
        }
        assert_eq!(names(keys.candidates_with(Some("idp-1"), &remote).unwrap()), [Some("idp-1")]);
        // The configured key wins a clash of ids.
        assert!(std::ptr::eq(keys.candidates_with(Some("local"), &remote).unwrap()[0], &keys.verifying[0]));
        // Unlike a lone configured key, nothing verifies a foreign kid.
        assert!(matches!(keys.candidates_with(Some("other"), &remote), Err(UnknownKid)));
        assert!(matches!(keys.candidates_with(Some("other"), &[]), Err(UnknownKid)));
        assert_eq!(names(keys.candidates_with(None, &remote).unwrap()).len(), 4);
    }
}
