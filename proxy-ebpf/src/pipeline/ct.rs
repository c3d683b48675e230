//! Conntrack: pins a flow to its backend and drives reverse NAT.
//!
//! A translated flow has a service-direction entry (client -> VIP, what the
//! client sends) and a reply-direction entry (backend -> client, what the
//! backend answers). The service-direction entry is the flow's one source of
//! truth: its flags and expiry decide whether the flow is alive, and packets
//! of both directions refresh it. Client packets refresh it directly; a
//! reply refreshes it through the reply entry (which names the client), on
//! the first reply, on FIN and RST, and otherwise at most once per
//! `CT_REFRESH_NS`, paced by the reply entry's own expiry, so that the reply
//! path does not look the other entry up for every packet.
//!
//! Each entry also records the TCP sequence number its side has reached, so
//! that a RST closes the flow only when it is within `CT_RST_WINDOW` of it
//! (a blind RST from off the path is passed on and the flow stays).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use proxy_common::{
    CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_FIN_REPLY, CT_F_FIN_SERVICE, CT_F_REPLIED,
    CT_F_SEEN_NON_SYN, CT_F_SEQ, CT_REFRESH_NS, CT_RST_WINDOW, CT_TCP_CLOSE_LIFETIME_S,
    CT_TCP_LIFETIME_S, CT_TCP_SYN_LIFETIME_S, CT_TIME_WAIT_S, CT_UDP_LIFETIME_S,
    CT_UDP_UNREPLIED_LIFETIME_S, Reason, STAT_CT_CREATED, SvcValue,
};

