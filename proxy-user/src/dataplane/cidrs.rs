//! The service CIDRs (`SVCNAT_SVCCIDR4`, `SVCNAT_SVCCIDR6`): the networks
//! cluster IPs are allocated from. The pod pipeline drops traffic to an
//! address inside one that no frontend and no VIP marker holds (an
//! unallocated cluster IP), as kube-proxy's nftables mode does.

use std::{collections::BTreeSet, net::IpAddr};

use proxy_common::{SERVICE_CIDRS_MAX, map_names};

use super::error::{DataplaneError, Result};
use super::handle::Dataplane;
use super::maps::normalize_range;

/// A service CIDR: network address and prefix length.
pub type ServiceCidr = (IpAddr, u8);

impl Dataplane {
    /// Makes the service-CIDR tries hold exactly `cidrs` (of both
    /// families; host bits are cleared, duplicates merged) and remembers
    /// them for [`Self::repair`]. Writes and deletes only the difference
    /// against what the tries hold, new entries before stale ones go (no
    /// moment where an address both sets cover is unguarded). An empty
    /// set turns the drop off. Idempotent: returns how many entries it
    /// wrote or deleted (0 when the tries already matched). Refuses, before
    /// writing anything, more CIDRs of one family than a trie holds.
    pub fn set_service_cidrs(&mut self, cidrs: &BTreeSet<ServiceCidr>) -> Result<usize> {
        let want: BTreeSet<ServiceCidr> = cidrs.iter().map(|c| normalize_range(*c)).collect();
        for (v4, map) in [(true, map_names::SVCCIDR4), (false, map_names::SVCCIDR6)] {
            let n = want.iter().filter(|(a, _)| a.is_ipv4() == v4).count();
            if n > SERVICE_CIDRS_MAX as usize {
                return Err(DataplaneError::MapFull {
                    map,
                    needed: n,
                    free: SERVICE_CIDRS_MAX as usize,
                    capacity: SERVICE_CIDRS_MAX,
                });
            }
        }
        self.service_cidrs = want;
        self.write_service_cidrs()
    }

    /// The service CIDRs the tries hold now, both families.
    pub fn service_cidrs(&self) -> Result<BTreeSet<ServiceCidr>> {
        Ok(self.maps.cidr_entries()?.into_iter().collect())
    }

    /// Makes the tries equal to the remembered set (the last
    /// [`Self::set_service_cidrs`], or what the tries held when the
    /// dataplane was opened). Returns how many entries it wrote or deleted.
    pub(super) fn write_service_cidrs(&mut self) -> Result<usize> {
        let have = self.service_cidrs()?;
        let mut changed = 0;
        for c in self.service_cidrs.difference(&have) {
            self.maps.cidr_insert(*c)?;
            changed += 1;
        }
        for c in have.difference(&self.service_cidrs) {
            self.maps.cidr_remove(*c)?;
            changed += 1;
        }
        Ok(changed)
    }
}
