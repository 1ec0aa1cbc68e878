//! The integration tests' Socket.IO client: one socket on `/fleet` whose
//! events arrive as JSON values and whose calls wait for their ack. It is
//! the handshake and frames of [`crate::sio`] with a reader and a writer
//! task behind it, so a test can emit while events queue up.
//!
//! Built for tests: an ack that does not come in time panics, failing the
//! test that waited for it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::sio::{self, ConnectError, Packet, Target};

/// How long a connect or a call may take before the test gives up on it.
const WAIT: Duration = Duration::from_secs(10);

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A Socket.IO v5 client on the `/fleet` namespace over a websocket.
pub struct Client {
    out: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    acks: Acks,
    next_ack: u64,
    disconnected: Arc<AtomicBool>,
}

impl Client {
    /// Connects with `auth` (`Value::Null` for none); `Err` carries the
    /// `connect_error` message (`invalid_token`, …), or what else failed.
    pub async fn connect(to: impl Into<Target>, auth: Value) -> Result<Self, String> {
        let auth = if auth.is_null() { String::new() } else { auth.to_string() };
        let ws = sio::open(&to.into(), &auth, WAIT).await.map_err(|e| match e {
            ConnectError::Refused(message) => message,
            other => other.to_string(),
        })?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let acks: Acks = Arc::default();
        let disconnected = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
        });
        let (acks2, out2, disc2) = (acks.clone(), out.clone(), disconnected.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                match sio::classify(t.as_str()) {
                    Packet::Ping => {
                        let _ = out2.send("3".into());
                    }
                    Packet::Disconnect => break,
                    Packet::Ack { id, body } => {
                        let args: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                        if let Some(tx) = acks2.lock().unwrap().remove(&id) {
                            let _ = tx.send(args[0].clone());
                        }
                    }
                    // The whole argument array, parsed: a test compares values, not bytes.
                    Packet::Event { .. } => {
                        let array = t.find('[').map_or("", |at| &t[at..]);
                        if let Ok(Value::Array(args)) = serde_json::from_str::<Value>(array) {
                            let name = args.first().and_then(Value::as_str).unwrap_or_default().to_owned();
                            let _ = ev_tx.send((name, args.get(1).cloned().unwrap_or(Value::Null)));
                        }
                    }
                    Packet::Other => {}
                }
            }
            disc2.store(true, Ordering::SeqCst);
        });
        Ok(Self { out, events, acks, next_ack: 0, disconnected })
    }

    /// [`Client::connect`] with `{"token": token}`.
    pub async fn with_token(to: impl Into<Target>, token: &str) -> Result<Self, String> {
        Self::connect(to, json!({ "token": token })).await
    }

    pub fn emit(&self, event: &str, payload: Value) {
        let _ = self.out.send(sio::event(None, event, &payload.to_string()));
    }

    /// Emits with an ack and waits for the reply envelope.
    pub async fn call(&mut self, event: &str, payload: Value) -> Value {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        let _ = self.out.send(sio::event(Some(id), event, &payload.to_string()));
        tokio::time::timeout(WAIT, rx).await.expect("ack in time").expect("ack")
    }

    /// The next event called `name` (others are skipped), if one comes in time.
    pub async fn next(&mut self, name: &str, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((n, v))) if n == name => return Some(v),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Every event called `name` that arrives within `within`.
    pub async fn collect(&mut self, name: &str, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(Some((n, v))) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if n == name {
                out.push(v);
            }
        }
        out
    }

    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::SeqCst)
    }

    /// Whether the server closes this socket within `within` (polled, so a
    /// loaded machine only makes it slower, never wrong).
    pub async fn disconnected_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.is_disconnected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}
