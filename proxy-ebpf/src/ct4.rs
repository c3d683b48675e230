//! Conntrack (IPv4): pins a flow to its backend and drives reverse NAT.
//!
//! A translated flow has a service-direction entry (client -> VIP, what the
//! client sends) and a reply-direction entry (backend -> client, what the
//! backend answers). Entries are refreshed at most once per `CT_REFRESH_NS`
//! to keep writes off the per-packet path.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use proxy_common::{
    Backend4, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_FIN_REPLY, CT_F_FIN_SERVICE,
    CT_F_SEEN_NON_SYN, CT_F_SNAT, CT_REFRESH_NS, CT_TCP_CLOSE_LIFETIME_S, CT_TCP_LIFETIME_S,
    CT_TCP_SYN_LIFETIME_S, CT_TIME_WAIT_S, CT_UDP_LIFETIME_S, Ct4Key, CtValue, Reason, Snat4Value,
    SvcValue,
};

use crate::{
    maps::{CT4, SNAT4},
    parse::{L4, TCP_FIN, TCP_RST, TCP_SYN},
};

const NS: u64 = 1_000_000_000;

/// Monotonic time in ns, as conntrack entries record it.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The key of the service-direction entry of a packet from a client.
#[inline(always)]
pub(crate) fn service_key(saddr: [u8; 4], daddr: [u8; 4], l4: &L4) -> Ct4Key {
    Ct4Key {
        saddr,
        daddr,
        sport: l4.sport,
        dport: l4.dport,
        proto: l4.proto,
        dir: CT_DIR_SERVICE,
        pad: 0,
    }
}

/// The key of the reply-direction entry of a packet from a backend.
#[inline(always)]
pub(crate) fn reply_key(saddr: [u8; 4], daddr: [u8; 4], l4: &L4) -> Ct4Key {
    Ct4Key {
        dir: CT_DIR_REPLY,
        ..service_key(saddr, daddr, l4)
    }
}

/// How long an entry lives without traffic, given its flags.
#[inline(always)]
fn lifetime_ns(proto_is_tcp: bool, flags: u8) -> u64 {
    if !proto_is_tcp {
        CT_UDP_LIFETIME_S * NS
    } else if flags & CT_F_CLOSED != 0 {
        CT_TCP_CLOSE_LIFETIME_S * NS
    } else if flags & CT_F_SEEN_NON_SYN != 0 {
        CT_TCP_LIFETIME_S * NS
    } else {
        CT_TCP_SYN_LIFETIME_S * NS
    }
}

/// New flags of an entry after a TCP packet with `tcp_flags` from the side
/// whose FIN bit is `fin_bit`.
#[inline(always)]
fn next_flags(flags: u8, tcp_flags: u8, fin_bit: u8) -> u8 {
    let mut f = flags;
    if tcp_flags & TCP_SYN == 0 {
        f |= CT_F_SEEN_NON_SYN;
    }
    if tcp_flags & TCP_RST != 0 {
        f |= CT_F_CLOSED;
    }
    if tcp_flags & TCP_FIN != 0 {
        f |= fin_bit;
        if f & (CT_F_FIN_SERVICE | CT_F_FIN_REPLY) == (CT_F_FIN_SERVICE | CT_F_FIN_REPLY) {
            f |= CT_F_CLOSED;
        }
    }
    f
}

/// Applies a packet's TCP flags and refreshes the lifetime of the entry at `e`.
#[inline(always)]
fn touch(e: *mut CtValue, l4: &L4, fin_bit: u8, now: u64) {
    // SAFETY: `e` points into a map value; racing writers only refresh the
    // same fields, and a lost update costs at most one refresh.
    unsafe {
        let old = (*e).flags;
        let flags = if l4.is_tcp() {
            next_flags(old, l4.flags, fin_bit)
        } else {
            old
        };
        let newly_closed = flags & CT_F_CLOSED != 0 && old & CT_F_CLOSED == 0;
        if flags != old {
            (*e).flags = flags;
        }
        let want = now + lifetime_ns(l4.is_tcp(), flags);
        // A closed entry only ever gets shorter; an open one is extended
        // when its expiry would move by more than the refresh interval.
        if newly_closed || (flags & CT_F_CLOSED == 0 && want > (*e).expires_ns + CT_REFRESH_NS) {
            (*e).expires_ns = want;
        }
    }
}

