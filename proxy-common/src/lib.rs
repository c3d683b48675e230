//! Types shared by the svcnat eBPF program and its agent.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, has explicit padding fields
//! and no `bool`, so that its layout is the same on both sides and BTF (and so
//! `bpftool map dump`) shows every byte by field name. Addresses are stored as
//! byte arrays in network order (they dump as `[198,18,0,10]`); ports are
//! stored in host order (they dump as `80`).
//!
//! Maps (name, kind, key and value types, default size, layout) are defined
//! once in the table of [`maps`](crate::svcnat_maps), stat reasons once in
//! [`Reason`]; both sides read them from here.
#![no_std]

mod label;
mod maps;
mod programs;
pub use label::{SVC_LABEL_LEN, SvcLabel};
pub use maps::{MAPS, MapDef, MapKind, MapSize, default_sizes, map_names};
pub use programs::{
    SOCK_HOOKS, SOCK_LINK_PREFIX, SockHook, TAIL_CALLS, TAIL_EGRESS6, TAIL_NODE_XDP6,
    TAIL_POD_INGRESS6, TailCall, program_names,
};

/// First port of the SNAT range. Ports allocated for node-port flows to
/// remote backends stay out of the local ephemeral range (32768-60999 by
/// default) and the NodePort range (30000-32767), so they never collide with
/// the node's own sockets.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last port of the SNAT range.
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Ports a client's source port may be remapped to when one client port
/// reaches one backend through two frontends (NAT clash), as netfilter
/// does: any unprivileged port. The client's address stays.
pub const REMAP_PORT_MIN: u16 = 1024;
/// See [`REMAP_PORT_MIN`].
pub const REMAP_PORT_MAX: u16 = 65_535;

/// The `SVCNAT_NODE4` key that holds the hairpin address instead of an
/// interface's address (no interface has index 0).
pub const NODE4_HAIRPIN_KEY: u32 = 0;
/// The source address a pod sees when it reaches itself through a service
/// (hairpin), unless the agent sets another: a link-local address that never
/// leaves the pod's veth (Cilium's service loopback address).
pub const HAIRPIN_ADDR_DEFAULT: [u8; 4] = [169, 254, 42, 1];

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol numbers.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol numbers.
pub const IPPROTO_SCTP: u8 = 132;

/// Key of a service frontend: a VIP, a port and a protocol.
///
/// The agent also writes one entry per cluster IP with `port == 0` and
/// `proto == 0` and [`SVC_FLAG_VIP`] set. The datapath uses it to tell "a known VIP on a port
/// no service defines" (rejected, as kube-proxy does) from "not a VIP" (passed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    /// Service address, network order.
    pub vip: [u8; 4],
    /// Service port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`] (traffic policies, later).
    pub scope: u8,
}

/// Scope of a frontend entry: traffic from anywhere.
pub const SCOPE_EXTERNAL: u8 = 0;
/// Scope of a frontend entry: traffic from this node's pods (internal policy).
pub const SCOPE_INTERNAL: u8 = 1;

/// Value of a service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcValue {
    /// Service id: the key of its slots and of its reverse NAT entry.
    pub svc_id: u32,
    /// Number of backend slots, 1..=count. Zero means "reject".
    pub count: u16,
    /// `SVC_FLAG_*` bits.
    pub flags: u16,
    /// Session affinity timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// The entry marks a VIP (`port == 0`, `proto == 0`), not a service port.
pub const SVC_FLAG_VIP: u16 = 1;

impl Svc4Key {
    /// The key of the marker entry of `vip` (see [`SvcValue::VIP_MARKER`]).
    pub const fn vip_marker(vip: [u8; 4]) -> Self {
        Self {
            vip,
            port: 0,
            proto: 0,
            scope: SCOPE_EXTERNAL,
        }
    }
}

