//! Byte-range lock over the disk: shared for reads, exclusive for writes.
//!
//! Concurrent `pread`/`pwrite` on overlapping ranges give no atomicity
//! guarantee, and an unaligned O_DIRECT write is a read-modify-write of the
//! covering blocks; so every request locks the aligned span it physically
//! touches, and no reader can see half of a write.
//!
//! The lock is held across the blocking I/O call, so it is acquired on the
//! async side (waiting costs no thread) and the guard moves into the blocking
//! closure. The table is a short vector: the number of requests in flight is
//! small, and a linear scan beats any tree at that size.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

#[derive(Debug)]
struct Held {
    id: u64,
    start: u64,
    end: u64,
    mode: LockMode,
}

#[derive(Default)]
struct Table {
    held: Vec<Held>,
    next_id: u64,
}

#[derive(Default)]
pub struct RangeLock {
    table: Mutex<Table>,
    released: Notify,
}

/// Holds `[start, end)` until dropped.
pub struct RangeGuard {
    lock: Arc<RangeLock>,
    id: u64,
}

impl RangeLock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn try_insert(&self, start: u64, end: u64, mode: LockMode) -> Option<u64> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let conflict = t.held.iter().any(|h| {
            h.start < end
                && start < h.end
                && (mode == LockMode::Exclusive || h.mode == LockMode::Exclusive)
        });
        if conflict {
            return None;
        }
        let id = t.next_id;
        t.next_id += 1;
        t.held.push(Held {
            id,
            start,
            end,
            mode,
        });
        Some(id)
    }

    /// Wait until `[start, end)` can be held in `mode`, then hold it.
    /// Cancel-safe: dropping the future before it resolves holds nothing.
    pub async fn acquire(self: &Arc<Self>, start: u64, end: u64, mode: LockMode) -> RangeGuard {
        debug_assert!(start < end);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Register before checking, so a release between the check and
            // the await still wakes us.
            notified.as_mut().enable();
            if let Some(id) = self.try_insert(start, end, mode) {
                return RangeGuard {
                    lock: Arc::clone(self),
                    id,
                };
            }
            notified.await;
        }
    }

    /// Number of ranges held (for tests and status).
    pub fn held(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .len()
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut t = self.lock.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = t.held.iter().position(|h| h.id == self.id) {
            t.held.swap_remove(pos);
        }
        drop(t);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn shared_ranges_coexist() {
        let l = RangeLock::new();
        let _a = l.acquire(0, 512, LockMode::Shared).await;
        let _b = timeout(SHORT, l.acquire(0, 1024, LockMode::Shared))
            .await
            .expect("two readers must not block each other");
        assert_eq!(l.held(), 2);
    }

    #[tokio::test]
    async fn exclusive_blocks_overlap_until_released() {
        let l = RangeLock::new();
        let w = l.acquire(512, 1024, LockMode::Exclusive).await;
        assert!(timeout(SHORT, l.acquire(0, 513, LockMode::Shared))
            .await
            .is_err());
        assert!(timeout(SHORT, l.acquire(1023, 2048, LockMode::Exclusive))
            .await
            .is_err());
        // Adjacent, not overlapping: fine.
        let _adj = timeout(SHORT, l.acquire(0, 512, LockMode::Exclusive))
            .await
            .unwrap();
        let _adj2 = timeout(SHORT, l.acquire(1024, 2048, LockMode::Shared))
            .await
            .unwrap();
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            let _g = l2.acquire(600, 700, LockMode::Shared).await;
        });
        tokio::time::sleep(SHORT).await;
        assert!(!waiter.is_finished());
        drop(w);
        timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn readers_block_writer() {
        let l = RangeLock::new();
        let r = l.acquire(0, 4096, LockMode::Shared).await;
        assert!(timeout(SHORT, l.acquire(0, 512, LockMode::Exclusive))
            .await
            .is_err());
        drop(r);
        timeout(SHORT, l.acquire(0, 512, LockMode::Exclusive))
            .await
            .unwrap();
        assert_eq!(l.held(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_reader_sees_a_torn_write() {
        // Writers fill a shared buffer byte by byte under the exclusive lock;
        // readers under the shared lock must always see one uniform value.
        let l = RangeLock::new();
        let data = Arc::new(
            (0..1024)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect::<Vec<_>>(),
        );
        let mut tasks = Vec::new();
        for w in 0..4u8 {
            let (l, data) = (Arc::clone(&l), Arc::clone(&data));
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let _g = l.acquire(0, 1024, LockMode::Exclusive).await;
                    for b in data.iter() {
                        b.store(w + 1, std::sync::atomic::Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for _ in 0..4 {
            let (l, data) = (Arc::clone(&l), Arc::clone(&data));
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let _g = l.acquire(256, 768, LockMode::Shared).await;
                    let first = data[0].load(std::sync::atomic::Ordering::Relaxed);
                    assert!(data
                        .iter()
                        .all(|b| b.load(std::sync::atomic::Ordering::Relaxed) == first));
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
