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
}
