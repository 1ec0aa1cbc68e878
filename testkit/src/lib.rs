//! `fleetgate-testkit`: the Socket.IO client that `fleetgate-bench` and the
//! gateway's integration tests (`tests/*.rs`) share, so both speak the
//! wire contract (`docs/PROTOCOL.md`) through one implementation.
//!
//! - [`sio`]: Engine.IO v4 / Socket.IO v5 over a websocket, framed by hand;
//!   the handshake and namespace connect, frames classified without a JSON
//!   parse, acks. What the load tool runs on its hot path.
//! - [`client`]: the tests' client on top of it, with JSON events, calls
//!   that wait for their ack and the disconnect seen.
//!
//! Not published: it exists for the repository's own tools and tests.

pub mod client;
pub mod sio;

pub use client::Client;
