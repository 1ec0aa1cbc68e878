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
//! - [`server`] wires one process: `App` (the gateway, its background
//!   tasks and the router, built the same in both modes), the listeners,
//!   the store, the adapter, and graceful shutdown on two cancellation
//!   tokens (`drain`, then `end`) and one task set. [`config`] is the one
//!   `Config` it reads.
//! - [`auth`] verifies tokens with a fixed algorithm (configured keys, and a
//!   JWKS: `auth::remote` the cached set and its refreshes, `auth::jwk_set`
//!   which keys are trusted for which algorithm, `auth::fetch` the bounded
//!   HTTPS fetch) and holds the scope of a viewer token (`auth::scope`,
//!   checked by every read path); [`session`] is what a verified client
//!   becomes, and its lifetime.
//! - [`gateway`] is the `/fleet` namespace: the handshake (`handshake`:
//!   what a socket keeps of its request) and the events (routed by name in
//!   `gateway::Route`); [`gateway::publish`] the accept path, top to
//!   bottom; `gateway::fanout` the delivery to local sockets (encoded once,
//!   conflation, slow viewers); beside them the viewers' subscriptions,
//!   rooms and chat, presence across replicas, limits, and `deadline` (auth
//!   timeouts and session ends on one timer queue);
//!   [`gateway::recovery`] is connection state recovery (section 10).
//! - [`store`] keeps sessions, positions, presence and chat: `memory`
//!   (embedded) or `redis` (replicas: `keys` names every key, `connection`
//!   the pool, `call` bounds and fences each call, then one module per
//!   concern with its Lua scripts in `store/redis/lua/`), behind the
//!   `Store` trait; [`store::recovery`] what recovery keeps there;
//!   [`store::events`] each fleet's event stream (section 12), appended in
//!   the store's own steps and read by the event outputs.
//! - [`replication`] carries positions between replicas over Redis pub/sub
//!   (per-fleet sharded channels, subscriptions, the hand-off to fan-out),
//!   its wire format in `replication::wire`; [`relay`] is the pub/sub client
//!   it and the Socket.IO adapter run on; [`redis_target`] (one Redis, a
//!   cluster or Sentinel), [`redis_tls`] and [`sentinel`] (the primary and
//!   following it) say which Redis and how to reach it.
//! - [`http`] is the HTTP API and its OpenAPI document, probes, the map
//!   page and the demo token; [`device`] the OsmAnd listener and the MQTT
//!   subscription (section 13); [`demo`] the simulated fleet.
//! - [`metrics`] holds every metric name (`names`) and closed label set
//!   (`labels`), pre-registered at zero; [`position`] (every accepted
//!   `locationupdate` form, the 5.2 event) and [`geo`] (boxes and the grid
//!   that indexes box subscriptions) the domain types; [`ids`] the id
//!   grammar and session ids; [`clock`] the time; [`lock`] the one way a
//!   poisoned lock is taken; [`net`] the listener that guards connections;
//!   [`error`] the contract's error codes and the one place errors become
//!   replies; [`healthcheck`] the container image's own probe.
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
pub mod clock;
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
