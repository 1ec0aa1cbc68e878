//! The closed label sets, as types: each is recorded through its enum (so a
//! value cannot be misspelt or forgotten) and its `ALL` is what start-up
//! pre-registers at zero (so every series exists from the first scrape).
//!
//! Roles and error codes are the domain's own types
//! ([`crate::auth::Role`], [`crate::error::ErrorCode`]); HTTP routes and
//! statuses are open sets and are not here.

use metrics::SharedString;

/// A label enum: `as_str()` (the exported value), `ALL` (every value, in
/// the order the catalogue lists them) and a conversion for the macros'
/// `"label" => value`.
macro_rules! label_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl From<$name> for SharedString {
            fn from(label: $name) -> Self {
                SharedString::const_str(label.as_str())
            }
        }
    };
}

label_set! {
    /// The store's Redis operations (`op` of `fleetgate_redis_command_seconds`
    /// and `fleetgate_redis_errors_total`), the relay's subscriptions included.
    StoreOp {
        PutPosition => "put_position",
        Positions => "positions",
        CreateSession => "create_session",
        GetSession => "get_session",
        DeleteSession => "delete_session",
        AppendMessage => "append_message",
        History => "history",
        VehicleConnected => "vehicle_connected",
        VehicleDisconnected => "vehicle_disconnected",
        RefreshPresence => "refresh_presence",
        SweepPresence => "sweep_presence",
        Ping => "ping",
        PutGeofence => "put_geofence",
        DeleteGeofence => "delete_geofence",
        Geofences => "geofences",
        Geofence => "geofence",
        GeofenceVersions => "geofence_versions",
        /// Connection state recovery's records and event log.
        Recovery => "recovery",
        /// Reads of the event streams (section 12), their leases and cursors.
        Events => "events",
        /// Webhook registrations (section 12).
        Webhooks => "webhooks",
        Subscribe => "subscribe",
        Resubscribe => "resubscribe",
        /// Asking the Sentinels for the primary.
        Sentinel => "sentinel",
    }
}

label_set! {
    /// Where a position update came from (`source` of
    /// `fleetgate_position_updates_total`).
    UpdateSource {
        Socket => "socket",
        Http => "http",
        /// The built-in demo fleet.
        Simulator => "demo",
        /// A device speaking the OsmAnd protocol over HTTP.
        Osmand => "osmand",
        /// A device publishing over MQTT.
        Mqtt => "mqtt",
    }
}

label_set! {
    /// What became of a position update (`outcome` of
    /// `fleetgate_position_updates_total`).
    UpdateOutcome {
        Accepted => "accepted",
        Stale => "stale",
        Invalid => "invalid",
        Forbidden => "forbidden",
        RateLimited => "rate_limited",
        Unavailable => "unavailable",
        Error => "error",
    }
}

label_set! {
    /// The limit that refused something (`limit` of `fleetgate_rate_limited_total`).
    Limit {
        /// Events per connection.
        Events => "events",
        /// Updates per vehicle.
        Vehicle => "vehicle",
        /// The replica's connection cap (`FLEETGATE_MAX_CONNECTIONS`).
        Connections => "connections",
        /// Connections per client address.
        ConnectionsPerIp => "connections_per_ip",
    }
}

label_set! {
    /// A listener whose connections are capped and counted (`listener` of
    /// the `fleetgate_listener_*` metrics).
    ListenerKind {
        /// The OsmAnd listener (`FLEETGATE_OSMAND_ADDR`).
        Osmand => "osmand",
    }
}

label_set! {
    /// A live subscription's kind (`kind` of `fleetgate_subscriptions`).
    SubscriptionKind {
        Fleet => "fleet",
        Vehicle => "vehicle",
        Bbox => "bbox",
        Geofence => "geofence",
    }
}

label_set! {
    /// Cross-replica operations of the adapter (`op` of `fleetgate_adapter_errors_total`).
    AdapterOp {
        Chat => "chat",
        Notice => "notice",
        Presence => "presence",
        Disconnect => "disconnect",
    }
}

label_set! {
    /// `outcome` of `fleetgate_handshakes_total`.
    HandshakeOutcome {
        Ok => "ok",
        Refused => "refused",
    }
}

label_set! {
    /// `state` of `fleetgate_presence_changes_total`.
    PresenceState {
        Online => "online",
        Offline => "offline",
    }
}

label_set! {
    /// How a position reached this replica's sockets (`path` of
    /// `fleetgate_delivery_lag_seconds`).
    DeliveryPath {
        /// Accepted here.
        Local => "local",
        /// Accepted by another replica and relayed through Redis.
        Relay => "relay",
    }
}

label_set! {
    /// Where an authentication failed (`stage` of `fleetgate_auth_failures_total`).
    AuthStage {
        /// The namespace handshake.
        Handshake => "handshake",
        /// The `authenticate` event after connecting.
        Authenticate => "authenticate",
        /// A bearer token on the HTTP API.
        Http => "http",
    }
}

