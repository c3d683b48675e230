//! The codec of the pinned maps: how frontends, VIP markers and source
//! ranges become map entries and back, the per-CPU counters, and the
//! generic walks (bounded iteration, pruning, deletes that tolerate absent
//! keys). The only code that knows the entries' encoding; the table,
//! inspection, metrics, migration and tests read the maps through it.

use super::*;

/// A source-range key as (service id, address, LPM prefix length), to
/// compare keys (the LPM key type has no ordering).
pub(super) type RangeId = (u32, [u8; 4], u32);

pub(super) fn range_id(k: &aya::maps::lpm_trie::Key<SrcRange4>) -> RangeId {
    let data = k.data();
    (u32::from_be_bytes(data.svc_id), data.addr, k.prefix_len())
}

pub(super) fn range_key_of(
    (svc_id, addr, prefix_len): RangeId,
) -> aya::maps::lpm_trie::Key<SrcRange4> {
    aya::maps::lpm_trie::Key::new(
        prefix_len,
        SrcRange4 {
            svc_id: svc_id.to_be_bytes(),
            addr,
        },
    )
}

/// The service id and range of a source-range key; `None` for a key whose
/// prefix length is not 32 (the service id) plus 0..=32.
pub(super) fn range_of(k: &aya::maps::lpm_trie::Key<SrcRange4>) -> Option<(u32, (Ipv4Addr, u8))> {
    let (svc_id, addr, prefix_len) = range_id(k);
    let len = prefix_len.checked_sub(32).filter(|l| *l <= 32)?;
    Some((svc_id, (Ipv4Addr::from(addr), len as u8)))
}

/// A range with its host bits cleared and its prefix length at most 32.
pub(super) fn normalize_range((addr, len): (Ipv4Addr, u8)) -> (Ipv4Addr, u8) {
    let len = len.min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    (Ipv4Addr::from(u32::from(addr) & mask), len)
}

/// The LPM key of source range `r` of service `svc_id`.
pub(super) fn range_key(svc_id: u32, r: (Ipv4Addr, u8)) -> aya::maps::lpm_trie::Key<SrcRange4> {
    let (net, len) = normalize_range(r);
    range_key_of((svc_id, net.octets(), 32 + u32::from(len)))
}

pub(super) fn svc_entry(fe: &Frontend4, scope: u8, s: &ServiceMirror) -> (Svc4Key, SvcValue) {
    (
        Svc4Key {
            vip: fe.vip.octets(),
            port: fe.port,
            proto: fe.proto,
            scope,
        },
        SvcValue {
            svc_id: s.svc_id,
            count: s.backend_ids.len() as u16,
            flags: s.flags,
            affinity_timeout: s.affinity_timeout,
            pad: 0,
        },
    )
}

pub(super) fn vip_marker(vip: Ipv4Addr) -> (Svc4Key, SvcValue) {
    (
        Svc4Key {
            vip: vip.octets(),
            port: 0,
            proto: 0,
            scope: SCOPE_EXTERNAL,
        },
        SvcValue {
            svc_id: 0,
            count: 0,
            flags: SVC_FLAG_VIP,
            affinity_timeout: 0,
            pad: 0,
        },
    )
}

/// `bpf_map_update_elem` flag `BPF_NOEXIST`: only create (linux/bpf.h).
pub(crate) const BPF_NOEXIST: u64 = 1;

/// `BPF_EXIST`: update an entry only if it is still there.
pub(crate) const BPF_EXIST: u64 = 2;

/// The entries of `map`, read in one walk over at most `limit` keys (a
/// walk over a map that changes underneath may start over, so it is
/// bounded); entries that vanish between the key and its lookup are
/// skipped.
pub(super) fn walk<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for k in map.keys().take(limit) {
        let k = k.map_err(map_err(name))?;
        match map.get(&k, 0) {
            Ok(v) => out.push((k, v)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}

/// Deletes every entry of `map` whose key `keep` rejects. Returns how many
/// it deleted.
pub(super) fn prune<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<usize> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    let mut deleted = 0;
    for k in keys.iter().filter(|k| !keep(k)) {
        ignore_missing(map.remove(k)).map_err(map_err(name))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Whether a delete deleted something (deleting what is absent is not an
/// error).
pub(super) fn removed(r: Result<(), MapError>) -> Result<bool, MapError> {
    match r {
        Ok(()) => Ok(true),
        other => ignore_missing(other).map(|()| false),
    }
}

/// Deleting what is absent is not an error.
pub(crate) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Sums a per-CPU stats array by reason.
pub fn read_stats(stats: &PerCpuArray<MapData, StatValue>) -> Result<Vec<(Reason, StatValue)>> {
    Reason::ALL
        .iter()
        .map(|r| {
            let sum = stat_slot(stats, *r as u32).map_err(map_err(map_names::STATS))?;
            Ok((*r, sum))
        })
        .collect()
}

/// One slot of a per-CPU stats array (a [`Reason`], or a counter such as
/// [`STAT_CT_CREATED`]), summed over CPUs.
pub fn stat_slot(
    stats: &PerCpuArray<MapData, StatValue>,
    slot: u32,
) -> std::result::Result<StatValue, MapError> {
    let per_cpu = stats.get(&slot, 0)?;
    Ok(per_cpu
        .iter()
        .fold(StatValue::default(), |acc, v| StatValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        }))
}

/// Opens one pinned map of `dir` by name (for inspection while the agent is
/// stopped).
pub fn open_pinned(dir: &Path, name: &'static str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}
