//! The wire format of replication: the channel a fleet's positions travel
//! on between replicas, and the messages on it.
//!
//! Channel: `fg:{<fleet>}:positions`, a sharded channel (`SPUBLISH` /
//! `SSUBSCRIBE`); the `{<fleet>}` hash tag puts it in the slot of the
//! fleet's keys, so on a Redis Cluster the script that stores a batch can
//! publish it.
//!
//! Message: one per batch of the fleet's stored positions,
//!
//! ```text
//! <node id> SP <event> *( LF <event> )
//! ```
//!
//! `<node id>` names the replica that accepted the batch (it skips its own
//! messages: it has already delivered them); each `<event>` is a position
//! event of contract section 5.2 as JSON, exactly as stored and as viewers
//! receive it, in the order the batch stored them. JSON text never holds a
//! raw LF (serde_json escapes control characters in strings and writes no
//! whitespace), so LF separates events unambiguously; a message of one event
//! is the format of earlier releases.
//!
//! A position event may be followed by a line of the geofences it crossed
//! (contract section 11): `G` then `-<id>` (left) and `+<id>` (entered),
//! separated by spaces (geofence ids have none), exits first. A crossing
//! travels in the same message as its position, so every replica delivers
//! the two together and in order. Such a line is not JSON, so replicas of
//! earlier releases skip it.
//!
//! The store's script writes these messages (publishing inside the script
//! keeps "stored" and "announced" atomic); [`encode`] is the same format in
//! Rust, for tests and any publisher outside the script.

use bytes::Bytes;

/// Separates the node id from the first event.
const NODE_END: u8 = b' ';

/// Separates events.
pub const EVENT_SEPARATOR: u8 = b'\n';

/// Starts a line of geofence crossings.
pub const CROSSINGS: u8 = b'G';

/// The crossings of a line that starts with [`CROSSINGS`]; `None` for any other line.
pub fn crossings(line: &[u8]) -> Option<Vec<crate::geofence::Crossing>> {
    let rest = line.strip_prefix(&[CROSSINGS])?;
    Some(crate::geofence::Crossing::parse_list(std::str::from_utf8(rest).ok()?))
}

/// The fleet's replication channel.
pub fn position_channel(fleet: &str) -> String {
    format!("fg:{{{fleet}}}:positions")
}

/// A message carrying `events` (encoded position events) from `node`.
pub fn encode<'a>(node: &str, events: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.len() + 1 + 256);
    out.extend_from_slice(node.as_bytes());
    out.push(NODE_END);
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(EVENT_SEPARATOR);
        }
        out.extend_from_slice(event.as_bytes());
    }
    out
}

/// A received message, split into its sender and events (slices of the
/// message, not copies).
pub struct Message {
    pub node: Bytes,
    body: Bytes,
}

impl Message {
    /// Splits a message; `None` when it has no node id.
    pub fn decode(bytes: Bytes) -> Option<Self> {
        let space = bytes.iter().position(|b| *b == NODE_END)?;
        Some(Self { node: bytes.slice(..space), body: bytes.slice(space + 1..) })
    }

    pub fn is_from(&self, node: &str) -> bool {
        self.node == node.as_bytes()
    }

    /// The events, in order; empty ones (never written) are skipped.
    pub fn events(&self) -> impl Iterator<Item = Bytes> + '_ {
        let body = &self.body;
        body.split(|b| *b == EVENT_SEPARATOR).filter(|e| !e.is_empty()).map(move |e| body.slice_ref(e))
    }

    /// Position events (crossing lines are not counted).
    pub fn len(&self) -> usize {
        self.events().filter(|e| e.first() != Some(&CROSSINGS)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_a_batch() {
        // A string with a line break is written escaped: no raw LF.
        let events = [
            serde_json::json!({"fleet": "f", "vehicleId": "a", "note": "line\nbreak"}).to_string(),
            serde_json::json!({"fleet": "f", "vehicleId": "b"}).to_string(),
        ];
        assert!(events.iter().all(|e| !e.contains('\n')));
        let m = Message::decode(Bytes::from(encode("node-1", events.iter().map(String::as_str)))).unwrap();
        assert!(m.is_from("node-1"));
        assert!(!m.is_from("node-2"));
        let got: Vec<Bytes> = m.events().collect();
        assert_eq!(got, vec![Bytes::from(events[0].clone()), Bytes::from(events[1].clone())]);
    }

    #[test]
    fn a_single_event_is_the_old_format() {
        let m = Message::decode(Bytes::from_static(br#"n1 {"a":1}"#)).unwrap();
        assert_eq!(m.events().collect::<Vec<_>>(), vec![Bytes::from_static(br#"{"a":1}"#)]);
        assert!(Message::decode(Bytes::from_static(b"no-node-id")).is_none());
    }

    #[test]
    fn crossings_follow_their_position() {
        use crate::geofence::{Crossing, CrossingKind};
        let m = Message::decode(Bytes::from_static(b"n1 {\"a\":1}\nG-old +depot\n{\"b\":2}")).unwrap();
        let lines: Vec<Bytes> = m.events().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(crossings(&lines[0]), None);
        assert_eq!(
            crossings(&lines[1]).unwrap(),
            vec![
                Crossing { geofence: "old".into(), kind: CrossingKind::Exit },
                Crossing { geofence: "depot".into(), kind: CrossingKind::Enter },
            ]
        );
        assert_eq!(Crossing::encode_list(&crossings(&lines[1]).unwrap()), "-old +depot");
    }

    #[test]
    fn channel_shares_the_fleets_slot() {
        assert_eq!(position_channel("acme"), "fg:{acme}:positions");
    }
}
