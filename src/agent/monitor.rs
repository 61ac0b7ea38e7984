//! The deadline queue: one timer per run and kind (initialization, total time,
//! heartbeat), re-armed when READY=1, WATCHDOG=1 or EXTEND_TIMEOUT_USEC arrive.
//! Event-driven: the task sleeps until the earliest deadline or the next change,
//! never scanning all runs. Deadlines are absolute (UTC) times, as stored, so an
//! agent restart re-arms them unchanged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

/// Which deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Init,
    Total,
    Watchdog,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Init, Kind::Total, Kind::Watchdog];
}

struct Update {
    run_id: String,
    kind: Kind,
    /// `None` clears the deadline.
    at: Option<DateTime<Utc>>,
}

/// The handle through which deadlines are set; the queue lives in a tokio task.
#[derive(Clone)]
pub struct Monitor {
    tx: mpsc::UnboundedSender<Update>,
}

impl Monitor {
    /// Starts the queue's task on `rt`; `expired` is called (on a blocking thread)
    /// for each deadline that passes without having been moved or cleared.
    pub fn start(
        rt: &tokio::runtime::Handle,
        expired: impl Fn(String, Kind) + Send + Sync + 'static,
    ) -> Monitor {
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(run(rx, std::sync::Arc::new(expired)));
        Monitor { tx }
    }

    /// Sets (or with `None` clears) one deadline of a run.
    pub fn set(&self, run_id: &str, kind: Kind, at: Option<DateTime<Utc>>) {
        let _ = self.tx.send(Update {
            run_id: run_id.to_owned(),
            kind,
            at,
        });
    }

    /// Clears every deadline of a run.
    pub fn forget(&self, run_id: &str) {
        for kind in Kind::ALL {
            self.set(run_id, kind, None);
        }
    }
}

type Entry = Reverse<(DateTime<Utc>, String, Kind)>;

async fn run(
    mut rx: mpsc::UnboundedReceiver<Update>,
    expired: std::sync::Arc<dyn Fn(String, Kind) + Send + Sync>,
) {
    let mut heap: BinaryHeap<Entry> = BinaryHeap::new();
    let mut current: HashMap<(String, Kind), DateTime<Utc>> = HashMap::new();
    loop {
        let wait = heap
            .peek()
            .map(|Reverse((at, _, _))| (*at - Utc::now()).to_std().unwrap_or_default());
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = rx.recv() => {
                let Some(u) = update else { return };
                match u.at {
                    Some(at) => {
                        current.insert((u.run_id.clone(), u.kind), at);
                        heap.push(Reverse((at, u.run_id, u.kind)));
                    }
                    None => {
                        current.remove(&(u.run_id, u.kind));
                    }
                }
            }
            () = sleep => {
                let now = Utc::now();
                while let Some(Reverse((at, _, _))) = heap.peek() {
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((at, run_id, kind))) = heap.pop() else { break };
                    // Entries for deadlines that were moved or cleared are stale.
                    let key = (run_id, kind);
                    if current.get(&key) == Some(&at) {
                        current.remove(&key);
                        let expired = expired.clone();
                        tokio::task::spawn_blocking(move || expired(key.0, key.1));
                    }
                }
                // Keep the heap from growing without bound with stale entries.
                if heap.len() > 4 * current.len() + 1024 {
                    heap = current
                        .iter()
                        .map(|((id, kind), at)| Reverse((*at, id.clone(), *kind)))
                        .collect();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn fires_only_deadlines_that_were_not_moved_or_cleared() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let monitor = Monitor::start(rt.handle(), move |id, kind| {
            tx.lock().unwrap().send((id, kind)).unwrap();
        });
        let soon = |ms: i64| Some(Utc::now() + chrono::Duration::milliseconds(ms));
        monitor.set("a", Kind::Init, soon(50));
        monitor.set("b", Kind::Init, soon(50));
        monitor.set("b", Kind::Init, soon(100_000)); // moved far away
        monitor.set("c", Kind::Watchdog, soon(50));
        monitor.set("c", Kind::Watchdog, None); // cleared
        monitor.set("d", Kind::Total, soon(150));
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, ("a".to_string(), Kind::Init));
        assert_eq!(second, ("d".to_string(), Kind::Total));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }
}