/// Looks up the service-direction entry of a client packet. Returns the
/// backend address and port and the entry's `CT_F_*` flags when the entry
/// may carry this packet: alive, and not a closed entry seeing a new SYN
/// (that connection chooses anew).
#[inline(always)]
pub(crate) fn ct4_lookup_service_flags(
    key: &Ct4Key,
    l4: &L4,
    now: u64,
) -> Option<([u8; 4], u16, u8)> {
    let e = CT4.get_ptr_mut(key)?;
    // SAFETY: pointer from a successful lookup.
    let (expires, flags, addr, port) =
        unsafe { ((*e).expires_ns, (*e).flags, (*e).nat_addr, (*e).nat_port) };
    if now >= expires {
        return None;
    }
    if flags & CT_F_CLOSED != 0 && l4.is_syn_only() {
        return None;
    }
    touch(e, l4, CT_F_FIN_SERVICE, now);
    Some((addr, port, flags))
}

/// Whether the reply entry at a new flow's reply key may be replaced: it
/// belongs to the same client socket and frontend (an earlier flow on this
/// tuple whose service entry is gone), or it is over. Otherwise another
/// flow owns that tuple: the same client port reached the same backend
/// through another frontend, and the backend could not tell the two
/// connections apart. A closed TCP flow keeps its tuple for the backend's
/// TIME_WAIT (`CT_TIME_WAIT_S` after the close) while its entry is still
/// in the map: a new SYN on that tuple would hit the old connection there.
/// With `accept_time_wait` (a last resort when free tuples are scarce) a
/// closed flow's tuple is taken at once, as netfilter reuses TIME_WAIT
/// tuples: the backend accepts the SYN, or answers it with an ACK and the
/// client retries.
#[inline(always)]
fn reply_reusable(
    rkey: &Ct4Key,
    key: &Ct4Key,
    extra_flags: u8,
    now: u64,
    accept_time_wait: bool,
) -> bool {
    // SAFETY: copied at once.
    let Some(e) = (unsafe { CT4.get(rkey).copied() }) else {
        return true;
    };
    if e.flags & CT_F_SNAT == 0
        && extra_flags & CT_F_SNAT == 0
        && e.nat_addr == key.daddr
        && e.nat_port == key.dport
    {
        return true;
    }
    entry_over(&e, now, accept_time_wait)
}

/// Whether the flow of entry `e` no longer holds its tuple (see
/// [`reply_reusable`]).
#[inline(always)]
fn entry_over(e: &CtValue, now: u64, accept_time_wait: bool) -> bool {
    if e.flags & CT_F_CLOSED != 0 {
        return accept_time_wait
            || now >= e.expires_ns + (CT_TIME_WAIT_S - CT_TCP_CLOSE_LIFETIME_S) * NS;
    }
    now >= e.expires_ns
}

/// Whether no live flow holds the reply tuple `rkey` (no entry, or its
/// flow is over): an SNAT port whose reverse entry is still in the map may
/// then be taken again.
#[inline(always)]
pub(crate) fn ct4_tuple_free(rkey: &Ct4Key, now: u64, accept_time_wait: bool) -> bool {
    // SAFETY: copied at once.
    match unsafe { CT4.get(rkey).copied() } {
        None => true,
        Some(e) => entry_over(&e, now, accept_time_wait),
    }
}

