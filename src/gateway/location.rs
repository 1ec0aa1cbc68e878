//! The `locationupdate` event (sections 5.1 and 5.5): the hot path in.

use std::sync::Arc;

use socketioxide::adapter::Adapter;

use super::{ClientEvent, Conn, Gateway, auth::require_session};

/// Queues the update and returns: its ack is written by the store round
/// that learns its outcome (see [`super::publish`]).
pub(super) async fn on_location_update<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    match require_session(&conn) {
        Ok(session) => gw.publish_event(&session, req).await,
        Err(e) => req.reply::<()>(Err(e)),
    }
}
