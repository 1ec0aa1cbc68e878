//! The `locationupdate` event (sections 5.1 and 5.5): the hot path in.

use std::sync::Arc;

use socketioxide::adapter::Adapter;

use super::{Conn, Gateway, Request, Source, auth::require_session};

pub(super) async fn on_location_update<A: Adapter>(req: Request<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        gw.publish(&session, &req.payload, Source::Socket).await
    }
    .await;
    req.reply(result);
}
