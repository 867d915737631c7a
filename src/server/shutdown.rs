//! Process-wide shutdown signal, set by the signal thread and awaited by
//! every shard. `event_listener` wakes glommio tasks from a foreign thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_listener::Event;

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    event: Event,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.event.notify(usize::MAX);
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// `fut`'s output, or `None` once shutdown is triggered (accept loops
    /// and readers stop through this).
    pub async fn or_cancel<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(fut.await) }, async {
            self.wait().await;
            None
        })
        .await
    }

    pub async fn wait(&self) {
        loop {
            if self.is_triggered() {
                return;
            }
            let listener = self.inner.event.listen();
            if self.is_triggered() {
                return;
            }
            listener.await;
        }
    }
}
