//! Checksums: the one's-complement arithmetic of RFC 1071 the builder uses,
//! the pseudo-headers of IPv4 (RFC 793/768) and IPv6 (RFC 8200 section
//! 8.1), and the checks of every checksum a frame carries
//! ([`checksums_ok`], [`checksum_residues`]), for both families.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    consts::*,
    parse::{addr16, be16, ext_chain},
};

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero)
/// to a one's-complement accumulator, without folding.
pub fn csum_add(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = add_carry(acc, u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = add_carry(acc, u32::from(*last) << 8);
    }
    acc
}

fn add_carry(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// Folds a one's-complement accumulator to 16 bits (end-around carry).
pub fn csum_fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum (RFC 1071) of `data`: the complement of its folded
/// one's-complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !csum_fold(csum_add(0, data))
}

/// The accumulator of the IPv4 pseudo-header of a TCP or UDP segment.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: u16) -> u32 {
    let mut acc = csum_add(0, &src.octets());
    acc = csum_add(acc, &dst.octets());
    acc = csum_add(acc, &[0, proto]);
    csum_add(acc, &l4_len.to_be_bytes())
}

/// The TCP or UDP checksum of `segment` (its checksum field must be zero)
/// between `src` and `dst`. For UDP a computed 0 is sent as 0xffff (RFC 768).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).expect("an IPv4 segment is shorter than 64 KiB");
    let sum = !csum_fold(csum_add(pseudo_header_sum(src, dst, proto, len), segment));
    if proto == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// The accumulator of the IPv6 pseudo-header (RFC 8200 section 8.1) of an
/// upper-layer packet of `proto` (TCP, UDP, ICMPv6) and `len` bytes: source,
/// destination, the 32-bit upper-layer length, three zero bytes and the next
/// header value. The destination is the packet's (this kit never computes
/// the final destination of a routing header).
pub fn pseudo_header_sum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u32 {
    let mut acc = csum_add(0, &src.octets());
    acc = csum_add(acc, &dst.octets());
    acc = csum_add(acc, &len.to_be_bytes());
    csum_add(acc, &[0, 0, 0, proto])
}

/// The TCP, UDP or ICMPv6 checksum of `segment` (its checksum field must be
/// zero) between `src` and `dst` over the IPv6 pseudo-header. For UDP a
/// computed 0 is sent as 0xffff (RFC 8200: 0 is no valid UDP checksum over
/// IPv6).
pub fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = u32::try_from(segment.len()).expect("an IPv6 segment is shorter than 4 GiB");
    let sum = !csum_fold(csum_add(pseudo_header_sum6(src, dst, proto, len), segment));
    if proto == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// Checks every checksum of an Ethernet + IPv4 or IPv6 frame. IPv4: the
