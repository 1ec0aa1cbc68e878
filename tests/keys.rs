//! Asymmetric keys and key rotation: RS256 and ES256 public keys verify
//! tokens minted with `fleetgate token`, several keys are told apart by the
//! token's `kid`, a removed or unknown key is refused, an HS256 token
//! "signed" with a public key (the algorithm-confusion attack) is refused,
//! and bad key configurations stop the process with a message saying why.

mod support;

use std::{path::Path, process::Command};

use clap::Parser;
use fleetgate::{
    auth::{Authenticator, Keys},
    config::{Cli, Config},
    error::ErrorCode,
};
use fleetgate_testkit::Client;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::{
    Server,
    keys::{forge, openssl, scratch},
};

/// Writes `<name>.key` (private) and `<name>.<public_ext>` (public) into `dir`.
fn keypair_as(dir: &Path, kind: &str, name: &str, public_ext: &str) -> (String, String) {
    let private = dir.join(format!("{name}.key")).display().to_string();
    let public = dir.join(format!("{name}.{public_ext}")).display().to_string();
    match kind {
        "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &private]),
        _ => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &private]),
    };
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, public)
}

fn keypair(dir: &Path, kind: &str) -> (String, String) {
    keypair_as(dir, kind, kind, "pub")
}

/// `fleetgate token` with the given key settings.
fn mint_with(envs: &[(&str, &str)], role: &str) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["token", "--fleet", "f", "--role", role, "--sub", "bus-1"])
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("run fleetgate token");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn mint(private: &str, public: &str, role: &str) -> String {
    mint_with(&[("FLEETGATE_JWT_PUBLIC_KEY_FILE", public), ("FLEETGATE_JWT_PRIVATE_KEY_FILE", private)], role)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).unwrap().kid
}

fn private_pem(path: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(path).unwrap();
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    }
}

