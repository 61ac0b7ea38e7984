//! The notify messages that change a run's phase (READY, STATUS, STOPPING,
//! EXTEND_TIMEOUT_USEC), waiting for the thread that writes them to the store.
//!
//! A run's processes may send as many as they like, so the queue is bounded per
//! run and served fairly: each run holds at most [`PER_RUN`] messages (a message
//! that finds its run's queue full is merged into the newest one: STATUS takes
//! the newer text, READY and STOPPING are kept, EXTEND the larger), and the writer
//! takes one message of each run with messages in turn. One run flooding STATUS
//! texts thus costs the agent at most [`PER_RUN`] messages of memory and delays
//! another run's READY by at most one write per busy run, never by its backlog.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};

use super::notify::Message;

/// Messages one run may have waiting; more are merged into the newest.
pub const PER_RUN: usize = 8;

/// A message that changes a run's phase, waiting to be written.
pub type Phase = (String, DateTime<Utc>, Message);

#[derive(Default)]
struct Queues {
    /// Each run's waiting messages, oldest first.
    runs: HashMap<String, VecDeque<(DateTime<Utc>, Message)>>,
    /// The runs with messages waiting, in the order they are served.
    turn: VecDeque<String>,
}

/// Per-run bounded queues of phase messages, served round-robin.
#[derive(Default)]
pub struct PhaseQueue {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// `later` folded into `earlier`, as if both had come in one datagram.
fn merge(earlier: &mut (DateTime<Utc>, Message), later: (DateTime<Utc>, Message)) {
    let (at, m) = later;
    let e = &mut earlier.1;
    earlier.0 = at;
    // Readiness counts once: the first READY=1 says how it came.
    if !e.ready {
        e.ready_on_first_output = m.ready_on_first_output;
    }
    e.ready |= m.ready;
    e.stopping |= m.stopping;
    if m.status.is_some() {
        e.status = m.status;
    }
    e.extend_usec = match (e.extend_usec, m.extend_usec) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

impl PhaseQueue {
    /// Queues a message for `run_id`; never blocks on the writer.
    pub fn push(&self, run_id: &str, at: DateTime<Utc>, msg: Message) {
        let mut q = self.queues.lock();
        let Queues { runs, turn } = &mut *q;
        let waiting = runs.entry(run_id.to_owned()).or_default();
        if waiting.is_empty() {
            turn.push_back(run_id.to_owned());
        }
        let full = waiting.len() >= PER_RUN;
        match waiting.back_mut() {
            Some(newest) if full => merge(newest, (at, msg)),
            _ => waiting.push_back((at, msg)),
        }
        drop(q);
        self.ready.notify_one();
    }

    /// The next message to write (one run's oldest, runs in turn), waiting at
    /// most `wait` for one.
    pub fn pop(&self, wait: Duration) -> Option<Phase> {
        let mut q = self.queues.lock();
        if q.turn.is_empty() {
            let _ = self.ready.wait_for(&mut q, wait);
        }
        let Queues { runs, turn } = &mut *q;
        let run_id = turn.pop_front()?;
        let waiting = runs.get_mut(&run_id)?;
        let (at, msg) = waiting.pop_front()?;
        if waiting.is_empty() {
            runs.remove(&run_id);
        } else {
            turn.push_back(run_id.clone());
        }
        Some((run_id, at, msg))
    }

    /// Messages waiting, in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queues.lock().runs.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(text: &str) -> Message {
        Message {
            status: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_flooding_run_is_bounded_and_does_not_delay_another_runs_ready() {
        let q = PhaseQueue::default();
        let now = Utc::now();
        for i in 0..100_000 {
            q.push("flood", now, status(&format!("s{i}")));
        }
        q.push(
            "victim",
            now,
            Message {
                ready: true,
                ..Default::default()
            },
        );
        assert_eq!(q.len(), PER_RUN + 1);
        let first = q.pop(Duration::ZERO).unwrap();
        assert_eq!(first.0, "flood");
        let second = q.pop(Duration::ZERO).unwrap();
        assert_eq!(second.0, "victim");
        assert!(second.2.ready);
        // The flood's newest text survives, merged into its newest message.
        let mut last = None;
        while let Some((_, _, m)) = q.pop(Duration::ZERO) {
            last = m.status;
        }
        assert_eq!(last.as_deref(), Some("s99999"));
    }

    #[test]
    fn merged_messages_keep_ready_stopping_and_the_largest_extension() {
        let q = PhaseQueue::default();
        let now = Utc::now();
        for _ in 0..PER_RUN {
            q.push("r", now, status("x"));
        }
        for m in [
            Message {
                ready: true,
                ready_on_first_output: true,
                extend_usec: Some(5),
                ..Default::default()
            },
            // A second READY=1 does not change how the run became ready.
            Message {
                ready: true,
                ..Default::default()
            },
            Message {
                stopping: true,
                extend_usec: Some(3),
                ..Default::default()
            },
        ] {
            q.push("r", now, m);
        }
        let mut got = Vec::new();
        while let Some((_, _, m)) = q.pop(Duration::ZERO) {
            got.push(m);
        }
        let newest = got.last().unwrap();
        assert!(newest.ready && newest.ready_on_first_output && newest.stopping);
        assert_eq!(newest.extend_usec, Some(5));
        assert_eq!(got.len(), PER_RUN);
    }
}
