//! MQTT ingest (contract section 13): a shared subscription to
//! `fleetgate/<fleet>/<vehicle>/position`, so each message is taken by one
//! replica; each payload (a section 5.1 object or the bus-app form) goes
//! through the accept path, its outcome to `…/ack`, and only then is the
//! QoS 1 message acknowledged to the broker. A replica that dies before
//! that leaves the message with the broker, in its persistent session
//! (a stable client id, `clean_session` off), taken again when it returns.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Ingest, count_unreadable, vehicle_session};
use crate::{
    config::Config,
    error::{ApiError, Envelope, ErrorCode},
    gateway::{Accepted, Source},
    ids,
};

const SOURCE: Source = Source::Mqtt;

/// The shared subscription's group: one per deployment, so each message
/// goes to one of its replicas.
pub const SHARE_GROUP: &str = "fleetgate";

/// Largest packet taken from the broker. A larger one would fail the
/// connection again at every redelivery, so the broker should refuse it
/// first (mosquitto's `message_size_limit`); payloads above
/// `FLEETGATE_MAX_MESSAGE_BYTES` and below this are refused one by one.
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Messages queued per worker, and requests (acks, replies) queued for the
/// connection. Both exceed what a broker keeps in flight to one client
/// (mosquitto: 20), so a worker waiting to acknowledge never waits for the
/// loop that is itself waiting to hand that worker a message.
const QUEUE: usize = 4096;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A setting of the MQTT ingest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    #[error("FLEETGATE_MQTT_URL: {0}")]
    Url(String),
    #[error("FLEETGATE_MQTT_FLEETS: {0:?} is not a fleet id (1–64 characters of [A-Za-z0-9._:-])")]
    Fleet(String),
    #[error("FLEETGATE_MQTT_CLIENT_ID: {0}")]
    ClientId(&'static str),
    #[error("FLEETGATE_MQTT_TLS_CA_FILE: {0}")]
    Ca(String),
}

/// The MQTT ingest's settings, checked at start-up.
pub struct Settings {
    host: String,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
    pub client_id: String,
    fleets: Vec<String>,
    ca_file: Option<PathBuf>,
    max_payload: usize,
}

impl Settings {
    /// `None` when `FLEETGATE_MQTT_URL` is unset.
    pub fn from_config(config: &Config) -> Result<Option<Self>, MqttConfigError> {
        let Some(raw) = config.mqtt_url.as_deref() else { return Ok(None) };
        let url = url::Url::parse(raw).map_err(|e| MqttConfigError::Url(e.to_string()))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(MqttConfigError::Url("the scheme must be mqtt:// or mqtts://".into())),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(MqttConfigError::Url("a host is required".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let decode =
            |s: &str| percent_decode(s).ok_or(MqttConfigError::Url("user or password is not valid UTF-8".into()));
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((decode(user)?, decode(password.unwrap_or(""))?)),
        };
        let fleets: Vec<String> =
            config.mqtt_fleets.iter().map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()).collect();
        if let Some(bad) = fleets.iter().find(|f| !ids::is_valid_id(f)) {
            return Err(MqttConfigError::Fleet(bad.clone()));
        }
        let client_id = match config.mqtt_client_id.as_deref().map(str::trim) {
            Some("") => return Err(MqttConfigError::ClientId("must not be empty")),
            Some(id) => id.to_owned(),
            None => host_name().ok_or(MqttConfigError::ClientId("unset, and the host name is unknown: set it"))?,
        };
        if client_id.len() > 256 || client_id.contains(['+', '#', '/']) {
            return Err(MqttConfigError::ClientId("at most 256 characters, without '+', '#' or '/'"));
        }
        Ok(Some(Self {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            credentials,
            client_id,
            fleets,
            ca_file: config.mqtt_tls_ca_file.clone(),
            max_payload: config.max_message_bytes,
        }))
    }

