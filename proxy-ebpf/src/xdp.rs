//! [`Packet`] for XDP programs. XDP has no skb and no checksum helpers:
//! headers are read and written by direct packet access, and checksums are
//! updated incrementally (RFC 1624). Frames at XDP arrive from the wire with
//! complete checksums (no offload state to keep).

use aya_ebpf::programs::XdpContext;
use proxy_common::Reason;

use crate::{
    csum,
    packet::{EndAt, Packet, first4},
};

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
        // SAFETY: bounds-checked by `at`; see `Packet::read` on alignment.
        Ok(unsafe { core::ptr::read(p) })
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
    /// checksum computes to zero gets 0xffff (RFC 768; RFC 8200 for IPv6,
    /// where zero is not even allowed as "none").
    #[inline(always)]
    fn rewrite_end<const N: usize>(
        &self,
        at: &EndAt,
        old: (&[u8; N], u16),
        new: (&[u8; N], u16),
    ) -> Result<(), Reason> {
        // Each field bounds-checked where it is: the L4 ones sit at an
        // offset the verifier may know only a range of (IPv6).
        let addr: *mut [u8; N] = self.at(at.addr).map_err(|()| Reason::DropRewrite)?;
        let port: *mut [u8; 2] = self.at(at.port).map_err(|()| Reason::DropRewrite)?;
        let l4: *mut [u8; 2] = self.at(at.l4_csum).map_err(|()| Reason::DropRewrite)?;
        if let Some(l3_off) = at.l3_csum {
            let l3: *mut [u8; 2] = self.at(l3_off).map_err(|()| Reason::DropRewrite)?;
            // SAFETY: bounds-checked by `at`; byte arrays only.
            unsafe { *l3 = csum::update(*l3, &first4(old.0), &first4(new.0)) };
        }
        let (op, np) = (old.1.to_be_bytes(), new.1.to_be_bytes());
        // SAFETY: every field bounds-checked by `at` above; byte arrays only.
        unsafe {
            // `at.no_l4_csum`, read from the field itself (loaded here
            // anyway): a zero UDP checksum is "none", and a rewrite never
            // writes one.
            let check = *l4;
            if at.tcp || check != [0, 0] {
                let mut c = csum::update(check, old.0, new.0);
                c = csum::update(c, &op, &np);
                if !at.tcp && c == [0, 0] {
                    c = [0xff, 0xff];
                }
                *l4 = c;
            }
            *addr = *new.0;
            *port = np;
        }
        Ok(())
    }
}
