//! The programs of the eBPF object: their names, and the ones reached
//! only by a tail call with the program-array slot each goes in.

use crate::map_names;
#[cfg(doc)]
use crate::{MAPS, MapKind};

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress on pod-facing interfaces: service lookup, conntrack, DNAT.
    pub const TC_POD_INGRESS: &str = "svcnat_pod_ingress";
    /// TC egress on pod-facing interfaces: reverse NAT of replies.
    pub const TC_POD_EGRESS: &str = "svcnat_pod_egress";
    /// XDP on node interfaces: node-port, external and load-balancer
    /// traffic from outside, and replies of SNATed flows.
    pub const XDP_NODE: &str = "svcnat_node_xdp";
    /// TC egress on node interfaces: reverse NAT of replies from local backends.
    pub const TC_NODE_EGRESS: &str = "svcnat_node_egress";
    /// [`TC_POD_INGRESS`] for IPv6, reached by a tail call from it.
    pub const TC_POD_INGRESS6: &str = "svcnat_pod_ingress6";
    /// The reverse NAT of both egress programs for IPv6, reached by a tail
    /// call from them.
    pub const TC_EGRESS6: &str = "svcnat_egress6";
    /// [`XDP_NODE`] for IPv6, reached by a tail call from it.
    pub const XDP_NODE6: &str = "svcnat_node_xdp6";
    /// cgroup `connect4`: TCP and connected UDP sockets of the node to an
    /// IPv4 service, given a backend.
    pub const SOCK_CONNECT4: &str = "svcnat_sock_connect4";
    /// cgroup `connect6`: as [`SOCK_CONNECT4`] for IPv6.
    pub const SOCK_CONNECT6: &str = "svcnat_sock_connect6";
    /// cgroup `sendmsg4`: datagrams of unconnected UDP sockets to an IPv4
    /// service, addressed to a backend.
    pub const SOCK_SENDMSG4: &str = "svcnat_sock_sendmsg4";
    /// cgroup `sendmsg6`: as [`SOCK_SENDMSG4`] for IPv6.
    pub const SOCK_SENDMSG6: &str = "svcnat_sock_sendmsg6";
    /// cgroup `recvmsg4`: datagrams from a backend of a translated socket
    /// report the service's address.
    pub const SOCK_RECVMSG4: &str = "svcnat_sock_recvmsg4";
    /// cgroup `recvmsg6`: as [`SOCK_RECVMSG4`] for IPv6.
    pub const SOCK_RECVMSG6: &str = "svcnat_sock_recvmsg6";
    /// cgroup `getpeername4`: a translated socket's peer is the service.
    pub const SOCK_GETPEERNAME4: &str = "svcnat_sock_peer4";
    /// cgroup `getpeername6`: as [`SOCK_GETPEERNAME4`] for IPv6.
    pub const SOCK_GETPEERNAME6: &str = "svcnat_sock_peer6";
}

/// A cgroup socket hook of the object: its program and the hook (the
/// attach type in its section name, `cgroup/<hook>`). The agent attaches
/// each at the cgroup root with a link pinned as `cgroup-<hook>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockHook {
    /// The program's name in the object.
    pub program: &'static str,
    /// The hook: `connect4`, `sendmsg6`, ...
    pub hook: &'static str,
}

/// Every socket hook, in the order the agent attaches them (the ones that
/// give the service address back first, so that no socket is translated
/// before its answers can be).
pub const SOCK_HOOKS: [SockHook; 8] = [
    SockHook {
        program: program_names::SOCK_RECVMSG4,
        hook: "recvmsg4",
    },
    SockHook {
        program: program_names::SOCK_RECVMSG6,
        hook: "recvmsg6",
    },
    SockHook {
        program: program_names::SOCK_GETPEERNAME4,
        hook: "getpeername4",
    },
    SockHook {
        program: program_names::SOCK_GETPEERNAME6,
        hook: "getpeername6",
    },
    SockHook {
        program: program_names::SOCK_CONNECT4,
        hook: "connect4",
    },
    SockHook {
        program: program_names::SOCK_CONNECT6,
        hook: "connect6",
    },
    SockHook {
        program: program_names::SOCK_SENDMSG4,
        hook: "sendmsg4",
    },
    SockHook {
        program: program_names::SOCK_SENDMSG6,
        hook: "sendmsg6",
    },
];

/// Prefix of the pins of socket hook links under `links/` (interface
/// links are pinned as `<ifindex>-<ifname>-<kind>`, which never starts so).
pub const SOCK_LINK_PREFIX: &str = "cgroup-";

/// A program that is never attached: the programs attached on interfaces
/// reach it by a tail call through slot `index` of the program array
/// `map`, which the loader fills. IPv6 runs so: each family's pipeline
/// then has a program (and a 512-byte BPF stack) of its own, and IPv4
/// pays nothing for IPv6 (no call, no frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailCall {
    /// The program array (a [`MapKind::ProgArray`] of [`MAPS`]).
    pub map: &'static str,
    /// Its slot there.
    pub index: u32,
    /// The program's name in the object.
    pub program: &'static str,
    /// Whether it is an XDP program (else a TC classifier).
    pub xdp: bool,
}

/// Slot of [`program_names::TC_POD_INGRESS6`] in `SVCNAT_TAIL_TC`.
pub const TAIL_POD_INGRESS6: u32 = 0;
/// Slot of [`program_names::TC_EGRESS6`] in `SVCNAT_TAIL_TC`.
pub const TAIL_EGRESS6: u32 = 1;
/// Slot of [`program_names::XDP_NODE6`] in `SVCNAT_TAIL_XDP`.
pub const TAIL_NODE_XDP6: u32 = 0;

/// Every tail-called program and where the loader puts it.
pub const TAIL_CALLS: [TailCall; 3] = [
    TailCall {
        map: map_names::TAIL_TC,
        index: TAIL_POD_INGRESS6,
        program: program_names::TC_POD_INGRESS6,
        xdp: false,
    },
    TailCall {
        map: map_names::TAIL_TC,
        index: TAIL_EGRESS6,
        program: program_names::TC_EGRESS6,
        xdp: false,
    },
    TailCall {
        map: map_names::TAIL_XDP,
        index: TAIL_NODE_XDP6,
        program: program_names::XDP_NODE6,
        xdp: true,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAPS, MapDef, MapKind};

    #[test]
    fn tail_calls_go_through_program_arrays_that_have_their_slot() {
        for (i, t) in TAIL_CALLS.iter().enumerate() {
            let m = MapDef::by_name(t.map).expect(t.map);
            assert_eq!(m.kind, MapKind::ProgArray, "{}", t.map);
            assert!(t.index < m.size.default_entries(), "{}", t.program);
            assert!(
                TAIL_CALLS[..i]
                    .iter()
                    .all(|o| (o.map, o.index) != (t.map, t.index) && o.program != t.program),
                "{}",
                t.program
            );
        }
        // One program type per array.
        for m in MAPS.iter().filter(|m| m.kind == MapKind::ProgArray) {
            let mut of = TAIL_CALLS.iter().filter(|t| t.map == m.name).map(|t| t.xdp);
            let first = of.next();
            assert!(of.all(|x| Some(x) == first), "{}", m.name);
        }
    }
}
