//! What the IPv6 fixture tables (`tests/fixtures6.rs` for the pod
//! programs, `tests/fixtures_node6.rs` for the node programs) share on top
//! of the runner ([`crate::fixture`]): the rewrites their expected frames
//! are built with, the ends of a frame, and the seeds and checks of the
//! IPv6 maps ([`crate::datapath::Maps6`]).

use std::net::{Ipv6Addr, SocketAddrV6};

use proxy_common::{Ct6Key, Ct6Value, Frag6Key, Frag6Value};

use crate::{
    datapath::TestDatapath,
    fixture::Window,
    packet::{Ipv6Fields, PacketBuilder, parse},
};

/// The IPv6 frame builder.
pub type P6 = PacketBuilder<Ipv6Fields>;

/// `p` with its destination rewritten to `to`, everything else (MACs, hop
/// limit, traffic class, flow label, extension headers, payload) unchanged;
/// checksums recomputed.
pub fn dnat(p: &P6, to: SocketAddrV6) -> P6 {
    let (sport, _) = p.l4_ports();
    p.clone().addrs(p.ip.src, *to.ip()).ports(sport, to.port())
}

/// `p` with its source rewritten to `from` (as [`dnat`]).
pub fn snat(p: &P6, from: SocketAddrV6) -> P6 {
    let (_, dport) = p.l4_ports();
    p.clone()
        .addrs(*from.ip(), p.ip.dst)
        .ports(from.port(), dport)
}

/// The source and destination of an IPv6 TCP or UDP frame.
pub fn ends(frame: &[u8]) -> Result<(SocketAddrV6, SocketAddrV6), String> {
    let p = parse(frame)?;
    let ip = p.ip6()?;
    Ok((ip.source()?, ip.destination()?))
}

/// The source and destination addresses of an IPv6 frame (later fragments
/// have no ports to parse).
pub fn addrs(frame: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr), String> {
    let p = parse(frame)?;
    let ip = p.ip6()?;
    Ok((ip.src, ip.dst))
}

/// The IPv6 conntrack entry at `key`.
pub fn ct_get(dp: &TestDatapath, key: &Ct6Key) -> Result<Ct6Value, String> {
    dp.v6()?
        .ct6
        .get(key, 0)
        .map_err(|e| format!("conntrack entry {key:?} missing: {e}"))
}

/// Checks that the IPv6 conntrack map holds exactly `n` entries.
pub fn ct_count(n: usize) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let got = dp.v6()?.ct6.keys().count();
        if got != n {
            return Err(format!("IPv6 conntrack holds {got} entries, want {n}"));
        }
        Ok(())
    }
}

/// The key of a fragment train in `SVCNAT_FRAG6`.
pub fn frag_key(saddr: Ipv6Addr, daddr: Ipv6Addr, id: u32, proto: u8, dir: u8) -> Frag6Key {
    Frag6Key {
        saddr: saddr.octets(),
        daddr: daddr.octets(),
        id,
        proto,
        dir,
        pad: 0,
    }
}

/// Checks that the fragment entry at `key` names `want` (`None`: no entry).
pub fn frag_entry(
    key: Frag6Key,
    want: Option<Ipv6Addr>,
) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |dp, _, _| {
        let got = dp
            .v6()?
            .frag6
            .get(&key, 0)
            .ok()
            .map(|v| Ipv6Addr::from(v.addr));
        if got != want {
            return Err(format!("fragment entry {key:?} = {got:?}, want {want:?}"));
        }
        Ok(())
    }
}

/// Seeds a fragment entry: the train `key` goes to `to`.
pub fn seed_frag(key: Frag6Key, to: Ipv6Addr) -> impl Fn(&mut TestDatapath) -> Result<(), String> {
    move |dp| {
        dp.v6_mut()?
            .frag6
            .insert(key, Frag6Value { addr: to.octets() }, 0)
            .map_err(|e| format!("seed fragment entry {key:?}: {e}"))
    }
}

/// `p` (UDP, even payload) with two payload bytes appended so that the UDP
/// checksum of `translate(p)` computes to zero, which must be sent as
/// 0xffff.
pub fn forcing_zero_sum(p: P6, translate: impl Fn(&P6) -> P6) -> P6 {
    let mut payload = p.payload.clone();
    assert!(
        payload.len().is_multiple_of(2),
        "the two bytes must be a word"
    );
    payload.extend_from_slice(&[0, 0]);
    let trial = translate(&p.clone().payload(&payload)).build();
    let c = parse(&trial)
        .and_then(|f| Ok(f.ip6()?.udp()?.checksum))
        .expect("a UDP/IPv6 datagram");
    let n = payload.len();
    payload[n - 2..].copy_from_slice(&c.to_be_bytes());
    p.payload(&payload)
}

/// Checks that the output's UDP checksum is `want`.
pub fn udp_checksum_is(want: u16) -> impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> {
    move |_, _, out| {
        let c = parse(out)?.ip6()?.udp()?.checksum;
        if c != want {
            return Err(format!("UDP checksum {c:#06x}, want {want:#06x}"));
        }
        Ok(())
    }
}
