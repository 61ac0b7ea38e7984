//! Maps a function over a slice on every core, keeping the order: for the few
//! places that read a file or two per process or run, thousands of times.

/// `items.iter().map(f).collect()`, in chunks of at least `min_chunk` items,
/// one scoped thread per chunk (one chunk, on this thread, for short slices).
pub fn map<T: Sync, R: Send>(items: &[T], min_chunk: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_owned(items.iter().collect(), min_chunk, f)
}

/// [`map`] of items taken by value (`items.into_iter().map(f).collect()`).
pub fn map_owned<T: Send, R: Send>(
    items: Vec<T>,
    min_chunk: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    // Asked once: std reads /proc/self/cgroup and the CPU quota files each time.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let chunk = items.len().div_ceil(threads).max(min_chunk.max(1));
    if items.len() <= chunk {
        return items.into_iter().map(f).collect();
    }
    let mut parts = Vec::new();
    let mut items = items.into_iter();
    loop {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// A value read of the host that callers at once share: each gets one read
/// that started after it asked (so never an answer older than its question),
/// and one read answers every caller that was waiting when it started. A
/// thousand runs cleaned up at once then read the mount table a few times, not
/// a thousand.
pub struct Fresh<T> {
    state: parking_lot::Mutex<FreshState<T>>,
    done: parking_lot::Condvar,
}

struct FreshState<T> {
    /// Reads started so far; the running or last one is number `started`.
    started: u64,
    running: bool,
    /// Callers waiting for a read.
    waiting: usize,
    /// The last read finished: its number and what it read.
    last: Option<(u64, std::sync::Arc<T>)>,
}

impl<T> Fresh<T> {
    pub const fn new() -> Fresh<T> {
        Fresh {
            state: parking_lot::Mutex::new(FreshState {
                started: 0,
                running: false,
                waiting: 0,
                last: None,
            }),
            done: parking_lot::Condvar::new(),
        }
    }

    /// What `read` returns, from a read that started after this call (this
    /// caller's own or another's).
    pub fn get(&self, read: impl FnOnce() -> T) -> std::sync::Arc<T> {
        let mut st = self.state.lock();
        // A read running now started before this call: the next one will do.
        let need = st.started + 1;
        loop {
            if let Some((n, value)) = &st.last
                && *n >= need
            {
                return value.clone();
            }
            if !st.running {
                st.running = true;
                st.started += 1;
                let n = st.started;
                drop(st);
                // Whatever happens in `read`, the waiters are woken and a
                // later caller reads again.
                let ended = EndRead(self);
                let value = std::sync::Arc::new(read());
                std::mem::forget(ended);
                st = self.state.lock();
                st.last = Some((n, value.clone()));
                st.running = false;
                self.done.notify_all();
                return value;
            }
            st.waiting += 1;
            self.done.wait(&mut st);
            st.waiting -= 1;
        }
    }
}

impl<T> Default for Fresh<T> {
    fn default() -> Fresh<T> {
        Fresh::new()
    }
}

/// Ends a read that panicked: the next waiter reads itself.
struct EndRead<'a, T>(&'a Fresh<T>);

impl<T> Drop for EndRead<'_, T> {
    fn drop(&mut self) {
        self.0.state.lock().running = false;
        self.0.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_order_for_any_length() {
        for n in [0, 1, 7, 255, 256, 257, 1000, 4097] {
            let items: Vec<usize> = (0..n).collect();
            let doubled = super::map(&items, 64, |i| i * 2);
            assert_eq!(doubled, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "n={n}");
            let strings =
                super::map_owned(items.iter().map(|i| i.to_string()).collect(), 64, |s| {
                    s + "!"
                });
            assert_eq!(
                strings,
                (0..n).map(|i| format!("{i}!")).collect::<Vec<_>>(),
                "n={n}"
            );
        }
    }

    #[test]
    fn a_fresh_value_is_read_after_it_was_asked_and_shared_by_those_waiting() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let fresh = &super::Fresh::<u64>::new();
        let reads = &AtomicU64::new(0);
        // Alone: every call reads.
        assert_eq!(*fresh.get(|| reads.fetch_add(1, Ordering::SeqCst) + 1), 1);
        assert_eq!(*fresh.get(|| reads.fetch_add(1, Ordering::SeqCst) + 1), 2);
        // Sixteen at once while a slow read runs: each gets a read numbered
        // after the one running when it asked, and far fewer reads than callers.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let first = s.spawn(move || {
                *fresh.get(|| {
                    rx.recv().unwrap();
                    reads.fetch_add(1, Ordering::SeqCst) + 1
                })
            });
            while !fresh.state.lock().running {
                std::thread::yield_now();
            }
            let waiters: Vec<_> = (0..16)
                .map(|_| s.spawn(move || *fresh.get(|| reads.fetch_add(1, Ordering::SeqCst) + 1)))
                .collect();
            while fresh.state.lock().waiting < 16 {
                std::thread::yield_now();
            }
            tx.send(()).unwrap();
            assert_eq!(first.join().unwrap(), 3);
            for w in waiters {
                assert!(
                    w.join().unwrap() >= 4,
                    "a waiter got the read that started before it asked"
                );
            }
        });
        assert!(
            reads.load(Ordering::SeqCst) < 3 + 16,
            "every waiter read alone"
        );
    }

    #[test]
    fn a_read_that_panics_leaves_the_next_caller_free_to_read() {
        let fresh = super::Fresh::<u32>::new();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fresh.get(|| panic!("a read failed"))
        }));
        assert!(panicked.is_err());
        assert_eq!(*fresh.get(|| 7), 7);
    }
}
