//! The numbers of the headers the builder writes and the parsers read:
//! lengths, ethertypes, protocol numbers (extension headers included),
//! flags, ICMP and ICMPv6 types and the builder's default MACs.

/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Length of an IPv6 header (without extension headers).
pub const IPV6_HLEN: usize = 40;
/// IPv6 next header: hop-by-hop options.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 next header: routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 next header: fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 next header: destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 next header: no next header.
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 next header reserved for experiments (RFC 3692), in the format of
/// an extension header (RFC 7045): one the datapath does not know.
pub const IPPROTO_EXPERIMENT1: u8 = 253;
/// The minimum link MTU of IPv6 (RFC 8200), which bounds what an ICMPv6
/// error may quote.
pub const IPV6_MIN_MTU: usize = 1280;
/// Mask of the fragment offset (8-byte units, shifted left by 3) in the
/// offset word of an IPv6 fragment header.
pub const IP6_OFFSET_MASK: u16 = 0xfff8;
/// The "more fragments" bit in the offset word of an IPv6 fragment header.
pub const IP6_MF: u16 = 0x0001;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag URG.
pub const TCP_URG: u8 = 0x20;

/// IPv4 flag "don't fragment" in the flags/fragment-offset word.
pub const IP_DF: u16 = 0x4000;
/// IPv4 flag "more fragments" in the flags/fragment-offset word.
pub const IP_MF: u16 = 0x2000;
/// Mask of the fragment offset (8-byte units) in the flags/fragment-offset word.
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// ICMP type: echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP type: destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type: echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP type: time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP destination unreachable code: port unreachable.
pub const ICMP_PORT_UNREACH: u8 = 3;
/// ICMP destination unreachable code: fragmentation needed and DF set.
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// ICMPv6 type: destination unreachable.
pub const ICMP6_DEST_UNREACH: u8 = 1;
/// ICMPv6 type: packet too big.
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 type: time exceeded.
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 type: parameter problem.
pub const ICMP6_PARAM_PROBLEM: u8 = 4;
/// ICMPv6 type: echo request.
pub const ICMP6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 type: echo reply.
pub const ICMP6_ECHO_REPLY: u8 = 129;
/// ICMPv6 type: NDP neighbor solicitation.
pub const ICMP6_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type: NDP neighbor advertisement.
pub const ICMP6_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 destination unreachable code: port unreachable.
pub const ICMP6_PORT_UNREACH: u8 = 4;
/// NDP neighbor advertisement flag: router.
pub const NA_ROUTER: u8 = 0x80;
/// NDP neighbor advertisement flag: solicited.
pub const NA_SOLICITED: u8 = 0x40;
/// NDP neighbor advertisement flag: override.
pub const NA_OVERRIDE: u8 = 0x20;
/// NDP option: source link-layer address.
pub const NDP_OPT_SOURCE_LLADDR: u8 = 1;
/// NDP option: target link-layer address.
pub const NDP_OPT_TARGET_LLADDR: u8 = 2;

/// MAC address the builder uses as source by default.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC address the builder uses as destination by default.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