impl SvcValue {
    /// The value of a VIP's marker entry: no service, [`SVC_FLAG_VIP`].
    pub const VIP_MARKER: Self = Self {
        svc_id: 0,
        count: 0,
        flags: SVC_FLAG_VIP,
        affinity_timeout: 0,
        pad: 0,
    };
}
/// A node-port, external-IP or load-balancer frontend: XDP on node
/// interfaces translates traffic to it (cluster IPs are translated only for
/// pods).
pub const SVC_FLAG_EXTERNAL: u16 = 2;
/// A traffic policy `Local` applies: the slots hold only this node's
/// backends and a count of zero means drop (not reject).
pub const SVC_FLAG_LOCAL_ONLY: u16 = 4;
/// Traffic from pods uses the [`SCOPE_INTERNAL`] entry of this frontend
/// (externalTrafficPolicy Local: outside clients get local backends, pods
/// get all).
pub const SVC_FLAG_TWO_SCOPES: u16 = 8;
/// `loadBalancerSourceRanges`: only clients in the service's ranges.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 16;
/// The address is a node address (node port). Like every external
/// frontend it has no VIP marker, so other ports of the node stay
/// reachable.
pub const SVC_FLAG_NODE_PORT: u16 = 32;
/// The frontend is a load-balancer ingress IP (for inspection: the
/// datapath treats it as any external frontend).
pub const SVC_FLAG_LOAD_BALANCER: u16 = 64;

/// Key of a backend slot: the `slot`-th backend (1-based) of service `svc_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// Service id.
    pub svc_id: u32,
    /// 1..=count.
    pub slot: u32,
}

/// Value of a backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotValue {
    /// Key into the backends map.
    pub backend_id: u32,
}

/// An IPv4 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend4 {
    /// Backend address, network order.
    pub addr: [u8; 4],
    /// Backend port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

/// The backend is on this node (traffic policies, later).
pub const BACKEND_FLAG_LOCAL: u8 = 1;
/// The backend is terminating (used only when no ready backend exists).
pub const BACKEND_FLAG_TERMINATING: u8 = 2;

/// Reverse NAT entry of a service: the address replies are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    /// Service address, network order.
    pub vip: [u8; 4],
    /// Service port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub pad: u8,
}

/// Conntrack key. Ports in host order.
///
/// A translated flow has two entries: [`CT_DIR_SERVICE`] keyed by the tuple the
/// client sent (client -> VIP) and [`CT_DIR_REPLY`] keyed by the tuple of the
/// backend's replies (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct4Key {
    /// Source address, network order.
    pub saddr: [u8; 4],
    /// Destination address, network order.
    pub daddr: [u8; 4],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`CT_DIR_SERVICE`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    /// Explicit padding.
    pub pad: u16,
}

/// Conntrack direction: client -> VIP, before DNAT.
pub const CT_DIR_SERVICE: u8 = 0;
/// Conntrack direction: backend -> client, before reverse NAT.
pub const CT_DIR_REPLY: u8 = 1;

/// Conntrack value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// Address to write: the backend (service direction) or the VIP (reply direction).
    pub nat_addr: [u8; 4],
    /// Port to write, host order.
    pub nat_port: u16,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// Explicit padding.
    pub pad: u8,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service (reverse NAT id).
    pub svc_id: u32,
    /// `bpf_ktime_get_ns()` when the entry was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` after which the entry is dead. The flow's
    /// life is decided by its service-direction entry alone, which packets
    /// of both directions refresh; a reply-direction entry's expiry only
    /// paces how often replies refresh it.
    pub expires_ns: u64,
    /// TCP: the sequence number that follows the furthest segment seen from
    /// the side that sends on this entry's key (valid with [`CT_F_SEQ`]).
    /// A RST from that side closes the flow only when its sequence number
    /// is within [`CT_RST_WINDOW`] of it.
    pub seq_next: u32,
    /// The other end of the flow: in a reply-direction entry the client's
    /// own address and port (so that the flow's service-direction entry can
    /// be found from a reply); in a service-direction entry the source the
    /// backend sees (the client itself, or its source NAT).
    pub peer_addr: [u8; 4],
    /// Port of [`Self::peer_addr`], host order.
    pub peer_port: u16,
    /// Explicit padding.
    pub pad2: u16,
    /// Explicit padding.
    pub pad3: u32,
}

