//! fleetgate: a real-time location gateway for vehicle fleets.
//!
//! Vehicles publish positions over Socket.IO (or HTTP, or as devices:
//! the OsmAnd protocol and MQTT, `device`); viewers subscribe
//! to a fleet, some vehicles or a bounding box and receive every accepted
//! position live. Replicas share state through Redis; without Redis one
//! node keeps everything in memory. The wire contract is `PROTOCOL.md`.

pub mod auth;
pub mod config;
pub mod demo;
pub mod device;
pub mod error;
pub mod gateway;
pub mod geo;
pub mod healthcheck;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod position;
pub mod redis_target;
pub mod redis_tls;
pub mod relay;
pub mod replication;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod store;
