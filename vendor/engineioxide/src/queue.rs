//! The bounded queue between a socket's senders and its transport.
//!
//! It replaces `tokio::sync::mpsc` there for its memory: a tokio channel
//! allocates a block of 32 slots when it is created (over 5 KiB for
//! `PacketBuf`s), whatever its bound, and keeps up to three after a burst.
//! This queue allocates on its first packet and gives the memory back when
//! it runs empty, so an idle socket holds no slots at all. It offers the
//! subset of the mpsc API the crate uses, with the same error types.

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use tokio::sync::{
    Notify,
    mpsc::error::{SendError, TryRecvError, TrySendError},
};

/// Slots kept by an empty queue; more are given back. None: most sockets
/// are idle most of the time, and one allocation per burst costs less
/// than a block held by every idle socket.
const KEEP: usize = 0;

struct State<T> {
    items: VecDeque<T>,
    /// Slots held by permits not used yet.
    reserved: usize,
    /// The receiver closed (or is gone): nothing more is accepted.
    closed: bool,
    /// The sender is gone: nothing more will come.
    sender_gone: bool,
    /// The latest volatile item: outside the bound, replaced by the next.
    volatile: Option<T>,
    rx_waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    cap: usize,
    /// Wakes senders waiting for room (`Sender::send`), counted so that
    /// taking a packet costs nothing when nobody waits.
    space: Notify,
    space_waiters: AtomicUsize,
    /// Wakes `Sender::closed`.
    closed: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves a consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_room(&self, state: &State<T>) -> bool {
        state.items.len() + state.reserved < self.cap
    }

    /// Pushes under the lock and wakes the receiver after it.
    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T) {
        state.items.push_back(item);
        let waker = state.rx_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn room_made(&self) {
        if self.space_waiters.load(Ordering::Acquire) > 0 {
            self.space.notify_waiters();
        }
    }
}

/// Creates a queue holding at most `cap` items.
pub(crate) fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            reserved: 0,
            closed: false,
            sender_gone: false,
            volatile: None,
            rx_waker: None,
        }),
        cap: cap.max(1),
        space: Notify::new(),
        space_waiters: AtomicUsize::new(0),
        closed: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// The sending side (one per socket).
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A slot held in the queue, for exactly one item.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
}

impl<T> Permit<'_, T> {
    pub(crate) fn send(self, item: T) {
        let shared = self.shared;
        std::mem::forget(self);
        let mut state = shared.lock();
        state.reserved -= 1;
        shared.push(state, item);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.shared.lock().reserved -= 1;
        self.shared.room_made();
    }
}

impl<T> Sender<T> {
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(item));
        }
        if !self.shared.has_room(&state) {
            return Err(TrySendError::Full(item));
        }
        self.shared.push(state, item);
        Ok(())
    }

    /// Sends, waiting for room while the queue is full.
    pub(crate) async fn send(&self, mut item: T) -> Result<(), SendError<T>> {
        loop {
            let mut notified = pin!(self.shared.space.notified());
            notified.as_mut().enable();
            self.shared.space_waiters.fetch_add(1, Ordering::AcqRel);
            let tried = self.try_send(item);
            if let Err(TrySendError::Full(i)) = tried {
                item = i;
                notified.await;
                self.shared.space_waiters.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            self.shared.space_waiters.fetch_sub(1, Ordering::AcqRel);
            return tried.map_err(|e| match e {
                TrySendError::Closed(i) | TrySendError::Full(i) => SendError(i),
            });
        }
    }

    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if !self.shared.has_room(&state) {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit {
            shared: &self.shared,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Sets the volatile item, replacing one not taken yet, and wakes the
    /// receiver, which takes it after the queued items; `false` when the
    /// queue is closed. It takes no slot: a volatile item is replaced, not
    /// waited for, when the receiver lags.
    pub(crate) fn set_volatile(&self, item: T) -> bool {
        let mut state = self.shared.lock();
        if state.closed {
            return false;
        }
        state.volatile = Some(item);
        let waker = state.rx_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Resolves once the receiver is closed or gone.
    pub(crate) async fn closed(&self) {
        loop {
            let mut notified = pin!(self.shared.closed.notified());
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waker = state.rx_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("cap", &self.shared.cap).finish()
    }
}

/// The receiving side, held by the socket's transport.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; the volatile one once the queue is empty.
    fn take(&self, state: &mut State<T>) -> Option<T> {
        let Some(item) = state.items.pop_front() else {
            return state.volatile.take();
        };
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items = VecDeque::new();
        }
        Some(item)
    }

    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match self.take(&mut state) {
            Some(item) => {
                drop(state);
                self.shared.room_made();
                Ok(item)
            }
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        match self.take(&mut state) {
            Some(item) => {
                drop(state);
                self.shared.room_made();
                Poll::Ready(Some(item))
            }
            // Closed and drained: as with mpsc, nothing more can come.
            None if state.sender_gone || state.closed => Poll::Ready(None),
            None => {
                match &mut state.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    #[cfg_attr(not(any(test, feature = "__test_harness")), allow(dead_code))]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Refuses further items; those queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.closed.notify_waiters();
        // Senders waiting for room see the queue closed.
        self.shared.space.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("cap", &self.shared.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_ordered_and_closable() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        let permit = tx.try_reserve().unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        permit.send(2);
        assert_eq!(rx.recv().await, Some(1));
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // A dropped permit gives its slot back.
        drop(tx.try_reserve().unwrap());
        tx.try_send(4).unwrap();
        tx.try_send(5).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(6), Err(TrySendError::Closed(6))));
        tokio::time::timeout(Duration::from_secs(1), tx.closed()).await.unwrap();
        assert_eq!(rx.recv().await, Some(4));
        assert_eq!(rx.recv().await, Some(5));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn send_waits_for_room_and_recv_for_items() {
        let (tx, mut rx) = channel::<u32>(1);
        let tx = Arc::new(tx);
        tx.try_send(1).unwrap();
        let t = tx.clone();
        let sender = tokio::spawn(async move { t.send(2).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(1), sender).await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(3).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), receiver).await.unwrap().unwrap();
        assert_eq!(got, Some(3));
    }

    #[test]
    fn an_emptied_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel::<u64>(128);
        for i in 0..64 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }
}
