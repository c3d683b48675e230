//! Internet checksum arithmetic done by hand: sums of headers the datapath
//! builds from scratch (rejects), and incremental updates for XDP, which has
//! no checksum helpers. TC rewrites of existing packets use the kernel's
//! incremental helpers instead, which also keep the skb's checksum state
//! (offload) right (see `tc.rs`).

/// One's complement sum of `N` 16-bit words, folded and complemented.
///
/// The sum is independent of byte order, so words read in memory order give a
/// result to store in memory order.
#[inline(always)]
pub(crate) fn fold<const N: usize>(words: &[u16; N], seed: u32) -> u16 {
    let mut sum = seed;
    let mut i = 0;
    while i < N {
        sum += u32::from(words[i]);
        i += 1;
    }
    // N is small (at most a few dozen words), so two folds always suffice;
    // a data-dependent loop here is one the verifier cannot bound.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Views a `#[repr(C)]` header of an even size as 16-bit words.
///
/// # Safety
/// `T` must be exactly `2 * N` bytes with no padding.
#[inline(always)]
pub(crate) unsafe fn words<T, const N: usize>(v: &T) -> &[u16; N] {
    // SAFETY: the caller guarantees the size; u16 alignment holds for the
    // 2-aligned stack copies this is used on.
    unsafe { &*(v as *const T as *const [u16; N]) }
}

/// `check` updated for the bytes `old` replaced by `new`, as 16-bit words
/// (`N` even; RFC 1624: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub(crate) fn update<const N: usize>(check: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(check));
    let mut i = 0;
    while i < N / 2 {
        sum += u32::from(!u16::from_be_bytes([old[2 * i], old[2 * i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[2 * i], new[2 * i + 1]]));
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
