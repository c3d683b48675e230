//! Parsing and rewriting for XDP (IPv4). XDP has no skb and no checksum
//! helpers: headers are read and written by direct packet access, and
//! checksums are updated incrementally (RFC 1624). Frames at XDP arrive
//! from the wire with complete checksums (no offload state to keep).

use aya_ebpf::programs::XdpContext;
use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::{
    nat4::End,
    parse::{ETH_P_IP, IPV4_HLEN, Ipv4Hdr, L3_OFF, L4, L4_OFF, TcpHdr, UdpHdr},
};

/// A pointer to a `T` at `off` in the packet, bounds-checked (and so proven
/// to the verifier).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(Reason::DropTruncated);
    }
    Ok((start + off) as *mut T)
}

/// Length of the frame, for the stats.
#[inline(always)]
pub(crate) fn len(ctx: &XdpContext) -> u32 {
    (ctx.data_end() - ctx.data()) as u32
}

/// The IPv4 header; `Err(PassNotIpv4)` for any other frame.
#[inline(always)]
pub(crate) fn ipv4(ctx: &XdpContext) -> Result<Ipv4Hdr, Reason> {
    let proto: *mut [u8; 2] = ptr_at(ctx, 12).map_err(|_| Reason::PassNotIpv4)?;
    // SAFETY: bounds-checked above.
    if u16::from_be_bytes(unsafe { *proto }) != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, L3_OFF)?;
    // SAFETY: bounds-checked above; byte arrays only, so any alignment.
    let ip = unsafe { core::ptr::read_unaligned(ip) };
    if ip.ver_ihl >> 4 != 4 || ip.ihl() < 5 {
        return Err(Reason::DropTruncated);
    }
    Ok(ip)
}

/// The TCP or UDP header after an option-less IPv4 header `ip`.
#[inline(always)]
pub(crate) fn l4(ctx: &XdpContext, ip: &Ipv4Hdr) -> Result<L4, Reason> {
    if ip.proto == IPPROTO_TCP {
        let p: *mut TcpHdr = ptr_at(ctx, L4_OFF)?;
        // SAFETY: bounds-checked above.
        let tcp = unsafe { core::ptr::read_unaligned(p) };
        if tcp.doff_res >> 4 < 5 {
            return Err(Reason::DropTruncated);
        }
        Ok(tcp.l4(ip))
    } else if ip.proto == IPPROTO_UDP {
        let p: *mut UdpHdr = ptr_at(ctx, L4_OFF)?;
        // SAFETY: bounds-checked above.
        let udp = unsafe { core::ptr::read_unaligned(p) };
        Ok(udp.l4())
    } else {
        Err(Reason::PassOtherProtocol)
    }
}

/// `check` updated for 16-bit words `old` replaced by `new` (RFC 1624:
/// HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn csum_update(check: [u8; 2], old: &[u8; 6], new: &[u8; 6], words: usize) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(check));
    let mut i = 0;
    while i < words {
        sum += u32::from(!u16::from_be_bytes([old[2 * i], old[2 * i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[2 * i], new[2 * i + 1]]));
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

#[inline(always)]
fn addr_port(addr: [u8; 4], port: u16) -> [u8; 6] {
    let p = port.to_be_bytes();
    [addr[0], addr[1], addr[2], addr[3], p[0], p[1]]
}

/// Rewrites the address and port of one end of a TCP/UDP packet, with the
/// IPv4 and L4 checksums. A UDP datagram without checksum (zero) keeps none;
/// one whose new checksum computes to zero gets 0xffff (RFC 768).
#[inline(always)]
pub(crate) fn xdp4_rewrite(
    ctx: &XdpContext,
    end: End,
    new_addr: [u8; 4],
    l4: &L4,
    new_port: u16,
) -> Result<(), Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, L3_OFF).map_err(|_| Reason::DropRewrite)?;
    let csum_off = if l4.is_tcp() { L4_OFF + 16 } else { L4_OFF + 6 };
    let csum: *mut [u8; 2] = ptr_at(ctx, csum_off).map_err(|_| Reason::DropRewrite)?;
    let port_off = match end {
        End::Dst => L4_OFF + 2,
        End::Src => L4_OFF,
    };
    let port: *mut [u8; 2] = ptr_at(ctx, port_off).map_err(|_| Reason::DropRewrite)?;
    // SAFETY: every pointer is bounds-checked above; byte arrays only.
    unsafe {
        let old_addr = match end {
            End::Dst => (*ip).daddr,
            End::Src => (*ip).saddr,
        };
        let old_port = u16::from_be_bytes(*port);
        let old = addr_port(old_addr, old_port);
        let new = addr_port(new_addr, new_port);
        (*ip).check = csum_update((*ip).check, &old, &new, 2);
        let l4_check = *csum;
        if l4.is_tcp() || l4_check != [0, 0] {
            let mut c = csum_update(l4_check, &old, &new, 3);
            if !l4.is_tcp() && c == [0, 0] {
                c = [0xff, 0xff];
            }
            *csum = c;
        }
        match end {
            End::Dst => (*ip).daddr = new_addr,
            End::Src => (*ip).saddr = new_addr,
        }
        *port = new_port.to_be_bytes();
    }
    Ok(())
}

const _: () = assert!(IPV4_HLEN == 20);

/// Rewrites only an address, with the IPv4 checksum (later fragments carry
/// no L4 header; the L4 checksum was fixed in the first fragment).
#[inline(always)]
pub(crate) fn xdp4_rewrite_addr(
    ctx: &XdpContext,
    end: End,
    new_addr: [u8; 4],
) -> Result<(), Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, L3_OFF).map_err(|_| Reason::DropRewrite)?;
    // SAFETY: bounds-checked above; byte arrays only.
    unsafe {
        let old_addr = match end {
            End::Dst => (*ip).daddr,
            End::Src => (*ip).saddr,
        };
        let old = [old_addr[0], old_addr[1], old_addr[2], old_addr[3], 0, 0];
        let new = [new_addr[0], new_addr[1], new_addr[2], new_addr[3], 0, 0];
        (*ip).check = csum_update((*ip).check, &old, &new, 2);
        match end {
            End::Dst => (*ip).daddr = new_addr,
            End::Src => (*ip).saddr = new_addr,
        }
    }
    Ok(())
}
