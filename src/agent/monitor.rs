//! The deadline queue: one timer per run and kind (initialization, total time,
//! heartbeat, first output, lease; and the next progress sample or port probe of a run),
//! re-armed when READY=1, WATCHDOG=1 or EXTEND_TIMEOUT_USEC arrive.
//! Event-driven: the task sleeps until the earliest deadline or the next change,
//! never scanning all runs. Deadlines are absolute (UTC) times, as stored, so an
//! agent restart re-arms them unchanged.
//!
//! A deadline moved later (every heartbeat moves one) only updates a map: the
//! task is not woken. When its earlier timer fires, or up to a second before
//! while the task is awake anyway, the task finds the deadline moved and sleeps
//! until the new one instead.

use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

/// Which deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Init,
    Total,
    Watchdog,
    /// The first byte of output is due (`--output-timeout`).
    Output,
    /// The next sample of a run's progress (`--stall-timeout`).
    Stall,
    /// The next look for a listener on the run's ready port (`ready = "port:N"`).
    Probe,
    /// The run's lease runs out unless renewed (`--lease`).
    Lease,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Init,
        Kind::Total,
        Kind::Watchdog,
        Kind::Output,
        Kind::Stall,
        Kind::Probe,
        Kind::Lease,
    ];
}

/// When the task wakes, it also re-arms the timers of deadlines moved later that
/// would wake it within this much (heartbeats move one deadline per run, so a
/// hundred heartbeating runs cost about one wake-up a second, not ten). Nothing
/// fires early: a deadline fires once it has passed.
const REARM_AHEAD: chrono::Duration = chrono::Duration::seconds(1);

type Key = (String, Kind);
/// The deadline in force for each run and kind.
type Current = Arc<Mutex<HashMap<Key, DateTime<Utc>>>>;

/// Called on the queue's task for a deadline that passed: whether `expired` must follow.
type Quick = dyn Fn(&str, Kind) -> bool + Send + Sync;

/// The handle through which deadlines are set; the queue lives in a tokio task.
pub struct Monitor {
    current: Current,
    /// Timers the task must add: deadlines new or moved earlier.
    tx: mpsc::UnboundedSender<(DateTime<Utc>, Key)>,
}

impl Monitor {
    /// Starts the queue's task on `rt`; `expired` is called (on a blocking thread)
    /// for each deadline that passes without having been moved or cleared.
    pub fn start(
        rt: &tokio::runtime::Handle,
        expired: impl Fn(String, Kind) + Send + Sync + 'static,
    ) -> Monitor {
        Monitor::start_with(rt, |_, _| true, expired)
    }

    /// [`Monitor::start`] with `quick`, called on the queue's own task first for
    /// each deadline that passes (it must not block: a few reads of kernel files at
    /// most); `expired` follows on a blocking thread only when it answers true.
    /// Frequent timers (progress samples) then cost no thread hand-off.
    pub fn start_with(
        rt: &tokio::runtime::Handle,
        quick: impl Fn(&str, Kind) -> bool + Send + Sync + 'static,
        expired: impl Fn(String, Kind) + Send + Sync + 'static,
    ) -> Monitor {
        let (tx, rx) = mpsc::unbounded_channel();
        let current = Current::default();
        rt.spawn(run(rx, current.clone(), Arc::new(quick), Arc::new(expired)));
        Monitor { current, tx }
    }

    /// Sets (or with `None` clears) one deadline of a run.
    pub fn set(&self, run_id: &str, kind: Kind, at: Option<DateTime<Utc>>) {
        let key = (run_id.to_owned(), kind);
        let mut current = self.current.lock();
        let Some(at) = at else {
            current.remove(&key); // its timer, when it fires, finds nothing
            return;
        };
        // A deadline moved later keeps its timer, which re-arms when it fires.
        let earlier = current.get(&key).is_none_or(|prev| at < *prev);
        current.insert(key.clone(), at);
        drop(current);
        if earlier {
            let _ = self.tx.send((at, key));
        }
    }

