//! Start-up checks of TLS to Redis and of the Redis settings: a
//! certificate that does not verify, a missing client certificate, files
//! that are not there, TLS files with a plain-text address, and modes set
//! together all stop the process with a message naming the setting.
//! (Cross-replica delivery over TLS is in `replicas.rs`.)

mod support;

use support::{Certs, TlsRedis, start_failure};

#[test]
fn a_certificate_signed_by_another_ca_fails_start_up_and_says_so() {
    let redis = TlsRedis::start(false);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let other_ca = redis.tls.certs.path("other-ca.crt");
    let (status, stderr) =
        start_failure(&[("FLEETGATE_REDIS_URL", url.clone()), ("FLEETGATE_REDIS_TLS_CA_FILE", other_ca.clone())]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("does not verify against the CA in FLEETGATE_REDIS_TLS_CA_FILE ({other_ca})")),
        "{stderr}"
    );
    // The system roots do not know the test CA either.
    let (status, stderr) = start_failure(&[("FLEETGATE_REDIS_URL", url)]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("does not verify against the system root certificates"), "{stderr}");
}

#[test]
fn redis_requiring_a_client_certificate_names_the_settings_to_set() {
    let redis = TlsRedis::start(true);
    let mut envs = vec![("FLEETGATE_REDIS_URL", format!("rediss://127.0.0.1:{}", redis.port))];
    envs.extend(redis.tls.certs.envs(false));
    let (status, stderr) = start_failure(&envs);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("FLEETGATE_REDIS_TLS_CERT_FILE"), "{stderr}");
}

#[test]
fn tls_files_with_a_plain_text_address_are_refused_before_connecting() {
    let redis = TlsRedis::start(false);
    let mut envs = vec![("FLEETGATE_REDIS_URL", format!("redis://127.0.0.1:{}", redis.port))];
    envs.extend(redis.tls.certs.envs(false));
    let (status, stderr) = start_failure(&envs);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("use rediss://"), "{stderr}");
}

#[test]
fn tls_files_that_are_missing_or_not_pem_name_their_setting() {
    let certs = Certs::generate();
    let url = ("FLEETGATE_REDIS_URL", "rediss://127.0.0.1:1".to_owned());
    let (status, stderr) =
        start_failure(&[url.clone(), ("FLEETGATE_REDIS_TLS_CA_FILE", "/nonexistent/ca.pem".to_owned())]);
    assert!(!status.success());
    assert!(stderr.contains("FLEETGATE_REDIS_TLS_CA_FILE: cannot read /nonexistent/ca.pem"), "{stderr}");
    let (status, stderr) = start_failure(&[
        url.clone(),
        ("FLEETGATE_REDIS_TLS_CERT_FILE", certs.path("client.crt")),
        // A certificate where the key should be.
        ("FLEETGATE_REDIS_TLS_KEY_FILE", certs.path("client.crt")),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("FLEETGATE_REDIS_TLS_KEY_FILE"), "{stderr}");
    let (status, stderr) = start_failure(&[
        url,
        ("FLEETGATE_REDIS_TLS_CERT_FILE", certs.path("client.crt")),
        ("FLEETGATE_REDIS_TLS_KEY_FILE", certs.path("server.key")),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("do not make a pair"), "{stderr}");
}

#[test]
fn sentinel_and_url_together_are_refused() {
    let (status, stderr) = start_failure(&[
        ("FLEETGATE_REDIS_URL", "redis://127.0.0.1:1".to_owned()),
        ("FLEETGATE_REDIS_SENTINELS", "127.0.0.1:2".to_owned()),
        ("FLEETGATE_REDIS_SENTINEL_MASTER", "mymaster".to_owned()),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("not both FLEETGATE_REDIS_URL and FLEETGATE_REDIS_SENTINELS"), "{stderr}");
}