label_set! {
    /// A socket's Engine.IO transport (`transport` of the connection metrics).
    Transport {
        Websocket => "websocket",
        Polling => "polling",
    }
}

label_set! {
    /// Why a socket closed (`reason` of `fleetgate_connections_closed_total`).
    CloseReason {
        TransportClose => "transport_close",
        MultiplePolling => "multiple_polling",
        PacketParsing => "packet_parsing",
        TransportError => "transport_error",
        HeartbeatTimeout => "heartbeat_timeout",
        ClientDisconnect => "client_disconnect",
        ServerDisconnect => "server_disconnect",
        ServerClosing => "server_closing",
    }
}

impl From<socketioxide::TransportType> for Transport {
    fn from(t: socketioxide::TransportType) -> Self {
        match t {
            socketioxide::TransportType::Websocket => Self::Websocket,
            socketioxide::TransportType::Polling => Self::Polling,
        }
    }
}

impl From<socketioxide::socket::DisconnectReason> for CloseReason {
    fn from(r: socketioxide::socket::DisconnectReason) -> Self {
        use socketioxide::socket::DisconnectReason as R;
        match r {
            R::TransportClose => Self::TransportClose,
            R::MultipleHttpPollingError => Self::MultiplePolling,
            R::PacketParsingError => Self::PacketParsing,
            R::TransportError => Self::TransportError,
            R::HeartbeatTimeout => Self::HeartbeatTimeout,
            R::ClientNSDisconnect => Self::ClientDisconnect,
            R::ServerNSDisconnect => Self::ServerDisconnect,
            R::ClosingServer => Self::ServerClosing,
        }
    }
}

label_set! {
    /// Why a reconnecting client got a fresh socket instead of its old one
    /// (`reason` of `fleetgate_recovery_fallbacks_total`).
    RecoveryFallback {
        /// No live record for the pid: unknown, or its window passed.
        UnknownPid => "unknown_pid",
        /// The record's session expired or was revoked.
        SessionGone => "session_gone",
        /// The credentials are another principal's.
        Mismatch => "mismatch",
        /// Events it missed were trimmed from the fleet's log.
        Trimmed => "trimmed",
        /// The offset it sent is not one fleetgate gave.
        BadOffset => "bad_offset",
        /// The store could not be read.
        Unavailable => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct(values: impl IntoIterator<Item = &'static str>) -> bool {
        let values: Vec<_> = values.into_iter().collect();
        let set: std::collections::HashSet<_> = values.iter().collect();
        set.len() == values.len()
    }

    #[test]
    fn label_values_are_distinct_prometheus_label_values() {
        let sets: [Vec<&str>; 14] = [
            ListenerKind::ALL.iter().map(|l| l.as_str()).collect(),
            RecoveryFallback::ALL.iter().map(|l| l.as_str()).collect(),
            StoreOp::ALL.iter().map(|l| l.as_str()).collect(),
            UpdateSource::ALL.iter().map(|l| l.as_str()).collect(),
            UpdateOutcome::ALL.iter().map(|l| l.as_str()).collect(),
            Limit::ALL.iter().map(|l| l.as_str()).collect(),
            SubscriptionKind::ALL.iter().map(|l| l.as_str()).collect(),
            AdapterOp::ALL.iter().map(|l| l.as_str()).collect(),
            HandshakeOutcome::ALL.iter().map(|l| l.as_str()).collect(),
            PresenceState::ALL.iter().map(|l| l.as_str()).collect(),
            DeliveryPath::ALL.iter().map(|l| l.as_str()).collect(),
            AuthStage::ALL.iter().map(|l| l.as_str()).collect(),
            Transport::ALL.iter().map(|l| l.as_str()).collect(),
            CloseReason::ALL.iter().map(|l| l.as_str()).collect(),
        ];
        for set in sets {
            assert!(distinct(set.iter().copied()), "{set:?}");
            assert!(
                set.iter().all(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
                "{set:?}"
            );
        }
    }

    #[test]
    fn update_sources_include_the_device_protocols() {
        let values: Vec<_> = UpdateSource::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(values, ["socket", "http", "demo", "osmand", "mqtt"]);
    }
}

label_set! {
    /// An event output (`output` of the `fleetgate_output_*` metrics).
    Output {
        Webhook => "webhook",
        Nats => "nats",
    }
}

label_set! {
    /// What became of one attempt to hand an event to an output (`outcome`
    /// of `fleetgate_output_events_total`).
    OutputOutcome {
        /// Taken: a 2xx answer, or a JetStream ack.
        Delivered => "delivered",
        /// The attempt failed and the event will be tried again.
        Retried => "retried",
        /// Given up on after FLEETGATE_WEBHOOK_RETRY_SECS, or refused for good.
        Failed => "failed",
    }
}