    /// The broker without its credentials, for logs.
    pub fn redacted_url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let user = if self.credentials.is_some() { "***@" } else { "" };
        format!("{scheme}://{user}{}:{}", self.host, self.port)
    }

    /// The topic filters taken: every fleet's, or the listed ones'.
    pub fn filters(&self) -> Vec<String> {
        if self.fleets.is_empty() {
            vec![format!("$share/{SHARE_GROUP}/fleetgate/+/+/position")]
        } else {
            self.fleets.iter().map(|f| format!("$share/{SHARE_GROUP}/fleetgate/{f}/+/position")).collect()
        }
    }

    fn options(&self) -> Result<MqttOptions, MqttConfigError> {
        let mut options = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_request_channel_capacity(QUEUE);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(self.tls_config()?))));
        }
        Ok(options)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, MqttConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                use rustls_pki_types::{CertificateDer, pem::PemObject};
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect)
                    .map_err(|e| MqttConfigError::Ca(format!("{}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(MqttConfigError::Ca(format!("{}: no certificate in it", path.display())));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MqttConfigError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(config)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

/// The host name (the pod name in Kubernetes).
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Takes positions from the broker until `stop` is cancelled, reconnecting
/// with backoff (and subscribing again after each connect: a broker that
/// restarted without persistence forgot the subscription).
pub async fn run(settings: Settings, ingest: Arc<dyn Ingest>, stop: CancellationToken) {
    let options = match settings.options() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "mqtt ingest not started");
            return;
        }
    };
    let (client, mut events) = AsyncClient::new(options, QUEUE);
    // Acks and replies are small and each waited for: Nagle's algorithm
    // would hold them back for a delayed ACK (tens of ms) apiece.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let workers = spawn_workers(&client, &ingest, settings.max_payload, &stop);
    let filters = settings.filters();
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_MIN;
                tracing::info!(broker = %settings.redacted_url(), session_present = ack.session_present, "mqtt connected");
                let topics = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(topics.collect::<Vec<_>>()) {
                    tracing::warn!(error = %e, "mqtt subscribe not sent");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    tracing::error!("the broker refused the subscription (check its ACL for fleetgate's user)");
                } else {
                    metrics::gauge!(crate::metrics::names::MQTT_SUBSCRIBED).set(1.0);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                metrics::counter!(crate::metrics::names::MQTT_MESSAGES).increment(1);
                let shard = shard_of(&publish.topic, workers.len());
                if workers[shard].send(publish).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics::gauge!(crate::metrics::names::MQTT_SUBSCRIBED).set(0.0);
                metrics::counter!(crate::metrics::names::MQTT_CONNECTION_ERRORS).increment(1);
                tracing::warn!(error = %e, broker = %settings.redacted_url(), retry_in_ms = backoff.as_millis() as u64, "mqtt connection lost");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    metrics::gauge!(crate::metrics::names::MQTT_SUBSCRIBED).set(0.0);
    // Unacknowledged messages stay in the session for the next start.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while events.poll().await.is_ok() {} }).await;
}

/// Messages of one topic (one vehicle) always go to the same worker, so
/// they meet the compare-and-set in the order the broker delivered them.
fn shard_of(topic: &str, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

fn spawn_workers(
    client: &AsyncClient,
    ingest: &Arc<dyn Ingest>,
    max_payload: usize,
    stop: &CancellationToken,
) -> Vec<mpsc::Sender<Publish>> {
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    (0..shards)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Publish>(QUEUE);
            let (client, ingest, stop) = (client.clone(), ingest.clone(), stop.clone());
            tokio::spawn(async move {
                while let Some(publish) = rx.recv().await {
                    let Some(outcome) = take(&*ingest, &publish, max_payload, &stop).await else { return };
                    if let Some(topic) = outcome.reply_topic {
                        let body = serde_json::to_vec(&Envelope::from_result(&outcome.result)).unwrap_or_default();
                        // QoS 0 and never waited for: a reply nobody reads must not hold up acks.
                        if client.try_publish(topic, QoS::AtMostOnce, false, body).is_err() {
                            metrics::counter!(crate::metrics::names::MQTT_REPLIES_DROPPED).increment(1);
                        }
                    }
                    if let Err(e) = client.ack(&publish).await {
                        tracing::warn!(error = %e, "mqtt ack not sent (the broker will deliver it again)");
                    }
                }
            });
            tx
        })
        .collect()
}

/// What became of one message.
struct Outcome {
    result: Result<Accepted, ApiError>,
    /// `fleetgate/<fleet>/<vehicle>/ack`, when the topic named a vehicle.
    reply_topic: Option<String>,
}

