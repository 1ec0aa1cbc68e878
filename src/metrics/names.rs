//! Every metric name fleetgate exports through the recorder, in one place:
//! the code that records, the catalogue that describes and the start-up
//! pre-registration all use these, and README "Metrics" lists the same names.
//!
//! The process families (`fleetgate_process_*`) are written by
//! `metrics::process` and are not here.

pub const BUILD_INFO: &str = "fleetgate_build_info";
pub const READY: &str = "fleetgate_ready";

// Connections and authentication.
pub const CONNECTIONS: &str = "fleetgate_connections";
pub const CONNECTIONS_OPENED: &str = "fleetgate_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "fleetgate_connections_closed_total";
pub const HANDSHAKES: &str = "fleetgate_handshakes_total";
pub const AUTH_FAILURES: &str = "fleetgate_auth_failures_total";
pub const AUTH_TIMEOUTS: &str = "fleetgate_auth_timeouts_total";
pub const SESSIONS_CREATED: &str = "fleetgate_sessions_created_total";
pub const SESSIONS_REVOKED: &str = "fleetgate_sessions_revoked_total";

// Positions.
pub const POSITION_UPDATES: &str = "fleetgate_position_updates_total";
pub const EVENT_ERRORS: &str = "fleetgate_event_errors_total";
pub const BROADCASTS: &str = "fleetgate_broadcasts_total";
pub const DELIVERIES: &str = "fleetgate_deliveries_total";
pub const EMITS_DROPPED: &str = "fleetgate_emits_dropped_total";
pub const SLOW_VIEWERS: &str = "fleetgate_slow_viewers_total";
pub const SLOW_VIEWERS_EXPELLED: &str = "fleetgate_slow_viewers_expelled_total";
pub const SLOW_VIEWERS_DISCONNECTED: &str = "fleetgate_slow_viewers_disconnected_total";
pub const LAGGING_SOCKETS: &str = "fleetgate_lagging_sockets";
pub const WRITE_TIMEOUTS: &str = "fleetgate_write_timeouts_total";
pub const RATE_LIMITED: &str = "fleetgate_rate_limited_total";
pub const RELAY_RECEIVED: &str = "fleetgate_relay_received_total";
pub const RELAY_DROPPED: &str = "fleetgate_relay_dropped_total";
pub const INGEST_SECONDS: &str = "fleetgate_ingest_seconds";
pub const DELIVERY_LAG_SECONDS: &str = "fleetgate_delivery_lag_seconds";
pub const SUBSCRIPTIONS: &str = "fleetgate_subscriptions";
pub const VEHICLES_ONLINE: &str = "fleetgate_vehicles_online";
pub const PRESENCE_CHANGES: &str = "fleetgate_presence_changes_total";
pub const CHAT_MESSAGES: &str = "fleetgate_chat_messages_total";

// Redis and the adapter.
pub const REDIS_COMMAND_SECONDS: &str = "fleetgate_redis_command_seconds";
pub const REDIS_ERRORS: &str = "fleetgate_redis_errors_total";
pub const ADAPTER_ERRORS: &str = "fleetgate_adapter_errors_total";

// HTTP API.
pub const HTTP_REQUESTS: &str = "fleetgate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "fleetgate_http_request_duration_seconds";

// Batched ingest.
pub const INGEST_BATCHES: &str = "fleetgate_ingest_batches_total";

// Token keys from an identity provider.
pub const JWKS_REFRESHES: &str = "fleetgate_jwks_refreshes_total";
pub const JWKS_KEYS: &str = "fleetgate_jwks_keys";
pub const JWKS_LAST_SUCCESS: &str = "fleetgate_jwks_last_success_timestamp_seconds";

// Device ingest (contract section 13).
pub const DEVICE_AUTH_FAILURES: &str = "fleetgate_device_auth_failures_total";
pub const MQTT_SUBSCRIBED: &str = "fleetgate_mqtt_subscribed";
pub const MQTT_MESSAGES: &str = "fleetgate_mqtt_messages_total";
pub const MQTT_CONNECTION_ERRORS: &str = "fleetgate_mqtt_connection_errors_total";
pub const MQTT_REPLIES_DROPPED: &str = "fleetgate_mqtt_replies_dropped_total";
pub const LISTENER_CONNECTIONS: &str = "fleetgate_listener_connections";
pub const LISTENER_CAP_REACHED: &str = "fleetgate_listener_cap_reached_total";
pub const LISTENER_IDLE_TIMEOUTS: &str = "fleetgate_listener_idle_timeouts_total";

// Geofences (contract section 11).
pub const GEOFENCE_EVENTS: &str = "fleetgate_geofence_events_total";
pub const GEOFENCE_DELIVERIES: &str = "fleetgate_geofence_deliveries_total";
pub const GEOFENCE_EVENTS_DROPPED: &str = "fleetgate_geofence_events_dropped_total";
pub const GEOFENCES: &str = "fleetgate_geofences";
pub const GEOFENCE_RELOADS: &str = "fleetgate_geofence_reloads_total";
pub const GEOFENCE_EVALUATION_SECONDS: &str = "fleetgate_geofence_evaluation_seconds";

// Event outputs (contract section 12).
pub const EVENTS_APPENDED: &str = "fleetgate_events_appended_total";
pub const OUTPUT_EVENTS: &str = "fleetgate_output_events_total";
pub const OUTPUT_EVENTS_SKIPPED: &str = "fleetgate_output_events_skipped_total";
pub const OUTPUT_LAG_SECONDS: &str = "fleetgate_output_lag_seconds";
pub const OUTPUT_LEASES: &str = "fleetgate_output_leases";

// Connection state recovery (contract section 10).
pub const RECOVERY_ATTEMPTS: &str = "fleetgate_recovery_attempts_total";
pub const RECOVERY_SUCCESSES: &str = "fleetgate_recovery_successes_total";
pub const RECOVERY_FALLBACKS: &str = "fleetgate_recovery_fallbacks_total";
pub const RECOVERY_REPLAYED: &str = "fleetgate_recovery_replayed_events_total";