    /// Clears every deadline of a run.
    pub fn forget(&self, run_id: &str) {
        for kind in Kind::ALL {
            self.set(run_id, kind, None);
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(DateTime<Utc>, Key)>,
    current: Current,
    quick: Arc<Quick>,
    expired: Arc<dyn Fn(String, Kind) + Send + Sync>,
) {
    let mut heap: BinaryHeap<Reverse<(DateTime<Utc>, Key)>> = BinaryHeap::new();
    loop {
        let wait = heap
            .peek()
            .map(|Reverse((at, _))| (*at - Utc::now()).to_std().unwrap_or_default());
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            timer = rx.recv() => {
                let Some(timer) = timer else { return };
                heap.push(Reverse(timer));
            }
            () = sleep => {
                let now = Utc::now();
                let ahead = now + REARM_AHEAD;
                let mut not_due = Vec::new();
                while heap.peek().is_some_and(|Reverse((at, _))| *at <= ahead) {
                    let Some(Reverse((timer, key))) = heap.pop() else { break };
                    let mut cur = current.lock();
                    match cur.get(&key).copied() {
                        None => {} // cleared
                        // In force and not due yet (a timer up to REARM_AHEAD early).
                        Some(at) if at > now && at == timer => not_due.push(Reverse((at, key))),
                        Some(at) if at > now => heap.push(Reverse((at, key))), // moved later
                        Some(_) => {
                            cur.remove(&key);
                            drop(cur);
                            if !quick(&key.0, key.1) {
                                continue;
                            }
                            let expired = expired.clone();
                            tokio::task::spawn_blocking(move || expired(key.0, key.1));
                        }
                    }
                }
                heap.extend(not_due);
                // Timers of deadlines moved earlier or cleared are left behind:
                // keep them from piling up, with one timer per deadline in force.
                let cur = current.lock();
                if heap.len() > 4 * cur.len() + 1024 {
                    heap = cur.iter().map(|(key, at)| Reverse((*at, key.clone()))).collect();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::time::Duration;

    #[test]
    fn fires_only_deadlines_in_force_and_when_they_are_due() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let monitor = Monitor::start(rt.handle(), move |id, kind| {
            tx.lock().send((id, kind, Utc::now())).unwrap();
        });
        let t0 = Utc::now();
        let at = |ms: i64| Some(t0 + chrono::Duration::milliseconds(ms));
        monitor.set("a", Kind::Init, at(50));
        monitor.set("b", Kind::Init, at(50));
        monitor.set("b", Kind::Init, at(100_000)); // moved far away
        monitor.set("c", Kind::Watchdog, at(50));
        monitor.set("c", Kind::Watchdog, None); // cleared
        monitor.set("d", Kind::Total, at(150));
        monitor.set("e", Kind::Watchdog, at(50));
        monitor.set("e", Kind::Watchdog, at(300)); // moved later, as heartbeats do
        monitor.set("f", Kind::Init, at(100_000));
        monitor.set("f", Kind::Init, at(100)); // moved earlier
        let mut fired = HashMap::new();
        for _ in 0..4 {
            let (id, kind, when) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(fired.insert(id, (kind, when)).is_none(), "fired twice");
        }
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        let mut ids: Vec<_> = fired.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["a", "d", "e", "f"]);
        // Never before its deadline in force.
        for (id, due) in [("a", 50), ("d", 150), ("e", 300), ("f", 100)] {
            let when = fired[id].1;
            assert!(
                when >= at(due).unwrap(),
                "{id} fired {} ms early",
                (at(due).unwrap() - when).num_milliseconds()
            );
        }
        assert_eq!(fired["e"].0, Kind::Watchdog);
    }

    #[test]
    fn quick_decides_whether_expired_follows() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let quick_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = quick_seen.clone();
        let monitor = Monitor::start_with(
            rt.handle(),
            move |id, kind| {
                seen.lock().push(id.to_string());
                kind != Kind::Stall
            },
            move |id, kind| tx.lock().send((id, kind)).unwrap(),
        );
        let soon = Some(Utc::now() + chrono::Duration::milliseconds(30));
        monitor.set("sampled", Kind::Stall, soon);
        monitor.set("due", Kind::Init, soon);
        let (id, kind) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((id.as_str(), kind), ("due", Kind::Init));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        let mut seen = quick_seen.lock().clone();
        seen.sort();
        assert_eq!(seen, ["due", "sampled"]);
    }
}
