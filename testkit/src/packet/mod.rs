//! Ethernet + IPv4 or IPv6 (with extension headers) + TCP/UDP/ICMP/ICMPv6
//! frames for packet tests, and parsers to assert on what a program wrote.
//!
//! The builder computes every length and checksum (IPv4 header, TCP and UDP
//! over the pseudo-header of either family, ICMP over its whole message,
//! ICMPv6 over the IPv6 pseudo-header too) unless a test asks for a specific
//! wrong one. One builder serves both families: the type of the addresses a
//! constructor is given picks it. Frames are plain byte vectors: a test may
//! truncate or patch them as it likes.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use svcnat_testkit::packet::{PacketBuilder, TCP_SYN, checksums_ok};
//!
//! let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 40000);
//! let vip = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 80);
//! let frame = PacketBuilder::tcp(client, vip).flags(TCP_SYN).seq(7).build();
//! assert_eq!(frame.len(), 14 + 20 + 20);
//! checksums_ok(&frame).expect("the builder writes valid checksums");
//!
//! use std::net::{Ipv6Addr, SocketAddrV6};
//! let client = SocketAddrV6::new("2001:db8::10".parse::<Ipv6Addr>().unwrap(), 40000, 0, 0);
//! let vip = SocketAddrV6::new("2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap(), 80, 0, 0);
//! let frame = PacketBuilder::tcp(client, vip).hop_by_hop(&[]).flags(TCP_SYN).build();
//! assert_eq!(frame.len(), 14 + 40 + 8 + 20);
//! checksums_ok(&frame).expect("and over IPv6");
//! ```

mod build;
mod checksum;
mod consts;
mod parse;
#[cfg(test)]
mod tests;

pub use build::*;
pub use checksum::*;
pub use consts::*;
pub use parse::*;
