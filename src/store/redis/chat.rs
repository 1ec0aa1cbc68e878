//! Dispatch chat in Redis: each room's history is a capped stream with a
//! TTL; a message is appended there, fenced, and to the fleet's event
//! stream in one script call (`lua/append_message.lua`).

use std::sync::LazyLock;

use redis::Script;

use super::{
    RedisStore,
    keys::{counter_key, room_key, stream_key},
    with_events,
};
use crate::{
    metrics::StoreOp,
    store::{ChatMessage, StoreError, events::EventKind},
};

/// Appends a message to its room's history, fenced, and its `chat` event.
/// KEYS, ARGV and reply: `lua/append_message.lua`.
static APPEND_MESSAGE: LazyLock<Script> = LazyLock::new(|| with_events(include_str!("lua/append_message.lua")));

pub(super) async fn append(
    store: &RedisStore,
    fleet: &str,
    mut message: ChatMessage,
) -> Result<ChatMessage, StoreError> {
    let key = room_key(fleet, &message.room);
    let (stream, counter) = (stream_key(fleet), counter_key(fleet));
    let m = &message;
    let tail = chat_tail(m)?;
    let id: String = store
        .fenced(StoreOp::AppendMessage, |mut conn, _, deadline| {
            let (key, stream, counter, tail) = (&key, &stream, &counter, &tail);
            async move {
                let reply: (Option<String>, i64) = APPEND_MESSAGE
                    .key(key)
                    .key(stream)
                    .key(counter)
                    .arg(store.retention.history_max.max(1))
                    .arg(&m.from)
                    .arg(&m.text)
                    .arg(m.ts)
                    .arg(deadline)
                    .arg(store.retention.history_ttl_ms)
                    .arg(store.retention.events_max)
                    .arg(fleet)
                    .arg(tail)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(reply)
            }
        })
        .await?;
    message.id = id;
    store.events_appended(fleet, EventKind::Chat, 1).await;
    Ok(message)
}

pub(super) async fn history(
    store: &RedisStore,
    fleet: &str,
    room: &str,
    limit: usize,
    before: Option<&str>,
) -> Result<Vec<ChatMessage>, StoreError> {
    // Exclusive range start; ids were checked by the caller.
    let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
    let entries: Vec<(String, Vec<String>)> = store
        .bounded(StoreOp::History, || async {
            let mut conn = store.conn().await?;
            Ok(redis::cmd("XREVRANGE")
                .arg(room_key(fleet, room))
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await?)
        })
        .await?;
    let mut out: Vec<ChatMessage> = entries
        .into_iter()
        .map(|(id, fields)| {
            let mut m = ChatMessage { id, room: room.to_owned(), from: String::new(), text: String::new(), ts: 0 };
            for pair in fields.chunks(2) {
                if let [k, v] = pair {
                    match k.as_str() {
                        "from" => m.from = v.clone(),
                        "text" => m.text = v.clone(),
                        "ts" => m.ts = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            m
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// A chat message's JSON after its id (`"room":…}`): the script puts the
/// id it got in front, so the `chat` event's data is section 6's message.
fn chat_tail(m: &ChatMessage) -> Result<String, StoreError> {
    #[derive(serde::Serialize)]
    struct Tail<'a> {
        room: &'a str,
        from: &'a str,
        text: &'a str,
        ts: i64,
    }
    let json = serde_json::to_string(&Tail { room: &m.room, from: &m.from, text: &m.text, ts: m.ts })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(json.get(1..).unwrap_or_default().to_owned())
}
