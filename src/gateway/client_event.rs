//! One client→server event as handlers see it: the socket, the payload as
//! JSON, and the way back: an ack when the client asked for one, otherwise
//! an `exception` event for failures (section 4).

use std::{convert::Infallible, sync::Arc};

use serde::Serialize;
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, TryData},
    handler::{FromMessageParts, Value},
    socket::Socket,
};

use crate::{
    error::{ApiError, Envelope, ErrorCode},
    metrics::names,
};

pub struct ClientEvent<A: Adapter> {
    pub socket: SocketRef<A>,
    pub event: String,
    /// The first argument; `null` when absent or not JSON.
    pub payload: serde_json::Value,
    ack: AckSender<A>,
    has_ack: bool,
}

impl<A: Adapter> FromMessageParts<A> for ClientEvent<A> {
    type Error = Infallible;

    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut Value, ack_id: &Option<i64>) -> Result<Self, Infallible> {
        let event = Event::from_message_parts(s, v, ack_id).map(|e| e.0).unwrap_or_default();
        let TryData(payload) = TryData::<serde_json::Value>::from_message_parts(s, v, ack_id)?;
        Ok(Self {
            socket: SocketRef::from(s.clone()),
            event,
            payload: payload.unwrap_or(serde_json::Value::Null),
            ack: AckSender::from_message_parts(s, v, ack_id)?,
            has_ack: ack_id.is_some(),
        })
    }
}

#[derive(Serialize)]
struct Exception<'a> {
    event: &'a str,
    code: ErrorCode,
    message: &'a str,
}

impl<A: Adapter> ClientEvent<A> {
    /// Answers with the envelope; a failure without an ack becomes an
    /// `exception` event so it is never silent.
    pub fn reply<T: Serialize>(self, result: Result<T, ApiError>) {
        if let Err(e) = &result {
            metrics::counter!(names::EVENT_ERRORS, "code" => e.code.as_str()).increment(1);
        }
        let sent = match (&result, self.has_ack) {
            (_, true) => self.ack.send(&Envelope::from_result(&result)),
            (Err(e), false) => {
                self.socket.emit("exception", &Exception { event: &self.event, code: e.code, message: &e.message })
            }
            (Ok(_), false) => Ok(()),
        };
        if let Err(e) = sent {
            tracing::debug!(sid = %self.socket.id, error = %e, "reply not sent");
        }
    }
}
