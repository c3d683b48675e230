//! rtnetlink link and address events (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR,
//! RTNLGRP_IPV6_IFADDR), so the agent attaches to a new interface as it
//! appears instead of at the next periodic rescan.
//!
//! A blocking thread owns the netlink socket and forwards [`Event`]s to the
//! agent. A failed or overflowed socket (`ENOBUFS`: the kernel dropped
//! events) is reported as [`Event::Rescan`] and the thread subscribes again,
//! so a lost event costs one full attach pass, never a missed interface.

use std::{io, thread, time::Duration, time::Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc;

/// What the kernel told us (a link event with when it arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A link appeared or changed (`RTM_NEWLINK`).
    Link(Instant),
    /// An address was added or removed (`RTM_NEWADDR`, `RTM_DELADDR`).
    Address,
    /// Events may have been lost (overflow or a socket error): look again.
    Rescan,
}

/// How long the thread waits before subscribing again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

/// Starts the watcher thread; events arrive on the returned channel until
/// its receiver is dropped. Never panics: socket errors become
/// [`Event::Rescan`] and a new subscription.
pub fn spawn() -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = thread::Builder::new()
        .name("linkwatch".into())
        .spawn(move || run(&tx));
    if let Err(e) = spawned {
        tracing::warn!("link watcher not started ({e}); only the periodic rescan attaches");
    }
    rx
}

fn run(tx: &mpsc::UnboundedSender<Event>) {
    loop {
        let err = match subscribe() {
            Ok(sock) => read(&sock, tx),
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        if err.raw_os_error() == Some(libc::ENOBUFS) {
            tracing::warn!("rtnetlink events overflowed; rescanning and resubscribing");
        } else {
            tracing::warn!("rtnetlink events failed: {err}; rescanning and resubscribing");
        }
        if tx.send(Event::Rescan).is_err() {
            return;
        }
        thread::sleep(RESUBSCRIBE_AFTER);
    }
}

fn subscribe() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind(&SocketAddr::new(0, 0))?;
    for group in [
        libc::RTNLGRP_LINK,
        libc::RTNLGRP_IPV4_IFADDR,
        libc::RTNLGRP_IPV6_IFADDR,
    ] {
        sock.add_membership(group)?;
    }
    Ok(sock)
}

/// Reads until the socket fails (returned) or the receiver is gone.
fn read(sock: &Socket, tx: &mpsc::UnboundedSender<Event>) -> io::Error {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => n.min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let at = Instant::now();
        for event in events(&buf[..n], at) {
            if tx.send(event).is_err() {
                return io::Error::other("receiver closed");
            }
        }
    }
}

/// The events in one datagram (which may hold several messages). A message
/// that does not parse is skipped, not fatal.
pub fn events(mut datagram: &[u8], at: Instant) -> Vec<Event> {
    let mut out = Vec::new();
    while datagram.len() >= 16 {
        let len = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 16 || len > datagram.len() {
            break;
        }
        let (msg, rest) = datagram.split_at(len);
        // Messages are aligned to 4 bytes.
        datagram = rest.get(rest.len().min((4 - len % 4) % 4)..).unwrap_or(&[]);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(_)) => {
                    out.push(Event::Link(at));
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
                ) => out.push(Event::Address),
                NetlinkPayload::Overrun(_) => out.push(Event::Rescan),
                _ => {}
            },
            Err(e) => tracing::debug!("unparsed rtnetlink message: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_event_and_no_panic() {
        let at = Instant::now();
        assert!(events(&[], at).is_empty());
        assert!(events(&[0xff; 15], at).is_empty());
        assert!(events(&[0xff; 64], at).is_empty());
        let mut short = [0u8; 32];
        short[0] = 4; // a length below the header's
        assert!(events(&short, at).is_empty());
    }
}
