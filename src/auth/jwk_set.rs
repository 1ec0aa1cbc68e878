//! Reading a JWKS document (RFC 7517) into verification keys: which keys
//! of an identity provider's set fleetgate trusts, and with which one
//! algorithm each. The key type decides the algorithm (RSA → RS256, EC
//! P-256 → ES256, OKP Ed25519 → EdDSA); a JWK's `alg`, when present, must
//! agree, and symmetric (`oct`) and encryption keys are never used.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse},
};
use serde::Deserialize;

use super::keys::VerifyingKey;

/// More keys than any provider publishes (they hold two or three during a
/// rotation); a larger document is refused rather than half read.
pub const MAX_JWKS_KEYS: usize = 100;

/// RSA keys below this many bits are refused (RFC 7518 §3.3 asks for 2048).
const MIN_RSA_BITS: usize = 2048;

/// Why a JWKS document yields no key set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document (expected a JSON object with a \"keys\" array): {0}")]
    NotJwks(serde_json::Error),
    #[error("the document holds {0} keys, more than the {MAX_JWKS_KEYS} accepted")]
    TooManyKeys(usize),
    #[error("no usable signing key (RS256, ES256 or EdDSA with a kid) among its {0} keys")]
    NoUsableKey(usize),
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The keys fleetgate trusts from one document, and how many it passed over.
pub struct KeySet {
    pub(super) keys: Vec<VerifyingKey>,
    pub skipped: usize,
}

/// Parses a JWKS document. Keys that cannot verify tokens here are skipped
/// one by one (a provider's set mixes signing and encryption keys); a
/// document with no usable key at all is an error, so a broken response
/// never replaces a good set.
pub fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
    let doc: Document = serde_json::from_slice(body).map_err(JwksError::NotJwks)?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys(doc.keys.len()));
    }
    let total = doc.keys.len();
    let mut keys: Vec<VerifyingKey> = Vec::new();
    for value in doc.keys {
        match verifying_key(value) {
            Ok(key) if keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid) => {
                tracing::debug!(kid = key.kid.as_deref().unwrap_or_default(), "jwks: duplicate kid skipped");
            }
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!("jwks: key skipped: {why}"),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(total));
    }
    Ok(KeySet { skipped: total - keys.len(), keys })
}

/// One JWK as a verification key, or why it is not one.
fn verifying_key(value: serde_json::Value) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("unreadable ({e})"))?;
    let kid = jwk.common.key_id.clone();
    let named = kid.as_deref().unwrap_or("<no kid>");
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return Err(format!("{named}: not a signing key (use)"));
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err(format!("{named}: key_ops does not allow verify"));
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => return Err(format!("{named}: symmetric keys are not trusted")),
        AlgorithmParameters::RSA(rsa) => {
            let bits = significant_bytes(&rsa.n).map_or(0, |b| b * 8);
            if bits < MIN_RSA_BITS {
                return Err(format!("{named}: RSA modulus under {MIN_RSA_BITS} bits"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            if [&ec.x, &ec.y].iter().any(|c| decoded_len(c) != Some(32)) {
                return Err(format!("{named}: not a P-256 point"));
            }
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            if decoded_len(&okp.x) != Some(32) {
                return Err(format!("{named}: not an Ed25519 key"));
            }
            Algorithm::EdDSA
        }
        _ => return Err(format!("{named}: unsupported key type or curve")),
    };
    // The key type fixed the algorithm; a declared `alg` may only confirm it.
    if let Some(declared) = jwk.common.key_algorithm
        && !same_algorithm(declared, algorithm)
    {
        return Err(format!("{named}: alg {declared} does not fit its key type ({algorithm:?} expected)"));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{named}: {e}"))?;
    Ok(VerifyingKey { kid, algorithm, decoding })
}

fn same_algorithm(declared: KeyAlgorithm, algorithm: Algorithm) -> bool {
    matches!(
        (declared, algorithm),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
    )
}

fn decode(b64: &str) -> Option<Vec<u8>> {
    // Some providers pad their base64url; RFC 7515 says not to.
    URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()
}

fn decoded_len(b64: &str) -> Option<usize> {
    decode(b64).map(|b| b.len())
}

/// Length of a big-endian integer without its leading zero bytes.
fn significant_bytes(b64: &str) -> Option<usize> {
    let bytes = decode(b64)?;
    Some(bytes.iter().position(|b| *b != 0).map_or(0, |i| bytes.len() - i))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A 2048-bit modulus (its value does not matter to the parser).
    fn modulus() -> String {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        URL_SAFE_NO_PAD.encode(n)
    }

    fn rsa(kid: &str, extra: Value) -> Value {
        let mut v = json!({"kty": "RSA", "kid": kid, "n": modulus(), "e": "AQAB"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    fn ec(kid: &str) -> Value {
        let c = URL_SAFE_NO_PAD.encode([7u8; 32]);
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": c, "y": c})
    }

    fn kids(body: Value) -> Result<Vec<(Option<String>, Algorithm)>, JwksError> {
        let set = parse(body.to_string().as_bytes())?;
        Ok(set.keys.into_iter().map(|k| (k.kid, k.algorithm)).collect())
    }

    #[test]
    fn key_types_fix_the_algorithm() {
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode([9u8; 32])});
        let got = kids(json!({"keys": [rsa("r", json!({"alg": "RS256", "use": "sig"})), ec("e"), okp]})).unwrap();
        assert_eq!(
            got,
            [
                (Some("r".into()), Algorithm::RS256),
                (Some("e".into()), Algorithm::ES256),
                (Some("ed".into()), Algorithm::EdDSA)
            ]
        );
    }

    #[test]
    fn untrusted_keys_are_skipped() {
        let oct = json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0", "alg": "HS256"});
        let body = json!({"keys": [
            oct,
            rsa("enc", json!({"use": "enc", "alg": "RSA-OAEP"})),
            rsa("wrong-alg", json!({"alg": "HS256"})),
            rsa("pss", json!({"alg": "PS256"})),
            rsa("ops", json!({"key_ops": ["encrypt"]})),
            rsa("small", json!({"n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])})),
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "weird", "kid": "w"},
            rsa("good", json!({})),
            rsa("good", json!({})),
        ]});
        let set = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("good")]);
        assert_eq!(set.skipped, 9);
    }

    #[test]
    fn garbage_and_empty_sets_are_errors() {
        assert!(matches!(parse(b"<html>"), Err(JwksError::NotJwks(_))));
        assert!(matches!(parse(b"{\"keys\": 3}"), Err(JwksError::NotJwks(_))));
        assert!(matches!(parse(b"{\"keys\": []}"), Err(JwksError::NoUsableKey(0))));
        let only_oct = json!({"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]});
        assert!(matches!(kids(only_oct), Err(JwksError::NoUsableKey(1))));
        let many: Vec<Value> = (0..=MAX_JWKS_KEYS).map(|i| ec(&i.to_string())).collect();
        assert!(matches!(kids(json!({ "keys": many })), Err(JwksError::TooManyKeys(_))));
    }
}
