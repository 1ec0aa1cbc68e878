//! fleetgate: a real-time location gateway for vehicle fleets.
//!
//! Vehicles publish positions over Socket.IO (or HTTP, or as devices:
//! the OsmAnd protocol and MQTT, `device`); viewers subscribe
//! to a fleet, some vehicles or a bounding box and receive every accepted
//! position live. Replicas share state through Redis; without Redis one
//! node keeps everything in memory. The wire contract is `PROTOCOL.md`.
//!
//! # Layout
//!
//! - [`server`] wires one process: the listeners, the store, the adapter
//!   and graceful shutdown. [`config`] is the one `Config` it reads.
//! - [`auth`] verifies tokens (configured keys and a JWKS, `auth::remote`)
//!   and holds the scope of a viewer token; [`session`] is what a verified
//!   client becomes.
//! - [`gateway`] is the `/fleet` namespace: the handshake and the events
//!   (routed by name in `gateway::Route`), [`gateway::publish`] the accept
//!   path, `gateway::fanout` the delivery to local sockets, and the viewers,
//!   rooms, presence, limits and deadlines of sockets beside them;
//!   [`gateway::recovery`] is connection state recovery (section 10).
//! - [`store`] keeps sessions, positions, presence and chat: `memory`
//!   (embedded) or `redis` (replicas), behind the `Store` trait;
//!   [`store::recovery`] what recovery keeps there; [`store::events`] each
//!   fleet's event stream (section 12), appended in the store's own steps
//!   and read by the event outputs.
//! - [`replication`] carries positions between replicas over Redis pub/sub,
//!   its wire format in `replication::wire`; [`relay`] is the pub/sub client
//!   it and the Socket.IO adapter run on; [`redis_target`], [`redis_tls`] and
//!   [`sentinel`] say which Redis and how to reach it.
//! - [`http`] is the HTTP API, probes and pages; [`device`] the OsmAnd
//!   listener and the MQTT subscription; [`demo`] the simulated fleet.
//! - [`metrics`] holds every metric name and label set; [`position`] and
//!   [`geo`] the domain types; [`ids`] ids and the clock; [`lock`] the one
//!   way a poisoned lock is taken.
//! - [`geofence`] is section 11: geofence shapes and their validation,
//!   each fleet's spatial index on this replica and its sync with the
//!   store. The crossings themselves are decided by the store, in the
//!   position's compare-and-set, and travel with the positions.
//! - [`outputs`] is section 12's consumers of each fleet's event stream
//!   ([`store::events`]): webhooks (registered through [`http`], kept by
//!   [`store::webhooks`]) and NATS JetStream, each delivered by one
//!   replica at a time under a lease, from a cursor kept in the store.
//!
//! A position's path: a `locationupdate` frame (or an HTTP, OsmAnd or MQTT
//! request) → [`gateway::publish`]: parse ([`position`]), authorise against
//! the [`session`], batch by fleet → [`store`] (one compare-and-set per
//! update, one publish per batch) → the ack, and `gateway::fanout` to this
//! replica's viewers; other replicas receive the batch through
//! [`replication`] and fan it out to theirs.

pub mod auth;
pub mod config;
pub mod demo;
pub mod device;
pub mod error;
pub mod gateway;
pub mod geo;
pub mod geofence;
pub mod healthcheck;
pub mod http;
pub mod ids;
pub mod lock;
pub mod metrics;
pub mod net;
pub mod outputs;
pub mod position;
pub mod redis_target;
pub mod redis_tls;
pub mod relay;
pub mod replication;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod store;
