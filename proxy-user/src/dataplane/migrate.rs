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
//!
//! Layout 2 -> 3 (conntrack you can trust): conntrack values grew (the TCP
//! sequence number of their side, the flow's other end), so the conntrack
//! map is a new map. Before the new object is loaded, the old map's pin is
//! moved aside to [`OLD_CT4_PIN`] (the old programs keep using the map
//! itself); the loader creates the new map under the usual name; every old
//! entry is copied into it (the other end taken from the key, or from the
//! SNAT map for source-NATed flows; an established flow is taken to have
//! been answered; sequence numbers start unknown, so the first RST of a
//! migrated flow is believed, as before). Entries the new programs already
//! wrote are never overwritten. Once the new programs run, the copy is
//! repeated for flows the old programs created meanwhile, the old pin is
//! removed, and so are the forward SNAT entries (layout 3 keeps the source
//! of a source-NATed flow in its conntrack entry). A layout-1 folder goes
//! through both steps.
//!
//! Layout 3 -> 4 (IPv6): the IPv6 maps are new; the loader creates them
//! empty and pins them, and every IPv4 map keeps its layout-3 form, so
//! there is nothing to copy: the migration only swaps the programs and
//! replaces the marker.

use std::{fs, io, path::Path};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{
    CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_REPLIED, CT_F_SEEN_NON_SYN, CT_F_SNAT, Ct4Key, CtValue,
    IPPROTO_TCP, MAPS, MapDef, Snat4Value, map_names,
};

use super::{
    error::{DataplaneError, map_err},
    maps::{BPF_NOEXIST, ignore_missing, open_pinned},
};

/// Where the conntrack map of layouts 1 and 2 is pinned while a migration
/// to layout 3 copies it (bpffs refuses names with a dot).
pub const OLD_CT4_PIN: &str = "SVCNAT_CT4_LAYOUT2";

/// A conntrack value of layouts 1 and 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValueV2 {
    /// As [`CtValue::nat_addr`].
    pub nat_addr: [u8; 4],
    /// As [`CtValue::nat_port`].
    pub nat_port: u16,
    /// As [`CtValue::flags`].
    pub flags: u8,
    /// Explicit padding.
    pub pad: u8,
    /// As [`CtValue::backend_id`].
    pub backend_id: u32,
    /// As [`CtValue::svc_id`].
    pub svc_id: u32,
    /// As [`CtValue::created_ns`].
    pub created_ns: u64,
    /// As [`CtValue::expires_ns`].
    pub expires_ns: u64,
}

// SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays only, every
// padding byte an explicit field (32 bytes).
unsafe impl aya::Pod for CtValueV2 {}

type Result<T> = std::result::Result<T, DataplaneError>;

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
    /// Conntrack entries copied into the layout-3 map.
    pub copied: usize,
}

impl std::ops::AddAssign for MigrationReport {
    fn add_assign(&mut self, o: Self) {
        self.rekeyed += o.rekeyed;
        self.current += o.current;
        self.lost += o.lost;
        self.removed += o.removed;
        self.copied += o.copied;
    }
}

/// Layouts an agent of this version migrates from.
pub const MIGRATES_FROM: &[u32] = &[1, 2, 3];

/// Where a map of the table whose key or value changed after layout
/// `m.layout - 1` is pinned while a migration copies it (bpffs refuses
/// names with a dot): [`OLD_CT4_PIN`] for the conntrack map of layout 3.
pub fn old_pin(m: &MapDef) -> String {
    format!("{}_LAYOUT{}", m.name, m.layout - 1)
}

/// The maps a folder of layout `from` has in an older form: the loader
/// creates them anew, and the migration copies their entries. (Maps the
/// folder does not have yet, such as the IPv6 ones of layout 4, are simply
/// created.)
fn changed_since(from: u32) -> impl Iterator<Item = &'static MapDef> {
    MAPS.iter()
        .filter(move |m| m.layout > from && m.since <= from)
}

/// Every name an old map may be pinned under during a migration (for
/// `svcnat cleanup`).
pub fn old_pins() -> impl Iterator<Item = String> {
    MAPS.iter().filter(|m| m.layout > m.since).map(old_pin)
}

/// Before the new object is loaded on a folder of layout `from`: moves the
/// pins of the maps whose form changed since (layout 3: the conntrack map)
/// aside, unless an interrupted migration did already.
pub fn prepare(dir: &Path, from: u32) -> Result<()> {
    for m in changed_since(from) {
        let (cur, old) = (dir.join(m.name), dir.join(old_pin(m)));
        if old.exists() || !cur.exists() {
            continue;
        }
        fs::rename(&cur, &old).map_err(|source| DataplaneError::Io { path: cur, source })?;
    }
    Ok(())
}

/// Migrates the maps pinned in `dir` from layout `from` to this agent's.
/// `remove_old`: entries (and pins) only the old programs read are removed
/// afterwards (do that only once the new programs are attached).
pub fn migrate(dir: &Path, from: u32, remove_old: bool) -> Result<MigrationReport> {
    let mut report = MigrationReport::default();
    if from <= 1 {
        report += v1_to_v2(dir, remove_old)?;
    }
    if from <= 2 {
        report += v2_to_v3(dir, remove_old)?;
    }
    Ok(report)
}

