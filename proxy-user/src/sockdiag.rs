//! UDP sockets of the calling thread's network namespace, through
//! `NETLINK_SOCK_DIAG` (inet_diag): list them ([`udp_sockets`]) and destroy
//! one ([`destroy_udp`], `SOCK_DESTROY`), so that the agent can close host
//! processes' connected UDP sockets whose peer is a backend that is gone.
//!
//! The messages are the rust-netlink crates' (`netlink-packet-sock-diag`
//! over `netlink-sys`); this module only builds requests and reads replies,
//! and every reply it cannot read is an error, never a panic.

use std::{io, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use crate::model::Family;

/// One UDP socket as sock_diag reports it. A socket of an IPv6 family
/// connected to an IPv4 peer has IPv4-mapped addresses (`::ffff:a.b.c.d`)
/// and is listed with [`Family::V6`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpSocket {
    /// The kernel's socket cookie (`SO_COOKIE`): it tells this socket from a
    /// later one with the same addresses.
    pub cookie: u64,
    /// The local address and port (unspecified when it is not bound).
    pub local: SocketAddr,
    /// The peer a `connect()` set; unspecified address and port 0 when the
    /// socket is not connected.
    pub peer: SocketAddr,
    /// The device the socket is bound to (`SO_BINDTODEVICE`), 0 if none.
    pub ifindex: u32,
}

/// The sequence number of every request (each call has a socket of its own).
const SEQ: u32 = 1;
/// Room for one datagram of a reply (a dump's are at most 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// How long one read of a reply may wait: the kernel answers at once, so
/// this only keeps a caller from hanging on a kernel that does not.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Every UDP socket of `family` in the calling thread's network namespace,
/// connected or not. With `peers` non-empty, only the sockets whose peer
/// (address and port) is one of them; an IPv4 peer also matches an
/// IPv4-mapped one of an IPv6 socket.
pub fn udp_sockets(family: Family, peers: &[SocketAddr]) -> io::Result<Vec<UdpSocket>> {
    let (af, socket_id) = match family {
        Family::V4 => (AF_INET, SocketId::new_v4()),
        Family::V6 => (AF_INET6, SocketId::new_v6()),
    };
    let sock = open()?;
    send(
        &sock,
        NLM_F_REQUEST | NLM_F_DUMP,
        SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        }),
    )?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut all = Vec::new();
    loop {
        let n = recv(&sock, &mut buf)?;
        if read_dump(datagram(&buf, n)?, af, &mut all)? {
            break;
        }
    }
    all.retain(|s| peers.is_empty() || peers.iter().any(|p| same_endpoint(p, &s.peer)));
    Ok(all)
}

/// Destroys one socket (`SOCK_DESTROY`): the kernel looks it up by its
/// addresses and bound device as a datagram from `peer` to `local` would,
/// and destroys it only if that socket has `cookie`. Its owner's next
/// `recv` or `send` then fails with `ECONNABORTED`, and the socket is
/// disconnected. Ok(true) when destroyed; Ok(false) when no such socket
/// is there any more.
///
/// A socket bound to an explicit port stays in the kernel's table after
/// being disconnected, so destroying it a second time from the same
/// [`UdpSocket`] can find it again: list before destroying.
pub fn destroy_udp(s: &UdpSocket) -> io::Result<bool> {
    let af = match (s.local, s.peer) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "local {} and peer {} are of different families",
                    s.local, s.peer
                ),
            ));
        }
    };
    let sock = open()?;
    send(
        &sock,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: s.local.port(),
                destination_port: s.peer.port(),
                source_address: s.local.ip(),
                destination_address: s.peer.ip(),
                interface_id: s.ifindex,
                cookie: cookie_bytes(s.cookie),
            },
        })),
    )?;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = recv(&sock, &mut buf)?;
        if let Some(destroyed) = read_ack(datagram(&buf, n)?)? {
            return Ok(destroyed);
        }
    }
}

/// A sock_diag socket of the calling thread's network namespace (a socket
/// belongs to the namespace of the thread that creates it).
fn open() -> io::Result<Socket> {
    let sock = Socket::new(NETLINK_SOCK_DIAG)?;
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT
            .as_secs()
            .try_into()
            .unwrap_or(libc::time_t::MAX),
        tv_usec: 0,
    };
    // SAFETY: the fd is the open socket `sock` owns; the option value is a
    // timeval that lives across the call, with its exact size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sends one request with `flags` and sequence number [`SEQ`] to the kernel.