/// The flow saw a packet after its first one (TCP: handshake went on).
pub const CT_F_SEEN_NON_SYN: u8 = 1;
/// The client sent FIN.
pub const CT_F_FIN_SERVICE: u8 = 2;
/// The backend sent FIN.
pub const CT_F_FIN_REPLY: u8 = 4;
/// RST seen, or FIN seen both ways: a new SYN on this tuple chooses anew.
pub const CT_F_CLOSED: u8 = 8;
/// The flow is also source-NATed (node port to a remote backend): see the
/// SNAT map.
pub const CT_F_SNAT: u8 = 16;
/// The backend answered (both directions seen). Until then an entry lives
/// [`CT_TCP_SYN_LIFETIME_S`] / [`CT_UDP_UNREPLIED_LIFETIME_S`], like
/// netfilter's unassured entries. On a reply-direction entry: its first
/// reply was recorded on the service-direction entry.
pub const CT_F_REPLIED: u8 = 32;
/// [`CtValue::seq_next`] holds a sequence number.
pub const CT_F_SEQ: u8 = 64;

/// Lifetime of a TCP entry until the backend answered and the client sent
/// more than a SYN, seconds.
pub const CT_TCP_SYN_LIFETIME_S: u64 = 60;
/// Lifetime of an established TCP entry without traffic, seconds (as
/// Cilium): both sides have sent.
pub const CT_TCP_LIFETIME_S: u64 = 21_600;
/// Lifetime of a TCP entry after RST or FIN both ways, seconds.
pub const CT_TCP_CLOSE_LIFETIME_S: u64 = 10;
/// Lifetime of a UDP entry without traffic once the backend answered, seconds.
pub const CT_UDP_LIFETIME_S: u64 = 60;
/// Lifetime of a UDP entry the backend never answered, seconds
/// (netfilter's unreplied UDP timeout).
pub const CT_UDP_UNREPLIED_LIFETIME_S: u64 = 30;
/// How far (either way) from the sequence number a flow's side is known
/// to be at a RST from that side may be and still close the flow: a
/// simplified stand-in for netfilter's `tcp_in_window`, which also passes
/// the RST on. An off-path sender has to hit a 2 MiB window out of 4 GiB
/// (1 in 2,048) for each client port it guesses.
pub const CT_RST_WINDOW: u32 = 1 << 20;
/// How long a backend keeps a closed connection's tuple (Linux's
/// TIME_WAIT): another flow reaching the same backend from the same client
/// port within that time gets its source port remapped.
pub const CT_TIME_WAIT_S: u64 = 60;
/// The datapath refreshes `expires_ns` at most this often per entry.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Key of an IPv4 fragment train (RFC 791: source, destination, protocol, id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag4Key {
    /// Source address, network order.
    pub saddr: [u8; 4],
    /// Destination address, network order.
    pub daddr: [u8; 4],
    /// IP identification, host order.
    pub id: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`CT_DIR_SERVICE`] or [`CT_DIR_REPLY`] (the value replaces the
    /// destination, at XDP; the source at TC egress), or
    /// [`FRAG_DIR_SNAT_SRC`] / [`FRAG_DIR_REVSNAT_SRC`] (the value replaces
    /// the source of a datagram whose destination the service / reply entry
    /// replaces, at XDP).
    pub dir: u8,
}

/// [`Frag4Key::dir`] of the source rewrite of an SNATed datagram.
pub const FRAG_DIR_SNAT_SRC: u8 = 2;
/// [`Frag4Key::dir`] of the source rewrite of a reverse-SNATed datagram.
pub const FRAG_DIR_REVSNAT_SRC: u8 = 3;
/// [`Frag4Key::dir`] of the source rewrite of a reply towards a pod or an
/// outside client at TC egress (reverse NAT to the frontend). Distinct
/// from [`CT_DIR_REPLY`], which XDP reads as a destination rewrite.
pub const FRAG_DIR_REVNAT_SRC: u8 = 4;

/// Where the later fragments of a translated datagram go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag4Value {
    /// The address that replaces the destination (service direction) or the
    /// source (reply direction).
    pub addr: [u8; 4],
}

/// Source NAT of one direction of a node-port flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Snat4Value {
    /// Address to write: the node (forward: source) or the client (reverse:
    /// destination), network order.
    pub addr: [u8; 4],
    /// Port to write, host order.
    pub port: u16,
    /// Seconds of `bpf_ktime_get_ns()` when the entry was written, modulo
    /// 2^16: a reverse entry younger than [`SNAT_CLAIM_S`] whose conntrack
    /// entries are missing belongs to a flow another CPU is creating.
    pub stamp: u16,
}

