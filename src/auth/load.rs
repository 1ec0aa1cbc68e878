//! Reading the token keys from configuration: HS256 secrets
//! (`FLEETGATE_JWT_SECRET`, `FLEETGATE_JWT_SECRETS`), PEM public keys
//! (`FLEETGATE_JWT_PUBLIC_KEY_FILE`, `FLEETGATE_JWT_KEYS_DIR`) and the
//! private key `fleetgate token` signs with. Every bad combination is a
//! startup error that names the setting to fix. (An identity provider's
//! JWKS, `FLEETGATE_JWT_JWKS_URL`, is fetched by `remote.rs`; here it only
//! counts as a key source.)

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::keys::{Keys, SigningKey, VerifyingKey};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no token key configured: set FLEETGATE_JWT_SECRET or FLEETGATE_JWT_SECRETS (HS256), or FLEETGATE_JWT_PUBLIC_KEY_FILE or FLEETGATE_JWT_KEYS_DIR (RS256/ES256 PEM), or FLEETGATE_JWT_JWKS_URL (an identity provider's JWKS), or run with --demo"
    )]
    Missing,
    #[error(
        "--demo (FLEETGATE_DEMO) cannot be combined with {settings}: the demo token endpoint mints a token for anyone who asks, so it must never sign with a real key; unset {settings} or turn the demo off"
    )]
    DemoWithKeys { settings: String },
    #[error("FLEETGATE_JWT_SECRET is set but empty")]
    EmptySecret,
    #[error("FLEETGATE_JWT_SECRETS entry {index}: expected kid:secret, both non-empty (entries are comma separated)")]
    BadSecretEntry { index: usize },
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("FLEETGATE_JWT_KEYS_DIR {path} holds no *.pem file")]
    EmptyDir { path: String },
    #[error("{path} is neither an RSA nor an EC (P-256) public key in PEM form")]
    BadPublicKey { path: String },
    #[error("{path} holds a private key; verification takes public keys only (keep private keys off the gateway)")]
    PrivateAsPublic { path: String },
    #[error("key id {kid} is configured twice ({first} and {second}); key ids must be unique")]
    DuplicateKid { kid: String, first: String, second: String },
    #[error("{path} is not an RSA or EC private key in PEM form")]
    BadPrivateKey { path: String },
    #[error("{path} matches none of the configured public keys: tokens signed with it would be refused")]
    UnmatchedPrivateKey { path: String },
    #[error(
        "FLEETGATE_JWT_LEEWAY_SECS is {secs}, over the bound of {MAX_LEEWAY_SECS}: leeway extends every token's life"
    )]
    Leeway { secs: u64 },
    #[error(
        "minting needs a signing key: FLEETGATE_JWT_SECRET, FLEETGATE_JWT_SECRETS or FLEETGATE_JWT_PRIVATE_KEY_FILE"
    )]
    NoSigningKey,
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("FLEETGATE_JWT_JWKS_URL: {why}")]
    JwksUrl { why: String },
    #[error(
        "FLEETGATE_JWT_JWKS_REFRESH_SECS is {secs}: expected {} to {} seconds",
        super::remote::MIN_REFRESH_SECS,
        super::remote::MAX_REFRESH_SECS
    )]
    JwksRefresh { secs: u64 },
    #[error("FLEETGATE_JWT_JWKS_URL: cannot set up the HTTPS client: {0}")]
    JwksClient(String),
    #[error(
        "--demo mints tokens that a server trusting FLEETGATE_JWT_JWKS_URL would accept alongside the provider's: run the demo without it"
    )]
    DemoWithJwks,
}

/// HS256 secrets shorter than this are weak (RFC 7518 §3.2 asks for at
/// least the hash size); they are accepted with a warning.
const MIN_SECRET_BYTES: usize = 32;

/// Clocks are not a day apart; past this a leeway is a longer token life
/// in disguise (and near the epoch's value it would overflow the check).
pub const MAX_LEEWAY_SECS: u64 = 86_400;

/// A leeway above this is allowed but warned about.
const WARN_LEEWAY_SECS: u64 = 300;

/// A key on its way into the set, with where it came from for error messages.
struct Loaded {
    key: VerifyingKey,
    source: String,
}