fn send<I: NetlinkSerializable>(sock: &Socket, flags: u16, inner: I) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = SEQ;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    // Exactly the message's length: serialize needs no less, and the
    // request's own emit wants its exact size.
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    let sent = sock.send(&buf, 0)?;
    if sent != buf.len() {
        return Err(io::Error::other(format!(
            "sock_diag: sent {sent} of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

/// Reads one datagram of a reply into `buf`; its true length (a longer one
/// than `buf` is reported by `MSG_TRUNC`, and refused by [`datagram`]).
fn recv(sock: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The received part of `buf`, or an error if the datagram of length `n`
/// did not fit.
fn datagram(buf: &[u8], n: usize) -> io::Result<&[u8]> {
    buf.get(..n).ok_or_else(|| {
        invalid(format!(
            "a reply datagram of {n} bytes does not fit in {}",
            buf.len()
        ))
    })
}

/// Reads one datagram of a dump into `out`: true when it ended the dump.
fn read_dump(datagram: &[u8], af: u8, out: &mut Vec<UdpSocket>) -> io::Result<bool> {
    for msg in messages(datagram)? {
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                out.push(udp_socket(&r.header, af)?);
            }
            NetlinkPayload::Done(done) => {
                if done.code != 0 {
                    return Err(os_error(done.code));
                }
                return Ok(true);
            }
            NetlinkPayload::Error(e) => {
                return Err(match e.code {
                    Some(code) => os_error(code.get()),
                    None => invalid("an ack in the middle of a dump".into()),
                });
            }
            NetlinkPayload::Noop => {}
            other => return Err(invalid(format!("unexpected message in a dump: {other:?}"))),
        }
    }
    Ok(false)
}

/// Reads one datagram of the reply to a destroy: Some(true) destroyed,
/// Some(false) no such socket, None when the ack is still to come.
fn read_ack(datagram: &[u8]) -> io::Result<Option<bool>> {
    for msg in messages(datagram)? {
        match msg.payload {
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(Some(true)),
                    Some(code) if code.get() == -libc::ENOENT => Ok(Some(false)),
                    Some(code) => Err(os_error(code.get())),
                };
            }
            NetlinkPayload::Noop => {}
            other => {
                return Err(invalid(format!("unexpected reply to a destroy: {other:?}")));
            }
        }
    }
    Ok(None)
}

/// The netlink messages of one datagram, each checked to answer [`SEQ`].
fn messages(datagram: &[u8]) -> io::Result<Vec<NetlinkMessage<SockDiagMessage>>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        // Checks that the header fits and that its length is at least a
        // header and at most what is left.
        let len = NetlinkBuffer::new_checked(rest).map_err(decode)?.length() as usize;
        let bytes = rest
            .get(..len)
            .ok_or_else(|| invalid(format!("a message of {len} bytes in {}", rest.len())))?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes).map_err(decode)?;
        if msg.header.sequence_number != SEQ {
            return Err(invalid(format!(
                "a reply with sequence number {} (sent {SEQ})",
                msg.header.sequence_number
            )));
        }
        out.push(msg);
        // Messages are 4-byte aligned; the last one's padding may be cut.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// A socket of a dump of family `af`.
fn udp_socket(h: &InetResponseHeader, af: u8) -> io::Result<UdpSocket> {
    if h.family != af {
        return Err(invalid(format!(
            "a socket of family {} in a dump of family {af}",
            h.family
        )));
    }
    let id = &h.socket_id;
    Ok(UdpSocket {
        cookie: cookie_of(id.cookie),
        local: SocketAddr::new(id.source_address, id.source_port),
        peer: SocketAddr::new(id.destination_address, id.destination_port),
        ifindex: id.interface_id,
    })
}

/// The cookie of `idiag_cookie` (two `u32` in host order, low word first).
fn cookie_of(bytes: [u8; 8]) -> u64 {
    let [a, b, c, d, e, f, g, h] = bytes;
    u64::from(u32::from_ne_bytes([a, b, c, d])) | u64::from(u32::from_ne_bytes([e, f, g, h])) << 32
}

/// `idiag_cookie` for a cookie (the inverse of [`cookie_of`]).
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    // Truncation intended: the low and the high word.
    let [a, b, c, d] = (cookie as u32).to_ne_bytes();
    let [e, f, g, h] = ((cookie >> 32) as u32).to_ne_bytes();
    [a, b, c, d, e, f, g, h]
}

/// Whether a socket's peer is `wanted` (the same port, and the same address
/// once IPv4-mapped addresses are read as IPv4).
fn same_endpoint(wanted: &SocketAddr, peer: &SocketAddr) -> bool {
    wanted.port() == peer.port() && wanted.ip().to_canonical() == peer.ip().to_canonical()
}

/// The error of a negative errno in a reply.
fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.wrapping_neg())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

