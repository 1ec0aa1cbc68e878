//! Asymmetric keys: RS256 and ES256 public keys verify tokens minted with
//! `fleetgate token`, and an HS256 token "signed" with the public key (the
//! algorithm-confusion attack) is refused.

mod support;

use std::{path::Path, process::Command};

use serde_json::json;
use support::{Client, Server, now_ms};

fn openssl(args: &[&str]) {
    let status = Command::new("openssl").args(args).status().expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

fn keypair(dir: &Path, kind: &str) -> (String, String) {
    let private = dir.join(format!("{kind}.key")).display().to_string();
    let public = dir.join(format!("{kind}.pub")).display().to_string();
    match kind {
        "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &private]),
        _ => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &private]),
    }
    openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
    (private, public)
}

fn mint(private: &str, public: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["token", "--fleet", "f", "--role", role, "--sub", "bus-1"])
        .env_clear()
        .env("FLEETGATE_JWT_PUBLIC_KEY_FILE", public)
        .env("FLEETGATE_JWT_PRIVATE_KEY_FILE", private)
        .output()
        .expect("run fleetgate token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn check(kind: &str) {
    let dir = std::env::temp_dir().join(format!("fleetgate-keys-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = keypair(&dir, kind);
    let server =
        Server::start(&[("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_PUBLIC_KEY_FILE", public.clone())]);

    let token = mint(&private, &public, "vehicle");
    let mut c = Client::connect(&server, json!({"token": token})).await.expect("valid token");
    assert_eq!(c.call("locationupdate", json!({"lat": 1, "lon": 1})).await["data"]["accepted"], true);

    // HS256 with the public key bytes as the secret must not verify.
    let pem = std::fs::read(&public).unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "x", "fleet": "f", "role": "dispatcher", "exp": now_ms() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(Client::connect(&server, json!({"token": forged})).await.err().as_deref(), Some("invalid_token"));
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