/// IPv4 header; the
/// TCP or UDP checksum over the pseudo-header (a UDP checksum of 0 means none
/// and passes) unless the packet is a fragment; the ICMP checksum over the
/// whole message and, for ICMP errors, the header checksum of the quoted IPv4
/// packet. Also checks that the frame holds the total length the IPv4 header
/// claims. IPv6: see [`checksums_ok6`]. Errors name the first bad field.
pub fn checksums_ok(frame: &[u8]) -> Result<(), String> {
    if frame.len() >= ETH_HLEN && be16(frame, 12) == ETH_P_IPV6 {
        return checksums_ok6(frame);
    }
    if frame.len() < ETH_HLEN + 20 {
        return Err(format!(
            "frame of {} bytes holds no IPv4 header",
            frame.len()
        ));
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETH_P_IP {
        return Err(format!("not IPv4: ethertype {ethertype:#06x}"));
    }
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || hlen < 20 || ip.len() < hlen {
        return Err(format!("bad IPv4 version/IHL byte {:#04x}", ip[0]));
    }
    let sum = csum_fold(csum_add(0, &ip[..hlen]));
    if sum != 0xffff {
        return Err(format!(
            "IPv4 header checksum {:#06x} is wrong (should be {:#06x})",
            be16(ip, 10),
            expected_field(&ip[..hlen], 10)
        ));
    }
    let total = usize::from(be16(ip, 2));
    if total < hlen || total > ip.len() {
        return Err(format!(
            "IPv4 total length {total} but {} bytes after Ethernet",
            ip.len()
        ));
    }
    let flags_frag = be16(ip, 6);
    if flags_frag & (IP_MF | IP_OFFSET_MASK) != 0 {
        // A fragment: the layer 4 checksum covers the whole datagram.
        return Ok(());
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let body = &ip[hlen..total];
    let len = u16::try_from(body.len()).expect("fits: total is a u16");
    match ip[9] {
        proto @ (IPPROTO_TCP | IPPROTO_UDP) => {
            let (min, at) = if proto == IPPROTO_TCP {
                (20, 16)
            } else {
                (8, 6)
            };
            if body.len() < min {
                return Err(format!("layer 4 header truncated: {} bytes", body.len()));
            }
            if proto == IPPROTO_UDP && be16(body, 6) == 0 {
                return Ok(());
            }
            let sum = csum_fold(csum_add(pseudo_header_sum(src, dst, proto, len), body));
            if sum != 0xffff {
                let mut zeroed = body.to_vec();
                zeroed[at..at + 2].copy_from_slice(&[0, 0]);
                return Err(format!(
                    "{} checksum {:#06x} is wrong (should be {:#06x})",
                    if proto == IPPROTO_TCP { "TCP" } else { "UDP" },
                    be16(body, at),
                    l4_checksum(src, dst, proto, &zeroed)
                ));
            }
        }
        IPPROTO_ICMP => {
            if body.len() < 8 {
                return Err(format!("ICMP header truncated: {} bytes", body.len()));
            }
            if csum_fold(csum_add(0, body)) != 0xffff {
                return Err(format!(
                    "ICMP checksum {:#06x} is wrong (should be {:#06x})",
                    be16(body, 2),
                    expected_field(body, 2)
                ));
            }
            if matches!(body[0], 3 | 4 | 5 | 11 | 12) && body.len() >= 8 + 20 {
                let inner = &body[8..];
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner[0] >> 4 == 4 && ihl >= 20 && inner.len() >= ihl {
                    if csum_fold(csum_add(0, &inner[..ihl])) != 0xffff {
                        return Err(format!(
                            "inner IPv4 header checksum {:#06x} is wrong (should be {:#06x})",
                            be16(inner, 10),
                            expected_field(&inner[..ihl], 10)
                        ));
                    }
                } else {
                    return Err("ICMP error quotes no IPv4 header".to_string());
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks an Ethernet + IPv6 frame: that it holds the payload length the
/// IPv6 header claims and every extension header in it; the TCP, UDP or
/// ICMPv6 checksum over the IPv6 pseudo-header, unless the packet is a
/// fragment (the checksum covers the whole datagram); that a UDP checksum
/// is not 0 (no valid checksum over IPv6, RFC 8200 section 8.1); and that
/// an ICMPv6 error quotes an IPv6 header. Errors name the first bad field.
pub fn checksums_ok6(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_HLEN + IPV6_HLEN {
        return Err(format!(
            "frame of {} bytes holds no IPv6 header",
            frame.len()
        ));
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETH_P_IPV6 {
        return Err(format!("not IPv6: ethertype {ethertype:#06x}"));
    }
    let ip = &frame[ETH_HLEN..];
    if ip[0] >> 4 != 6 {
        return Err(format!("bad IPv6 version byte {:#04x}", ip[0]));
    }
    let plen = usize::from(be16(ip, 4));
    if IPV6_HLEN + plen > ip.len() {
        return Err(format!(
            "IPv6 payload length {plen} but {} bytes after the header",
            ip.len() - IPV6_HLEN
        ));
    }
    let chain = ext_chain(ip)?;
    let fragment = chain
        .headers
        .iter()
        .find(|(_, kind, _)| *kind == IPPROTO_FRAGMENT);
    if let Some((off, _, _)) = fragment
        && be16(ip, off + 2) & (IP6_OFFSET_MASK | IP6_MF) != 0
    {
        return Ok(());
    }
    let (src, dst) = (
        Ipv6Addr::from(addr16(&ip[8..24])),
        Ipv6Addr::from(addr16(&ip[24..40])),
    );
    let body = &ip[chain.l4_off..chain.end];
    let (name, min, at) = match chain.proto {
        IPPROTO_TCP => ("TCP", 20, 16),
        IPPROTO_UDP => ("UDP", 8, 6),
        IPPROTO_ICMPV6 => ("ICMPv6", 8, 2),
        _ => return Ok(()),
    };
    if body.len() < min {
        return Err(format!("{name} header truncated: {} bytes", body.len()));
    }
    if chain.proto == IPPROTO_UDP && be16(body, 6) == 0 {
        return Err("UDP checksum 0 over IPv6 (no valid checksum, RFC 8200)".to_string());
    }
    let len = u32::try_from(body.len()).expect("fits: the payload length is a u16");
    let sum = csum_fold(csum_add(
        pseudo_header_sum6(src, dst, chain.proto, len),
        body,
    ));
    if sum != 0xffff {
        let mut zeroed = body.to_vec();
        zeroed[at..at + 2].copy_from_slice(&[0, 0]);
        return Err(format!(
            "{name} checksum {:#06x} is wrong (should be {:#06x})",
            be16(body, at),
            l4_checksum6(src, dst, chain.proto, &zeroed)
        ));
    }
    if chain.proto == IPPROTO_ICMPV6 && body[0] < 128 {
        let inner = &body[8..];
        if inner.len() < IPV6_HLEN || inner[0] >> 4 != 6 {
            return Err("ICMPv6 error quotes no IPv6 header".to_string());
        }
    }
    Ok(())
}

/// What one checksum of a frame adds up to: the folded one's-complement sum
/// of everything it covers, checksum field included (0 and 0xffff, the two
/// zeros of one's complement, both read as 0xffff, which is what a valid
/// checksum gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residue {
    /// The sum over the covered bytes that are in the frame.
    Sum(u16),
    /// A UDP checksum field of 0 over IPv4: the sender computed no checksum.
    NoChecksum,
    /// A UDP checksum field of 0 over IPv6: no valid checksum (RFC 8200
    /// section 8.1), whatever the sum.
    ZeroOverIpv6,
}

impl Residue {
    fn of(acc: u32) -> Self {
        match csum_fold(acc) {
            0 => Residue::Sum(0xffff),
            s => Residue::Sum(s),
        }
    }

    /// The checksum verifies (or there is none, for UDP over IPv4).
    pub fn is_valid(self) -> bool {
        matches!(self, Residue::Sum(0xffff) | Residue::NoChecksum)
    }
}

/// The residue of every checksum an Ethernet + IPv4 or IPv6 frame carries, as far
/// as the frame holds what it covers (`None`: the frame has no such
/// checksum, or not enough of it).
///
/// A rewrite that updates checksums incrementally keeps every residue: a
/// valid checksum stays valid and a wrong one stays wrong by the same
/// amount. Comparing the residues of a packet before and after a program
/// ran checks its checksum updates even for packets whose checksums were
/// wrong on arrival, for first fragments (whose layer 4 checksum covers
/// bytes that are not in the frame) and for the quoted UDP header of an
/// ICMP error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumResidues {
    /// The IPv4 header checksum (`None` for IPv6, which has none).
    pub ipv4: Option<Residue>,
    /// The TCP or UDP checksum over the pseudo-header (with the length of
    /// the layer 4 bytes present) and those bytes; the ICMP checksum over
    /// the message (over IPv6: the ICMPv6 checksum over the pseudo-header
    /// too). `None` for later fragments and other protocols.
    pub l4: Option<Residue>,
    /// The header checksum of the IPv4 header an ICMP error quotes.
    pub inner_ipv4: Option<Residue>,
    /// The checksum of the UDP header an ICMP error quotes, over the quoted
    /// packet's pseudo-header (with the quoted UDP length) and the 8 quoted
    /// bytes: the rest of that datagram is not in the frame and cannot change
    /// (so it verifies only when the datagram had no payload).
    pub inner_udp: Option<Residue>,
}

/// The [`ChecksumResidues`] of `frame`. Never fails: what cannot be parsed
/// has no residue.
pub fn checksum_residues(frame: &[u8]) -> ChecksumResidues {
    let mut r = ChecksumResidues::default();
    if frame.len() >= ETH_HLEN + IPV6_HLEN && be16(frame, 12) == ETH_P_IPV6 {
        return checksum_residues6(&frame[ETH_HLEN..]);
    }
    if frame.len() < ETH_HLEN + 20 || be16(frame, 12) != ETH_P_IP {
        return r;
    }
    let ip = &frame[ETH_HLEN..];
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || hlen < 20 || ip.len() < hlen {
        return r;
    }
    r.ipv4 = Some(Residue::of(csum_add(0, &ip[..hlen])));
    if be16(ip, 6) & IP_OFFSET_MASK != 0 {
        return r;
    }
    let end = usize::from(be16(ip, 2)).clamp(hlen, ip.len());
    let body = &ip[hlen..end];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    match ip[9] {
        IPPROTO_TCP if body.len() >= 20 => {
            r.l4 = Some(Residue::of(csum_add(
                pseudo_header_sum(src, dst, IPPROTO_TCP, len),
                body,
            )));
        }
        IPPROTO_UDP if body.len() >= 8 => {
            r.l4 = Some(if be16(body, 6) == 0 {
                Residue::NoChecksum
            } else {
                Residue::of(csum_add(
                    pseudo_header_sum(src, dst, IPPROTO_UDP, len),
                    body,
                ))
            });
        }
        IPPROTO_ICMP if body.len() >= 8 => {
            r.l4 = Some(Residue::of(csum_add(0, body)));
            let inner = &body[8..];
            if matches!(body[0], 3 | 4 | 5 | 11 | 12) && inner.len() >= 20 {
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                if inner[0] >> 4 == 4 && ihl >= 20 && inner.len() >= ihl {
                    r.inner_ipv4 = Some(Residue::of(csum_add(0, &inner[..ihl])));
                    let udp = &inner[ihl..];
                    if inner[9] == IPPROTO_UDP
                        && be16(inner, 6) & IP_OFFSET_MASK == 0
                        && udp.len() >= 8
                    {
                        r.inner_udp = Some(if be16(udp, 6) == 0 {
                            Residue::NoChecksum
                        } else {
                            let isrc = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
                            let idst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
                            Residue::of(csum_add(
                                pseudo_header_sum(isrc, idst, IPPROTO_UDP, be16(udp, 4)),
                                &udp[..8],
                            ))
                        });
                    }
                }
            }
        }
        _ => {}
    }
    r
}

/// The residues of an IPv6 packet (see [`checksum_residues`]).
fn checksum_residues6(ip: &[u8]) -> ChecksumResidues {
    let mut r = ChecksumResidues::default();
    let Ok(chain) = ext_chain(ip) else {
        return r;
    };
    if ip[0] >> 4 != 6
        || chain.headers.iter().any(|(off, kind, _)| {
            *kind == IPPROTO_FRAGMENT && be16(ip, off + 2) & IP6_OFFSET_MASK != 0
        })
    {
        return r;
    }
    let (src, dst) = (
        Ipv6Addr::from(addr16(&ip[8..24])),
        Ipv6Addr::from(addr16(&ip[24..40])),
    );
    let body = &ip[chain.l4_off..chain.end];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let sum = |proto| Residue::of(csum_add(pseudo_header_sum6(src, dst, proto, len), body));
    match chain.proto {
        IPPROTO_TCP if body.len() >= 20 => r.l4 = Some(sum(IPPROTO_TCP)),
        IPPROTO_UDP if body.len() >= 8 => {
            r.l4 = Some(if be16(body, 6) == 0 {
                Residue::ZeroOverIpv6
            } else {
                sum(IPPROTO_UDP)
            });
        }
        IPPROTO_ICMPV6 if body.len() >= 8 => {
            r.l4 = Some(sum(IPPROTO_ICMPV6));
            let inner = &body[8..];
            if body[0] < 128
                && inner.len() >= IPV6_HLEN
                && inner[0] >> 4 == 6
                && let Ok(ic) = ext_chain(inner)
                && ic.proto == IPPROTO_UDP
                && inner.len() >= ic.l4_off + 8
            {
                let udp = &inner[ic.l4_off..];
                r.inner_udp = Some(if be16(udp, 6) == 0 {
                    Residue::ZeroOverIpv6
                } else {
                    let (isrc, idst) = (
                        Ipv6Addr::from(addr16(&inner[8..24])),
                        Ipv6Addr::from(addr16(&inner[24..40])),
                    );
                    Residue::of(csum_add(
                        pseudo_header_sum6(isrc, idst, IPPROTO_UDP, u32::from(be16(udp, 4))),
                        &udp[..8],
                    ))
                });
            }
        }
        _ => {}
    }
    r
}

/// The Internet checksum `data` should carry in its field at `at`.
fn expected_field(data: &[u8], at: usize) -> u16 {
    let mut zeroed = data.to_vec();
    zeroed[at..at + 2].copy_from_slice(&[0, 0]);
    internet_checksum(&zeroed)
}
