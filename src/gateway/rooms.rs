//! Rooms and dispatch chat (section 6): rooms live inside a fleet, members
//! get `notice` on joins and leaves and `chat` from the other members on
//! every replica; history is kept by the store, capped and with a TTL.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socketioxide::{adapter::Adapter, extract::SocketRef};

use super::{
    ClientEvent, Conn, Gateway,
    auth::require_session,
    recovery::{Audience, Target},
};
use crate::{
    error::{ApiError, ErrorCode},
    ids,
    metrics::{AdapterOp, names},
    store::{ChatMessage, is_message_id},
};

pub const MAX_TEXT_CHARS: usize = 2000;
pub const MAX_HISTORY: usize = 100;
const DEFAULT_HISTORY: usize = 50;

/// The Socket.IO room of a chat room. `/` is outside the id grammar.
pub fn chat_room(fleet: &str, room: &str) -> String {
    format!("r/{fleet}/{room}")
}

/// Reads and checks a room name.
pub fn room_name(v: Option<&serde_json::Value>) -> Result<String, ApiError> {
    match v {
        Some(serde_json::Value::String(r)) if ids::is_valid_id(r) => Ok(r.clone()),
        _ => Err(ApiError::invalid("room: must be 1–64 characters of [A-Za-z0-9._:-]")),
    }
}

/// Reads and checks a message text.
pub fn message_text(v: Option<&serde_json::Value>) -> Result<String, ApiError> {
    match v {
        Some(serde_json::Value::String(t)) => {
            let n = t.chars().count();
            if n == 0 {
                Err(ApiError::invalid("text: must not be empty"))
            } else if n > MAX_TEXT_CHARS {
                Err(ApiError::invalid(format!("text: at most {MAX_TEXT_CHARS} characters")))
            } else {
                Ok(t.clone())
            }
        }
        _ => Err(ApiError::invalid("text: required string")),
    }
}

#[derive(Serialize)]
struct RoomRef {
    room: String,
}

#[derive(Serialize)]
struct Notice<'a> {
    room: &'a str,
    kind: &'static str,
    sub: &'a str,
}

#[derive(Serialize)]
struct History {
    messages: Vec<ChatMessage>,
}

fn field<'a>(payload: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    payload.get(key).filter(|v| !v.is_null())
}

/// Sends a notice to the room's other members, on every replica.
async fn notify_others<A: Adapter>(gw: &Gateway<A>, socket: &SocketRef<A>, fleet: &str, notice: Notice<'_>) {
    let audience = Audience {
        fleet,
        rooms: vec![chat_room(fleet, notice.room)],
        target: Target::Room(notice.room),
        at_ms: crate::clock::now_ms(),
    };
    if let Err(e) = gw.emit_recoverable(Some(socket), audience, "notice", &notice).await {
        super::adapter_failed(AdapterOp::Notice, &e);
    }
}

pub(super) async fn on_join<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let room = room_name(field(&req.payload, "room"))?;
        let newly = {
            let mut rooms = conn.rooms();
            // Checked under the lock a re-authentication empties the rooms
            // under, against the session as it is now.
            if require_session(&conn)?.is_scoped() {
                return Err(ApiError::forbidden("this token may watch only its own vehicles and may not join rooms"));
            }
            if !rooms.contains(&room) && rooms.len() >= gw.config.max_rooms {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("at most {} rooms per socket", gw.config.max_rooms),
                ));
            }
            rooms.insert(room.clone())
        };
        let sio_room = chat_room(&session.fleet, &room);
        req.socket.join(sio_room.clone());
        if newly {
            notify_others(&gw, &req.socket, &session.fleet, Notice { room: &room, kind: "join", sub: &session.sub })
                .await;
        }
        Ok(RoomRef { room })
    }
    .await;
    req.reply(result);
}

