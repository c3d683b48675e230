//! [`Packet`] for TC programs. Reads go by direct packet access when the
//! data lies in the skb's linear area (the usual case), else through
//! `bpf_skb_load_bytes`, which also reads paged data. Writes and checksum
//! updates go through the kernel's helpers rather than by hand: they handle
//! offloaded (CHECKSUM_PARTIAL) packets from pods, where the L4 field holds
//! only the pseudo-header sum, and UDP's "no checksum" zero
//! (`BPF_F_MARK_MANGLED_0` leaves a zero alone and never writes one).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use proxy_common::Reason;

use crate::packet::{EndAt, Packet, first4};

#[inline(always)]
fn addr_u64(a: [u8; 4]) -> u64 {
    u64::from(u32::from_ne_bytes(a))
}

/// The checksum difference of `old` replaced by `new` (`N` a multiple of
/// 4), as `bpf_l4_csum_replace` takes it with size 0.
#[inline(always)]
fn csum_diff<const N: usize>(old: &[u8; N], new: &[u8; N]) -> Result<u64, Reason> {
    // SAFETY: both buffers are N bytes; the helper only reads them.
    let d = unsafe {
        bpf_csum_diff(
            old.as_ptr() as *mut u32,
            N as u32,
            new.as_ptr() as *mut u32,
            N as u32,
            0,
        )
    };
    if d < 0 {
        return Err(Reason::DropRewrite);
    }
    Ok(d as u64)
}

#[inline(always)]
fn port_u64(p: u16) -> u64 {
    u64::from(u16::from_ne_bytes(p.to_be_bytes()))
}

impl Packet for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (TcContext::data(self), TcContext::data_end(self))
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Result<T, ()> {
        match self.at::<T>(off) {
            // SAFETY: `at` checked that the read stays inside the linear
            // packet data (and proved it to the verifier); see
            // `Packet::read` on alignment.
            Ok(p) => Ok(unsafe { core::ptr::read(p) }),
            Err(()) => self.load::<T>(off).map_err(|_| ()),
        }
    }

    #[inline(always)]
    fn write<T: Copy>(&self, off: usize, v: &T) -> Result<(), Reason> {
        self.store(off, v, 0).map_err(|_| Reason::DropRewrite)
    }

    #[inline(always)]
    fn csum_replace2(&self, csum_off: usize, old: [u8; 2], new: [u8; 2]) -> Result<(), Reason> {
        let (o, n) = (
            u64::from(u16::from_ne_bytes(old)),
            u64::from(u16::from_ne_bytes(new)),
        );
        self.l3_csum_replace(csum_off, o, n, 2)
            .map_err(|_| Reason::DropRewrite)
    }

    #[inline(always)]
    fn csum_replace4(&self, csum_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), Reason> {
        self.l3_csum_replace(csum_off, addr_u64(old), addr_u64(new), 4)
            .map_err(|_| Reason::DropRewrite)
    }

    /// Fields that do not change are left alone (no helper call). An IPv4
    /// address is handed to the checksum helpers whole; an IPv6 one as the
    /// difference `bpf_csum_diff` computes.
    #[inline(always)]
    fn rewrite_end<const N: usize>(
        &self,
        at: &EndAt,
        old: (&[u8; N], u16),
        new: (&[u8; N], u16),
    ) -> Result<(), Reason> {
        let mangled = if at.tcp {
            0
        } else {
            u64::from(BPF_F_MARK_MANGLED_0)
        };
        if old.0 != new.0 {
            if !at.no_l4_csum {
                let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
                let r = if N == 4 {
                    let (o, n) = (first4(old.0), first4(new.0));
                    self.l4_csum_replace(at.l4_csum, addr_u64(o), addr_u64(n), pseudo | 4)
                } else {
                    let d = csum_diff(old.0, new.0)?;
                    self.l4_csum_replace(at.l4_csum, 0, d, pseudo)
                };
                r.map_err(|_| Reason::DropRewrite)?;
            }
            if let Some(l3) = at.l3_csum {
                self.csum_replace4(l3, first4(old.0), first4(new.0))?;
            }
            self.write(at.addr, new.0)?;
        }
        if old.1 != new.1 {
            if !at.no_l4_csum {
                self.l4_csum_replace(at.l4_csum, port_u64(old.1), port_u64(new.1), mangled | 2)
                    .map_err(|_| Reason::DropRewrite)?;
            }
            self.write(at.port, &new.1.to_be_bytes())?;
        }
        Ok(())
    }
}