/// How long a fresh reverse SNAT entry without conntrack entries is taken
/// to be a flow being created (not a leftover), seconds.
pub const SNAT_CLAIM_S: u16 = 2;

/// The address of one node interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr4 {
    /// Network order.
    pub addr: [u8; 4],
}

/// Session affinity key: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// Client address, network order.
    pub client: [u8; 4],
    /// Service id.
    pub svc_id: u32,
}

/// Session affinity value: the backend a client was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The backend.
    pub backend_id: u32,
    /// Its slot then; the entry counts only while that slot still names it.
    pub slot: u32,
    /// `bpf_ktime_get_ns()` of the last new connection that used it.
    pub last_ns: u64,
}

/// Data of a source-range LPM key: the service id (big-endian, always
/// matched whole) then the range's address. The prefix length of a key is
/// 32 plus the range's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange4 {
    /// Service id, big-endian.
    pub svc_id: [u8; 4],
    /// Range or client address, network order.
    pub addr: [u8; 4],
}

/// Data of a service-CIDR LPM key (`SVCNAT_SVCCIDR4`): a network of
/// cluster IPs (a ServiceCIDR's `spec.cidrs`, or `--service-cidr`). The
/// prefix length of a key is the network's. Pods' traffic to an address
/// inside one that no frontend and no VIP marker holds is dropped
/// ([`Reason::DropUnallocatedServiceIp`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceCidr4 {
    /// Network or destination address, network order.
    pub addr: [u8; 4],
}

/// Key of an IPv6 service frontend: as [`Svc4Key`], with an IPv6 VIP. The
/// fields have the same names as [`Svc4Key`]'s, so that the datapath's
/// family-neutral code builds either.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc6Key {
    /// Service address, network order.
    pub vip: [u8; 16],
    /// Service port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
}

impl Svc6Key {
    /// The key of the marker entry of `vip` (see [`SvcValue::VIP_MARKER`]).
    pub const fn vip_marker(vip: [u8; 16]) -> Self {
        Self {
            vip,
            port: 0,
            proto: 0,
            scope: SCOPE_EXTERNAL,
        }
    }
}

/// An IPv6 backend (as [`Backend4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    /// Backend address, network order.
    pub addr: [u8; 16],
    /// Backend port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

/// IPv6 conntrack key (as [`Ct4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct6Key {
    /// Source address, network order.
    pub saddr: [u8; 16],
    /// Destination address, network order.
    pub daddr: [u8; 16],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`CT_DIR_SERVICE`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    /// Explicit padding.
    pub pad: u16,
}

/// IPv6 conntrack value: the fields of [`CtValue`], with IPv6 addresses
/// (the padding sits where the 8-byte fields need it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct6Value {
    /// As [`CtValue::nat_addr`].
    pub nat_addr: [u8; 16],
    /// As [`CtValue::nat_port`].
    pub nat_port: u16,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// Explicit padding.
    pub pad: u8,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service.
    pub svc_id: u32,
    /// Explicit padding.
    pub pad3: u32,
    /// As [`CtValue::created_ns`].
    pub created_ns: u64,
    /// As [`CtValue::expires_ns`].
    pub expires_ns: u64,
    /// As [`CtValue::seq_next`].
    pub seq_next: u32,
    /// As [`CtValue::peer_addr`].
    pub peer_addr: [u8; 16],
    /// Port of [`Self::peer_addr`], host order.
    pub peer_port: u16,
    /// Explicit padding.
    pub pad2: u16,
}

/// Key of an IPv6 fragment train (RFC 8200: source, destination and the
/// fragment header's 32-bit identification; the protocol is the one after
/// the fragment header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag6Key {
    /// Source address, network order.
    pub saddr: [u8; 16],
    /// Destination address, network order.
    pub daddr: [u8; 16],
    /// Fragment identification, host order.
    pub id: u32,
    /// IP protocol number of the fragmented payload.
    pub proto: u8,
    /// As [`Frag4Key::dir`].
    pub dir: u8,
    /// Explicit padding.
    pub pad: u16,
}

/// Where the later fragments of a translated IPv6 datagram go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag6Value {
    /// As [`Frag4Value::addr`].
    pub addr: [u8; 16],
}

