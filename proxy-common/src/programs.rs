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
}

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