impl Keys {
    /// Keys from configuration. In demo mode without configured keys a
    /// random secret is generated (tokens then come from the demo endpoint).
    pub fn from_config(config: &Config) -> Result<Self, KeyError> {
        let conflicts = demo_conflicts(config);
        if config.demo && !conflicts.is_empty() {
            return Err(KeyError::DemoWithKeys { settings: conflicts.join(", ") });
        }
        if config.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(KeyError::Leeway { secs: config.jwt_leeway_secs });
        }
        if config.jwt_leeway_secs > WARN_LEEWAY_SECS {
            tracing::warn!(
                secs = config.jwt_leeway_secs,
                "FLEETGATE_JWT_LEEWAY_SECS is large: expired tokens stay valid that long"
            );
        }
        let secrets = match &config.jwt_secrets {
            Some(list) => parse_secrets(list)?,
            None => Vec::new(),
        };
        let verifying = verifying_keys(config, &secrets)?;
        let jwks = config.jwt_jwks_url.is_some();
        if config.demo && jwks {
            return Err(KeyError::DemoWithJwks);
        }
        if verifying.is_empty() && jwks {
            // Every key comes from the provider (and nothing signs here).
            return Ok(Self { verifying, signing: None });
        }
        if verifying.is_empty() {
            return if config.demo {
                tracing::warn!(
                    "demo mode: tokens are signed with a generated key; mint them at POST /api/v1/demo/token"
                );
                let secret: [u8; 32] = rand::random();
                Ok(Self::hs256(secret.to_vec()))
            } else {
                Err(KeyError::Missing)
            };
        }
        let signing = signing_key(config, &secrets, &verifying)?;
        let keys = Self { verifying, signing };
        tracing::info!(keys = ?keys.describe(), "token verification keys loaded");
        Ok(keys)
    }
}

/// The key settings in use, by name: none may be set with `--demo`.
fn demo_conflicts(config: &Config) -> Vec<&'static str> {
    let mut set = Vec::new();
    for (name, present) in [
        ("FLEETGATE_JWT_SECRET", config.jwt_secret.is_some()),
        ("FLEETGATE_JWT_SECRETS", config.jwt_secrets.is_some()),
        ("FLEETGATE_JWT_PUBLIC_KEY_FILE", config.jwt_public_key_file.is_some()),
        ("FLEETGATE_JWT_KEYS_DIR", config.jwt_keys_dir.is_some()),
        ("FLEETGATE_JWT_PRIVATE_KEY_FILE", config.jwt_private_key_file.is_some()),
    ] {
        if present {
            set.push(name);
        }
    }
    // Read by name so the refusal holds whichever key sources `Config`
    // grows; a key source with a flag of its own belongs in the list above.
    for name in DEMO_EXCLUSIVE_ENV {
        if std::env::var_os(name).is_some_and(|v| !v.is_empty()) && !set.contains(name) {
            set.push(name);
        }
    }
    set
}

/// Key settings refused with `--demo` by their environment variable.
const DEMO_EXCLUSIVE_ENV: &[&str] = &["FLEETGATE_JWT_JWKS_URL"];

/// Every configured verification key: the plain secret, the kid secrets,
/// the listed PEM files, then the directory's.
fn verifying_keys(config: &Config, secrets: &[(String, String)]) -> Result<Vec<VerifyingKey>, KeyError> {
    let mut loaded = Vec::new();
    if let Some(secret) = &config.jwt_secret {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        loaded.push(secret_key(None, secret, "FLEETGATE_JWT_SECRET"));
    }
    for (kid, secret) in secrets {
        loaded.push(secret_key(Some(kid), secret, "FLEETGATE_JWT_SECRETS"));
    }
    for path in config.jwt_public_key_file.as_deref().map(split_paths).unwrap_or_default() {
        loaded.push(public_key(&path)?);
    }
    if let Some(dir) = &config.jwt_keys_dir {
        for path in pem_files(dir)? {
            loaded.push(public_key(&path)?);
        }
    }
    check_unique(&loaded)?;
    Ok(loaded.into_iter().map(|l| l.key).collect())
}

/// The key `fleetgate token` signs with: the private key file when public
/// keys are configured, else the first of FLEETGATE_JWT_SECRETS (the
/// newest), else the plain secret (the one from before rotation).
fn signing_key(
    config: &Config,
    secrets: &[(String, String)],
    verifying: &[VerifyingKey],
) -> Result<Option<SigningKey>, KeyError> {
    if let Some(path) = &config.jwt_private_key_file {
        if verifying.iter().any(|k| k.algorithm != Algorithm::HS256) {
            return private_key(path, verifying).map(Some);
        }
        // Ignored, as it always was without a public key.
        tracing::warn!("FLEETGATE_JWT_PRIVATE_KEY_FILE is ignored: no public key is configured to match it");
    }
    let hs = |kid: Option<&String>, secret: &str| SigningKey {
        kid: kid.cloned(),
        algorithm: Algorithm::HS256,
        encoding: EncodingKey::from_secret(secret.as_bytes()),
    };
    Ok(match (secrets.first(), &config.jwt_secret) {
        (Some((kid, secret)), _) => Some(hs(Some(kid), secret)),
        (None, Some(secret)) => Some(hs(None, secret)),
        (None, None) => None,
    })
}

fn secret_key(kid: Option<&str>, secret: &str, source: &str) -> Loaded {
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            kid = kid.unwrap_or_default(),
            "{source}: a secret is shorter than {MIN_SECRET_BYTES} bytes, so tokens are easy to forge"
        );
    }
    Loaded {
        key: VerifyingKey {
            kid: kid.map(str::to_owned),
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        },
        source: source.to_owned(),
    }
}