/// The conntrack map of layouts 1 and 2: under [`OLD_CT4_PIN`] during a
/// migration.
fn old_ct(dir: &Path) -> Result<Option<HashMap<MapData, Ct4Key, CtValueV2>>> {
    if !dir.join(OLD_CT4_PIN).exists() {
        return Ok(None);
    }
    let map = open_pinned(dir, OLD_CT4_PIN)?;
    HashMap::try_from(map)
        .map(Some)
        .map_err(map_err(map_names::CT4))
}

/// Layout 2 -> 3 on the maps pinned in `dir` (see the module doc).
pub fn v2_to_v3(dir: &Path, remove_old: bool) -> Result<MigrationReport> {
    let mut report = MigrationReport::default();
    let Some(old) = old_ct(dir)? else {
        return Ok(report);
    };
    let mut new: HashMap<MapData, Ct4Key, CtValue> =
        HashMap::try_from(open_pinned(dir, map_names::CT4)?).map_err(map_err(map_names::CT4))?;
    let mut snat: HashMap<MapData, Ct4Key, Snat4Value> =
        HashMap::try_from(open_pinned(dir, map_names::SNAT4)?)
            .map_err(map_err(map_names::SNAT4))?;
    let entries: Vec<(Ct4Key, CtValueV2)> = old.iter().filter_map(|r| r.ok()).collect();
    for (k, v) in entries {
        if new.get(&k, 0).is_ok() {
            report.current += 1;
            continue;
        }
        // The flow's other end: for a source-NATed flow the SNAT map has it
        // (forward entry: the source the backend sees; reverse entry: the
        // client), else the key itself.
        let peer = match (k.dir, v.flags & CT_F_SNAT != 0) {
            (CT_DIR_SERVICE, false) => Some((k.saddr, k.sport)),
            (_, false) => Some((k.daddr, k.dport)),
            (_, true) => snat.get(&k, 0).ok().map(|s| (s.addr, s.port)),
        };
        let Some((peer_addr, peer_port)) = peer else {
            report.lost += 1;
            continue;
        };
        // Layout 2 did not record whether the backend answered; a TCP flow
        // past its SYN, or a UDP flow, is taken to have been.
        let answered = k.proto != IPPROTO_TCP || v.flags & CT_F_SEEN_NON_SYN != 0;
        let value = CtValue {
            nat_addr: v.nat_addr,
            nat_port: v.nat_port,
            flags: v.flags | if answered { CT_F_REPLIED } else { 0 },
            pad: 0,
            backend_id: v.backend_id,
            svc_id: v.svc_id,
            created_ns: v.created_ns,
            expires_ns: v.expires_ns,
            seq_next: 0,
            peer_addr,
            peer_port,
            pad2: 0,
            pad3: 0,
        };
        // BPF_NOEXIST: what the new programs wrote meanwhile stays.
        match new.insert(k, value, BPF_NOEXIST) {
            Ok(()) => report.copied += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                report.current += 1;
            }
            Err(e) => return Err(map_err(map_names::CT4)(e)),
        }
    }
    drop(old);
    if remove_old {
        // Layout 3 keeps no forward SNAT entries (conntrack has the source).
        let forward: Vec<Ct4Key> = snat
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.dir == CT_DIR_SERVICE)
            .collect();
        for k in forward {
            ignore_missing(snat.remove(&k)).map_err(map_err(map_names::SNAT4))?;
            report.removed += 1;
        }
        let p = dir.join(OLD_CT4_PIN);
        match fs::remove_file(&p) {
            Ok(()) => report.removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { path: p, source }),
        }
    }
    Ok(report)
}

/// Layout 1 -> 2 on the maps pinned in `dir`. With `remove_old`, entries
/// only the layout-1 programs read are removed afterwards (do that only
/// once the new programs are attached).
pub fn v1_to_v2(dir: &Path, remove_old: bool) -> Result<MigrationReport> {
    let Some(mut ct) = old_ct(dir)? else {
        return Ok(MigrationReport::default());
    };
    let mut snat: HashMap<MapData, Ct4Key, Snat4Value> =
        HashMap::try_from(open_pinned(dir, map_names::SNAT4)?)
            .map_err(map_err(map_names::SNAT4))?;
    // Collected first: the passes below write to the map being walked.
    let flows: Vec<(Ct4Key, CtValueV2)> = ct
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_conntrack_pin_follows_the_table() {
        let ct = MapDef::by_name(map_names::CT4).expect("conntrack map");
        assert_eq!(old_pin(ct), OLD_CT4_PIN);
        assert_eq!(old_pins().collect::<Vec<_>>(), [OLD_CT4_PIN]);
        assert_eq!(
            changed_since(2).map(|m| m.name).collect::<Vec<_>>(),
            [map_names::CT4]
        );
        assert_eq!(changed_since(3).count(), 0, "layout 4 only adds maps");
        assert_eq!(changed_since(proxy_common::LAYOUT_VERSION).count(), 0);
    }
}
