//! Token keys from an identity provider: a real JWKS HTTP server started
//! by the test serves keys made with `openssl`, and real gateway processes
//! fetch them (`FLEETGATE_JWT_JWKS_URL`). Covers selection by `kid` among
//! RS256, ES256 and EdDSA keys, rotation without restart, the rate-limited
//! refresh on unknown kids (requests counted on the JWKS server), a
//! provider that goes down or answers garbage, readiness before the first
//! fetch, algorithm confusion, and HTTPS with a verified certificate.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use fleetgate_testkit::Client;
use jsonwebtoken::{Algorithm, EncodingKey, jwk::Jwk};
use serde_json::{Value, json};
use support::{
    Server, http_get, http_request_as,
    keys::{forge, openssl, scratch},
    now_ms,
};

/// What the JWKS server answers.
#[derive(Clone)]
enum Answer {
    Keys(Value),
    /// 503, as a provider in trouble.
    Down,
    /// 200 with a body that is no JWKS.
    Garbage,
}

struct Provider {
    answer: Mutex<Answer>,
    requests: AtomicUsize,
    port: u16,
}

impl Provider {
    /// A JWKS server on its own thread and runtime, so that blocking calls
    /// in a test never stall it.
    fn start(answer: Answer) -> Arc<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let provider = Arc::new(Self { answer: Mutex::new(answer), requests: AtomicUsize::new(0), port });
        let state = provider.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let app = Router::new().route("/certs", get(certs)).with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        provider
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/certs", self.port)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn certs(State(p): State<Arc<Provider>>) -> axum::response::Response {
    p.requests.fetch_add(1, Ordering::SeqCst);
    let answer = p.answer.lock().unwrap().clone();
    match answer {
        Answer::Keys(v) => axum::Json(v).into_response(),
        Answer::Down => (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response(),
        Answer::Garbage => (StatusCode::OK, "<html>login</html>").into_response(),
    }
}

/// A key pair made by openssl: signs tokens, and is published as a JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: Vec<u8>,
}

impl Signer {
    fn new(dir: &Path, kind: &str, kid: &str) -> Self {
        let private = dir.join(format!("{kid}.key")).display().to_string();
        match kind {
            "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &private]),
            "ec" => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &private]),
            _ => openssl(&["genpkey", "-algorithm", "ed25519", "-out", &private]),
        };
        let pem = std::fs::read(&private).unwrap();
        let public_pem = openssl(&["pkey", "-in", &private, "-pubout"]);
        let (alg, encoding) = match kind {
            "rsa" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap()),
            "ec" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap()),
            _ => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem).unwrap()),
        };
        let mut jwk = match alg {
            Algorithm::EdDSA => {
                // The public key is the last 32 bytes of its DER form.
                let der = openssl(&["pkey", "-in", &private, "-pubout", "-outform", "DER"]);
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&der[der.len() - 32..])})
            }
            _ => serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap(),
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self { kid: kid.to_owned(), alg, encoding, jwk, public_pem }
    }

    fn token(&self) -> String {
        self.token_as(Some(&self.kid), "dispatcher")
    }

    fn token_as(&self, kid: Option<&str>, role: &str) -> String {
        forge(self.alg, &self.encoding, kid, role)
    }
}

fn jwks(keys: &[&Signer]) -> Answer {
    Answer::Keys(json!({ "keys": keys.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }))
}