/// `kid:secret,kid:secret`. The secret is everything after the first `:`,
/// taken as written; blank entries (a trailing comma) are skipped.
fn parse_secrets(list: &str) -> Result<Vec<(String, String)>, KeyError> {
    let mut out = Vec::new();
    for (i, entry) in list.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let (kid, secret) = entry.split_once(':').ok_or(KeyError::BadSecretEntry { index: i + 1 })?;
        let kid = kid.trim();
        if kid.is_empty() || secret.is_empty() {
            return Err(KeyError::BadSecretEntry { index: i + 1 });
        }
        out.push((kid.to_owned(), secret.to_owned()));
    }
    Ok(out)
}

/// The comma-separated paths of `FLEETGATE_JWT_PUBLIC_KEY_FILE`.
fn split_paths(value: &Path) -> Vec<PathBuf> {
    match value.to_str() {
        Some(s) => s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
        // Not UTF-8, so not a list we could have split: one path.
        None => vec![value.to_owned()],
    }
}

/// The visible `*.pem` files of a directory, in name order. Kubernetes
/// mounts a Secret as symlinks into hidden `..data` directories: those are
/// skipped, the symlinks followed.
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let read_err = |err| KeyError::Read { path: dir.display().to_string(), err };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".pem") {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(KeyError::EmptyDir { path: dir.display().to_string() });
    }
    paths.sort();
    Ok(paths)
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|err| KeyError::Read { path: path.display().to_string(), err })
}

/// A key file's id: its name without the extension (`2026-11.pem` → `2026-11`).
fn kid_of(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn public_key(path: &Path) -> Result<Loaded, KeyError> {
    let pem = read(path)?;
    let shown = path.display().to_string();
    // jsonwebtoken would take an RSA private key as a verification key (and
    // never verify with it); refusing it also keeps private keys off replicas.
    if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err(KeyError::PrivateAsPublic { path: shown });
    }
    let (algorithm, decoding) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, k)
    } else {
        return Err(KeyError::BadPublicKey { path: shown });
    };
    Ok(Loaded { key: VerifyingKey { kid: Some(kid_of(path)), algorithm, decoding }, source: shown })
}

fn check_unique(loaded: &[Loaded]) -> Result<(), KeyError> {
    for (i, a) in loaded.iter().enumerate() {
        let Some(kid) = &a.key.kid else { continue };
        if let Some(b) = loaded[i + 1..].iter().find(|b| b.key.kid.as_ref() == Some(kid)) {
            return Err(KeyError::DuplicateKid { kid: kid.clone(), first: a.source.clone(), second: b.source.clone() });
        }
    }
    Ok(())
}

/// The private key of `FLEETGATE_JWT_PRIVATE_KEY_FILE`, under the id of the
/// public key it belongs to, found by signing a probe and verifying it.
fn private_key(path: &Path, verifying: &[VerifyingKey]) -> Result<SigningKey, KeyError> {
    let pem = read(path)?;
    let bad = || KeyError::BadPrivateKey { path: path.display().to_string() };
    let (algorithm, encoding) = match EncodingKey::from_rsa_pem(&pem) {
        Ok(k) => (Algorithm::RS256, k),
        Err(_) => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).map_err(|_| bad())?),
    };
    const PROBE: &[u8] = b"fleetgate key probe";
    let signature = jsonwebtoken::crypto::sign(PROBE, &encoding, algorithm).map_err(|_| bad())?;
    let matching = verifying.iter().find(|k| {
        k.algorithm == algorithm
            && jsonwebtoken::crypto::verify(&signature, PROBE, &k.decoding, algorithm).unwrap_or(false)
    });
    match matching {
        Some(k) => Ok(SigningKey { kid: k.kid.clone(), algorithm, encoding }),
        None => Err(KeyError::UnmatchedPrivateKey { path: path.display().to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_list() {
        let parsed = parse_secrets("2026-11:new:with:colons, 2026-05:old,").unwrap();
        assert_eq!(
            parsed,
            [("2026-11".to_owned(), "new:with:colons".to_owned()), ("2026-05".to_owned(), "old".to_owned())]
        );
        assert!(matches!(parse_secrets("nokid"), Err(KeyError::BadSecretEntry { index: 1 })));
        assert!(matches!(parse_secrets("a:x,:y"), Err(KeyError::BadSecretEntry { index: 2 })));
        assert!(matches!(parse_secrets("a:"), Err(KeyError::BadSecretEntry { index: 1 })));
    }

    #[test]
    fn paths_list_and_kids() {
        assert_eq!(
            split_paths(Path::new("/k/a.pem, /k/2026-11.pem")),
            [Path::new("/k/a.pem"), Path::new("/k/2026-11.pem")]
        );
        assert_eq!(kid_of(Path::new("/keys/2026-11.pem")), "2026-11");
        assert_eq!(kid_of(Path::new("/keys/jwt.pub")), "jwt");
    }
}