async fn check(kind: &str) {
    let dir = scratch(kind);
    let (private, public) = keypair(&dir, kind);
    let server =
        Server::start(&[("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_PUBLIC_KEY_FILE", public.clone())]);

    let token = mint(&private, &public, "vehicle");
    assert_eq!(kid(&token).as_deref(), Some(kind), "the kid is the public key file's stem");
    let mut c = Client::with_token(&server, &token).await.expect("valid token");
    assert_eq!(c.call("locationupdate", json!({"lat": 1, "lon": 1})).await["data"]["accepted"], true);

    // HS256 with the public key bytes as the secret must not verify, with or without the kid.
    let pem = std::fs::read(&public).unwrap();
    for kid in [None, Some(kind)] {
        let forged = forge(Algorithm::HS256, &EncodingKey::from_secret(&pem), kid, "dispatcher");
        assert_eq!(Client::with_token(&server, &forged).await.err().as_deref(), Some("invalid_token"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn rs256_public_key() {
    check("rsa").await;
}

#[tokio::test]
async fn es256_public_key() {
    check("ec").await;
}

/// A rotation as an operator runs it on a mounted Secret: add the new key
/// next to the old, switch signing to it, remove the old once its tokens
/// have expired. The two keys even differ in algorithm.
#[tokio::test]
async fn rotation_through_a_keys_dir() {
    let keys = scratch("rotation");
    let private = scratch("rotation-private");
    let (old_key, old_pub) = keypair_as(&keys, "rsa", "2026-05", "pem");
    let (new_key, new_pub) = keypair_as(&keys, "ec", "2026-11", "pem");
    // Private keys live elsewhere: the gateway never needs them.
    let old_private = private.join("2026-05.key").display().to_string();
    let new_private = private.join("2026-11.key").display().to_string();
    std::fs::rename(&old_key, &old_private).unwrap();
    std::fs::rename(&new_key, &new_private).unwrap();
    let dir = keys.display().to_string();

    let mint_by = |private: &str| {
        mint_with(&[("FLEETGATE_JWT_KEYS_DIR", dir.as_str()), ("FLEETGATE_JWT_PRIVATE_KEY_FILE", private)], "viewer")
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let old = mint_by(&old_private);
    let new = mint_by(&new_private);
    assert_eq!(kid(&old).as_deref(), Some("2026-05"));
    assert_eq!(kid(&new).as_deref(), Some("2026-11"));

    let during = Server::start(&[("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_KEYS_DIR", dir.clone())]);
    Client::with_token(&during, &old).await.expect("the old key is valid during the rotation");
    Client::with_token(&during, &new).await.expect("the new key is valid");
    let new_signer = private_pem(&new_private, Algorithm::ES256);
    let old_signer = private_pem(&old_private, Algorithm::RS256);
    // Without a kid any configured key may have signed it.
    Client::with_token(&during, &forge(Algorithm::ES256, &new_signer, None, "dispatcher"))
        .await
        .expect("kid-less token of a known key");
    for refused in [
        forge(Algorithm::ES256, &new_signer, Some("2027-01"), "dispatcher"),
        forge(Algorithm::RS256, &old_signer, Some("2026-11"), "dispatcher"),
        forge(Algorithm::ES256, &new_signer, Some("2026-05"), "dispatcher"),
        forge(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(&new_pub).unwrap()),
            Some("2026-11"),
            "dispatcher",
        ),
    ] {
        assert_eq!(Client::with_token(&during, &refused).await.err().as_deref(), Some("invalid_token"));
    }
    drop(during);

    std::fs::remove_file(&old_pub).unwrap();
    let after = Server::start(&[("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_KEYS_DIR", dir.clone())]);
    assert_eq!(Client::with_token(&after, &old).await.err().as_deref(), Some("invalid_token"), "removed key refused");
    Client::with_token(&after, &new).await.expect("the new key is still valid");
    let _ = std::fs::remove_dir_all(keys);
    let _ = std::fs::remove_dir_all(private);
}

fn config(args: &[&str]) -> Config {
    let mut argv = vec!["fleetgate"];
    argv.extend_from_slice(args);
    Cli::parse_from(argv).config
}

fn code(auth: &Authenticator, token: &str) -> Option<ErrorCode> {
    auth.verify(token).err().map(|e| e.code)
}

/// HS256 secrets and PEM keys in one set (a move from HS256 to RS256):
/// each key verifies with its own algorithm only.
#[test]
fn mixed_key_set_resists_algorithm_confusion() {
    let dir = scratch("mixed");
    let (private, public) = keypair_as(&dir, "rsa", "rs-1", "pem");
    let (_, other_public) = keypair_as(&dir, "ec", "es-1", "pem");
    let files = format!("{public},{other_public}");
    let cfg = config(&["--jwt-secrets", "hs-1:a-long-enough-shared-secret-for-hs256", "--jwt-public-key-file", &files]);
    let auth = Authenticator::new(Keys::from_config(&cfg).unwrap(), &cfg);
    let hs = EncodingKey::from_secret(b"a-long-enough-shared-secret-for-hs256");
    let rs = private_pem(&private, Algorithm::RS256);
    let pem = std::fs::read(&public).unwrap();

    auth.verify(&forge(Algorithm::HS256, &hs, Some("hs-1"), "dispatcher")).unwrap();
    auth.verify(&forge(Algorithm::RS256, &rs, Some("rs-1"), "dispatcher")).unwrap();
    auth.verify(&forge(Algorithm::RS256, &rs, None, "dispatcher")).unwrap();
    let invalid = Some(ErrorCode::InvalidToken);
    for kid in [None, Some("rs-1"), Some("hs-1"), Some("es-1")] {
        let confused = forge(Algorithm::HS256, &EncodingKey::from_secret(&pem), kid, "dispatcher");
        assert_eq!(code(&auth, &confused), invalid, "HS256 with the PEM as secret, kid {kid:?}");
    }
    // A kid names a key, and the key its algorithm: RS256 under the HS256 kid fails.
    assert_eq!(code(&auth, &forge(Algorithm::RS256, &rs, Some("hs-1"), "dispatcher")), invalid);
    assert_eq!(code(&auth, &forge(Algorithm::RS256, &rs, Some("es-1"), "dispatcher")), invalid);
    assert_eq!(code(&auth, &forge(Algorithm::RS256, &rs, Some("unknown"), "dispatcher")), invalid);
    // An algorithm no configured key has.
    assert_eq!(code(&auth, &forge(Algorithm::HS512, &hs, Some("hs-1"), "dispatcher")), invalid);
    let _ = std::fs::remove_dir_all(dir);
}

/// The comma list of FLEETGATE_JWT_PUBLIC_KEY_FILE and FLEETGATE_JWT_KEYS_DIR together.
#[test]
fn public_key_list_and_dir_combine() {
    let a = scratch("list-a");
    let b = scratch("list-b");
    let (a_private, a_public) = keypair_as(&a, "ec", "first", "pem");
    let (b_private, _) = keypair_as(&b, "ec", "second", "pem");
    std::fs::rename(&b_private, a.join("second.key")).unwrap();
    // Kubernetes-style clutter in the directory is not a key.
    std::fs::create_dir(b.join("..data")).unwrap();
    std::fs::write(b.join("README"), "not a key").unwrap();
    let b_dir = b.display().to_string();
    let cfg = config(&["--jwt-public-key-file", &a_public, "--jwt-keys-dir", &b_dir]);
    let auth = Authenticator::new(Keys::from_config(&cfg).unwrap(), &cfg);
    let first = private_pem(&a_private, Algorithm::ES256);
    let second = private_pem(&a.join("second.key").display().to_string(), Algorithm::ES256);
    auth.verify(&forge(Algorithm::ES256, &first, Some("first"), "dispatcher")).unwrap();
    auth.verify(&forge(Algorithm::ES256, &second, Some("second"), "dispatcher")).unwrap();
    assert_eq!(
        code(&auth, &forge(Algorithm::ES256, &second, Some("first"), "dispatcher")),
        Some(ErrorCode::InvalidToken)
    );

    // The same kid from the list and the directory is ambiguous.
    std::fs::copy(&a_public, b.join("first.pem")).unwrap();
    let err = Keys::from_config(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("key id first is configured twice"), "{err}");
    let _ = std::fs::remove_dir_all(a);
    let _ = std::fs::remove_dir_all(b);
}

/// `fleetgate serve` with a bad key configuration: exit status and stderr.
fn serve_fails(envs: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .env_clear()
        .env("FLEETGATE_ADDR", format!("127.0.0.1:{}", support::free_port()))
        .env("FLEETGATE_METRICS_ADDR", format!("127.0.0.1:{}", support::free_port()))
        .envs(envs.iter().copied())
        .output()
        .expect("run fleetgate");
    assert!(!out.status.success(), "started with {envs:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_key_configurations_stop_the_process() {
    let dir = scratch("bad");
    let (private, public) = keypair_as(&dir, "ec", "k1", "pem");
    let other = scratch("bad-other");
    let (other_private, _) = keypair_as(&other, "ec", "k2", "pem");
    let d = dir.display().to_string();

    // k1.key is not a *.pem, so the dir holds k1.pem only; a private key named *.pem is refused.
    std::fs::copy(&private, dir.join("leaked.pem")).unwrap();
    assert!(serve_fails(&[("FLEETGATE_JWT_KEYS_DIR", &d)]).contains("leaked.pem holds a private key"));
    std::fs::remove_file(dir.join("leaked.pem")).unwrap();

    let empty = scratch("bad-empty");
    assert!(serve_fails(&[("FLEETGATE_JWT_KEYS_DIR", &empty.display().to_string())]).contains("holds no *.pem file"));
    assert!(serve_fails(&[]).contains("no token key configured"));
    assert!(serve_fails(&[("FLEETGATE_JWT_SECRETS", "only-a-secret")]).contains("expected kid:secret"));
    assert!(serve_fails(&[("FLEETGATE_JWT_SECRET", "s"), ("FLEETGATE_JWT_LEEWAY_SECS", "99999999")]).contains("bound"));

    // A private key that belongs to none of the public keys would mint refused tokens.
    let err = mint_with(
        &[("FLEETGATE_JWT_PUBLIC_KEY_FILE", &public), ("FLEETGATE_JWT_PRIVATE_KEY_FILE", &other_private)],
        "viewer",
    )
    .unwrap_err();
    assert!(err.contains("matches none of the configured public keys"), "{err}");
    let err = mint_with(&[("FLEETGATE_JWT_KEYS_DIR", &d)], "viewer").unwrap_err();
    assert!(err.contains("minting needs a signing key"), "{err}");
    let minted = mint_with(&[("FLEETGATE_JWT_SECRETS", "new:s1,old:s2")], "viewer").unwrap();
    assert_eq!(kid(&minted).as_deref(), Some("new"));
    for d in [dir, other, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--demo` next to a real key setting: the demo token endpoint would mint
/// tokens anyone can ask for with that key, so the process refuses to start.
#[test]
fn demo_mode_refuses_real_keys() {
    let dir = scratch("demo");
    let (_, public) = keypair_as(&dir, "ec", "k1", "pem");
    let d = dir.display().to_string();
    let cases: [(&str, &str); 6] = [
        ("FLEETGATE_JWT_SECRET", "a-production-secret"),
        ("FLEETGATE_JWT_SECRETS", "k1:a-production-secret"),
        ("FLEETGATE_JWT_PUBLIC_KEY_FILE", &public),
        ("FLEETGATE_JWT_KEYS_DIR", &d),
        ("FLEETGATE_JWT_PRIVATE_KEY_FILE", &public),
        // Refused by name, whichever release reads it.
        ("FLEETGATE_JWT_JWKS_URL", "https://id.example.com/.well-known/jwks.json"),
    ];
    for (name, value) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .arg("--demo")
            .env_clear()
            .env("FLEETGATE_ADDR", format!("127.0.0.1:{}", support::free_port()))
            .env("FLEETGATE_METRICS_ADDR", format!("127.0.0.1:{}", support::free_port()))
            .env(name, value)
            .output()
            .expect("run fleetgate");
        assert_eq!(out.status.code(), Some(1), "{name}: started or died otherwise: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("--demo (FLEETGATE_DEMO) cannot be combined with {name}")), "{stderr}");
        assert!(stderr.contains("must never sign with a real key"), "{stderr}");
        assert!(!stderr.contains("a-production-secret"), "the secret is echoed: {stderr}");
    }
    // Both named at once when both are set; FLEETGATE_DEMO spelled as a variable counts too.
    let err = serve_fails(&[("FLEETGATE_DEMO", "true"), ("FLEETGATE_JWT_SECRET", "s"), ("FLEETGATE_JWT_KEYS_DIR", &d)]);
    assert!(err.contains("cannot be combined with FLEETGATE_JWT_SECRET, FLEETGATE_JWT_KEYS_DIR"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `fleetgate token --vehicles` mints a scoped viewer token; the claim's
/// rules hold at minting time too.
#[test]
fn token_command_mints_scoped_viewer_tokens() {
    let mint_scoped = |role: &str, vehicles: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["token", "--fleet", "f", "--role", role, "--sub", "rider", "--vehicles", vehicles])
            .env_clear()
            .env("FLEETGATE_JWT_SECRET", "scoped-secret")
            .output()
            .expect("run fleetgate token");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, token, _) = mint_scoped("viewer", "bus-2,bus-1");
    assert_eq!(code, Some(0));
    let cfg = config(&["--jwt-secret", "scoped-secret"]);
    let auth = Authenticator::new(Keys::from_config(&cfg).unwrap(), &cfg);
    let claims = auth.verify(&token).unwrap();
    assert_eq!(claims.vehicles.unwrap().iter().collect::<Vec<_>>(), ["bus-1", "bus-2"]);
    let (code, _, err) = mint_scoped("dispatcher", "bus-1");
    assert_eq!(code, Some(2));
    assert!(err.contains("claim vehicles: only viewer tokens may carry it"), "{err}");
    let (code, _, err) = mint_scoped("viewer", "bus 1");
    assert_eq!(code, Some(2));
    assert!(err.contains("claim vehicles: items must be vehicle ids"), "{err}");
}
