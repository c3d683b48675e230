//! Per-CPU counters by reason.

use proxy_common::Reason;

use crate::maps::STATS;

/// Counts one packet of `len` bytes under `reason`.
#[inline(always)]
pub(crate) fn count(reason: Reason, len: u32) {
    if let Some(v) = STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot of a preallocated array, only this CPU writes it.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += u64::from(len);
        }
    }
}
