//! The codec of the pinned maps: how frontends, VIP markers, backends and
//! source ranges become map entries and back, in the maps of their
//! address's family ([`SvcKey`], [`BackendValue`] and [`RangeId`] carry the
//! family; the `Maps` methods dispatch on it, so that the table and its
//! updates stay family-neutral), the per-CPU counters, and the generic
//! walks (bounded iteration, pruning, deletes that tolerate absent keys).
//! The only code that knows the entries' encoding; the table, inspection,
//! metrics, migration and tests read the maps through it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{
        HashMap, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, Backend4, Backend6, Reason, RevNat4,
    SVC_FLAG_EXTERNAL, SVC_FLAG_LOAD_BALANCER, SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT,
    SVC_FLAG_SOURCE_RANGES, ServiceCidr4, ServiceCidr6, SrcRange4, SrcRange6, StatValue, Svc4Key,
    Svc6Key, SvcValue, map_names,
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
    (ProgArray, $k:ty, $v:ty) => { aya::maps::ProgramArray<MapData> };
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

/// A source-range key of either family as (service id, address, LPM
/// prefix length): what the table compares (the LPM key types have no
/// ordering). The address's family says which trie holds it.
pub type RangeId = (u32, IpAddr, u32);

/// The service id and range of a source-range key; `None` for a key whose
/// prefix length is not 32 (the service id) plus 0..=32 (IPv4) or 0..=128
/// (IPv6).
pub fn range_of(&(svc_id, addr, prefix_len): &RangeId) -> Option<(u32, (IpAddr, u8))> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = prefix_len.checked_sub(32).filter(|l| *l <= max)?;
    Some((svc_id, (addr, len as u8)))
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
            (IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len)
        }
    }
}

/// The key of source range `r` of service `svc_id`.
pub(super) fn range_key(svc_id: u32, r: (IpAddr, u8)) -> RangeId {
    let (net, len) = normalize_range(r);
    (svc_id, net, 32 + u32::from(len))
}

/// Refuses `addr` unless it has the family of frontend address `frontend`:
/// a frontend's entries all live in the maps of its family.
pub(super) fn same_family(frontend: IpAddr, addr: IpAddr) -> Result<()> {
    if frontend.is_ipv4() == addr.is_ipv4() {
        Ok(())
    } else {
        Err(DataplaneError::Family { addr, frontend })
    }
}

/// A frontend-map key, in the map of its address's family (`SVCNAT_SVC4`
/// or `SVCNAT_SVC6`). With [`BackendValue`] and [`RangeId`], the one point
/// where the family-neutral table meets the per-family maps: the `Maps`
/// methods below dispatch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SvcKey {
    V4(Svc4Key),
    V6(Svc6Key),
}

impl SvcKey {
    /// The key of a frontend entry.
    pub(super) fn new(addr: IpAddr, port: u16, proto: u8, scope: u8) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(Svc4Key {
                vip: a.octets(),
                port,
                proto,
                scope,
            }),
            IpAddr::V6(a) => Self::V6(Svc6Key {
                vip: a.octets(),
                port,
                proto,
                scope,
            }),
        }
    }

    /// The key of the marker entry of `vip` (a known address: other ports
    /// are rejected), see [`SvcValue::VIP_MARKER`].
    pub(super) fn marker(vip: IpAddr) -> Self {
        match vip {
            IpAddr::V4(a) => Self::V4(Svc4Key::vip_marker(a.octets())),
            IpAddr::V6(a) => Self::V6(Svc6Key::vip_marker(a.octets())),
        }
    }
}

/// A frontend-map entry of either family, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcEntry {
    /// VIP (or node address).
    pub addr: IpAddr,
    /// Port (0 in a VIP marker).
    pub port: u16,
    /// IP protocol number (0 in a VIP marker).
    pub proto: u8,
    /// `SCOPE_*`.
    pub scope: u8,
    /// The value.
    pub value: SvcValue,
}

