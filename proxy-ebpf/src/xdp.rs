//! [`Packet`] for XDP programs. XDP has no skb and no checksum helpers:
//! headers are read and written by direct packet access, and checksums are
//! updated incrementally (RFC 1624). Frames at XDP arrive from the wire with
//! complete checksums (no offload state to keep).

use core::cmp::max;

use aya_ebpf::programs::XdpContext;
use proxy_common::Reason;

use crate::{
    csum,
    packet::{EndAt, Packet},
};

#[inline(always)]
fn addr_port(addr: [u8; 4], port: u16) -> [u8; 6] {
    let p = port.to_be_bytes();
    [addr[0], addr[1], addr[2], addr[3], p[0], p[1]]
}

/// Updates the checksum at `csum_off` in place for `old` replaced by `new`.
#[inline(always)]
fn csum_replace<const N: usize>(
    ctx: &XdpContext,
    csum_off: usize,
    old: &[u8; N],
    new: &[u8; N],
) -> Result<(), Reason> {
    let c: *mut [u8; 2] = ctx.at(csum_off).map_err(|()| Reason::DropRewrite)?;
    // SAFETY: bounds-checked by `at`; byte arrays only.
    unsafe { *c = csum::update(*c, old, new) };
    Ok(())
}

impl Packet for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (XdpContext::data(self), XdpContext::data_end(self))
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        let (start, end) = self.bounds();
        (end - start) as u32
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Result<T, ()> {
        let p = self.at::<T>(off)?;
        // SAFETY: bounds-checked by `at`; headers are byte arrays, so any
        // alignment does.
        Ok(unsafe { core::ptr::read_unaligned(p) })
    }

    #[inline(always)]
    fn write<T: Copy>(&self, off: usize, v: &T) -> Result<(), Reason> {
        let p = self.at::<T>(off).map_err(|()| Reason::DropRewrite)?;
        // SAFETY: bounds-checked by `at`; byte arrays only.
        unsafe { core::ptr::write_unaligned(p, *v) };
        Ok(())
    }

    #[inline(always)]
    fn csum_replace2(&self, csum_off: usize, old: [u8; 2], new: [u8; 2]) -> Result<(), Reason> {
        csum_replace(self, csum_off, &old, &new)
    }

    #[inline(always)]
    fn csum_replace4(&self, csum_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), Reason> {
        csum_replace(self, csum_off, &old, &new)
    }

    /// Every field is written, changed or not. A UDP datagram whose new
    /// checksum computes to zero gets 0xffff (RFC 768).
    #[inline(always)]
    fn rewrite_end(
        &self,
        at: EndAt,
        old: ([u8; 4], u16),
        new: ([u8; 4], u16),
    ) -> Result<(), Reason> {
        // One bounds check for all four fields.
        let len = max(
            max(at.l3_csum + 2, at.addr + 4),
            max(at.l4_csum + 2, at.port + 2),
        );
        let start = self.direct(len).map_err(|()| Reason::DropRewrite)?;
        let l3 = (start + at.l3_csum) as *mut [u8; 2];
        let addr = (start + at.addr) as *mut [u8; 4];
        let l4 = (start + at.l4_csum) as *mut [u8; 2];
        let port = (start + at.port) as *mut [u8; 2];
        let (o, n) = (addr_port(old.0, old.1), addr_port(new.0, new.1));
        // SAFETY: every field lies below `len`, bounds-checked above; byte
        // arrays only.
        unsafe {
            *l3 = csum::update(*l3, &old.0, &new.0);
            // `at.no_l4_csum`, read from the field itself (loaded here
            // anyway): a zero UDP checksum is "none", and a rewrite never
            // writes one.
            let check = *l4;
            if at.tcp || check != [0, 0] {
                let mut c = csum::update(check, &o, &n);
                if !at.tcp && c == [0, 0] {
                    c = [0xff, 0xff];
                }
                *l4 = c;
            }
            *addr = new.0;
            *port = new.1.to_be_bytes();
        }
        Ok(())
    }
}
