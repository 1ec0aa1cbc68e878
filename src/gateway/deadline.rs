//! The deadlines that end sockets: the auth timeout of a socket that has
//! not authenticated yet, and the end of its session's lifetime.
//!
//! Every socket of the process shares one `DelayQueue` and one task. A
//! task with its own timer per socket cost about 0.4 KiB of every idle
//! connection; an entry here is a few dozen bytes. A socket has at most
//! one deadline (the one that applies now); setting another replaces it,
//! and a disconnect clears it, so the queue never outlives its sockets.

use std::{
    future::poll_fn,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::Poll,
    time::Duration,
};

use socketioxide::{adapter::Adapter, extract::SocketRef};
use tokio_util::time::DelayQueue;

use super::{Gateway, conn::Conn};
use crate::lock::MutexExt;

/// What a deadline ends.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Deadline {
    /// The socket did not authenticate in time.
    AuthTimeout,
    /// The session's lifetime ended (a re-authenticated socket has a newer
    /// session, and this deadline no longer applies to it).
    SessionEnd { session_id: String },
}

struct Entry<A: Adapter> {
    socket: SocketRef<A>,
    conn: Weak<Conn>,
    deadline: Deadline,
}

pub struct Deadlines<A: Adapter> {
    queue: Mutex<DelayQueue<Entry<A>>>,
}

impl<A: Adapter> Default for Deadlines<A> {
    fn default() -> Self {
        Self { queue: Mutex::new(DelayQueue::new()) }
    }
}

impl<A: Adapter> Deadlines<A> {
    fn lock(&self) -> MutexGuard<'_, DelayQueue<Entry<A>>> {
        // Every operation leaves the queue consistent: a panic elsewhere
        // while it was held does not make it unusable.
        self.queue.lock_or_recover()
    }

    /// Sets the socket's deadline, `after` from now, replacing the one it had.
    pub fn set(&self, socket: &SocketRef<A>, conn: &Arc<Conn>, deadline: Deadline, after: Duration) {
        let mut queue = self.lock();
        // Under the queue's lock, so a key is never kept after its entry
        // left the queue (keys are reused).
        if let Some(old) = conn.take_deadline_key() {
            queue.try_remove(&old);
        }
        let entry = Entry { socket: socket.clone(), conn: Arc::downgrade(conn), deadline };
        conn.set_deadline_key(queue.insert(entry, after));
    }

    /// Clears the socket's deadline (it disconnected).
    pub fn clear(&self, conn: &Conn) {
        let mut queue = self.lock();
        if let Some(old) = conn.take_deadline_key() {
            queue.try_remove(&old);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next deadline that has passed, its socket's key already cleared.
    async fn next_expired(&self) -> Entry<A> {
        poll_fn(|cx| {
            let mut queue = self.lock();
            match queue.poll_expired(cx) {
                Poll::Ready(Some(expired)) => {
                    let key = expired.key();
                    let entry = expired.into_inner();
                    if let Some(conn) = entry.conn.upgrade() {
                        conn.forget_deadline_key(key);
                    }
                    Poll::Ready(entry)
                }
                // Empty: the queue keeps the waker and wakes it on insert.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Ends sockets as their deadlines pass, for the life of the process.
pub async fn run<A: Adapter>(gw: Arc<Gateway<A>>) {
    loop {
        let entry = gw.deadlines.next_expired().await;
        let Some(conn) = entry.conn.upgrade() else { continue };
        let due = match &entry.deadline {
            Deadline::AuthTimeout => {
                let due = conn.session().is_none();
                if due {
                    metrics::counter!(crate::metrics::names::AUTH_TIMEOUTS).increment(1);
                }
                due
            }
            Deadline::SessionEnd { session_id } => conn.session().is_some_and(|s| &s.session_id == session_id),
        };
        if due {
            let _ = entry.socket.disconnect();
        }
    }
}