/// IPv6 source NAT entry (as [`Snat4Value`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Snat6Value {
    /// The client's address, network order.
    pub addr: [u8; 16],
    /// The client's port, host order.
    pub port: u16,
    /// As [`Snat4Value::stamp`].
    pub stamp: u16,
}

/// The IPv6 address of one node interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr6 {
    /// Network order.
    pub addr: [u8; 16],
}

/// Session affinity key of an IPv6 client (as [`AffinityKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Affinity6Key {
    /// Client address, network order.
    pub client: [u8; 16],
    /// Service id.
    pub svc_id: u32,
}

/// Data of an IPv6 source-range LPM key (as [`SrcRange4`]: prefix length
/// 32 plus the range's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRange6 {
    /// Service id, big-endian.
    pub svc_id: [u8; 4],
    /// Range or client address, network order.
    pub addr: [u8; 16],
}

/// Data of an IPv6 service-CIDR LPM key (as [`ServiceCidr4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceCidr6 {
    /// Network or destination address, network order.
    pub addr: [u8; 16],
}

/// Words of [`Scratch6`].
pub const SCRATCH6_WORDS: usize = 128;

/// The value of `SVCNAT_SCRATCH6`: per-CPU scratch space of the IPv6
/// pipelines, which keep the temporaries that do not fit their 512-byte
/// BPF stack there (conntrack and SNAT keys and values, the parsed
/// headers). Only the datapath gives it a layout (its own types, laid
/// over these words); nothing in it outlives one program run, and the
/// agent never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch6 {
    /// The space.
    pub words: [u64; SCRATCH6_WORDS],
}

/// The `SVCNAT_NODE6` key that holds the IPv6 hairpin address.
pub const NODE6_HAIRPIN_KEY: u32 = 0;
/// The IPv6 source a pod sees when it reaches itself through a service,
/// unless the agent sets another: 100::a9fe:2a01 (the IPv4 default's bits
/// in the discard-only prefix 100::/64 of RFC 6666). The pod must answer it
/// through its default route, so that the answer reaches its veth, where
/// the datapath turns it back: a link-local address would not do, as the
/// pod resolves those on its own link (neighbour discovery nobody
/// answers). Should an answer escape, routers discard it.
pub const HAIRPIN6_ADDR_DEFAULT: [u8; 16] = [
    0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0x2a, 0x01,
];

/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Key of a socket-level translation (`SVCNAT_SOCK4`): a socket, by its
/// cookie, and the backend the socket hooks sent it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sock4Key {
    /// The socket's cookie (`SO_COOKIE`).
    pub cookie: u64,
    /// Backend address, network order.
    pub addr: [u8; 4],
    /// Backend port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub pad: u8,
}

/// Value of a socket-level translation: the service address the socket
/// was given to, which `recvmsg` and `getpeername` report instead of the
/// backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock4Value {
    /// Service address, network order.
    pub vip: [u8; 4],
    /// Service port, host order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Key of an IPv6 socket-level translation (as [`Sock4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sock6Key {
    /// The socket's cookie (`SO_COOKIE`).
    pub cookie: u64,
    /// Backend address, network order.
    pub addr: [u8; 16],
    /// Backend port, host order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub pad: [u8; 5],
}

/// Value of an IPv6 socket-level translation (as [`Sock4Value`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock6Value {
    /// Service address, network order.
    pub vip: [u8; 16],
    /// Service port, host order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// The one entry of `SVCNAT_SOCK_CFG` (key [`SOCK_CFG_KEY`]): what the
/// socket hooks act on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockConfig {
    /// Cookie of the network namespace whose sockets are translated (the
    /// agent's own: `SO_NETNS_COOKIE`). Sockets of every other namespace
    /// are left alone.
    pub netns_cookie: u64,
    /// Reserved (zero).
    pub flags: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// The key of the one entry of `SVCNAT_SOCK_CFG`.
pub const SOCK_CFG_KEY: u32 = 0;