impl SvcEntry {
    fn of4(k: &Svc4Key, value: SvcValue) -> Self {
        Self {
            addr: IpAddr::from(k.vip),
            port: k.port,
            proto: k.proto,
            scope: k.scope,
            value,
        }
    }

    fn of6(k: &Svc6Key, value: SvcValue) -> Self {
        Self {
            addr: IpAddr::from(k.vip),
            port: k.port,
            proto: k.proto,
            scope: k.scope,
            value,
        }
    }

    /// Whether this is a VIP's marker entry.
    pub fn is_marker(&self) -> bool {
        self.port == 0 && self.proto == 0
    }
}

/// A backend entry, in the map of its address's family (`SVCNAT_BACKEND4`
/// or `SVCNAT_BACKEND6`; backend ids are one id space over both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BackendValue {
    V4(Backend4),
    V6(Backend6),
}

/// A backend entry of either family, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
}

impl From<Backend4> for BackendEntry {
    fn from(b: Backend4) -> Self {
        Self {
            addr: IpAddr::from(b.addr),
            port: b.port,
            proto: b.proto,
            flags: b.flags,
        }
    }
}

impl From<Backend6> for BackendEntry {
    fn from(b: Backend6) -> Self {
        Self {
            addr: IpAddr::from(b.addr),
            port: b.port,
            proto: b.proto,
            flags: b.flags,
        }
    }
}

/// The frontend map of `addr`'s family (for errors).
pub(super) fn svc_map_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        map_names::SVC4
    } else {
        map_names::SVC6
    }
}

/// The backend map of `addr`'s family (for errors).
pub(super) fn backend_map_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        map_names::BACKEND4
    } else {
        map_names::BACKEND6
    }
}

/// The LPM key of a source range.
fn lpm4((svc_id, _, prefix_len): &RangeId, addr: Ipv4Addr) -> Key<SrcRange4> {
    Key::new(
        *prefix_len,
        SrcRange4 {
            svc_id: svc_id.to_be_bytes(),
            addr: addr.octets(),
        },
    )
}

/// The LPM key of an IPv6 source range.
fn lpm6((svc_id, _, prefix_len): &RangeId, addr: Ipv6Addr) -> Key<SrcRange6> {
    Key::new(
        *prefix_len,
        SrcRange6 {
            svc_id: svc_id.to_be_bytes(),
            addr: addr.octets(),
        },
    )
}

impl Maps {
    /// Writes a frontend entry (or VIP marker).
    pub(super) fn svc_insert(&mut self, k: SvcKey, v: SvcValue) -> Result<()> {
        match k {
            SvcKey::V4(k) => self.SVC4.insert(k, v, 0).map_err(map_err(map_names::SVC4)),
            SvcKey::V6(k) => self.SVC6.insert(k, v, 0).map_err(map_err(map_names::SVC6)),
        }
    }

    /// Deletes a frontend entry (or VIP marker); an absent one is no error.
    pub(super) fn svc_remove(&mut self, k: &SvcKey) -> Result<()> {
        match k {
            SvcKey::V4(k) => ignore_missing(self.SVC4.remove(k)).map_err(map_err(map_names::SVC4)),
            SvcKey::V6(k) => ignore_missing(self.SVC6.remove(k)).map_err(map_err(map_names::SVC6)),
        }
    }

    /// Writes a frontend entry unless the map holds exactly that already;
    /// returns whether it wrote.
    pub(super) fn svc_ensure(&mut self, k: SvcKey, v: SvcValue) -> Result<bool> {
        match k {
            SvcKey::V4(k) => ensure(&mut self.SVC4, map_names::SVC4, k, v),
            SvcKey::V6(k) => ensure(&mut self.SVC6, map_names::SVC6, k, v),
        }
    }

    /// Every frontend entry and VIP marker of both families, IPv4 first.
    pub fn svc_entries(&self) -> Result<Vec<SvcEntry>> {
        let mut out = Vec::new();
        for e in self.SVC4.iter() {
            let (k, v) = e.map_err(map_err(map_names::SVC4))?;
            out.push(SvcEntry::of4(&k, v));
        }
        for e in self.SVC6.iter() {
            let (k, v) = e.map_err(map_err(map_names::SVC6))?;
            out.push(SvcEntry::of6(&k, v));
        }
        Ok(out)
    }

