//! Socket-level load balancing for the node's own processes: the cgroup
//! socket hooks. A `connect()` (TCP, connected UDP) or an unconnected UDP
//! `sendmsg()` to a service frontend is given a backend's address before
//! the kernel routes anything, so that no packet of the flow needs NAT;
//! `recvmsg()` and `getpeername()` of such a socket report the service's
//! address back (the socket map, keyed by socket cookie and backend).
//!
//! The hooks are attached at the cgroup root, so every process of the
//! machine runs them: they act only on sockets of the network namespace
//! the agent wrote to `SVCNAT_SOCK_CFG` (its own: the node's), and on
//! nothing while that entry is missing. Pods keep the TC path.
//!
//! Frontends are looked up as for a pod of this node: the same entries and
//! scopes (internal scope where a frontend has two), the same affinity, so
//! that every Service answers a node process as it answers a pod.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    IPPROTO_TCP, IPPROTO_UDP, Reason, SOCK_CFG_KEY, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_TWO_SCOPES,
};

use super::{
    Addr, SOCK, SockValue,
    ct::now,
    lb::{lb_is_vip, lb_lookup, lb_lookup_internal, lb_select},
    set_sock_addr, sock_addr, sock_key,
};
use crate::{maps::SOCK_CFG, stats::count};

/// The verdict that lets the call go on.
const ALLOW: i32 = 1;
/// The verdict that fails the call, with the errno set before.
const DENY: i32 = 0;
/// `ECONNREFUSED`: what a client of a rejecting kube-proxy gets.
const ECONNREFUSED: i32 = 111;
/// `EHOSTUNREACH`: no backend to reach.
const EHOSTUNREACH: i32 = 113;

/// The client address session affinity is kept under for the node's own
/// sockets: one client, the node (their source address is not known
/// before routing; with kube-proxy it is the node's address).
const NODE_CLIENT: Addr = [0; core::mem::size_of::<Addr>()];

/// Whether the socket of `ctx` is one of the namespace the agent serves.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    // SAFETY: copied at once.
    let Some(want) = (unsafe { SOCK_CFG.get(SOCK_CFG_KEY) }).map(|c| c.netns_cookie) else {
        return false;
    };
    // SAFETY: the helper reads the context it is given.
    want != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == want
}

/// The socket's IP protocol, if TCP or UDP.
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: a field of the context the kernel gave.
    let p = unsafe { (*ctx.sock_addr).protocol };
    match p {
        6 => Some(IPPROTO_TCP),
        17 => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// Fails the call with `errno`, counted under `reason`.
#[inline(always)]
fn refuse(reason: Reason, errno: i32) -> i32 {
    count(reason, 0);
    // SAFETY: helper on the program's own return value.
    unsafe { bpf_set_retval(-errno) };
    DENY
}

/// `connect()` (`datagram_only == false`) or an unconnected UDP
/// `sendmsg()` (`true`): a service's address becomes one of its
/// backends'; a service without a usable endpoint fails the call at once.
#[inline(always)]
pub(crate) fn translate(ctx: &SockAddrContext, datagram_only: bool) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    let Some(proto) = protocol(ctx) else {
        return ALLOW;
    };
    if datagram_only && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (vip, port) = sock_addr(ctx);
    let Some(mut svc) = lb_lookup(vip, port, proto) else {
        if lb_is_vip(vip) {
            return refuse(Reason::SockRejectUnknownPort, ECONNREFUSED);
        }
        return ALLOW;
    };
    // Source ranges are not checked: the node's own processes are not
    // held to a load balancer's firewall (see the README).
    if svc.flags & SVC_FLAG_TWO_SCOPES != 0 {
        // What this node's pods see (all endpoints where outside clients
        // see only local ones), as kube-proxy treats traffic of the node.
        svc = match lb_lookup_internal(vip, port, proto) {
            Ok(s) => s,
            Err(r) => return refuse(r, EHOSTUNREACH),
        };
    }
    if svc.count == 0 {
        if svc.flags & SVC_FLAG_LOCAL_ONLY != 0 {
            return refuse(Reason::SockNoLocalBackend, EHOSTUNREACH);
        }
        return refuse(Reason::SockRejectNoBackend, ECONNREFUSED);
    }
    let b = match lb_select(&svc, NODE_CLIENT, now()) {
        Ok((_, b)) => b,
        Err(r) => return refuse(r, EHOSTUNREACH),
    };
    set_sock_addr(ctx, b.addr, b.port);
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let back = SockValue { vip, port, pad: 0 };
    // Best effort: without it, the socket reports the backend's address.
    let _ = SOCK.insert(
        sock_key(cookie, b.addr, b.port, proto),
        back,
        u64::from(BPF_ANY),
    );
    count(
        if datagram_only {
            Reason::SockSendmsg
        } else {
            Reason::SockConnect
        },
        0,
    );
    ALLOW
}

/// `recvmsg()` and `getpeername()`: the address of a backend this socket
/// was translated to becomes the service's again.
#[inline(always)]
pub(crate) fn restore(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    let Some(proto) = protocol(ctx) else {
        return ALLOW;
    };
    let (addr, port) = sock_addr(ctx);
    // SAFETY: the helper reads the context it is given.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied at once.
    if let Some(v) = unsafe { SOCK.get(sock_key(cookie, addr, port, proto)).copied() } {
        set_sock_addr(ctx, v.vip, v.port);
        count(Reason::SockRestored, 0);
    }
    ALLOW
}
