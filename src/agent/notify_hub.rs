//! The notify sockets of all runs, read by one thread: one epoll set, and a
//! wake-up at most every [`BATCH`]. A hundred runs sending a heartbeat every
//! second, each at its own moment, then wake the agent about 1/BATCH times a
//! second instead of a hundred, and each wake-up reads what arrived on every
//! socket meanwhile. The price: a message waits up to [`BATCH`] before it is
//! handled (sd_notify is asynchronous; deadlines are seconds).
//!
//! Messages are handed over on this thread in the order each socket received
//! them; the handler must not block (the agent passes what it writes to the
//! store, READY or STATUS, on to another thread).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use super::notify;

/// The shortest time between two wake-ups of the notify thread.
pub const BATCH: Duration = Duration::from_millis(50);
/// Datagrams read from one socket per wake-up, at most (a socket holds 10 by
/// default, `net.unix.max_dgram_qlen`; the rest wait for the next wake-up).
const PER_SOCKET: usize = 32;
/// The most datagrams read from a socket being removed: far more than its
/// queue holds (`net.unix.max_dgram_qlen`).
const MAX_DRAINED: usize = 100_000;

/// Called on the notify thread for each datagram: the run, its sender, the bytes.
pub trait OnDatagram: Send + Sync + 'static {
    fn on_datagram(&self, run_id: &str, sender: notify::Sender, datagram: &[u8]);
}

struct Socket {
    run_id: Arc<str>,
    /// The run's owner: what its senders pass is closed by the owner's closer.
    owner: u32,
    sock: Arc<UnixDatagram>,
}

pub struct Hub {
    epoll: Arc<OwnedFd>,
    sockets: Arc<Mutex<HashMap<u64, Socket>>>,
    next_key: AtomicU64,
    closers: Arc<Closers>,
}

impl Hub {
    pub fn new() -> std::io::Result<Hub> {
        Ok(Hub {
            epoll: Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?),
            sockets: Arc::default(),
            next_key: AtomicU64::new(1),
            closers: Arc::default(),
        })
    }

    /// Starts the thread that reads the sockets and hands each datagram to `target`
    /// (while `target` lives).
    pub fn start<T: OnDatagram>(&self, target: std::sync::Weak<T>) {
        let epoll = self.epoll.clone();
        let sockets = self.sockets.clone();
        let closers = self.closers.clone();
        std::thread::Builder::new()
            .name("wfcg-notify".into())
            .spawn(move || serve(&epoll, &sockets, &closers, &target))
            .expect("spawning the notify thread");
    }

    /// Reads `sock` (non-blocking) for `run_id` from now on; the key to [`Hub::remove`] it.
    pub fn add(&self, run_id: &str, owner: u32, sock: UnixDatagram) -> std::io::Result<u64> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let sock = Arc::new(sock);
        self.sockets.lock().insert(
            key,
            Socket {
                run_id: run_id.into(),
                owner,
                sock: sock.clone(),
            },
        );
        if let Err(e) = epoll::add(
            &*self.epoll,
            &*sock,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN,
        ) {
            self.sockets.lock().remove(&key);
            return Err(e.into());
        }
        Ok(key)
    }

    /// Stops reading a socket. It refuses datagrams at once (`shutdown(SHUT_RD)`:
    /// a sender gets EPIPE) and its descriptor is closed once the thread lets go of
    /// it (it may be reading it right now; waiting for that here could deadlock
    /// with a caller holding a lock the datagram's handler takes).
    pub fn remove(&self, key: u64) {
        let Some(s) = self.sockets.lock().remove(&key) else {
            return;
        };
        let _ = epoll::delete(&*self.epoll, &*s.sock);
        let _ = rustix::net::shutdown(&*s.sock, rustix::net::Shutdown::Read);
        // What is still queued goes with the socket's last close, and the
        // kernel closes the descriptors it carries in the thread that closes
        // it (here the reaper, holding locks every request takes): a socket
        // lingering on data nobody reads would hold it for good. The queue is
        // read empty first (no one can add to it once shut down), and what
        // the datagrams carry goes to the closer.
        let mut buf = vec![0u8; notify::MAX_MESSAGE];
        for _ in 0..MAX_DRAINED {
            match notify::receive(&*s.sock, &mut buf, true) {
                // The end of a shut-down queue: nothing, not even credentials.
                Ok((0, sender)) if sender.pid.is_none() && sender.passed.is_empty() => break,
                Ok((_, sender)) => self.closers.close(s.owner, sender.passed),
                Err(_) => break,
            }
        }
    }
}

