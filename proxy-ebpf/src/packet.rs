//! Packet access, written once for both kinds of program context: TC
//! (`TcContext`, an skb: kernel helpers for reads past the linear area,
//! writes and checksums; see `tc.rs`) and XDP (`XdpContext`: direct access
//! and incremental checksums only; see `xdp.rs`). The parsers and the NAT
//! rewrites are generic over [`Packet`]. Every method is `#[inline(always)]`:
//! each program gets the code written for its own context, with no call and
//! no dispatch left.

use proxy_common::Reason;

/// The furthest a header field may lie from the start of the frame:
/// more than the parsers reach (Ethernet, IPv6 with the extension headers
/// they walk, L4 header), less than the verifier's bound on packet offsets.
pub(crate) const MAX_OFF: usize = 0x3fff;

/// One end of a TCP/UDP flow in a packet, as a rewrite sees it: where its
/// address and port are, and the checksums that cover them.
#[derive(Clone, Copy)]
pub(crate) struct EndAt {
    /// Offset of the address.
    pub addr: usize,
    /// Offset of the port.
    pub port: usize,
    /// Offset of the L3 header checksum, which covers the address (IPv4;
    /// IPv6 has none).
    pub l3_csum: Option<usize>,
    /// Offset of the L4 checksum, which covers the port and (through the
    /// pseudo-header) the address.
    pub l4_csum: usize,
    /// TCP (else UDP).
    pub tcp: bool,
    /// A UDP datagram sent without checksum (zero): it keeps none.
    pub no_l4_csum: bool,
}

/// A packet under its program's context.
pub(crate) trait Packet {
    /// Start and end of the directly accessible packet data (for TC, the
    /// skb's linear area).
    fn bounds(&self) -> (usize, usize);

    /// Length of the packet as it arrived, for the stats.
    fn len(&self) -> u32;

    /// A pointer to a `T` at `off` when it lies within the directly
    /// accessible data. The bound is checked on the pointer itself, so that
    /// the verifier accepts the access for an `off` it only knows a range of
    /// (IPv6 extension headers).
    /// `off` is bounded first ([`MAX_OFF`]): the verifier refuses pointer
    /// arithmetic with an offset it knows no bound of, as one read back
    /// from a map (IPv6 keeps its parsed header in its scratch map).
    #[inline(always)]
    fn at<T>(&self, off: usize) -> Result<*mut T, ()> {
        if off > MAX_OFF {
            return Err(());
        }
        let (start, end) = self.bounds();
        let p = start + off;
        if p + core::mem::size_of::<T>() > end {
            return Err(());
        }
        Ok(p as *mut T)
    }

    /// Copies a `T` at `off` out of the packet; `Err` when the packet ends
    /// before it. Headers are byte arrays (alignment 1), read as such; a
    /// `T` of words (IPv6's addresses, see `v6::ip`) is loaded a word at
    /// a time, at an offset that may not be a multiple of 4 (an IPv6
    /// header after Ethernet is 2-aligned). Rust's `ptr::read` asks for
    /// `T`'s alignment, which such a pointer does not have; we rely on the
    /// target instead, as BPF programs in C do (Cilium reads addresses as
    /// `__u32` words the same way): the verifier checks the alignment of
    /// packet accesses only under strict alignment, which svcnat does not
    /// ask for, and the x86-64 and arm64 JITs load it as it is. The word
    /// loads save some 130 instructions per IPv6 packet against byte loads.
    fn read<T: Copy>(&self, off: usize) -> Result<T, ()>;

    /// Writes `v` at `off`.
    fn write<T: Copy>(&self, off: usize, v: &T) -> Result<(), Reason>;

    /// Fixes the 16-bit checksum at `csum_off` for a 2-byte field it covers
    /// that changed from `old` to `new` (network order bytes). A plain sum:
    /// no pseudo-header, no offload state (the IPv4 header, ICMP).
    fn csum_replace2(&self, csum_off: usize, old: [u8; 2], new: [u8; 2]) -> Result<(), Reason>;

    /// [`Packet::csum_replace2`] for a 4-byte field.
    fn csum_replace4(&self, csum_off: usize, old: [u8; 4], new: [u8; 4]) -> Result<(), Reason>;

    /// Rewrites one end of a TCP/UDP packet from address and port `old` to
    /// `new` (port in host order; an address of either family, `N` bytes),
    /// with the L3 and L4 checksums of `at`.
    /// Addresses by reference: an IPv6 copy costs 16 bytes of the
    /// 512-byte stack per call site.
    fn rewrite_end<const N: usize>(
        &self,
        at: &EndAt,
        old: (&[u8; N], u16),
        new: (&[u8; N], u16),
    ) -> Result<(), Reason>;
}

/// The first four bytes of an address (all of an IPv4 one): what the IPv4
/// header checksum covers.
#[inline(always)]
pub(crate) fn first4<const N: usize>(a: &[u8; N]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}