    /// Deletes the frontend entries and markers of both families whose key
    /// (address, port, protocol, scope) `keep` rejects. Returns how many it
    /// deleted.
    pub(super) fn svc_prune(
        &mut self,
        keep: impl Fn(IpAddr, u16, u8, u8) -> bool,
    ) -> Result<usize> {
        Ok(prune(&mut self.SVC4, map_names::SVC4, |k| {
            keep(IpAddr::from(k.vip), k.port, k.proto, k.scope)
        })? + prune(&mut self.SVC6, map_names::SVC6, |k| {
            keep(IpAddr::from(k.vip), k.port, k.proto, k.scope)
        })?)
    }

    /// Writes backend `id`.
    pub(super) fn backend_insert(&mut self, id: u32, b: BackendValue) -> Result<()> {
        match b {
            BackendValue::V4(b) => self
                .BACKEND4
                .insert(id, b, 0)
                .map_err(map_err(map_names::BACKEND4)),
            BackendValue::V6(b) => self
                .BACKEND6
                .insert(id, b, 0)
                .map_err(map_err(map_names::BACKEND6)),
        }
    }

    /// Writes backend `id` unless its map holds exactly that already;
    /// returns whether it wrote.
    pub(super) fn backend_ensure(&mut self, id: u32, b: BackendValue) -> Result<bool> {
        match b {
            BackendValue::V4(b) => ensure(&mut self.BACKEND4, map_names::BACKEND4, id, b),
            BackendValue::V6(b) => ensure(&mut self.BACKEND6, map_names::BACKEND6, id, b),
        }
    }

    /// Deletes backend `id` of `addr`'s family; an absent one is no error.
    pub(super) fn backend_remove(&mut self, id: u32, addr: IpAddr) -> Result<()> {
        if addr.is_ipv4() {
            ignore_missing(self.BACKEND4.remove(&id)).map_err(map_err(map_names::BACKEND4))
        } else {
            ignore_missing(self.BACKEND6.remove(&id)).map_err(map_err(map_names::BACKEND6))
        }
    }

    /// Every backend of both families by id.
    pub fn backend_entries(&self) -> Result<Vec<(u32, BackendEntry)>> {
        let mut out = Vec::new();
        for e in self.BACKEND4.iter() {
            let (id, b) = e.map_err(map_err(map_names::BACKEND4))?;
            out.push((id, b.into()));
        }
        for e in self.BACKEND6.iter() {
            let (id, b) = e.map_err(map_err(map_names::BACKEND6))?;
            out.push((id, b.into()));
        }
        Ok(out)
    }

    /// Backend `id`, in whichever family's map holds it.
    pub fn backend(&self, id: u32) -> Option<BackendEntry> {
        match self.BACKEND4.get(&id, 0) {
            Ok(b) => Some(b.into()),
            Err(_) => self.BACKEND6.get(&id, 0).ok().map(Into::into),
        }
    }

    /// Deletes the backends `keep` rejects (given the id and an address of
    /// the map's family). Returns how many it deleted.
    pub(super) fn backend_prune(&mut self, keep: impl Fn(u32, IpAddr) -> bool) -> Result<usize> {
        let (any4, any6) = (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        );
        Ok(prune(&mut self.BACKEND4, map_names::BACKEND4, |id| {
            keep(*id, any4)
        })? + prune(&mut self.BACKEND6, map_names::BACKEND6, |id| {
            keep(*id, any6)
        })?)
    }

    /// Writes a source-range key (in the trie of its address's family).
    pub(super) fn range_insert(&mut self, id: &RangeId) -> Result<()> {
        match id.1 {
            IpAddr::V4(a) => self
                .SRCRANGE4
                .insert(&lpm4(id, a), 1, 0)
                .map_err(map_err(map_names::SRCRANGE4)),
            IpAddr::V6(a) => self
                .SRCRANGE6
                .insert(&lpm6(id, a), 1, 0)
                .map_err(map_err(map_names::SRCRANGE6)),
        }
    }