fn decode(e: DecodeError) -> io::Error {
    invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_core::Emitable;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader};

    /// One netlink message: header (type, flags 0, `seq`, port 0) and payload.
    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::with_capacity(len.next_multiple_of(4));
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    /// An `inet_diag_msg` (with no attributes) for a socket.
    fn response(af: u8, s: &UdpSocket) -> Vec<u8> {
        let r = InetResponse {
            header: InetResponseHeader {
                family: af,
                state: 1,
                timer: None,
                socket_id: SocketId {
                    source_port: s.local.port(),
                    destination_port: s.peer.port(),
                    source_address: s.local.ip(),
                    destination_address: s.peer.ip(),
                    interface_id: s.ifindex,
                    cookie: cookie_bytes(s.cookie),
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 7,
            },
            nlas: Default::default(),
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf);
        buf
    }

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;

    fn v4(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(198, 18, 7, a).into(), port)
    }

    fn sockets() -> [UdpSocket; 2] {
        [
            UdpSocket {
                cookie: 0x1234_5678_9abc_def0,
                local: v4(1, 40000),
                peer: v4(2, 53),
                ifindex: 0,
            },
            UdpSocket {
                cookie: 3,
                local: v4(1, 40001),
                peer: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                ifindex: 4,
            },
        ]
    }

    fn dump_datagram() -> Vec<u8> {
        let mut d = Vec::new();
        for s in sockets() {
            d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &response(AF_INET, &s)));
        }
        d.extend(nlmsg(NLMSG_DONE, SEQ, &0i32.to_ne_bytes()));
        d
    }

    fn ack(code: i32) -> Vec<u8> {
        // nlmsgerr: the error, then the header of the request it answers.
        let mut p = code.to_ne_bytes().to_vec();
        p.extend(&nlmsg(21, SEQ, &[])[..16]);
        nlmsg(NLMSG_ERROR, SEQ, &p)
    }

    #[test]
    fn cookie_round_trips_in_host_order_words() {
        for c in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(cookie_of(cookie_bytes(c)), c);
        }
        let b = cookie_bytes(0x0000_0002_0000_0001);
        assert_eq!(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]), 1);
        assert_eq!(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]), 2);
    }

    #[test]
    fn reads_a_dump() {
        let mut out = Vec::new();
        assert!(read_dump(&dump_datagram(), AF_INET, &mut out).expect("read"));
        assert_eq!(out, sockets());
        // Without the NLMSG_DONE the dump goes on.
        let d = dump_datagram();
        let mut out = Vec::new();
        assert!(!read_dump(&d[..d.len() - 20], AF_INET, &mut out).expect("read"));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_dump_error_or_other_family_is_an_error() {
        let mut out = Vec::new();
        let e = read_dump(
            &nlmsg(NLMSG_DONE, SEQ, &(-libc::EPERM).to_ne_bytes()),
            AF_INET,
            &mut out,
        )
        .expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = read_dump(&ack(-libc::EINVAL), AF_INET, &mut out).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(read_dump(&dump_datagram(), AF_INET6, &mut out).is_err());
        let other_seq = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            SEQ + 1,
            &response(AF_INET, &sockets()[0]),
        );
        assert!(read_dump(&other_seq, AF_INET, &mut out).is_err());
    }

    #[test]
    fn reads_acks() {
        assert_eq!(read_ack(&ack(0)).expect("read"), Some(true));
        assert_eq!(read_ack(&ack(-libc::ENOENT)).expect("read"), Some(false));
        let e = read_ack(&ack(-libc::EOPNOTSUPP)).expect_err("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        assert_eq!(read_ack(&[]).expect("read"), None);
        assert!(read_ack(&dump_datagram()).is_err());
    }

    /// Every prefix of a datagram, and every message length a corrupt header
    /// could give, is read or refused without a panic.
    #[test]
    fn truncated_or_odd_replies_are_errors_not_panics() {
        for d in [dump_datagram(), ack(0), ack(-libc::ENOENT)] {
            for n in 0..d.len() {
                let mut out = Vec::new();
                let _ = read_dump(&d[..n], AF_INET, &mut out);
                let _ = read_ack(&d[..n]);
            }
            for len in [0u32, 1, 15, 16, 17, 20, 40, 71, 72, u32::MAX] {
                let mut bad = d.clone();
                bad[..4].copy_from_slice(&len.to_ne_bytes());
                let mut out = Vec::new();
                let _ = read_dump(&bad, AF_INET, &mut out);
                let _ = read_ack(&bad);
            }
        }
        // A response too short for an inet_diag_msg, and one of another family.
        let mut out = Vec::new();
        assert!(
            read_dump(
                &nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &[AF_INET, 1, 0]),
                AF_INET,
                &mut out
            )
            .is_err()
        );
        assert!(
            read_dump(
                &nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &[99; 72]),
                AF_INET,
                &mut out
            )
            .is_err()
        );
        assert!(datagram(&[0; 4], 5).is_err());
    }

    #[test]
    fn peers_match_v4_mapped_addresses() {
        let mapped = SocketAddr::new(Ipv4Addr::new(198, 18, 7, 2).to_ipv6_mapped().into(), 53);
        assert!(same_endpoint(&v4(2, 53), &mapped));
        assert!(same_endpoint(&mapped, &v4(2, 53)));
        assert!(!same_endpoint(&v4(2, 54), &mapped));
        let v6 = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 2).into(), 53);
        assert!(!same_endpoint(&v4(2, 53), &v6));
    }
}