use super::{Addr, Backend, CT, CtKey, CtValue};
use crate::{
    maps::STATS,
    parse::{L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

pub(crate) const NS: u64 = 1_000_000_000;

/// Monotonic time in ns, as conntrack entries record it.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// An address and a port.
pub(crate) type AddrPort = (Addr, u16);

/// The key of the service-direction entry of a packet from a client.
#[inline(always)]
pub(crate) fn service_key(saddr: Addr, daddr: Addr, l4: &L4) -> CtKey {
    CtKey {
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
pub(crate) fn reply_key(saddr: Addr, daddr: Addr, l4: &L4) -> CtKey {
    CtKey {
        dir: CT_DIR_REPLY,
        ..service_key(saddr, daddr, l4)
    }
}

/// The service-direction key of the flow whose reply-direction entry `e`
/// sits under `rkey`.
#[inline(always)]
fn service_key_of(rkey: &CtKey, e: &CtValue) -> CtKey {
    CtKey {
        saddr: e.peer_addr,
        daddr: e.nat_addr,
        sport: e.peer_port,
        dport: e.nat_port,
        proto: rkey.proto,
        dir: CT_DIR_SERVICE,
        pad: 0,
    }
}

/// How long an entry lives without traffic, given its flags: short until
/// the backend answered (and, for TCP, the client went past its SYN), like
/// netfilter's unassured entries, so that made-up flows go soon.
#[inline(always)]
fn lifetime_ns(proto_is_tcp: bool, flags: u8) -> u64 {
    let replied = flags & CT_F_REPLIED != 0;
    if !proto_is_tcp {
        if replied {
            CT_UDP_LIFETIME_S * NS
        } else {
            CT_UDP_UNREPLIED_LIFETIME_S * NS
        }
    } else if flags & CT_F_CLOSED != 0 {
        CT_TCP_CLOSE_LIFETIME_S * NS
    } else if replied && flags & CT_F_SEEN_NON_SYN != 0 {
        CT_TCP_LIFETIME_S * NS
    } else {
        CT_TCP_SYN_LIFETIME_S * NS
    }
}

/// Which end of the flow sent a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Backend,
}

/// New flags of a service-direction entry after a packet from `side` with
/// `l4`; a RST counts only when `rst_ok`.
#[inline(always)]
fn next_flags(flags: u8, l4: &L4, side: Side, rst_ok: bool) -> u8 {
    let mut f = flags;
    let fin_bit = match side {
        Side::Client => CT_F_FIN_SERVICE,
        Side::Backend => {
            f |= CT_F_REPLIED;
            CT_F_FIN_REPLY
        }
    };
    if !l4.is_tcp() {
        return f;
    }
    if l4.flags & TCP_SYN == 0 {
        f |= CT_F_SEEN_NON_SYN;
    }
    if l4.flags & TCP_RST != 0 && rst_ok {
        f |= CT_F_CLOSED;
    }
    if l4.flags & TCP_FIN != 0 {
        f |= fin_bit;
        if f & (CT_F_FIN_SERVICE | CT_F_FIN_REPLY) == (CT_F_FIN_SERVICE | CT_F_FIN_REPLY) {
            f |= CT_F_CLOSED;
        }
    }
    f
}

/// Applies a packet from `side` to the service-direction entry at `e` and
/// refreshes the flow's lifetime.
#[inline(always)]
fn touch(e: *mut CtValue, l4: &L4, side: Side, rst_ok: bool, now: u64) {
    // SAFETY: `e` points into a map value; racing writers only refresh the
    // same fields, and a lost update costs at most one refresh.
    unsafe {
        let old = (*e).flags;
        let flags = next_flags(old, l4, side, rst_ok);
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

/// Records how far in sequence space the side of entry `e` has gone.
#[inline(always)]
fn track_seq(e: *mut CtValue, l4: &L4) {
    if !l4.is_tcp() || l4.flags & TCP_RST != 0 {
        return;
    }
    let end = l4.seq().wrapping_add(l4.seg_len());
    // SAFETY: as in `touch`.
    unsafe {
        let flags = (*e).flags;
        if flags & CT_F_SEQ == 0 {
            (*e).seq_next = end;
            (*e).flags = flags | CT_F_SEQ;
        } else if (end.wrapping_sub((*e).seq_next) as i32) > 0 {
            (*e).seq_next = end;
        }
    }
}

/// Whether a RST is within the window of the side whose entry is `e`:
/// `None` when that side's sequence number is not known yet.
#[inline(always)]
fn rst_in_window(e: &CtValue, l4: &L4) -> Option<bool> {
    if e.flags & CT_F_SEQ == 0 {
        return None;
    }
    let d = l4.seq().wrapping_sub(e.seq_next) as i32;
    Some(d.unsigned_abs() <= CT_RST_WINDOW)
}

/// Counts a conntrack entry created under a new key (see
/// [`STAT_CT_CREATED`]).
#[inline(always)]
fn count_created() {
    if let Some(v) = STATS.get_ptr_mut(STAT_CT_CREATED) {
        // SAFETY: per-CPU slot of a preallocated array, only this CPU writes it.
        unsafe { (*v).packets += 1 };
    }
}

/// A client packet of a known flow.
pub(crate) struct ServiceHit {
    /// The backend.
    pub(crate) addr: Addr,
    pub(crate) port: u16,
    /// The source the backend sees (the client's own address and port
    /// unless the flow is source-NATed).
    pub(crate) peer: AddrPort,
    /// A RST outside the window: translated, but the flow stays open.
    pub(crate) rst_ignored: bool,
}

/// Looks up the service-direction entry of a client packet: the flow's
/// backend, when the entry may carry this packet (alive, and not a closed
/// entry seeing a new SYN: that connection chooses anew).
#[inline(always)]
pub(crate) fn ct_lookup_service(key: &CtKey, l4: &L4, now: u64) -> Option<ServiceHit> {
    let e = CT.get_ptr_mut(key)?;
    // SAFETY: pointer from a successful lookup; fields copied at once (not
    // the whole value: stack space is scarce, with IPv6 above all).
    let v = unsafe { &*e };
    if now >= v.expires_ns {
        return None;
    }
    if v.flags & CT_F_CLOSED != 0 && l4.is_syn_only() {
        return None;
    }
    let rst_ok = !(l4.is_tcp() && l4.has(TCP_RST)) || rst_in_window(v, l4).unwrap_or(true);
    let hit = ServiceHit {
        addr: v.nat_addr,
        port: v.nat_port,
        peer: (v.peer_addr, v.peer_port),
        rst_ignored: !rst_ok,
    };
    track_seq(e, l4);
    touch(e, l4, Side::Client, rst_ok, now);
    Some(hit)
}

/// Whether the flow of the reply-direction entry `e` (under `rkey`) no
/// longer holds its tuple: its service-direction entry is gone, or expired,
/// or closed and past the backend's TIME_WAIT (`CT_TIME_WAIT_S` after the
/// close: a new SYN on that tuple would hit the old connection there). With
/// `accept_time_wait` (a last resort when free tuples are scarce) a closed
/// flow's tuple is taken at once, as netfilter reuses TIME_WAIT tuples.
#[inline(always)]
fn flow_over(rkey: &CtKey, e: &CtValue, now: u64, accept_time_wait: bool) -> Result<bool, Reason> {
    let skey = temp!(ct_over_skey, service_key_of(rkey, e));
    Ok(flow_over_at(skey, now, accept_time_wait))
}

/// [`flow_over`] of the flow whose service-direction key is `skey`.
#[inline(always)]
fn flow_over_at(skey: &CtKey, now: u64, accept_time_wait: bool) -> bool {
    let Some(s) = CT.get_ptr(skey) else {
        return true;
    };
    // SAFETY: pointer from a successful lookup; the two fields are read at
    // once (not the whole value: stack space is scarce with IPv6).
    let (flags, expires_ns) = unsafe { ((*s).flags, (*s).expires_ns) };
    if flags & CT_F_CLOSED != 0 {
        return accept_time_wait
            || now >= expires_ns + (CT_TIME_WAIT_S - CT_TCP_CLOSE_LIFETIME_S) * NS;
    }
    now >= expires_ns
}

/// Who holds a reply tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tuple {
    /// No conntrack entry at all.
    Unused,
    /// The entry of a flow that is over.
    Over,
    /// A live flow.
    Held,
}

/// Who holds the reply tuple `rkey`.
#[inline(always)]
pub(crate) fn ct_tuple(rkey: &CtKey, now: u64, accept_time_wait: bool) -> Result<Tuple, Reason> {
    Ok(match CT.get_ptr(rkey) {
        None => Tuple::Unused,
        // SAFETY: pointer from a successful lookup, read at once.
        Some(e) if flow_over(rkey, unsafe { &*e }, now, accept_time_wait)? => Tuple::Over,
        Some(_) => Tuple::Held,
    })
}

/// Whether the reply entry at a new flow's reply key may be replaced: it
/// belongs to the same client socket and frontend (an earlier flow on this
/// tuple whose service entry is gone or over), or its flow is over.
/// Otherwise another flow owns that tuple: the same client port reached the
/// same backend through another frontend, and the backend could not tell
/// the two connections apart.
#[inline(always)]
fn reply_reusable(
    rkey: &CtKey,
    key: &CtKey,
    now: u64,
    accept_time_wait: bool,
) -> Result<bool, Reason> {
    let Some(e) = CT.get_ptr(rkey) else {
        return Ok(true);
    };
    // SAFETY: pointer from a successful lookup, read at once.
    let e = unsafe { &*e };
    if e.peer_addr == key.saddr
        && e.peer_port == key.sport
        && e.nat_addr == key.daddr
        && e.nat_port == key.dport
    {
        return Ok(true);
    }
    flow_over(rkey, e, now, accept_time_wait)
}

/// A new flow to open: the client's packet (`key`: client -> frontend,
/// `l4`), the service and the backend chosen for it. Passed by reference:
/// one value for the steps that open flows, rather than six arguments to
/// each.
pub(crate) struct NewFlow<'a> {
    pub(crate) key: &'a CtKey,
    pub(crate) svc: &'a SvcValue,
    pub(crate) backend_id: u32,
    pub(crate) backend: &'a Backend,
    pub(crate) l4: &'a L4,
    pub(crate) now: u64,
}

/// Creates both entries of a new flow, where the backend sees the flow
/// coming from `src` (the client itself, or the address and port it was
/// source-NATed to). Returns `Ok(false)` and writes nothing when another
/// live flow already owns that reply tuple (see [`reply_reusable`]); the
/// caller then picks another source port. Fails closed: if an entry cannot
/// be written the packet is dropped, since a flow without its reply entry
/// would reach the client with the backend's address.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "the value by reference: by value LLVM copies it (72 bytes of stack with IPv6)"
)]
pub(crate) fn ct_create(
    f: &NewFlow,
    extra_flags: u8,
    src: &AddrPort,
    accept_time_wait: bool,
) -> Result<bool, Reason> {
    let NewFlow {
        key,
        svc,
        backend_id,
        backend,
        l4,
        now,
    } = *f;
    let mut flags = next_flags(0, l4, Side::Client, true) | extra_flags;
    let mut seq_next = 0;
    if l4.is_tcp() {
        seq_next = l4.seq().wrapping_add(l4.seg_len());
        flags |= CT_F_SEQ;
    }
    // With IPv6 both in the scratch slots (see the family's `temp!`).
    let rkey = temp!(
        ct_rkey,
        CtKey {
            saddr: backend.addr,
            daddr: src.0,
            sport: backend.port,
            dport: src.1,
            proto: key.proto,
            dir: CT_DIR_REPLY,
            pad: 0,
        }
    );
    // The reply entry first (the backend's side has sent nothing yet),
    // then the same value turned into the service entry: one value, not
    // two.
    let v = temp!(
        ct_value,
        CtValue {
            nat_addr: key.daddr,
            nat_port: key.dport,
            flags: flags & !CT_F_SEQ,
            pad: 0,
            backend_id,
            svc_id: svc.svc_id,
            created_ns: now,
            expires_ns: now + lifetime_ns(l4.is_tcp(), flags),
            seq_next: 0,
            peer_addr: key.saddr,
            peer_port: key.sport,
            pad2: 0,
            pad3: 0,
        }
    );
    if CT.insert(&*rkey, &*v, u64::from(BPF_NOEXIST)).is_ok() {
        count_created();
    } else {
        if !reply_reusable(rkey, key, now, accept_time_wait)? {
            return Ok(false);
        }
        CT.insert(&*rkey, &*v, u64::from(BPF_ANY))
            .map_err(|_| Reason::DropCtCreate)?;
    }
    v.nat_addr = backend.addr;
    v.nat_port = backend.port;
    v.flags = flags;
    v.seq_next = seq_next;
    v.peer_addr = src.0;
    v.peer_port = src.1;
    if CT.insert(key, &*v, u64::from(BPF_NOEXIST)).is_ok() {
        count_created();
    } else {
        CT.insert(key, &*v, u64::from(BPF_ANY))
            .map_err(|_| Reason::DropCtCreate)?;
    }
    Ok(true)
}

/// What a reply is translated to: the frontend it comes from and the
/// client's own address and port it goes to.
pub(crate) struct ReplyNat {
    pub(crate) vip: Addr,
    pub(crate) vport: u16,
    pub(crate) client: Addr,
    pub(crate) cport: u16,
    /// The flow is source-NATed (`CT_F_SNAT`).
    pub(crate) snat: bool,
    /// A RST outside the window: translated, but the flow stays open.
    pub(crate) rst_ignored: bool,
}

/// Looks up the reply-direction entry of a backend packet and records the
/// packet on the flow (see the module doc). `None`: not a reply of a
/// translated flow.
#[inline(always)]
pub(crate) fn ct_lookup_reply(key: &CtKey, l4: &L4, now: u64) -> Option<ReplyNat> {
    let e = CT.get_ptr_mut(key)?;
    // SAFETY: pointer from a successful lookup; read before `track_seq`
    // and the refresh below write it (fields copied, not the value).
    let v = unsafe { &*e };
    let nat = ReplyNat {
        vip: v.nat_addr,
        vport: v.nat_port,
        client: v.peer_addr,
        cport: v.peer_port,
        snat: v.flags & proxy_common::CT_F_SNAT != 0,
        rst_ignored: false,
    };
    let (flags, expires_ns) = (v.flags, v.expires_ns);
    let tcp = l4.is_tcp();
    let rst = tcp && l4.has(TCP_RST);
    let skey = service_key_of(key, v);
    let mut rst_ok = true;
    if rst {
        rst_ok = match rst_in_window(v, l4) {
            Some(ok) => ok,
            // The backend has not sent before (it refuses the SYN): the
            // RST must acknowledge what the client sent.
            // SAFETY: copied at once.
            None => match CT.get_ptr(skey) {
                // SAFETY: pointer from a successful lookup, read at once.
                Some(s) => match unsafe { ((*s).flags, (*s).seq_next) } {
                    (f, next) if f & CT_F_SEQ != 0 => l4.has(TCP_ACK) && l4.ack() == next,
                    _ => true,
                },
                None => true,
            },
        };
    }
    track_seq(e, l4);
    let paced = now + lifetime_ns(tcp, flags | CT_F_REPLIED);
    if flags & CT_F_REPLIED == 0
        || paced > expires_ns + CT_REFRESH_NS
        || (tcp && l4.flags & (TCP_FIN | TCP_RST) != 0)
    {
        if let Some(s) = CT.get_ptr_mut(skey) {
            touch(s, l4, Side::Backend, rst_ok, now);
        }
        // SAFETY: as above.
        unsafe {
            (*e).expires_ns = paced;
            (*e).flags |= CT_F_REPLIED;
        }
    }
    Some(ReplyNat {
        rst_ignored: !rst_ok,
        ..nat
    })
}

/// The conntrack entry at `key`, copied.
#[inline(always)]
pub(crate) fn ct_get(key: &CtKey) -> Option<CtValue> {
    // SAFETY: copied at once.
    unsafe { CT.get(key).copied() }
}
