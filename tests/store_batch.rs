//! The batch of a fleet's updates at the store: each update gets its own
//! outcome, in order, the same from the embedded store and from Redis; the
//! stored ones leave as one replication message; an update whose fence
//! passed before it was sent is refused and never stored.

mod support;

use std::time::{Duration, Instant};

use fleetgate::{
    position::Position,
    replication::wire::{Message, position_channel},
    store::{PositionWrite, PutOutcome, Scope, Store, StoreError, memory::MemoryStore, redis::RedisStore},
};
use support::store::retention;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLEET: &str = "batch-fleet";
const NODE: &str = "node-under-test";

fn position(vehicle: &str, ts: i64) -> (Position, String) {
    let p = Position {
        fleet: FLEET.into(),
        vehicle_id: vehicle.into(),
        lat: 52.520008,
        lon: 13.404954,
        ts,
        heading: None,
        speed: None,
        accuracy: None,
        received_at: ts,
    };
    let encoded = serde_json::to_string(&p).unwrap();
    (p, encoded)
}

/// Offers `updates` (vehicle, ts) as one batch; the outcomes, `Err` as "unavailable".
async fn offer(store: &dyn Store, updates: &[(&str, i64)]) -> Vec<Result<PutOutcome, String>> {
    let owned: Vec<(Position, String)> = updates.iter().map(|(v, ts)| position(v, *ts)).collect();
    let writes: Vec<PositionWrite<'_>> = owned.iter().map(|(p, e)| PositionWrite::new(p, e, Instant::now())).collect();
    store.put_positions(FLEET, &writes).await.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
}

const ACCEPTED: Result<PutOutcome, String> = Ok(PutOutcome::Accepted { back_online: false, crossings: Vec::new() });
const STALE: Result<PutOutcome, String> = Ok(PutOutcome::Stale);

/// Two of one vehicle in one batch meet each other's result.
async fn batch_outcomes(store: &dyn Store) {
    let first = offer(store, &[("a", 100), ("b", 100), ("a", 90), ("a", 100), ("b", 200), ("c", 50)]).await;
    assert_eq!(first, vec![ACCEPTED, ACCEPTED, STALE, STALE, ACCEPTED, ACCEPTED]);
    let second = offer(store, &[("a", 100), ("a", 101), ("c", 49)]).await;
    assert_eq!(second, vec![STALE, ACCEPTED, STALE]);
    let mut stored: Vec<(String, i64)> = store
        .positions(FLEET, Scope::Fleet)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let p: Position = serde_json::from_str(e).unwrap();
            (p.vehicle_id, p.ts)
        })
        .collect();
    stored.sort();
    assert_eq!(stored, vec![("a".into(), 101), ("b".into(), 200), ("c".into(), 50)]);
}

#[tokio::test]
async fn the_embedded_store_answers_each_update_of_a_batch() {
    let store = MemoryStore::new(retention(1000));
    batch_outcomes(&*store).await;
}

/// The next replication message on the fleet's channel, read through a
/// plain RESP connection (SSUBSCRIBE, then one `smessage` push).
async fn subscribe(port: u16) -> Subscriber {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let channel = position_channel(FLEET);
    let cmd = format!("*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n", channel.len());
    conn.write_all(cmd.as_bytes()).await.unwrap();
    let mut confirmed = Vec::new();
    while !confirmed.ends_with(b":1\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        confirmed.push(byte[0]);
    }
    Subscriber { conn, buf: Vec::new() }
}

struct Subscriber {
    conn: tokio::net::TcpStream,
    /// Read but not yet consumed (the start of the next message).
    buf: Vec<u8>,
}

async fn next_message(sub: &mut Subscriber) -> Vec<u8> {
    let Subscriber { conn, buf } = sub;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // `*3 $8 smessage $<n> <channel> $<n> <payload>`: the payload is the last bulk string.
        if let Some(start) = buf.windows(8).position(|w| w == b"smessage") {
            let rest = &buf[start..];
            let bulks: Vec<usize> = rest.iter().enumerate().filter(|(_, b)| **b == b'$').map(|(i, _)| i).collect();
            if bulks.len() >= 2 {
                let at = bulks[1];
                let header_end = rest[at..].windows(2).position(|w| w == b"\r\n").map(|i| at + i);
                if let Some(end) = header_end {
                    let len: usize = std::str::from_utf8(&rest[at + 1..end]).unwrap().parse().unwrap();
                    if rest.len() >= end + 2 + len {
                        let payload = rest[end + 2..end + 2 + len].to_vec();
                        buf.drain(..start + end + 2 + len);
                        return payload;
                    }
                }
            }
        }
        let mut chunk = [0u8; 4096];
        let n =
            tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await.expect("no replication message").unwrap();
        assert!(n > 0, "subscription closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn redis_answers_each_update_of_a_batch_and_announces_the_stored_ones_together() {
    let redis = support::Redis::start();
    let store = RedisStore::new(&redis.target(), 2, retention(1000), NODE.into(), None).unwrap();
    let mut subscriber = subscribe(redis.port).await;
    batch_outcomes(&store).await;

    // The first batch's four stored updates, in one message, in order.
    let message = Message::decode(next_message(&mut subscriber).await.into()).expect("a node id");
    assert!(message.is_from(NODE));
    let events: Vec<(String, i64)> = message
        .events()
        .map(|e| {
            let p: Position = serde_json::from_slice(&e).unwrap();
            (p.vehicle_id, p.ts)
        })
        .collect();
    assert_eq!(events, vec![("a".into(), 100), ("b".into(), 100), ("b".into(), 200), ("c".into(), 50)]);
    let message = Message::decode(next_message(&mut subscriber).await.into()).unwrap();
    assert_eq!(message.len(), 1, "the second batch stored one update");
}

#[tokio::test]
async fn an_update_whose_fence_passed_while_it_queued_is_refused_and_never_stored() {
    let redis = support::Redis::start();
    let store = RedisStore::new(&redis.target(), 1, retention(1000), NODE.into(), None).unwrap();
    let (late, late_encoded) = position("late", 10);
    let (fresh, fresh_encoded) = position("fresh", 10);
    let writes = [
        // Its sender has been waiting longer than a call may take.
        PositionWrite::new(&late, &late_encoded, Instant::now() - Duration::from_secs(3)),
        PositionWrite::new(&fresh, &fresh_encoded, Instant::now()),
    ];
    let outcomes = store.put_positions(FLEET, &writes).await;
    assert!(matches!(outcomes[0], Err(StoreError::Timeout)), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Ok(PutOutcome::Accepted { .. })), "{:?}", outcomes[1]);
    let ids = ["late".to_owned(), "fresh".to_owned()];
    let stored = store.positions(FLEET, Scope::Vehicles(&ids)).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].contains("\"fresh\""), "{stored:?}");
}