/// Creates both entries of a new flow, where the backend sees the flow
/// coming from `src:src_port` (the client itself, or the address and port
/// it was source-NATed to). Returns `Ok(false)` and writes nothing when
/// another live flow already owns that reply tuple (see [`reply_reusable`]);
/// the caller then picks another source port. Fails closed: if an entry
/// cannot be written the packet is dropped, since a flow without its reply
/// entry would reach the client with the backend's address.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "inlined; one call per path")]
pub(crate) fn ct4_create(
    key: &Ct4Key,
    svc: &SvcValue,
    backend_id: u32,
    backend: &Backend4,
    l4: &L4,
    now: u64,
    extra_flags: u8,
    src: ([u8; 4], u16),
    accept_time_wait: bool,
) -> Result<bool, Reason> {
    let flags = if l4.is_tcp() {
        next_flags(0, l4.flags, CT_F_FIN_SERVICE)
    } else {
        0
    } | extra_flags;
    let expires_ns = now + lifetime_ns(l4.is_tcp(), flags);
    let fwd = CtValue {
        nat_addr: backend.addr,
        nat_port: backend.port,
        flags,
        pad: 0,
        backend_id,
        svc_id: svc.svc_id,
        created_ns: now,
        expires_ns,
    };
    let rkey = Ct4Key {
        saddr: backend.addr,
        daddr: src.0,
        sport: backend.port,
        dport: src.1,
        proto: key.proto,
        dir: CT_DIR_REPLY,
        pad: 0,
    };
    let rev = CtValue {
        nat_addr: key.daddr,
        nat_port: key.dport,
        ..fwd
    };
    if CT4.insert(rkey, rev, u64::from(BPF_NOEXIST)).is_err() {
        if !reply_reusable(&rkey, key, extra_flags, now, accept_time_wait) {
            return Ok(false);
        }
        CT4.insert(rkey, rev, u64::from(BPF_ANY))
            .map_err(|_| Reason::DropCtCreate)?;
    }
    CT4.insert(key, fwd, u64::from(BPF_ANY))
        .map_err(|_| Reason::DropCtCreate)?;
    Ok(true)
}

/// What a reply is translated to: the frontend it comes from and the
/// client's own address and port it goes to.
pub(crate) struct ReplyNat {
    pub(crate) vip: [u8; 4],
    pub(crate) vport: u16,
    pub(crate) client: [u8; 4],
    pub(crate) cport: u16,
}

/// Looks up the reply-direction entry of a backend packet. The client is
/// the reply's destination, unless the flow was source-NATed: then the
/// reverse SNAT entry says (`known` when the caller already looked it up);
/// without it the reply cannot be translated (`None`). TCP FIN and RST from
/// the backend are recorded on the service-direction entry, which decides
/// the flow's life.
#[inline(always)]
pub(crate) fn ct4_lookup_reply(
    key: &Ct4Key,
    l4: &L4,
    now: u64,
    known: Option<Snat4Value>,
) -> Option<ReplyNat> {
    // SAFETY: copied at once.
    let e = unsafe { CT4.get(key).copied() }?;
    let (caddr, cport) = if e.flags & CT_F_SNAT == 0 {
        (key.daddr, key.dport)
    } else {
        let c = match known {
            Some(c) => c,
            // SAFETY: copied at once.
            None => unsafe { SNAT4.get(key).copied() }?,
        };
        (c.addr, c.port)
    };
    if l4.is_tcp() && l4.flags & (TCP_FIN | TCP_RST) != 0 {
        let skey = Ct4Key {
            saddr: caddr,
            daddr: e.nat_addr,
            sport: cport,
            dport: e.nat_port,
            proto: key.proto,
            dir: CT_DIR_SERVICE,
            pad: 0,
        };
        if let Some(s) = CT4.get_ptr_mut(skey) {
            touch(s, l4, CT_F_FIN_REPLY, now);
        }
    }
    Some(ReplyNat {
        vip: e.nat_addr,
        vport: e.nat_port,
        client: caddr,
        cport,
    })
}
