//! Fragments of service traffic.
//!
//! Only the first fragment carries ports, so only it can be looked up as a
//! service flow. When it is translated, where it went is recorded under the
//! datagram's (source, destination, protocol, id) (IPv6: the fragment
//! header's id); later fragments with that
//! key get the same address rewrite (they have no L4 header, and the L4
//! checksum in the first fragment was already fixed for the whole datagram).
//! A later fragment that arrives before its first one, or whose first one was
//! not service traffic, is passed untouched and counted as untracked: to the
//! stack it is a fragment for an address nobody owns, so it is dropped there
//! on reassembly timeout rather than misdelivered.

use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use proxy_common::Reason;

use super::{
    Addr, FRAG, FragValue, Ip, frag_key as key,
    nat::{End, nat_rewrite_addr},
};
use crate::verdict::{Verdict, pass};

/// Records where the later fragments of `ip`'s datagram go. Best effort: if
/// the map cannot take it the later fragments pass untranslated (and are
/// counted), the first one is still translated.
#[inline(always)]
pub(crate) fn frag_record(ip: &Ip, dir: u8, addr: Addr) {
    let _ = FRAG.insert(key(ip, dir), FragValue { addr }, u64::from(BPF_ANY));
}

/// The address recorded for `ip`'s datagram under `dir`, if any.
#[inline(always)]
pub(crate) fn frag_lookup(ip: &Ip, dir: u8) -> Option<Addr> {
    // SAFETY: copied at once.
    unsafe { FRAG.get(key(ip, dir)).copied() }.map(|v| v.addr)
}

/// Translates a later fragment, rewriting the `end` address.
#[inline(always)]
pub(crate) fn frag_translate(
    ctx: &TcContext,
    ip: &Ip,
    dir: u8,
    end: End,
) -> Result<Verdict, Reason> {
    // SAFETY: copied at once.
    let Some(v) = (unsafe { FRAG.get(key(ip, dir)).copied() }) else {
        return Ok(pass(Reason::PassFragmentUntracked));
    };
    let old = match end {
        End::Dst => ip.daddr,
        End::Src => ip.saddr,
    };
    nat_rewrite_addr(ctx, end, old, v.addr)?;
    Ok(pass(Reason::NatFragment))
}
