//! Ethernet + IPv4 + TCP/UDP/ICMP frames for packet tests, and parsers to
//! assert on what a program wrote.
//!
//! The builder computes every length and checksum (IPv4 header, TCP and UDP
//! over the pseudo-header, ICMP over its whole message) unless a test asks for
//! a specific wrong one. Frames are plain byte vectors: a test may truncate or
//! patch them as it likes.
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
