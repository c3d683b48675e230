//! The codec of the pinned maps: how frontends, VIP markers and source
//! ranges become map entries and back, the per-CPU counters, and the
//! generic walks (bounded iteration, pruning, deletes that tolerate absent
//! keys). The only code that knows the entries' encoding; the table,
//! inspection, metrics, migration and tests read the maps through it.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, lpm_trie::LpmTrie},
};
use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, Backend4, Reason, RevNat4, SVC_FLAG_EXTERNAL,
    SVC_FLAG_LOAD_BALANCER, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES,
    SrcRange4, StatValue, Svc4Key, SvcValue, map_names,
};

use super::error::{DataplaneError, Result, map_err};
use super::table::{BackendKey, BackendSpec, Frontend, FrontendSpec, ServiceMirror, ServiceOpts};
use crate::{
    model::FrontendKind,
    plan::{FrontendKey, PlannedBackend, PlannedFrontend},
};

/// The aya type of a map of kind `$kind` with key `$k` and value `$v`.
macro_rules! map_type {
    (Hash, $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    (LruHash, $k:ty, $v:ty) => { HashMap<MapData, $k, $v> };
    (PerCpuArray, $k:ty, $v:ty) => { PerCpuArray<MapData, $v> };
    (LpmTrie, $k:ty, $v:ty) => { LpmTrie<MapData, $k, $v> };
}

macro_rules! typed_maps {
    ($( $(#[$doc:meta])* $id:ident = $name:literal, $kind:ident,
        $k:ty => $v:ty, $size:expr, $since:literal, $layout:literal; )*) => {
        /// A typed handle on every map of the datapath, generated from the
        /// table of maps: field `SVC4` is map `SVCNAT_SVC4` and so on.
        pub struct Maps {
            $( $(#[$doc])* pub $id: map_type!($kind, $k, $v), )*
        }

        impl Maps {
            /// Each map as `open` gives it (taken from a loaded object, or
            /// opened from its pin), typed.
            pub fn from_source(mut open: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
                Ok(Self {
                    $( $id: <map_type!($kind, $k, $v)>::try_from(open($name)?)
                        .map_err(map_err($name))?, )*
                })
            }
        }
    };
}

proxy_common::svcnat_maps!(typed_maps);

impl Maps {
    /// The maps of a loaded object (taken out of it).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_source(|name| take(ebpf, name))
    }

    /// The maps pinned in `dir` (for inspection, metrics and tests while an
    /// agent owns them).
    pub fn pinned(dir: &Path) -> Result<Self> {
        Self::from_source(|name| open_pinned(dir, name))
    }
}

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

/// The IPv4 address of `a`: the only family the maps have yet. Every
/// address that goes into a map entry passes here, so that IPv6 is refused
/// in one place (the plan reports IPv6 ports as unsupported before).
pub(super) fn v4(a: IpAddr) -> Result<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(DataplaneError::Family { addr: a }),
    }
}

/// The service id and range of a source-range key; `None` for a key whose
/// prefix length is not 32 (the service id) plus 0..=32.
pub fn range_of(k: &aya::maps::lpm_trie::Key<SrcRange4>) -> Option<(u32, (IpAddr, u8))> {
    let (svc_id, addr, prefix_len) = range_id(k);
    let len = prefix_len.checked_sub(32).filter(|l| *l <= 32)?;
    Some((svc_id, (IpAddr::from(addr), len as u8)))
}

/// A range with its host bits cleared and its prefix length at most the
/// address's length.
pub(super) fn normalize_range((addr, len): (IpAddr, u8)) -> (IpAddr, u8) {
    match addr {
        IpAddr::V4(a) => {
            let len = len.min(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len)
        }
        IpAddr::V6(a) => {
            let len = len.min(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask)),
                len,
            )
        }
    }
}

/// The LPM key of source range `r` of service `svc_id`.
pub(super) fn range_key(
    svc_id: u32,
    r: (IpAddr, u8),
) -> Result<aya::maps::lpm_trie::Key<SrcRange4>> {
    let (net, len) = normalize_range(r);
    Ok(range_key_of((
        svc_id,
        v4(net)?.octets(),
        32 + u32::from(len),
    )))
}

/// The frontend map key of `fe` in `scope`.
pub(super) fn svc_key(fe: &Frontend, scope: u8) -> Result<Svc4Key> {
    Ok(Svc4Key {
        vip: v4(fe.addr)?.octets(),
        port: fe.port,
        proto: fe.proto,
        scope,
    })
}

