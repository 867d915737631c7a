//! A one-value channel that can be awaited both ways: blocking
//! ([`Receiver::wait`]) and as a `std::future::Future`, with no runtime.
//!
//! Mutex + Condvar for blocking waiters, a stored `Waker` for async ones.
//! Dropping the [`Sender`] without sending wakes the receiver with
//! [`Canceled`], so a dead I/O thread can never leave a caller hanging.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The sender went away without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

enum Slot<T> {
    Empty,
    Full(T),
    /// The value was taken by the receiver.
    Taken,
    /// The sender was dropped without sending.
    Canceled,
}

struct State<T> {
    slot: Slot<T>,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

pub struct Sender<T> {
    shared: Option<Arc<Shared<T>>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slot: Slot::Empty,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Sender {
            shared: Some(shared.clone()),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    pub fn send(mut self, value: T) {
        let shared = self.shared.take().expect("sender used once");
        complete(&shared, Slot::Full(value));
    }
}

fn complete<T>(shared: &Shared<T>, slot: Slot<T>) {
    let waker = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        assert!(matches!(state.slot, Slot::Empty), "oneshot completed twice");
        state.slot = slot;
        state.waker.take()
    };
    shared.ready.notify_all();
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            complete(&shared, Slot::Canceled);
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks until the value arrives (or the sender is dropped).
    pub fn wait(self) -> Result<T, Canceled> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = take(&mut state.slot) {
                return result;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks up to `timeout`; `Ok(None)` when nothing arrived in time (the
    /// receiver stays usable).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<T>, Canceled> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = take(&mut state.slot) {
                return result.map(Some);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = self
                .shared
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The value if it already arrived, without blocking.
    pub fn try_take(&self) -> Option<Result<T, Canceled>> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        take(&mut state.slot)
    }

    pub fn is_ready(&self) -> bool {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(state.slot, Slot::Empty)
    }
}

fn take<T>(slot: &mut Slot<T>) -> Option<Result<T, Canceled>> {
    match std::mem::replace(slot, Slot::Taken) {
        Slot::Full(value) => Some(Ok(value)),
        Slot::Canceled => {
            *slot = Slot::Canceled;
            Some(Err(Canceled))
        }
        Slot::Empty => {
            *slot = Slot::Empty;
            None
        }
        Slot::Taken => panic!("oneshot value taken twice"),
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(result) = take(&mut state.slot) {
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Runs a future to completion on the current thread (for tests and for
/// callers that hold a future but want to block).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_gets_value_sent_from_another_thread() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7u32);
        });
        assert_eq!(rx.wait(), Ok(7));
        t.join().unwrap();
    }

    #[test]
    fn dropped_sender_cancels() {
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(rx.wait(), Err(Canceled));
    }

    #[test]
    fn future_is_woken() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send("done");
        });
        assert_eq!(block_on(rx), Ok("done"));
        t.join().unwrap();
    }

    #[test]
    fn wait_timeout_expires_then_receives() {
        let (tx, rx) = channel();
        assert_eq!(rx.wait_timeout(Duration::from_millis(10)), Ok(None));
        assert!(!rx.is_ready());
        tx.send(1u8);
        assert!(rx.is_ready());
        assert_eq!(rx.wait_timeout(Duration::from_millis(10)), Ok(Some(1)));
    }
}
