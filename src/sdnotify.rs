//! The sending side of sd_notify(3): one datagram of `KEY=VALUE` lines to a
//! notify socket. Used by `wfcg notify` and a run's supervisor (to the run's
//! socket) and by the agent (to its service manager's); the agent's receiving
//! side is `agent::notify`.
//!
//! A leaf module. Kept by hand: it is ten lines over the standard library, and
//! the crates for it read the socket only from the environment.

use std::os::unix::net::UnixDatagram;

/// Sends `text` to the notify socket `socket` the way sd_notify(3) does; a
/// leading `@` names an abstract socket.
pub fn send(socket: &str, text: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(text.as_bytes(), &addr)?;
    } else {
        sock.send_to(text.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn an_abstract_socket_gets_the_datagram() {
        // A path socket: `agent::notify`'s tests.
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wfcg-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_sock = UnixDatagram::bind_addr(&addr).unwrap();
        super::send(&format!("@{name}"), "STATUS=x\nWATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = abstract_sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x\nWATCHDOG=1");
    }
}