    /// Deletes a source-range key; an absent one is no error.
    pub(super) fn range_remove(&mut self, id: &RangeId) -> Result<()> {
        match id.1 {
            IpAddr::V4(a) => ignore_missing(self.SRCRANGE4.remove(&lpm4(id, a)))
                .map_err(map_err(map_names::SRCRANGE4)),
            IpAddr::V6(a) => ignore_missing(self.SRCRANGE6.remove(&lpm6(id, a)))
                .map_err(map_err(map_names::SRCRANGE6)),
        }
    }

    /// Every source-range key of both families (see [`range_of`] to read
    /// one as a range).
    pub fn range_ids(&self) -> Result<Vec<RangeId>> {
        let mut out = Vec::new();
        for k in self.SRCRANGE4.keys() {
            let k = k.map_err(map_err(map_names::SRCRANGE4))?;
            let d = k.data();
            out.push((
                u32::from_be_bytes(d.svc_id),
                IpAddr::from(d.addr),
                k.prefix_len(),
            ));
        }
        for k in self.SRCRANGE6.keys() {
            let k = k.map_err(map_err(map_names::SRCRANGE6))?;
            let d = k.data();
            out.push((
                u32::from_be_bytes(d.svc_id),
                IpAddr::from(d.addr),
                k.prefix_len(),
            ));
        }
        Ok(out)
    }
}

impl Maps {
    /// Writes service CIDR `(network, prefix length)` into the trie of its
    /// family (the network's host bits must be clear: see
    /// [`normalize_range`]).
    pub(super) fn cidr_insert(&mut self, (addr, len): (IpAddr, u8)) -> Result<()> {
        let len = u32::from(len);
        match addr {
            IpAddr::V4(a) => self
                .SVCCIDR4
                .insert(&Key::new(len, ServiceCidr4 { addr: a.octets() }), 1, 0)
                .map_err(map_err(map_names::SVCCIDR4)),
            IpAddr::V6(a) => self
                .SVCCIDR6
                .insert(&Key::new(len, ServiceCidr6 { addr: a.octets() }), 1, 0)
                .map_err(map_err(map_names::SVCCIDR6)),
        }
    }

    /// Deletes a service CIDR; an absent one is no error.
    pub(super) fn cidr_remove(&mut self, (addr, len): (IpAddr, u8)) -> Result<()> {
        let len = u32::from(len);
        match addr {
            IpAddr::V4(a) => ignore_missing(
                self.SVCCIDR4
                    .remove(&Key::new(len, ServiceCidr4 { addr: a.octets() })),
            )
            .map_err(map_err(map_names::SVCCIDR4)),
            IpAddr::V6(a) => ignore_missing(
                self.SVCCIDR6
                    .remove(&Key::new(len, ServiceCidr6 { addr: a.octets() })),
            )
            .map_err(map_err(map_names::SVCCIDR6)),
        }
    }

    /// Every service CIDR of both tries, as (network, prefix length). (The
    /// kernel refuses a prefix longer than the key's address, so every
    /// length fits.)
    pub fn cidr_entries(&self) -> Result<Vec<(IpAddr, u8)>> {
        let len = |l: u32| u8::try_from(l).unwrap_or(u8::MAX);
        let mut out = Vec::new();
        for k in self.SVCCIDR4.keys() {
            let k = k.map_err(map_err(map_names::SVCCIDR4))?;
            out.push((IpAddr::from(k.data().addr), len(k.prefix_len())));
        }
        for k in self.SVCCIDR6.keys() {
            let k = k.map_err(map_err(map_names::SVCCIDR6))?;
            out.push((IpAddr::from(k.data().addr), len(k.prefix_len())));
        }
        Ok(out)
    }
}

