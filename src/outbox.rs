//! A bound session's outbound queue: bounded, any number of senders, one
//! reader (the session's task). tokio's mpsc channel allocates a block of
//! 32 slots up front and keeps it; this queue holds no allocation while it is
//! empty, which every idle session's queue is (idle memory, BENCHMARKS.md).

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Why a stanza was not queued; it is handed back.
#[derive(Debug)]
pub enum PushError {
    /// The queue holds its maximum.
    Full(Bytes),
    /// The reader is gone (the session ended).
    Closed(Bytes),
}

#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Bytes>>,
    max: usize,
    ready: Notify,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(max: usize) -> Self {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            max: max.max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queue without waiting.
    pub fn push(&self, data: Bytes) -> Result<(), PushError> {
        let mut q = self.queue.lock().unwrap();
        // Checked under the lock that `close` takes: once `close` returns,
        // no push succeeds, so a final `take` sees everything ever queued.
        if self.is_closed() {
            return Err(PushError::Closed(data));
        }
        if q.len() >= self.max {
            return Err(PushError::Full(data));
        }
        q.push_back(data);
        drop(q);
        // Stores a permit when the reader is not waiting: no lost wake-up.
        self.ready.notify_one();
        Ok(())
    }

    /// The most it holds.
    pub fn max_capacity(&self) -> usize {
        self.max
    }

    /// Stanzas waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Free slots.
    pub fn capacity(&self) -> usize {
        self.max.saturating_sub(self.len())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The reader is done: later pushes fail, what is queued can still be taken.
    pub fn close(&self) {
        let _q = self.queue.lock().unwrap();
        self.closed.store(true, Ordering::Release);
    }

    /// Up to `max` stanzas, waiting until there is at least one, unless
    /// `stop` says otherwise first (it is asked on every wake-up: see
    /// [`Self::wake`]). Cancel-safe: stanzas are taken only in the poll that
    /// returns them. One wait for both keeps an idle session's future small.
    pub async fn recv_batch_or<T>(
        &self,
        max: usize,
        stop: impl Fn() -> Option<T>,
    ) -> Result<Vec<Bytes>, T> {
        loop {
            let notified = self.ready.notified();
            if let Some(t) = stop() {
                return Err(t);
            }
            let batch = self.take(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            notified.await;
        }
    }

    /// Wake the reader waiting in [`Self::recv_batch_or`] to ask `stop` again.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Up to `max` stanzas without waiting (possibly none).
    pub fn take(&self, max: usize) -> Vec<Bytes> {
        let mut q = self.queue.lock().unwrap();
        let n = q.len().min(max);
        let batch: Vec<Bytes> = q.drain(..n).collect();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_ordered_and_closable() {
        let o = Outbox::new(3);
        for i in 0..3 {
            o.push(Bytes::from(vec![i])).unwrap();
        }
        assert!(matches!(o.push(Bytes::new()), Err(PushError::Full(_))));
        assert_eq!(o.capacity(), 0);
        let got = o.take(2);
        assert_eq!(got, vec![Bytes::from(vec![0]), Bytes::from(vec![1])]);
        o.close();
        assert!(matches!(o.push(Bytes::new()), Err(PushError::Closed(_))));
        assert_eq!(o.take(10), vec![Bytes::from(vec![2])]);
        assert!(o.is_empty());
    }

    #[test]
    fn nothing_is_queued_after_close_returns() {
        // Pushers racing a close: every push that succeeded is still there
        // for the final take, and none succeeds after it.
        let o = std::sync::Arc::new(Outbox::new(1_000_000));
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let o = o.clone();
                std::thread::spawn(move || {
                    let mut ok = 0usize;
                    while o.push(Bytes::from_static(b"x")).is_ok() {
                        ok += 1;
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(5));
        o.close();
        let taken = o.take(usize::MAX).len();
        let pushed: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(taken, pushed);
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn wakes_the_reader_and_releases_capacity() {
        let o = std::sync::Arc::new(Outbox::new(100));
        let reader = {
            let o = o.clone();
            tokio::spawn(async move { o.recv_batch_or(64, || None::<()>).await.unwrap() })
        };
        tokio::task::yield_now().await;
        for i in 0..50u8 {
            o.push(Bytes::from(vec![i])).unwrap();
        }
        let first = reader.await.unwrap();
        assert!(!first.is_empty());
        let rest = o.take(100);
        assert_eq!(first.len() + rest.len(), 50);
        assert_eq!(o.queue.lock().unwrap().capacity(), 0);
    }
}
