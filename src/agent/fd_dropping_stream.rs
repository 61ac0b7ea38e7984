//! An API connection read with `recvmsg(2)`, so that a descriptor a caller
//! passes with its request is received by the agent and disposed of, never
//! discarded by the kernel in the tokio worker that reads.
//!
//! A descriptor passed on a unix socket and not received (the reader used
//! `read(2)`, as hyper does) is closed by the kernel in the reading thread, and
//! that close can wait for good: a TCP socket lingering on data its peer never
//! reads, a file on a FUSE mount whose daemon never answers. Four such requests
//! once froze every worker of the agent. Where the kernel can (Linux 6.16 on,
//! `SO_PASSRIGHTS`), the socket refuses them and the caller's `sendmsg` fails;
//! this reader is for the kernels before, and costs nothing more than `read(2)`
//! when nothing is passed.
//!
//! Disposal: a passed socket is first made to close abortively (`SO_LINGER`
//! `{1, 0}`: a reset, never a wait), then every passed descriptor is closed by
//! one thread of its own (`wfcg-api-close`), off the workers: a close that
//! waits anyway (FUSE) holds that thread, not the API.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// An accepted API connection whose reads receive and dispose of passed
/// descriptors.
pub struct FdDroppingStream(UnixStream);

impl FdDroppingStream {
    pub fn new(stream: UnixStream) -> FdDroppingStream {
        FdDroppingStream(stream)
    }
}

/// Hands `fds` to the closing thread, each passed socket made to close
/// abortively first.
fn dispose(fds: Vec<OwnedFd>) {
    static CLOSER: std::sync::LazyLock<Option<std::sync::Mutex<Sender<OwnedFd>>>> =
        std::sync::LazyLock::new(|| {
            let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
            std::thread::Builder::new()
                .name("wfcg-api-close".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| std::sync::Mutex::new(tx))
        });
    for fd in fds {
        crate::sys::socket::abortive_close(&fd);
        match CLOSER.as_ref() {
            Some(tx) => {
                let _ = tx.lock().map(|tx| tx.send(fd));
            }
            // No thread could be started: closed here, abortively at least.
            None => drop(fd),
        }
    }
}

impl AsyncRead for FdDroppingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let got = stream.try_io(Interest::READABLE, || {
                crate::sys::cmsg::recv_with_ancillary(
                    stream.as_fd(),
                    unfilled,
                    crate::sys::cmsg::CONTROL_FULL,
                )
            });
            match got {
                Ok((n, ancillary)) => {
                    dispose(ancillary.passed);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdDroppingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_read_receives_passed_descriptors_and_never_waits_on_their_close() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (lingering, _peer) = crate::sys::socket::testing::lingering_socket();
        let null = std::fs::File::open("/dev/null").unwrap();
        crate::sys::socket::testing::send_with_fds(
            &theirs,
            b"GET /v1/health",
            &[lingering.as_fd(), null.as_fd()],
        );
        // Ours are the in-flight copies' only company: the agent's close is the last.
        drop((lingering, null));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let read = rt.block_on(async {
                ours.set_nonblocking(true).unwrap();
                let mut stream = FdDroppingStream::new(UnixStream::from_std(ours).unwrap());
                let mut buf = vec![0u8; 64];
                let n = stream.read(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            });
            let _ = tx.send(read);
        });
        let read = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the read waited on the close of a passed socket");
        assert_eq!(read, b"GET /v1/health");
    }
}