/// Per-CPU counter of one reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatValue {
    /// Packets.
    pub packets: u64,
    /// Bytes (skb length).
    pub bytes: u64,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $val:expr, $label:literal;)*) => {
        /// Why the datapath did what it did with a packet. Every verdict is
        /// counted under one of these in the stats map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name = $val,)*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Stable name used in `svcnat inspect stats` and metrics labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$name => $label,)*
                }
            }

            /// The reason with this index, if any.
            pub fn from_index(i: u32) -> Option<Reason> {
                Self::ALL.iter().copied().find(|r| *r as u32 == i)
            }
        }
    };
}

reasons! {
    /// Neither IPv4 nor IPv6 (ARP, ...): passed.
    PassNotIp = 0, "pass_not_ip";
    /// Not addressed to a VIP, or a reply of no translated flow: passed.
    PassNotService = 1, "pass_not_service";
    /// IPv4 with options: passed untouched.
    PassIpOptions = 2, "pass_ip_options";
    /// A later fragment of a datagram whose first fragment was not seen: passed.
    PassFragmentUntracked = 3, "pass_fragment_untracked";
    /// To a VIP with a protocol other than TCP and UDP: passed.
    PassOtherProtocol = 4, "pass_other_protocol";
    /// New flow: backend chosen, conntrack created, DNAT.
    DnatNew = 5, "dnat_new";
    /// Packet of a known flow: DNAT.
    DnatEstablished = 6, "dnat_established";
    /// Reply of a translated flow: source rewritten to the VIP.
    RevnatReply = 7, "revnat_reply";
    /// ICMP error about a translated flow: inner and outer headers rewritten.
    RevnatIcmpError = 8, "revnat_icmp_error";
    /// Service port without backends: TCP RST / ICMP port unreachable sent.
    RejectNoBackend = 9, "reject_no_backend";
    /// Known VIP, port that no service defines: TCP RST / ICMP port unreachable sent.
    RejectUnknownPort = 10, "reject_unknown_port";
    /// Headers shorter than they claim: dropped.
    DropTruncated = 11, "drop_truncated";
    /// Conntrack entry could not be created: dropped (fail closed).
    DropCtCreate = 12, "drop_ct_create";
    /// A slot or backend the service points to is missing: dropped.
    DropBackendMissing = 13, "drop_backend_missing";
    /// A packet rewrite helper failed: dropped.
    DropRewrite = 14, "drop_rewrite";
    /// A later fragment of a translated datagram: address rewritten.
    NatFragment = 15, "nat_fragment";
    /// A service port with SCTP or another protocol the datapath refuses: dropped.
    DropUnsupportedProtocol = 16, "drop_unsupported_protocol";
    /// New node-port flow to a backend on another node: DNAT and SNAT.
    SnatNew = 17, "snat_new";
    /// Packet of a known node-port flow to a remote backend: DNAT and SNAT.
    SnatEstablished = 18, "snat_established";
    /// Reply of a remote backend to an SNATed flow: back to the client.
    RevsnatReply = 19, "revsnat_reply";
    /// Traffic policy Local and no backend on this node: dropped.
    DropNoLocalBackend = 20, "drop_no_local_backend";
    /// Client outside the service's loadBalancerSourceRanges: dropped.
    DropSourceRange = 21, "drop_source_range";
    /// No free SNAT port for a new flow: dropped.
    DropSnatPorts = 22, "drop_snat_ports";
    /// External frontend without backends at XDP: passed to the stack,
    /// which answers a node address with RST / port unreachable.
    PassNoBackend = 23, "pass_no_backend";
    /// New flow whose client port already reached the same backend through
    /// another frontend: DNAT, and the source port remapped (NAT clash).
    DnatNewPortRemapped = 24, "dnat_new_port_remapped";
    /// New flow from a pod to a service whose chosen backend is that pod
    /// (hairpin): DNAT, source NATed to the hairpin address, sent back.
    DnatNewHairpin = 25, "dnat_new_hairpin";
    /// A pod's reply to a hairpin flow: back to itself from the frontend.
    RevnatHairpin = 26, "revnat_hairpin";
    /// A TCP packet other than a SYN to an external frontend, of no known
    /// flow: dropped. Only a SYN opens a flow from outside, so that a flood
    /// of made-up segments cannot fill the conntrack map; the node has no
    /// socket on a frontend and would answer each with a RST.
    DropTcpNoFlow = 27, "drop_tcp_no_flow";
    /// A RST whose sequence number is outside the window its flow has seen
    /// (blind reset): translated and passed on, the flow stays open; the
    /// endpoint judges it (RFC 5961).
    RstOutOfWindow = 28, "rst_out_of_window";
    /// IPv6 with an extension header the datapath does not walk, or more
    /// of them than it walks: passed untouched.
    PassIpv6Extension = 29, "pass_ipv6_extension";
    /// The tail call to the pipeline of the packet's family failed (its
    /// program array slot is empty: a loader that did not fill it):
    /// passed untouched.
    PassNoProgram = 30, "pass_no_program";
    /// Socket hooks: a `connect()` of a node process to a service,
    /// translated to a backend (no per-packet NAT follows).
    SockConnect = 31, "sock_connect";
    /// Socket hooks: a datagram of an unconnected UDP socket of the node
    /// sent to a service, addressed to a backend.
    SockSendmsg = 32, "sock_sendmsg";
    /// Socket hooks: `recvmsg` or `getpeername` of a translated socket
    /// reports the service's address instead of its backend's.
    SockRestored = 33, "sock_restored";
    /// Socket hooks: a service port without endpoints: the call fails with
    /// `ECONNREFUSED` (what kube-proxy's reject gives a client).
    SockRejectNoBackend = 34, "sock_reject_no_backend";
    /// Socket hooks: a known VIP, a port no service defines: the call
    /// fails with `ECONNREFUSED`.
    SockRejectUnknownPort = 35, "sock_reject_unknown_port";
    /// Socket hooks: a traffic policy `Local` and no endpoint on this node:
    /// the call fails with `EHOSTUNREACH` (kube-proxy drops the packets;
    /// a socket is told at once).
    SockNoLocalBackend = 36, "sock_no_local_backend";
    /// A pod's packet to an address inside a service CIDR that no Service
    /// holds (no frontend, no VIP marker): dropped, as kube-proxy's
    /// nftables mode drops "traffic to unallocated ClusterIPs" (a drop,
    /// not a reject: a SYN to a Service created a moment ago is sent
    /// again and reaches it once it is programmed).
    DropUnallocatedServiceIp = 37, "drop_unallocated_service_ip";
}

