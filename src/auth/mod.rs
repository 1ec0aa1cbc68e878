//! Who a client is: JWT verification (section 2 of the contract) against a
//! set of keys chosen by the token's `kid` (configured keys, and an
//! identity provider's JWKS), the roles a token can carry, the vehicles a
//! scoped viewer token may watch, and minting tokens for operators and the
//! demo.

mod fetch;
mod jwk_set;
mod keys;
mod load;
mod remote;
mod scope;
mod token;

pub use fetch::{MAX_JWKS_BYTES, tls_config};
pub use jwk_set::MAX_JWKS_KEYS;
pub use keys::Keys;
pub use load::{KeyError, MAX_LEEWAY_SECS};
pub use remote::{RemoteKeys, UNKNOWN_KID_REFRESH_EVERY};
pub use scope::{MAX_SCOPED_VEHICLES, ScopeError, VehicleScope};
pub use token::{Claims, Role};

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::Serialize;

use crate::{
    clock,
    config::Config,
    error::{ApiError, ErrorCode},
};

/// Tokens longer than this are refused unread: no legitimate claim set is
/// this large, and parsing attacker-sized input is work for nothing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Every algorithm a key can be bound to (HS256 secrets, RSA, P-256 and
/// Ed25519 public keys).
const ALGORITHMS: [Algorithm; 4] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Verifies tokens with the configured keys, each with its own algorithm.
pub struct Authenticator {
    keys: Keys,
    /// The identity provider's set, when `FLEETGATE_JWT_JWKS_URL` is set.
    remote: Option<Arc<RemoteKeys>>,
    /// One validation per algorithm, each accepting only that algorithm:
    /// the key decides it, the token header never does.
    validations: Vec<(Algorithm, Validation)>,
}

/// Why [`Authenticator::check`] refused a token.
enum Refusal {
    /// The token's `kid` names no key held now (a refresh may bring it).
    UnknownKid(String),
    Refused(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Refused(e)
    }
}

impl Authenticator {
    pub fn new(keys: Keys, config: &Config) -> Self {
        let validations = ALGORITHMS.iter().map(|a| (*a, validation(*a, config))).collect();
        Self { keys, remote: None, validations }
    }

    /// Also trusts the identity provider's key set.
    pub fn with_remote(mut self, remote: Option<Arc<RemoteKeys>>) -> Self {
        self.remote = remote;
        self
    }

    /// False until an identity provider's key set, if one is configured,
    /// was fetched once (`/readyz` answers 503 until then).
    pub fn is_ready(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.is_ready())
    }

    /// Checks a token and returns its claims, or the contract's code for
    /// why not. A `kid` the identity provider's set does not hold refreshes
    /// the set first (rate-limited, see [`UNKNOWN_KID_REFRESH_EVERY`]), so
    /// this may wait on that fetch; every path serving clients uses it.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, ApiError> {
        match (self.check(token), &self.remote) {
            (Err(Refusal::UnknownKid(kid)), Some(remote)) => {
                remote.refresh_for_unknown(&kid).await;
                self.check(token).map_err(Self::refusal)
            }
            (result, _) => result.map_err(Self::refusal),
        }
    }

    /// [`Authenticator::authenticate`] with the keys held now, never
    /// waiting on the network: an unknown `kid` is refused without a refresh.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.check(token).map_err(Self::refusal)
    }

    fn refusal(r: Refusal) -> ApiError {
        match r {
            Refusal::UnknownKid(_) => ApiError::new(ErrorCode::InvalidToken, "unknown key id"),
            Refusal::Refused(e) => e,
        }
    }

    fn check(&self, token: &str) -> Result<Claims, Refusal> {
        let invalid = |m: &'static str| ApiError::new(ErrorCode::InvalidToken, m);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("token too large").into());
        }
        // `alg: none` and unknown algorithms fail here: the header does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let unknown = || Refusal::UnknownKid(header.kid.clone().unwrap_or_default());
        let remote = self.remote.as_ref().map(|r| r.current());
        let candidates: Vec<&keys::VerifyingKey> = match &remote {
            None => self.keys.candidates(header.kid.as_deref()).map_err(|_| unknown())?.iter().collect(),
            Some(remote) => self.keys.candidates_with(header.kid.as_deref(), remote).map_err(|_| unknown())?,
        };
        let mut refused = invalid("algorithm not accepted");
        for key in candidates.into_iter().filter(|k| k.algorithm == header.alg) {
            let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == key.algorithm) else {
                continue;
            };
            match jsonwebtoken::decode::<token::RawClaims>(token, &key.decoding, validation) {
                Ok(data) => return Ok(data.claims.validate()?),
                // Another key of the same algorithm may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => refused = invalid("bad signature"),
                // Anything else is about a token this key did sign, or about
                // its encoding, which no other key changes.
                Err(e) => return Err(refused_because(&e).into()),
            }
        }
        Err(refused.into())
    }

    /// Mints a token for `claims` (their `exp` included) with the signing
    /// key, its `kid` in the header; needs a signing key (an HS256 secret
    /// or a private key file).
    pub fn mint(&self, claims: &Claims, config: &Config) -> Result<String, KeyError> {
        #[derive(Serialize)]
        struct Out<'a> {
            sub: &'a str,
            fleet: &'a str,
            role: Role,
            #[serde(skip_serializing_if = "Option::is_none")]
            vehicle: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            vehicles: Option<&'a VehicleScope>,
            exp: i64,
            iat: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let now = clock::now_ms() / 1000;
        let out = Out {
            sub: &claims.sub,
            fleet: &claims.fleet,
            role: claims.role,
            vehicle: claims.vehicle.as_deref(),
            vehicles: claims.vehicles.as_ref(),
            exp: claims.exp,
            iat: now,
            iss: config.jwt_issuer.as_deref(),
            aud: config.jwt_audience.as_deref(),
        };
        let key = self.keys.signing.as_ref().ok_or(KeyError::NoSigningKey)?;
        let mut header = Header::new(key.algorithm);
        header.kid = key.kid.clone();
        jsonwebtoken::encode(&header, &out, &key.encoding).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// What every key of `algorithm` checks besides the signature.
fn validation(algorithm: Algorithm, config: &Config) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
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
    validation
}