/// The fleet and vehicle of `fleetgate/<fleet>/<vehicle>/position`.
fn topic_ids(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("fleetgate"), Some(fleet), Some(vehicle), Some("position"), None) => Some((fleet, vehicle)),
        _ => None,
    }
}

/// Runs one message through the accept path; `None` only when stopping
/// before its outcome was final (it stays with the broker).
async fn take(ingest: &dyn Ingest, publish: &Publish, max_payload: usize, stop: &CancellationToken) -> Option<Outcome> {
    let Some((fleet, vehicle)) = topic_ids(&publish.topic) else {
        count_unreadable(SOURCE);
        return Some(Outcome {
            result: Err(ApiError::invalid("topic: not fleetgate/<fleet>/<vehicle>/position")),
            reply_topic: None,
        });
    };
    let reply_topic = Some(format!("fleetgate/{fleet}/{vehicle}/ack"));
    let refuse = |e: ApiError| {
        count_unreadable(SOURCE);
        Some(Outcome { result: Err(e), reply_topic: reply_topic.clone() })
    };
    if !ids::is_valid_id(fleet) || !ids::is_valid_id(vehicle) {
        return refuse(ApiError::invalid("topic: fleet and vehicle must be 1–64 characters of [A-Za-z0-9._:-]"));
    }
    if publish.payload.len() > max_payload {
        return refuse(ApiError::new(ErrorCode::PayloadTooLarge, format!("payload: at most {max_payload} bytes")));
    }
    let payload: Value = match serde_json::from_slice(&publish.payload) {
        Ok(v) => v,
        Err(_) => return refuse(ApiError::invalid("payload: not valid JSON")),
    };
    // The broker's ACL decided who may publish to this topic.
    let session = vehicle_session(fleet.to_owned(), vehicle.to_owned(), i64::MAX);
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = ingest.publish(&session, &payload, SOURCE).await;
        match &result {
            // Not final: storage is down. Kept (unacknowledged) and tried
            // again, so the message is stored once Redis is back.
            Err(e) if e.code == ErrorCode::Unavailable => {
                if stop.is_cancelled() {
                    return None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            _ => return Some(Outcome { result, reply_topic }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<Option<Settings>, MqttConfigError> {
        let mut all = vec!["fleetgate", "--mqtt-client-id", "replica-0"];
        all.extend_from_slice(args);
        Settings::from_config(&crate::config::Cli::parse_from(all).config)
    }

    #[test]
    fn urls_and_fleets_are_checked_at_start_up() {
        assert!(settings(&[]).unwrap().is_none());
        let s = settings(&["--mqtt-url", "mqtts://fg:p%40ss@broker.example:8884"]).unwrap().unwrap();
        assert_eq!(s.credentials, Some(("fg".into(), "p@ss".into())));
        assert_eq!(s.redacted_url(), "mqtts://***@broker.example:8884");
        assert_eq!(settings(&["--mqtt-url", "mqtt://b"]).unwrap().unwrap().port, 1883);
        let e = settings(&["--mqtt-url", "http://b"]).err().unwrap().to_string();
        assert!(e.starts_with("FLEETGATE_MQTT_URL"), "{e}");
        let e = settings(&["--mqtt-url", "mqtt://b", "--mqtt-fleets", "a,b/c"]).err().unwrap().to_string();
        assert!(e.starts_with("FLEETGATE_MQTT_FLEETS"), "{e}");
        let s = settings(&["--mqtt-url", "mqtt://b", "--mqtt-fleets", "north,south"]).unwrap().unwrap();
        assert_eq!(
            s.filters(),
            ["$share/fleetgate/fleetgate/north/+/position", "$share/fleetgate/fleetgate/south/+/position"]
        );
    }

    #[test]
    fn topics_name_fleet_and_vehicle() {
        assert_eq!(topic_ids("fleetgate/f/bus-1/position"), Some(("f", "bus-1")));
        assert_eq!(topic_ids("fleetgate/f/bus-1/ack"), None);
        assert_eq!(topic_ids("fleetgate/f/bus-1/position/x"), None);
    }
}