/// Closes what senders passed, off the notify thread: closing a descriptor may
/// block (the flush of a file on a FUSE mount whose daemon never answers; a TCP
/// socket lingering on data its peer never reads, passed as it is or inside a
/// unix socket's queue). Sockets are made to close abortively first
/// (`SO_LINGER {on, 0}`), and each run owner's descriptors are closed by a
/// thread of that owner's: a close that waits holds up only what that owner
/// passed after it, never another user's (systemd-notify's barrier pipe is
/// answered by its close). Datagrams are always read with room for every
/// descriptor one can carry, so the kernel never discards (closes) one on the
/// notify thread; but an owner with [`MAX_UNCLOSED`] descriptors not yet closed
/// has their runs' sockets left unread until their closer catches up, so what
/// they pass stays in the kernel's queues, not in the agent's descriptor table.
#[derive(Default)]
struct Closers {
    by_owner: Mutex<HashMap<u32, Arc<Closer>>>,
}

/// Descriptors of one owner given to their closer and not closed yet, at most,
/// before their runs' sockets are left unread.
const MAX_UNCLOSED: usize = 1024;

struct Closer {
    tx: std::sync::mpsc::Sender<OwnedFd>,
    unclosed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Closers {
    fn close(&self, owner: u32, fds: Vec<OwnedFd>) {
        if fds.is_empty() {
            return;
        }
        let closer = self.of(owner);
        for fd in fds {
            crate::sys::socket::abortive_close(&fd);
            match &closer {
                Some(c) => {
                    c.unclosed.fetch_add(1, Ordering::Relaxed);
                    let _ = c.tx.send(fd);
                }
                // No thread could be started: closed here, abortively at least.
                None => drop(fd),
            }
        }
    }

    /// Whether `owner` has passed more than their closer has closed so far.
    fn behind(&self, owner: u32) -> bool {
        self.by_owner
            .lock()
            .get(&owner)
            .is_some_and(|c| c.unclosed.load(Ordering::Relaxed) >= MAX_UNCLOSED)
    }

    /// The closer of `owner`'s descriptors, started at their first.
    fn of(&self, owner: u32) -> Option<Arc<Closer>> {
        let mut by_owner = self.by_owner.lock();
        if let Some(c) = by_owner.get(&owner) {
            return Some(c.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
        let unclosed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = unclosed.clone();
        let started = std::thread::Builder::new()
            .name(format!("wfcg-close-{owner}"))
            .spawn(move || {
                for fd in rx {
                    drop(fd);
                    count.fetch_sub(1, Ordering::Relaxed);
                }
            });
        if let Err(e) = started {
            tracing::error!(
                owner,
                "cannot start a thread to close passed descriptors: {e}"
            );
            return None;
        }
        let closer = Arc::new(Closer { tx, unclosed });
        by_owner.insert(owner, closer.clone());
        Some(closer)
    }
}

fn serve<T: OnDatagram>(
    epoll: &OwnedFd,
    sockets: &Mutex<HashMap<u64, Socket>>,
    closers: &Closers,
    target: &std::sync::Weak<T>,
) {
    let empty = epoll::Event {
        flags: epoll::EventFlags::empty(),
        data: epoll::EventData::new_u64(0),
    };
    let mut events = [empty; 256];
    let mut buf = vec![0u8; notify::MAX_MESSAGE];
    let mut woke: Option<Instant> = None;
    loop {
        // At most one wake-up per BATCH: what arrives meanwhile waits in the
        // sockets and is read all at once.
        if let Some(left) = woke.and_then(|t| BATCH.checked_sub(t.elapsed())) {
            std::thread::sleep(left);
        }
        let n = match epoll::wait(epoll, &mut events[..], None) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!("notify: epoll_wait failed: {e}");
                woke = Some(Instant::now());
                continue;
            }
        };
        woke = Some(Instant::now());
        let Some(target) = target.upgrade() else {
            return;
        };
        for ev in &events[..n] {
            let key = ev.data.u64();
            let Some((run_id, owner, sock)) = sockets
                .lock()
                .get(&key)
                .map(|s| (s.run_id.clone(), s.owner, s.sock.clone()))
            else {
                continue;
            };
            // Left in the kernel's queue while the owner's closer is behind.
            if closers.behind(owner) {
                continue;
            }
            for _ in 0..PER_SOCKET {
                match notify::receive(&*sock, &mut buf, true) {
                    Ok((len, mut sender)) => {
                        // Closed whatever becomes of the datagram (sender.rs may drop it).
                        closers.close(owner, std::mem::take(&mut sender.passed));
                        target.on_datagram(&run_id, sender, &buf[..len]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Looked at again at the next wake-up, BATCH later: never a spin.
                        tracing::warn!(run_id = &*run_id, "notify socket: {e}");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Got = (String, Option<i32>, Vec<u8>);
    struct Collect(Mutex<mpsc::Sender<Got>>);

    /// A target that passes on every datagram it gets, and where they go.
    fn collecting() -> (Arc<Collect>, mpsc::Receiver<Got>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(Collect(Mutex::new(tx))), rx)
    }

    impl OnDatagram for Collect {
        fn on_datagram(&self, run_id: &str, sender: notify::Sender, datagram: &[u8]) {
            let _ = self
                .0
                .lock()
                .send((run_id.to_owned(), sender.pid, datagram.to_vec()));
        }
    }

    #[test]
    fn removing_a_socket_never_waits_on_the_close_of_what_its_queue_carries() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        // Not started: no thread reads the datagrams, as when a run ends with
        // its last ones unread.
        let hub = Arc::new(Hub::new().unwrap());
        let key = hub.add("run", 1000, notify::bind(&path).unwrap()).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.connect(&path).unwrap();
        let (lingering, _peer) = crate::sys::socket::testing::lingering_socket();
        let null = std::fs::File::open("/dev/null").unwrap();
        for _ in 0..3 {
            crate::sys::socket::testing::send_with_fds(
                &sender,
                b"STATUS=x",
                &[lingering.as_fd(), null.as_fd()],
            );
        }
        // The queue's copies are the last: its close would be theirs.
        drop((lingering, null));
        let (tx, rx) = mpsc::channel();
        let removing = hub.clone();
        std::thread::spawn(move || {
            removing.remove(key);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("removing the socket waited on the close of a passed socket");
        // And the socket is shut: a later datagram is refused.
        assert!(sender.send(b"READY=1").is_err());
    }

    #[test]
    fn a_close_that_waits_holds_up_only_its_own_owners_descriptors() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let (target, _rx) = collecting();
        let hub = Hub::new().unwrap();
        hub.start(Arc::downgrade(&target));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        hub.add("a", 1001, notify::bind(&a).unwrap()).unwrap();
        hub.add("b", 1002, notify::bind(&b).unwrap()).unwrap();
        // Owner 1001 passes a unix socket whose queue carries a lingering TCP
        // socket: making the outer one abortive does not reach the inner one,
        // so its close waits (an hour) in 1001's closer.
        let (lingering, _peer) = crate::sys::socket::testing::lingering_socket();
        let (outer, inner) = std::os::unix::net::UnixStream::pair().unwrap();
        crate::sys::socket::testing::send_with_fds(&inner, b"x", &[lingering.as_fd()]);
        drop((lingering, inner));
        let sender = UnixDatagram::unbound().unwrap();
        crate::sys::socket::testing::send_with_fds_to(&sender, &a, b"STATUS=a", &[outer.as_fd()]);
        drop(outer);
        // Owner 1002 passes a pipe's write end, as systemd-notify's barrier
        // does: its reader sees the end once the agent has closed it.
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        crate::sys::socket::testing::send_with_fds_to(
            &sender,
            &b,
            b"STATUS=b",
            &[write_end.as_fd()],
        );
        drop(write_end);
        let (done, ended) = mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = done.send(read_end.read_to_end(&mut rest).map(|_| rest.len()));
        });
        let got = ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the barrier pipe of another owner was not closed behind a close that waits");
        assert_eq!(got.unwrap(), 0);
    }

    #[test]
    fn reads_every_socket_in_order_and_stops_reading_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (target, rx) = collecting();
        let hub = Hub::new().unwrap();
        hub.start(Arc::downgrade(&target));
        let path = |name: &str| dir.path().join(name);
        let a = hub.add("a", 0, notify::bind(&path("a")).unwrap()).unwrap();
        hub.add("b", 0, notify::bind(&path("b")).unwrap()).unwrap();
        let to = UnixDatagram::unbound().unwrap();
        // More than a socket holds (10: the sends wait for the hub to read), interleaved
        // with another socket.
        for i in 0..12 {
            to.send_to(format!("STATUS={i}").as_bytes(), path("a"))
                .unwrap();
            if i % 4 == 0 {
                to.send_to(b"WATCHDOG=1", path("b")).unwrap();
            }
        }
        let mut got_a = Vec::new();
        let mut got_b = 0;
        while got_a.len() < 12 || got_b < 3 {
            let (id, pid, data) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(pid, Some(std::process::id() as i32));
            match id.as_str() {
                "a" => got_a.push(String::from_utf8(data).unwrap()),
                _ => got_b += 1,
            }
        }
        let want: Vec<_> = (0..12).map(|i| format!("STATUS={i}")).collect();
        assert_eq!(got_a, want, "one socket's datagrams in the order sent");
        hub.remove(a);
        // The socket is shut: nothing can be sent to it any more, whether or not the
        // thread still holds it.
        assert!(to.send_to(b"WATCHDOG=1", path("a")).is_err());
        assert!(rx.recv_timeout(BATCH * 3).is_err());
    }

    #[test]
    fn more_sockets_ready_at_once_than_one_wait_returns_are_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let (target, rx) = collecting();
        let hub = Hub::new().unwrap();
        let n = 300; // more than the 256 events one epoll_wait returns
        let paths: Vec<_> = (0..n).map(|i| dir.path().join(i.to_string())).collect();
        for (i, path) in paths.iter().enumerate() {
            hub.add(&i.to_string(), 0, notify::bind(path).unwrap())
                .unwrap();
        }
        // One sender each: unread datagrams count against their sender's buffer.
        let senders: Vec<_> = paths
            .iter()
            .map(|path| {
                let to = UnixDatagram::unbound().unwrap();
                to.send_to(b"WATCHDOG=1", path).unwrap();
                to.send_to(b"STATUS=2", path).unwrap();
                to
            })
            .collect();
        // All of them are waiting before the thread starts.
        hub.start(Arc::downgrade(&target));
        let mut got: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for _ in 0..2 * n {
            let (id, _, data) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            got.entry(id).or_default().push(data);
        }
        assert_eq!(got.len(), n);
        assert!(
            got.values()
                .all(|d| d == &[b"WATCHDOG=1".to_vec(), b"STATUS=2".to_vec()])
        );
        drop(senders);
    }
}