fn refused_because(e: &jsonwebtoken::errors::Error) -> ApiError {
    match e.kind() {
        ErrorKind::ExpiredSignature => ApiError::new(ErrorCode::TokenExpired, "token has expired"),
        ErrorKind::ImmatureSignature => ApiError::new(ErrorCode::InvalidToken, "token is not valid yet"),
        ErrorKind::InvalidIssuer => ApiError::new(ErrorCode::InvalidToken, "wrong issuer"),
        ErrorKind::InvalidAudience => ApiError::new(ErrorCode::InvalidToken, "wrong audience"),
        ErrorKind::InvalidSignature => ApiError::new(ErrorCode::InvalidToken, "bad signature"),
        ErrorKind::InvalidAlgorithm => ApiError::new(ErrorCode::InvalidToken, "algorithm not accepted"),
        ErrorKind::MissingRequiredClaim(c) => ApiError::new(ErrorCode::InvalidToken, format!("missing claim {c}")),
        _ => ApiError::new(ErrorCode::InvalidToken, "malformed token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::EncodingKey;
    use serde_json::{Value, json};

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["fleetgate"];
        args.extend_from_slice(extra);
        crate::config::Cli::parse_from(args).config
    }

    fn from(cfg: &Config) -> Authenticator {
        Authenticator::new(Keys::from_config(cfg).unwrap(), cfg)
    }

    fn auth(cfg: &Config) -> Authenticator {
        Authenticator::new(Keys::hs256(b"test-secret".to_vec()), cfg)
    }

    fn now() -> i64 {
        clock::now_ms() / 1000
    }

    fn claims(role: Role) -> Claims {
        Claims { sub: "bus-1".into(), fleet: "demo".into(), role, vehicle: None, vehicles: None, exp: now() + 60 }
    }

    /// A hand-made HS256 token: `claims` merged over valid ones, `kid` in the header.
    fn hs(secret: &str, kid: Option<&str>, claims: Value) -> String {
        let mut body = json!({"sub": "bus-1", "fleet": "demo", "role": "viewer", "exp": now() + 600});
        if let (Some(b), Some(c)) = (body.as_object_mut(), claims.as_object()) {
            b.extend(c.clone());
        }
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &body, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn code(a: &Authenticator, token: &str) -> Option<ErrorCode> {
        a.verify(token).err().map(|e| e.code)
    }

    const INVALID: Option<ErrorCode> = Some(ErrorCode::InvalidToken);

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
    fn scoped_viewer_tokens() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        let scoped = Claims::issue(
            "rider".into(),
            "demo".into(),
            Role::Viewer,
            None,
            Some(vec!["bus-2".into(), "bus-1".into()]),
            60,
        )
        .unwrap();
        let c = a.verify(&a.mint(&scoped, &cfg).unwrap()).unwrap();
        let scope = c.vehicles.unwrap();
        assert_eq!(scope.iter().collect::<Vec<_>>(), ["bus-1", "bus-2"]);
        assert_eq!(a.verify(&hs("test-secret", None, json!({}))).unwrap().vehicles, None);
        let message = |claims: Value| a.verify(&hs("test-secret", None, claims)).unwrap_err().message;
        assert_eq!(
            message(json!({"vehicles": []})),
            "claim vehicles: must name at least one vehicle (omit it for the whole fleet)"
        );
        assert_eq!(message(json!({"vehicles": null})), "claim vehicles: must be an array of vehicle ids");
        assert_eq!(message(json!({"vehicles": "bus-1"})), "claim vehicles: must be an array of vehicle ids");
        assert!(message(json!({"vehicles": ["bus 1"]})).starts_with("claim vehicles: items must be vehicle ids"));
        let many: Vec<String> = (0..=MAX_SCOPED_VEHICLES).map(|i| format!("v{i}")).collect();
        assert_eq!(message(json!({"vehicles": many})), "claim vehicles: at most 256 vehicle ids");
        for role in ["vehicle", "dispatcher"] {
            assert_eq!(
                message(json!({"role": role, "vehicles": ["bus-1"]})),
                "claim vehicles: only viewer tokens may carry it"
            );
        }
        // Minting checks by the same rules.
        assert!(
            Claims::issue("d".into(), "demo".into(), Role::Dispatcher, None, Some(vec!["bus-1".into()]), 60).is_err()
        );
        assert!(Claims::issue("r".into(), "demo".into(), Role::Viewer, None, Some(vec![]), 60).is_err());
    }

    #[test]
    fn rejects_alg_none_and_other_secrets() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZmxlZXQiOiJkZW1vIiwicm9sZSI6InZpZXdlciIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(code(&a, none), INVALID);
        // `none` with a signature copied from a real token changes nothing.
        let real = a.mint(&claims(Role::Viewer), &cfg).unwrap();
        let sig = real.rsplit('.').next().unwrap();
        assert_eq!(code(&a, &format!("{none}{sig}")), INVALID);
        let other = Authenticator::new(Keys::hs256(b"other".to_vec()), &cfg);
        let t = other.mint(&claims(Role::Viewer), &cfg).unwrap();
        assert_eq!(code(&a, &t), INVALID);
        assert_eq!(code(&a, "garbage"), INVALID);
        assert_eq!(code(&a, ""), INVALID);
    }

    #[test]
    fn oversized_tokens_are_refused_unread() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        assert_eq!(code(&a, &"a".repeat(MAX_TOKEN_BYTES + 1)), INVALID);
        // Validly signed, but padded past the bound by a large claim.
        let big = hs("test-secret", None, json!({"pad": "x".repeat(MAX_TOKEN_BYTES)}));
        assert_eq!(a.verify(&big).unwrap_err().message, "token too large");
        let fits = hs("test-secret", None, json!({"pad": "x".repeat(MAX_TOKEN_BYTES / 2)}));
        a.verify(&fits).unwrap();
    }

    #[test]
    fn enforces_issuer_and_audience() {
        let strict = config(&["--jwt-issuer", "fleet-auth", "--jwt-audience", "fleetgate"]);
        let lax = config(&[]);
        let t = auth(&lax).mint(&claims(Role::Viewer), &lax).unwrap();
        // Both are missing; which one is named first is the library's choice.
        let missing = auth(&strict).verify(&t).unwrap_err().message;
        assert!(missing == "missing claim iss" || missing == "missing claim aud", "{missing}");
        let t = auth(&strict).mint(&claims(Role::Viewer), &strict).unwrap();
        auth(&strict).verify(&t).unwrap();
        let a = auth(&strict);
        let wrong_iss = hs("test-secret", None, json!({"iss": "someone-else", "aud": "fleetgate"}));
        assert_eq!(a.verify(&wrong_iss).unwrap_err().message, "wrong issuer");
        let wrong_aud = hs("test-secret", None, json!({"iss": "fleet-auth", "aud": "other-service"}));
        assert_eq!(a.verify(&wrong_aud).unwrap_err().message, "wrong audience");
        let no_aud = hs("test-secret", None, json!({"iss": "fleet-auth"}));
        assert_eq!(code(&a, &no_aud), INVALID);
        let aud_list = hs("test-secret", None, json!({"iss": "fleet-auth", "aud": ["x", "fleetgate"]}));
        a.verify(&aud_list).unwrap();
    }

    #[test]
    fn expiry_and_not_before() {
        let cfg = config(&[]);
        let a = auth(&cfg);
        let expired = hs("test-secret", None, json!({"exp": now() - 5}));
        assert_eq!(code(&a, &expired), Some(ErrorCode::TokenExpired));
        let early = hs("test-secret", None, json!({"nbf": now() + 30}));
        assert_eq!(a.verify(&early).unwrap_err().message, "token is not valid yet");
        let started = hs("test-secret", None, json!({"nbf": now() - 30}));
        a.verify(&started).unwrap();
        let no_exp = hs("test-secret", None, json!({"exp": null}));
        assert_eq!(code(&a, &no_exp), INVALID);
        let negative = hs("test-secret", None, json!({"exp": -1}));
        assert_eq!(code(&a, &negative), INVALID);
        // An expired token whose signature is wrong is about the signature.
        let forged = hs("other", None, json!({"exp": now() - 5}));
        assert_eq!(code(&a, &forged), INVALID);
    }

    #[test]
    fn leeway_is_bounded_both_ways() {
        let cfg = config(&["--jwt-leeway-secs", "60"]);
        let a = auth(&cfg);
        // Well inside and well outside the 60 s, so a ticking clock cannot flip them.
        a.verify(&hs("test-secret", None, json!({"exp": now() - 40}))).unwrap();
        let past = hs("test-secret", None, json!({"exp": now() - 80}));
        assert_eq!(code(&a, &past), Some(ErrorCode::TokenExpired));
        a.verify(&hs("test-secret", None, json!({"nbf": now() + 40}))).unwrap();
        assert_eq!(code(&a, &hs("test-secret", None, json!({"nbf": now() + 80}))), INVALID);
        // The setting itself is bounded.
        let max = MAX_LEEWAY_SECS.to_string();
        let over = (MAX_LEEWAY_SECS + 1).to_string();
        Keys::from_config(&config(&["--jwt-secret", "s", "--jwt-leeway-secs", &max])).unwrap();
        let err = Keys::from_config(&config(&["--jwt-secret", "s", "--jwt-leeway-secs", &over])).err().unwrap();
        assert!(matches!(err, KeyError::Leeway { .. }), "{err}");
        let huge = Keys::from_config(&config(&["--jwt-secret", "s", "--jwt-leeway-secs", &u64::MAX.to_string()]));
        assert!(huge.is_err());
    }

    #[test]
    fn rotation_of_hs256_secrets() {
        let both = config(&["--jwt-secrets", "2026-11:new-secret,2026-05:old-secret"]);
        let a = from(&both);
        // New tokens are signed with the first (newest) secret, under its kid.
        let minted = a.mint(&claims(Role::Viewer), &both).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&minted).unwrap().kid.as_deref(), Some("2026-11"));
        a.verify(&minted).unwrap();
        // Tokens of the old secret stay valid during the rotation, with or without their kid.
        a.verify(&hs("old-secret", Some("2026-05"), json!({}))).unwrap();
        a.verify(&hs("old-secret", None, json!({}))).unwrap();
        // A kid binds the key: the other secret does not verify under it.
        assert_eq!(a.verify(&hs("new-secret", Some("2026-05"), json!({}))).unwrap_err().message, "bad signature");
        assert_eq!(a.verify(&hs("new-secret", Some("2027-01"), json!({}))).unwrap_err().message, "unknown key id");
        assert_eq!(code(&a, &hs("third", None, json!({}))), INVALID);

        // The old secret removed: its tokens are refused, the new ones still pass.
        let after = config(&["--jwt-secrets", "2026-11:new-secret"]);
        let a = from(&after);
        assert_eq!(code(&a, &hs("old-secret", Some("2026-05"), json!({}))), INVALID);
        assert_eq!(code(&a, &hs("old-secret", None, json!({}))), INVALID);
        a.verify(&minted).unwrap();
    }

    #[test]
    fn rotation_away_from_the_plain_secret() {
        let cfg = config(&["--jwt-secret", "legacy-secret", "--jwt-secrets", "k2:next-secret"]);
        let a = from(&cfg);
        // Tokens from before rotation carry no kid and still verify.
        a.verify(&hs("legacy-secret", None, json!({}))).unwrap();
        // The plain secret has no kid, so a kid never selects it.
        assert_eq!(code(&a, &hs("legacy-secret", Some("k2"), json!({}))), INVALID);
        let minted = a.mint(&claims(Role::Viewer), &cfg).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&minted).unwrap().kid.as_deref(), Some("k2"));
    }

    #[test]
    fn a_single_key_ignores_foreign_kids() {
        // As before rotation: issuers that write their own kid keep working.
        let cfg = config(&["--jwt-secret", "only-secret"]);
        let a = from(&cfg);
        a.verify(&hs("only-secret", Some("issuer-key-7"), json!({}))).unwrap();
        let minted = a.mint(&claims(Role::Viewer), &cfg).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&minted).unwrap().kid, None);
        let one = config(&["--jwt-secrets", "k1:only-secret"]);
        from(&one).verify(&hs("only-secret", Some("issuer-key-7"), json!({}))).unwrap();
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        let err = |args: &[&str]| Keys::from_config(&config(args)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&[]).contains("FLEETGATE_JWT_SECRETS"));
        assert!(err(&["--jwt-secret", ""]).contains("empty"));
        assert!(err(&["--jwt-secrets", "a:x,b"]).contains("entry 2"));
        assert!(err(&["--jwt-secrets", "a:x,a:y"]).contains("key id a is configured twice"));
        assert!(err(&["--jwt-public-key-file", "/nonexistent/k.pem"]).contains("cannot read /nonexistent/k.pem"));
        assert!(err(&["--jwt-keys-dir", "/nonexistent"]).contains("cannot read /nonexistent"));
        // Demo mode without keys generates one; with real keys it refuses
        // to start, naming them.
        Keys::from_config(&config(&["--demo"])).unwrap();
        let demo = err(&["--demo", "--jwt-secret", "s", "--jwt-keys-dir", "/k"]);
        assert!(demo.contains("cannot be combined with FLEETGATE_JWT_SECRET, FLEETGATE_JWT_KEYS_DIR"), "{demo}");
        assert!(err(&["--demo", "--jwt-secrets", "a:x"]).contains("must never sign with a real key"));
        assert!(err(&["--demo", "--jwt-public-key-file", "/k.pem"]).contains("FLEETGATE_JWT_PUBLIC_KEY_FILE"));
    }

    #[test]
    fn jwks_settings_are_checked_at_start() {
        let url = "https://id.example.com/realms/fleet/protocol/openid-connect/certs";
        let remote = |args: &[&str]| {
            let cfg = config(args);
            let keys = Keys::from_config(&cfg).map_err(|e| e.to_string())?;
            RemoteKeys::from_config(&cfg, &keys).map(|r| r.is_some()).map_err(|e| e.to_string())
        };
        // The provider alone is a key configuration; it is not ready before its first fetch.
        assert_eq!(remote(&["--jwt-jwks-url", url]), Ok(true));
        let cfg = config(&["--jwt-jwks-url", url]);
        let keys = Keys::from_config(&cfg).unwrap();
        let a = Authenticator::new(Keys::from_config(&cfg).unwrap(), &cfg)
            .with_remote(RemoteKeys::from_config(&cfg, &keys).unwrap());
        assert!(!a.is_ready());
        assert_eq!(a.verify(&hs("s", Some("k1"), json!({}))).unwrap_err().message, "unknown key id");
        assert!(from(&config(&["--jwt-secret", "s"])).is_ready());
        assert_eq!(remote(&["--jwt-secret", "s"]), Ok(false));

        let err = |args: &[&str]| remote(args).unwrap_err();
        assert!(err(&["--jwt-jwks-url", "http://idp.internal/certs"]).contains("FLEETGATE_JWT_JWKS_URL"));
        assert!(err(&["--jwt-jwks-url", "certs.json"]).contains("FLEETGATE_JWT_JWKS_URL"));
        assert!(
            err(&["--jwt-jwks-url", url, "--jwt-jwks-refresh-secs", "0"]).contains("FLEETGATE_JWT_JWKS_REFRESH_SECS")
        );
        assert!(err(&["--jwt-jwks-url", url, "--demo"]).contains("--demo"));
    }
}