/// The frontend map key of `fe` in `scope`.
pub(super) fn svc_key(fe: &Frontend, scope: u8) -> SvcKey {
    SvcKey::new(fe.addr, fe.port, fe.proto, scope)
}

/// The frontend entry of `fe` in `scope` as the mirror `s` has it.
pub(super) fn svc_entry(fe: &Frontend, scope: u8, s: &ServiceMirror) -> (SvcKey, SvcValue) {
    (
        svc_key(fe, scope),
        SvcValue {
            svc_id: s.svc_id,
            count: s.backend_ids.len() as u16,
            flags: s.flags,
            affinity_timeout: s.affinity_timeout,
            pad: 0,
        },
    )
}

/// The marker entry of a VIP (a known address: other ports are rejected).
pub(super) fn vip_marker(vip: IpAddr) -> (SvcKey, SvcValue) {
    (SvcKey::marker(vip), SvcValue::VIP_MARKER)
}

/// The reverse NAT entry of `fe`: IPv4 frontends only (`SVCNAT_REVNAT4`
/// is IPv4-only and the datapath never reads it; there is no REVNAT6).
pub(super) fn revnat_entry(fe: &Frontend) -> Option<RevNat4> {
    match fe.addr {
        IpAddr::V4(a) => Some(RevNat4 {
            vip: a.octets(),
            port: fe.port,
            proto: fe.proto,
            pad: 0,
        }),
        IpAddr::V6(_) => None,
    }
}

/// The backend entry of `key` with `flags`.
pub(super) fn backend_entry(key: &BackendKey, flags: u8) -> BackendValue {
    match key.addr {
        IpAddr::V4(a) => BackendValue::V4(Backend4 {
            addr: a.octets(),
            port: key.port,
            proto: key.proto,
            flags,
        }),
        IpAddr::V6(a) => BackendValue::V6(Backend6 {
            addr: a.octets(),
            port: key.port,
            proto: key.proto,
            flags,
        }),
    }
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

/// A conntrack entry of either family, decoded (addresses as `IpAddr`,
/// ports in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `CT_DIR_*`.
    pub dir: u8,
    /// IP protocol number.
    pub proto: u8,
    /// The key's source.
    pub src: (IpAddr, u16),
    /// The key's destination.
    pub dst: (IpAddr, u16),
    /// What the entry rewrites to.
    pub nat: (IpAddr, u16),
    /// `CT_F_*` bits.
    pub flags: u8,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service.
    pub svc_id: u32,
    /// `bpf_ktime_get_ns()` at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` after which the entry is dead.
    pub expires_ns: u64,
}

/// The conntrack key types of both families (`Ct4Key`, `Ct6Key`: the same
/// fields, addresses of their own size), with their value type.
pub trait CtFamily: aya::Pod {
    /// The family's conntrack value.
    type Value: aya::Pod;
    /// `CT_DIR_*` of the key.
    fn dir(&self) -> u8;
    /// IP protocol number of the key.
    fn proto(&self) -> u8;
    /// The entry `self` -> `v`, decoded.
    fn decode(&self, v: &Self::Value) -> CtEntry;
}

macro_rules! ct_family {
    ($k:ty => $v:ty) => {
        impl CtFamily for $k {
            type Value = $v;
            fn dir(&self) -> u8 {
                self.dir
            }
            fn proto(&self) -> u8 {
                self.proto
            }
            fn decode(&self, v: &$v) -> CtEntry {
                CtEntry {
                    dir: self.dir,
                    proto: self.proto,
                    src: (IpAddr::from(self.saddr), self.sport),
                    dst: (IpAddr::from(self.daddr), self.dport),
                    nat: (IpAddr::from(v.nat_addr), v.nat_port),
                    flags: v.flags,
                    backend_id: v.backend_id,
                    svc_id: v.svc_id,
                    created_ns: v.created_ns,
                    expires_ns: v.expires_ns,
                }
            }
        }
    };
}

ct_family!(proxy_common::Ct4Key => proxy_common::CtValue);
ct_family!(proxy_common::Ct6Key => proxy_common::Ct6Value);
