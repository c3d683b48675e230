//! Migrations of pinned maps from an older layout, without dropping flows.
//!
//! The pin folder's marker (`layout-vN`) says which layout its maps have.
//! An agent with a newer layout that finds an older one migrates in place:
//! 1. before its programs replace the old ones, it writes every entry the
//!    new programs need next to the old ones (the old programs ignore them);
//! 2. it swaps its programs into the pinned links (atomic per link);
//! 3. it runs step 1 again for flows the old programs created meanwhile,
//!    then removes the entries only the old programs used, and the old
//!    marker.
//!
//! A crash anywhere leaves a folder that the next agent migrates again
//! (each step is idempotent). An agent never downgrades: an older agent
//! refuses a folder marked with a newer layout.
//!
//! Layout 1 -> 2 (source-port remapping on NAT clashes): the forward SNAT
//! entry of a node-port flow to a remote backend was keyed by the flow
//! after DNAT (client -> backend) and is now keyed by its conntrack service
//! key (client -> frontend); the flow's conntrack reply entry was keyed by
//! the client's address and port and is now keyed by the SNAT address and
//! port the backend answers to. No map changed its key or value type, so
//! the maps stay and their entries are re-keyed.

use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{
    CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_SNAT, Ct4Key, CtValue, Snat4Value, map_names,
};

use crate::dataplane::{DataplaneError, ignore_missing, open_pinned};

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// What a migration pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Flows whose entries were written under the new keys in this pass.
    pub rekeyed: usize,
    /// Flows already in the new layout (migrated earlier, or created by the
    /// new programs).
    pub current: usize,
    /// Flows that could not be migrated (an entry had already expired or
    /// been evicted); they reset, as they would have anyway.
    pub lost: usize,
    /// Old-layout entries removed.
    pub removed: usize,
}

/// Layouts an agent of this version migrates from.
pub const MIGRATES_FROM: &[u32] = &[1];

/// Migrates the maps pinned in `dir` from layout `from` to this agent's.
/// `remove_old`: see [`v1_to_v2`].
pub fn migrate(dir: &Path, from: u32, remove_old: bool) -> Result<MigrationReport> {
    match from {
        1 => v1_to_v2(dir, remove_old),
        _ => Ok(MigrationReport::default()),
    }
}

/// Layout 1 -> 2 on the maps pinned in `dir`. With `remove_old`, entries
/// only the layout-1 programs read are removed afterwards (do that only
/// once the new programs are attached).
pub fn v1_to_v2(dir: &Path, remove_old: bool) -> Result<MigrationReport> {
    let mut ct: HashMap<MapData, Ct4Key, CtValue> =
        HashMap::try_from(open_pinned(dir, map_names::CT4)?).map_err(map_err(map_names::CT4))?;
    let mut snat: HashMap<MapData, Ct4Key, Snat4Value> =
        HashMap::try_from(open_pinned(dir, map_names::SNAT4)?)
            .map_err(map_err(map_names::SNAT4))?;
    // Collected first: the passes below write to the map being walked.
    let flows: Vec<(Ct4Key, CtValue)> = ct
        .iter()
        .filter_map(std::result::Result::ok)
        .filter(|(k, v)| k.dir == CT_DIR_SERVICE && v.flags & CT_F_SNAT != 0)
        .collect();
    let mut report = MigrationReport::default();
    for (key, flow) in flows {
        let old_fwd = Ct4Key {
            daddr: flow.nat_addr,
            dport: flow.nat_port,
            ..key
        };
        let Ok(out) = snat.get(&old_fwd, 0) else {
            if snat.get(&key, 0).is_ok() {
                report.current += 1;
            } else {
                report.lost += 1;
            }
            continue;
        };
        let old_rev = Ct4Key {
            saddr: flow.nat_addr,
            daddr: key.saddr,
            sport: flow.nat_port,
            dport: key.sport,
            proto: key.proto,
            dir: CT_DIR_REPLY,
            pad: 0,
        };
        let new_rev = Ct4Key {
            daddr: out.addr,
            dport: out.port,
            ..old_rev
        };
        let reply = match ct.get(&old_rev, 0) {
            // The old reply entry of this very flow (not of another flow
            // that happens to use the same tuple).
            Ok(r)
                if r.flags & CT_F_SNAT != 0
                    && r.nat_addr == key.daddr
                    && r.nat_port == key.dport =>
            {
                Some(r)
            }
            _ => None,
        };
        match reply {
            Some(r) => {
                ct.insert(new_rev, r, 0).map_err(map_err(map_names::CT4))?;
                snat.insert(key, out, 0)
                    .map_err(map_err(map_names::SNAT4))?;
                report.rekeyed += 1;
                if remove_old {
                    ignore_missing(ct.remove(&old_rev)).map_err(map_err(map_names::CT4))?;
                    report.removed += 1;
                }
            }
            None if ct.get(&new_rev, 0).is_ok() => report.current += 1,
            None => report.lost += 1,
        }
        if remove_old {
            ignore_missing(snat.remove(&old_fwd)).map_err(map_err(map_names::SNAT4))?;
            report.removed += 1;
        }
    }
    Ok(report)
}
