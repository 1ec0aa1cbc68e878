//! Key material for the token tests (`tests/keys.rs`, `tests/jwks.rs`):
//! `openssl` runs, a scratch directory per test, tokens signed by hand.

use std::{path::PathBuf, process::Command};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::now_ms;

/// Runs `openssl` and returns its stdout. Its stderr is captured, not
/// shown: key generation draws progress dots on it.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    openssl_in(None, args)
}

/// [`openssl`] in `dir` (relative paths in `args` are then inside it).
pub fn openssl_in(dir: Option<&std::path::Path>, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("openssl must be installed (the test script installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A fresh, empty directory for one test's key files (this process's own:
/// test binaries run side by side).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetgate-scratch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A token of fleet `f` signed by hand: any algorithm, key and `kid`.
pub fn forge(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, role: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({"sub": "bus-1", "fleet": "f", "role": role, "exp": now_ms() / 1000 + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}