pub(super) async fn on_leave<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let room = room_name(field(&req.payload, "room"))?;
        let was_member = conn.rooms().remove(&room);
        req.socket.leave(chat_room(&session.fleet, &room));
        if was_member {
            notify_others(&gw, &req.socket, &session.fleet, Notice { room: &room, kind: "leave", sub: &session.sub })
                .await;
        }
        Ok(RoomRef { room })
    }
    .await;
    req.reply(result);
}

pub(super) async fn on_chat<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let room = room_name(field(&req.payload, "room"))?;
        let text = message_text(field(&req.payload, "text"))?;
        if !conn.rooms().contains(&room) {
            return Err(ApiError::forbidden("join the room first"));
        }
        let message = gw.post_message(&session.fleet, room, session.sub.clone(), text).await?;
        // The sender has its copy in the ack.
        let audience = Audience {
            fleet: &session.fleet,
            rooms: vec![chat_room(&session.fleet, &message.room)],
            target: Target::Room(&message.room),
            at_ms: message.ts,
        };
        if let Err(e) = gw.emit_recoverable(Some(&req.socket), audience, "chat", &message).await {
            super::adapter_failed(AdapterOp::Chat, &e);
        }
        Ok(message)
    }
    .await;
    req.reply(result);
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<serde_json::Value>,
    before: Option<serde_json::Value>,
}

pub(super) async fn on_history<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let session = require_session(&conn)?;
        let room = room_name(field(&req.payload, "room"))?;
        let q: HistoryQuery =
            serde_json::from_value(req.payload.clone()).map_err(|_| ApiError::invalid("payload: must be an object"))?;
        let limit = match q.limit.filter(|v| !v.is_null()) {
            None => DEFAULT_HISTORY,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_HISTORY).contains(n))
                .ok_or_else(|| ApiError::invalid(format!("limit: an integer in [1, {MAX_HISTORY}]")))?,
        };
        let before = match q.before.filter(|v| !v.is_null()) {
            None => None,
            Some(serde_json::Value::String(b)) if is_message_id(&b) => Some(b),
            Some(_) => return Err(ApiError::invalid("before: must be a message id")),
        };
        if !conn.rooms().contains(&room) {
            return Err(ApiError::forbidden("join the room first"));
        }
        let messages = gw.store.history(&session.fleet, &room, limit, before.as_deref()).await?;
        Ok(History { messages })
    }
    .await;
    req.reply(result);
}

/// After a re-authentication to a scoped viewer's session: leaves every
/// room (scoped viewers may not be in one), telling the other members.
pub(super) async fn leave_all_if_scoped<A: Adapter>(socket: &SocketRef<A>, conn: &Conn, gw: &Gateway<A>) {
    let Some(session) = conn.session().filter(|s| s.is_scoped()) else { return };
    let left: Vec<String> = conn.rooms().drain().collect();
    for room in left {
        socket.leave(chat_room(&session.fleet, &room));
        notify_others(gw, socket, &session.fleet, Notice { room: &room, kind: "leave", sub: &session.sub }).await;
    }
}

impl<A: Adapter> Gateway<A> {
    /// Stores a message in a room's history and returns it with its id.
    pub async fn post_message(
        &self,
        fleet: &str,
        room: String,
        from: String,
        text: String,
    ) -> Result<ChatMessage, ApiError> {
        let message = ChatMessage { id: String::new(), room, from, text, ts: crate::clock::now_ms() };
        let stored = self.store.append_message(fleet, message).await?;
        metrics::counter!(names::CHAT_MESSAGES).increment(1);
        Ok(stored)
    }

    /// Sends a stored message to every member of its room, on every replica.
    pub async fn broadcast_message(&self, fleet: &str, message: &ChatMessage) {
        let audience = Audience {
            fleet,
            rooms: vec![chat_room(fleet, &message.room)],
            target: Target::Room(&message.room),
            at_ms: message.ts,
        };
        if let Err(e) = self.emit_recoverable(None, audience, "chat", message).await {
            super::adapter_failed(AdapterOp::Chat, &e);
        }
    }
}
