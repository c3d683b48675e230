//! The numbers of the headers the builder writes and the parsers read:
//! lengths, ethertypes, protocol numbers, flags, ICMP types and the
//! builder's default MACs.

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

/// MAC address the builder uses as source by default.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC address the builder uses as destination by default.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