/// The frontend entry of `fe` in `scope` as the mirror `s` has it.
pub(super) fn svc_entry(
    fe: &Frontend,
    scope: u8,
    s: &ServiceMirror,
) -> Result<(Svc4Key, SvcValue)> {
    Ok((
        svc_key(fe, scope)?,
        SvcValue {
            svc_id: s.svc_id,
            count: s.backend_ids.len() as u16,
            flags: s.flags,
            affinity_timeout: s.affinity_timeout,
            pad: 0,
        },
    ))
}

/// The marker entry of a VIP (a known address: other ports are rejected).
pub(super) fn vip_marker(vip: IpAddr) -> Result<(Svc4Key, SvcValue)> {
    Ok((Svc4Key::vip_marker(v4(vip)?.octets()), SvcValue::VIP_MARKER))
}

/// The reverse NAT entry of `fe`.
pub(super) fn revnat_entry(fe: &Frontend) -> Result<RevNat4> {
    Ok(RevNat4 {
        vip: v4(fe.addr)?.octets(),
        port: fe.port,
        proto: fe.proto,
        pad: 0,
    })
}

/// The backend entry of `key` with `flags`.
pub(super) fn backend_entry(key: &BackendKey, flags: u8) -> Result<Backend4> {
    Ok(Backend4 {
        addr: v4(key.addr)?.octets(),
        port: key.port,
        proto: key.proto,
        flags,
    })
}

/// `bpf_map_update_elem` flag `BPF_NOEXIST`: only create (linux/bpf.h).
pub(super) const BPF_NOEXIST: u64 = 1;

/// `BPF_EXIST`: update an entry only if it is still there.
pub(super) const BPF_EXIST: u64 = 2;

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
pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
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

/// Takes map `name` out of a loaded object.
pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DataplaneError::Map {
        map: name,
        source: MapError::InvalidName { name: name.into() },
    })
}

impl From<&FrontendKey> for Frontend {
    fn from(k: &FrontendKey) -> Self {
        Self {
            addr: k.addr,
            port: k.port,
            proto: k.protocol.number(),
        }
    }
}

impl FrontendSpec {
    /// The entry of a planned frontend: its kind and policy as `SVC_FLAG_*`
    /// bits, its backends' as `BACKEND_FLAG_*` bits.
    pub fn of_plan(p: &PlannedFrontend) -> Self {
        let backends = |list: &[PlannedBackend]| -> Vec<BackendSpec> {
            list.iter()
                .map(|b| BackendSpec {
                    addr: b.addr,
                    port: b.port,
                    flags: (if b.local { BACKEND_FLAG_LOCAL } else { 0 })
                        | (if b.terminating {
                            BACKEND_FLAG_TERMINATING
                        } else {
                            0
                        }),
                })
                .collect()
        };
        let mut flags = match p.kind {
            FrontendKind::ClusterIp => 0,
            FrontendKind::NodePort => SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT,
            FrontendKind::ExternalIp => SVC_FLAG_EXTERNAL,
            FrontendKind::LoadBalancer => SVC_FLAG_EXTERNAL | SVC_FLAG_LOAD_BALANCER,
        };
        if p.local_only {
            flags |= SVC_FLAG_LOCAL_ONLY;
        }
        let mut source_ranges = Vec::new();
        if let Some(ranges) = &p.source_ranges {
            flags |= SVC_FLAG_SOURCE_RANGES;
            source_ranges = ranges.clone();
        }
        Self {
            backends: backends(&p.backends),
            internal_backends: p.internal_backends.as_deref().map(backends),
            flags,
            source_ranges,
            opts: ServiceOpts {
                affinity_timeout: p.affinity_timeout,
                label: p.label.clone(),
            },
        }
    }
}

/// The kind of a frontend entry with `flags`.
pub fn kind_of(flags: u16) -> FrontendKind {
    if flags & SVC_FLAG_EXTERNAL == 0 {
        FrontendKind::ClusterIp
    } else if flags & SVC_FLAG_NODE_PORT != 0 {
        FrontendKind::NodePort
    } else if flags & SVC_FLAG_LOAD_BALANCER != 0 {
        FrontendKind::LoadBalancer
    } else {
        FrontendKind::ExternalIp
    }
}

/// Writes `v` under `k` unless `map` already holds exactly that (drift
/// repair); returns whether it wrote.
pub(super) fn ensure<K: aya::Pod, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    k: K,
    v: V,
) -> Result<bool> {
    if map.get(&k, 0).ok() == Some(v) {
        return Ok(false);
    }
    map.insert(k, v, 0).map_err(map_err(name))?;
    Ok(true)
}