/// Not a reason: the slot of the stats map that counts conntrack entries
/// the datapath created under a new key (`packets`; `bytes` unused). The
/// datapath never deletes conntrack entries, so the agent derives the
/// kernel's LRU evictions from this, the entries it removed itself and the
/// entries in the map.
pub const STAT_CT_CREATED: u32 = 63;

/// Size of the stats map: room for reasons added later without a new layout.
pub const STATS_SLOTS: u32 = 64;

/// Entries of each service-CIDR trie: service CIDRs of one family (a
/// ServiceCIDR object has at most one per family; a cluster has a few).
pub const SERVICE_CIDRS_MAX: u32 = 256;

/// Layout version of the pinned maps. Bump when a key, a value or the
/// meaning of an entry changes, and teach the agent to migrate from the
/// previous one (`proxy-user/src/migrate.rs`).
///
/// - 1: first layout.
/// - 2: forward SNAT entries keyed by the conntrack service key, and
///   conntrack reply entries of SNATed flows keyed by the SNAT address and
///   port (source-port remapping on NAT clashes).
/// - 3: conntrack values carry the TCP sequence number of their side and
///   the flow's other end ([`CtValue::seq_next`], [`CtValue::peer_addr`]);
///   a flow's life is its service-direction entry's; SNAT values carry a
///   stamp; fragments of replies at TC egress have their own direction.
/// - 4: IPv6: the `*6` maps (frontends, backends, conntrack, fragments,
///   SNAT, node addresses, affinity, source ranges). The IPv4 maps keep
///   their layout-3 form; service ids, slots, labels and stats are shared.
///   Also the socket maps (`SVCNAT_SOCK4`, `SVCNAT_SOCK6`,
///   `SVCNAT_SOCK_CFG`) and the service-CIDR tries (`SVCNAT_SVCCIDR4`,
///   `SVCNAT_SVCCIDR6`), added before layout 4 was released: a folder of
///   layout 4 without them gets them created empty.
pub const LAYOUT_VERSION: u32 = 4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers
    // and byte arrays, with every padding byte an explicit field.
    unsafe impl aya::Pod for super::Svc4Key {}
    unsafe impl aya::Pod for super::SvcValue {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::SlotValue {}
    unsafe impl aya::Pod for super::Backend4 {}
    unsafe impl aya::Pod for super::RevNat4 {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::Frag4Key {}
    unsafe impl aya::Pod for super::Frag4Value {}
    unsafe impl aya::Pod for super::StatValue {}
    unsafe impl aya::Pod for super::SvcLabel {}
    unsafe impl aya::Pod for super::Snat4Value {}
    unsafe impl aya::Pod for super::NodeAddr4 {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SrcRange4 {}
    unsafe impl aya::Pod for super::Svc6Key {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::Ct6Key {}
    unsafe impl aya::Pod for super::Ct6Value {}
    unsafe impl aya::Pod for super::Frag6Key {}
    unsafe impl aya::Pod for super::Frag6Value {}
    unsafe impl aya::Pod for super::Snat6Value {}
    unsafe impl aya::Pod for super::NodeAddr6 {}
    unsafe impl aya::Pod for super::Affinity6Key {}
    unsafe impl aya::Pod for super::SrcRange6 {}
    unsafe impl aya::Pod for super::Scratch6 {}
    unsafe impl aya::Pod for super::Sock4Key {}
    unsafe impl aya::Pod for super::Sock4Value {}
    unsafe impl aya::Pod for super::Sock6Key {}
    unsafe impl aya::Pod for super::Sock6Value {}
    unsafe impl aya::Pod for super::SockConfig {}
    unsafe impl aya::Pod for super::ServiceCidr4 {}
    unsafe impl aya::Pod for super::ServiceCidr6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Svc4Key>(), 8);
        assert_eq!(size_of::<SvcValue>(), 16);
        assert_eq!(size_of::<SlotKey>(), 8);
        assert_eq!(size_of::<SlotValue>(), 4);
        assert_eq!(size_of::<Backend4>(), 8);
        assert_eq!(size_of::<RevNat4>(), 8);
        assert_eq!(size_of::<Ct4Key>(), 16);
        assert_eq!(size_of::<CtValue>(), 48);
        assert_eq!(size_of::<Frag4Key>(), 12);
        assert_eq!(size_of::<Frag4Value>(), 4);
        assert_eq!(size_of::<StatValue>(), 16);
        assert_eq!(size_of::<SvcLabel>(), SVC_LABEL_LEN);
        assert_eq!(size_of::<Snat4Value>(), 8);
        assert_eq!(size_of::<NodeAddr4>(), 4);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SrcRange4>(), 8);
        assert_eq!(size_of::<Svc6Key>(), 20);
        assert_eq!(size_of::<Backend6>(), 20);
        assert_eq!(size_of::<Ct6Key>(), 40);
        assert_eq!(size_of::<Ct6Value>(), 72);
        assert_eq!(size_of::<Frag6Key>(), 40);
        assert_eq!(size_of::<Frag6Value>(), 16);
        assert_eq!(size_of::<Snat6Value>(), 20);
        assert_eq!(size_of::<NodeAddr6>(), 16);
        assert_eq!(size_of::<Affinity6Key>(), 20);
        assert_eq!(size_of::<SrcRange6>(), 20);
        assert_eq!(size_of::<Scratch6>(), 1024);
        assert_eq!(size_of::<Sock4Key>(), 16);
        assert_eq!(size_of::<Sock4Value>(), 8);
        assert_eq!(size_of::<Sock6Key>(), 32);
        assert_eq!(size_of::<Sock6Value>(), 20);
        assert_eq!(size_of::<SockConfig>(), 16);
        assert_eq!(size_of::<ServiceCidr4>(), 4);
        assert_eq!(size_of::<ServiceCidr6>(), 16);
    }

    #[test]
    fn reasons_are_dense_unique_and_fit() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{} out of order", r.name());
            assert_eq!(Reason::from_index(i as u32), Some(*r));
        }
        assert!((Reason::ALL.len() as u32) < STAT_CT_CREATED);
        const { assert!(STAT_CT_CREATED < STATS_SLOTS) };
        assert_eq!(Reason::from_index(STATS_SLOTS), None);
    }
}