/// A gateway trusting only the provider (the default test secret removed).
fn gateway(provider: &Provider, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut envs = vec![("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_JWKS_URL", provider.url())];
    for (k, v) in extra {
        envs.retain(|(e, _)| e != k);
        envs.push((leak(k), v.clone()));
    }
    envs
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The HTTP API's answer to a bearer token: status and error code.
fn http_as(server: &Server, token: &str) -> (u16, Option<String>) {
    let (status, body) = http_request_as(server.addr, "GET", "/api/v1/fleets/f/vehicles", None, Some(token))
        .expect("the HTTP API answers");
    let code = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (status, code)
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Several keys of three algorithms, told apart by `kid`, over sockets
/// (handshake and `authenticate`) and the HTTP API; every way of getting a
/// key to act outside its algorithm is refused.
#[tokio::test]
async fn kid_selects_among_rs256_es256_and_eddsa_keys() {
    let dir = scratch("kids");
    let (rsa1, rsa2) = (Signer::new(&dir, "rsa", "rsa-1"), Signer::new(&dir, "rsa", "rsa-2"));
    let (ec, ed) = (Signer::new(&dir, "ec", "ec-1"), Signer::new(&dir, "ed", "ed-1"));
    let secret = b"a-shared-secret-that-is-never-trusted-from-a-jwks";
    let oct = json!({"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)});
    // An RSA key that claims another algorithm is not used at all.
    let mut mislabelled = Signer::new(&dir, "rsa", "rsa-3");
    mislabelled.jwk["alg"] = json!("ES256");
    let Answer::Keys(mut doc) = jwks(&[&rsa1, &rsa2, &ec, &ed, &mislabelled]) else { unreachable!() };
    doc["keys"].as_array_mut().unwrap().push(oct);
    let provider = Provider::start(Answer::Keys(doc));
    let server = Server::start(&gateway(&provider, &[]));

    for signer in [&rsa1, &rsa2, &ec, &ed] {
        let mut c =
            Client::with_token(&server, &signer.token()).await.unwrap_or_else(|e| panic!("{}: {e}", signer.kid));
        let reply = c.call("locationupdate", json!({"vehicleId": "bus-1", "lat": 1, "lon": 2})).await;
        assert_eq!(reply["ok"], true, "{}: {reply}", signer.kid);
        assert_eq!(http_as(&server, &signer.token()).0, 200, "{} over HTTP", signer.kid);
    }
    // Without a kid any key of the token's algorithm may verify it.
    Client::with_token(&server, &ec.token_as(None, "viewer")).await.expect("kid-less ES256 token");
    // The bus-app flow: connect first, then `authenticate`.
    let mut c = Client::connect(&server, Value::Null).await.unwrap();
    let reply = c.call("authenticate", json!({ "token": rsa2.token_as(Some("rsa-2"), "viewer") })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"]["role"], "viewer");

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        URL_SAFE_NO_PAD
            .encode(json!({"sub": "x", "fleet": "f", "role": "dispatcher", "exp": now_ms() / 1000 + 600}).to_string())
    );
    let refused = [
        ("RS256 key under another key's kid", forge(Algorithm::RS256, &rsa1.encoding, Some("rsa-2"), "dispatcher")),
        ("ES256 token under an RSA kid", forge(Algorithm::ES256, &ec.encoding, Some("rsa-1"), "dispatcher")),
        (
            "HS256 signed with the RSA public key PEM",
            forge(Algorithm::HS256, &EncodingKey::from_secret(&rsa1.public_pem), Some("rsa-1"), "dispatcher"),
        ),
        (
            "HS256 signed with the EC public key PEM, no kid",
            forge(Algorithm::HS256, &EncodingKey::from_secret(&ec.public_pem), None, "dispatcher"),
        ),
        (
            "HS256 signed with the RSA modulus",
            forge(
                Algorithm::HS256,
                &EncodingKey::from_secret(rsa1.jwk["n"].as_str().unwrap().as_bytes()),
                Some("rsa-1"),
                "dispatcher",
            ),
        ),
        (
            "HS256 with the JWKS's oct key",
            forge(Algorithm::HS256, &EncodingKey::from_secret(secret), Some("hs-1"), "dispatcher"),
        ),
        ("the mislabelled key", mislabelled.token()),
        ("alg none", none),
    ];
    for (what, token) in &refused {
        assert_eq!(Client::with_token(&server, token).await.err().as_deref(), Some("invalid_token"), "{what}");
        assert_eq!(http_as(&server, token), (401, Some("invalid_token".into())), "{what} over HTTP");
    }
    assert_eq!(server.metric("fleetgate_jwks_keys"), 4.0, "rsa-1, rsa-2, ec-1, ed-1");
    let _ = std::fs::remove_dir_all(dir);
}

/// A provider rotates its keys: a token of the new kid is accepted after
/// the refresh it triggers, with no restart; a burst of unknown kids costs
/// at most one fetch per 10 s, shared by every token of the burst.
#[tokio::test]
async fn rotation_without_restart_and_the_refresh_rate_limit() {
    let dir = scratch("rotation");
    let (old, new) = (Signer::new(&dir, "rsa", "2026-05"), Signer::new(&dir, "ec", "2026-11"));
    let provider = Provider::start(jwks(&[&old]));
    let server = Server::start(&gateway(&provider, &[]));
    let started = Instant::now();
    let mut kept = Client::with_token(&server, &old.token()).await.expect("the current key");
    assert_eq!(provider.requests(), 1, "one fetch at start");

    // The provider publishes the next key; the last fetch was under 10 s ago.
    provider.set(jwks(&[&old, &new]));
    let burst = |token: String| {
        let server = &server;
        futures_util::future::join_all((0..20).map(move |_| {
            let token = token.clone();
            async move { Client::with_token(server, &token).await.map(|_| ()) }
        }))
    };
    let early = burst(new.token()).await;
    assert!(early.iter().all(|r| r.as_ref().err().map(String::as_str) == Some("invalid_token")), "{early:?}");
    assert_eq!(http_as(&server, &new.token()), (401, Some("invalid_token".into())));
    assert_eq!(provider.requests(), 1, "no fetch within 10 s of the last");

    // Once 10 s have passed, the next unknown kid refreshes: one fetch for the whole burst.
    if let Some(left) = Duration::from_secs(10).checked_sub(started.elapsed()) {
        tokio::time::sleep(left + Duration::from_millis(300)).await;
    }
    let later = burst(new.token()).await;
    assert!(later.iter().all(Result::is_ok), "{later:?}");
    assert_eq!(provider.requests(), 2, "one fetch for 20 tokens");
    assert_eq!(http_as(&server, &new.token()).0, 200);

    // Made-up kids right after that fetch cost nothing more.
    let junk = burst(new.token_as(Some("made-up"), "dispatcher")).await;
    assert!(junk.iter().all(|r| r.as_ref().err().map(String::as_str) == Some("invalid_token")), "{junk:?}");
    assert_eq!(provider.requests(), 2);

    // The socket authenticated with the old key was never disturbed.
    assert_eq!(kept.call("locationupdate", json!({"vehicleId": "bus-1", "lat": 3, "lon": 4})).await["ok"], true);
    assert_eq!(server.metric("fleetgate_jwks_refreshes_total{outcome=\"ok\"}"), 2.0);
    let _ = std::fs::remove_dir_all(dir);
}

/// While the provider is down or answers garbage the last good set keeps
/// serving; a server that never fetched a set is not ready, refuses tokens
/// with the contract's code, and becomes ready once the provider is back.
#[tokio::test]
async fn provider_down() {
    let dir = scratch("down");
    let key = Signer::new(&dir, "ec", "k1");
    let provider = Provider::start(jwks(&[&key]));
    let refresh = [("FLEETGATE_JWT_JWKS_REFRESH_SECS", "1".to_owned())];
    let server = Server::start(&gateway(&provider, &refresh));
    Client::with_token(&server, &key.token()).await.expect("key fetched");

    for (answer, failures) in [(Answer::Down, 1.0), (Answer::Garbage, 2.0)] {
        let before = server.metric("fleetgate_jwks_refreshes_total{outcome=\"error\"}");
        provider.set(answer);
        wait_until("a failed refresh", Duration::from_secs(10), || {
            server.metric("fleetgate_jwks_refreshes_total{outcome=\"error\"}") >= before + 1.0
        });
        assert!(server.metric("fleetgate_jwks_refreshes_total{outcome=\"error\"}") >= failures);
        Client::with_token(&server, &key.token()).await.expect("the last good set still serves");
        assert_eq!(http_as(&server, &key.token()).0, 200);
        assert_eq!(http_get(server.addr, "/readyz").map(|(s, _)| s), Some(200), "still ready");
        assert_eq!(server.metric("fleetgate_jwks_keys"), 1.0);
    }
    assert!(server.metric("fleetgate_jwks_last_success_timestamp_seconds") > 1.7e9);

    // A second gateway starting while the provider is down.
    provider.set(Answer::Down);
    let cold = Server::start_unready(&gateway(&provider, &refresh));
    wait_until("a failed first fetch", Duration::from_secs(10), || {
        cold.metric("fleetgate_jwks_refreshes_total{outcome=\"error\"}") >= 1.0
    });
    let (status, body) = http_get(cold.addr, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    assert_eq!(cold.metric("fleetgate_ready"), 0.0);
    assert_eq!(Client::with_token(&cold, &key.token()).await.err().as_deref(), Some("invalid_token"));
    assert_eq!(http_as(&cold, &key.token()), (401, Some("invalid_token".into())));

    provider.set(jwks(&[&key]));
    cold.wait_ready();
    Client::with_token(&cold, &key.token()).await.expect("ready once the provider is back");
    assert_eq!(cold.metric("fleetgate_ready"), 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

/// The JWKS combines with configured keys: an HS256 secret and the
/// provider's keys both verify, each with its own algorithm.
#[tokio::test]
async fn combines_with_configured_keys() {
    let dir = scratch("mixed");
    let key = Signer::new(&dir, "rsa", "idp-1");
    let provider = Provider::start(jwks(&[&key]));
    let server = Server::start(&gateway(&provider, &[("FLEETGATE_JWT_SECRET", support::SECRET.to_owned())]));
    Client::with_token(&server, &support::token_for("f", "viewer", "v1")).await.expect("the configured secret");
    Client::with_token(&server, &key.token()).await.expect("the provider's key");
    let confused = forge(Algorithm::HS256, &EncodingKey::from_secret(&key.public_pem), Some("idp-1"), "viewer");
    assert_eq!(Client::with_token(&server, &confused).await.err().as_deref(), Some("invalid_token"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Bad settings stop the process with a message naming the setting, and
/// the JWKS metrics exist (at zero) in a process that has no JWKS at all.
#[tokio::test]
async fn settings_and_metrics_at_start() {
    for (url, says) in [
        ("http://idp.example.com/certs", "loopback"),
        ("idp.example.com/certs", "FLEETGATE_JWT_JWKS_URL"),
        ("ftp://127.0.0.1/certs", "scheme ftp"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .env_clear()
            .env("FLEETGATE_ADDR", "127.0.0.1:0")
            .env("FLEETGATE_METRICS_ADDR", "127.0.0.1:0")
            .env("FLEETGATE_JWT_JWKS_URL", url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} accepted");
        assert!(stderr.contains("FLEETGATE_JWT_JWKS_URL") && stderr.contains(says), "{url}: {stderr}");
    }

    let server = Server::start(&[]);
    let (_, scrape) = http_get(server.metrics_addr, "/metrics").unwrap();
    for series in [
        "fleetgate_jwks_refreshes_total{outcome=\"ok\"} 0",
        "fleetgate_jwks_refreshes_total{outcome=\"error\"} 0",
        "fleetgate_jwks_keys 0",
        "fleetgate_jwks_last_success_timestamp_seconds 0",
    ] {
        assert!(scrape.lines().any(|l| l == series), "{series} missing from the first scrape");
    }
}

/// A JWKS over HTTPS on 127.0.0.1 with a certificate of a CA made here.
/// Answers every request with `body`, once per connection.
fn https_provider(dir: &Path, body: String) -> (u16, PathBuf, Arc<AtomicUsize>) {
    let p = |name: &str| dir.join(name).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=fleetgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("srv.key"),
        "-out",
        &p("srv.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("srv.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("srv.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(p("srv.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(p("srv.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, body, counted) = (acceptor.clone(), body.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(body.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    (port, dir.join("ca.pem"), handshakes)
}

/// Over HTTPS the provider's certificate is verified: trusted through
/// `SSL_CERT_FILE`, the set is fetched and its tokens verify; against the
/// system's roots alone the fetch fails and the server stays unready.
#[tokio::test]
async fn https_with_a_verified_certificate() {
    let dir = scratch("https");
    let key = Signer::new(&dir, "rsa", "tls-1");
    let Answer::Keys(doc) = jwks(&[&key]) else { unreachable!() };
    let (port, ca, handshakes) = https_provider(&dir, doc.to_string());
    let url = format!("https://127.0.0.1:{port}/certs");
    let envs = |ca: Option<&Path>| {
        let mut e = vec![("FLEETGATE_JWT_SECRET", String::new()), ("FLEETGATE_JWT_JWKS_URL", url.clone())];
        if let Some(ca) = ca {
            e.push(("SSL_CERT_FILE", ca.display().to_string()));
        }
        e
    };
    let trusted = Server::start(&envs(Some(&ca)));
    Client::with_token(&trusted, &key.token()).await.expect("key fetched over https");
    assert_eq!(trusted.metric("fleetgate_jwks_keys"), 1.0);

    let before = handshakes.load(Ordering::SeqCst);
    let untrusted = Server::start_unready(&envs(None));
    wait_until("a failed fetch", Duration::from_secs(10), || {
        untrusted.metric("fleetgate_jwks_refreshes_total{outcome=\"error\"}") >= 1.0
    });
    assert_eq!(http_get(untrusted.addr, "/readyz").map(|(s, _)| s), Some(503));
    assert_eq!(Client::with_token(&untrusted, &key.token()).await.err().as_deref(), Some("invalid_token"));
    assert_eq!(handshakes.load(Ordering::SeqCst), before, "no TLS session completed with an unknown CA");
    let _ = std::fs::remove_dir_all(dir);
}
