//! Flow state that follows table changes: the UDP flows of backends that
//! left a frontend (cleared as kube-proxy clears their conntrack entries),
//! and session affinity entries that follow a backend to its new slot. The
//! conntrack, SNAT and affinity maps of the frontend's family.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    net::{IpAddr, SocketAddr},
};

use aya::maps::{HashMap, MapData, MapError};
use proxy_common::{
    AffinityValue, CT_DIR_SERVICE, CT_F_SNAT, IPPROTO_UDP, Sock4Key, Sock4Value, Sock6Key,
    Sock6Value, map_names,
};

use super::error::{Result, map_err};
use super::handle::Dataplane;
use super::maps::{BPF_EXIST, CtFamily, ignore_missing, prune, removed, walk};
use super::table::{SlotMove, StaleFlow};
use crate::model::Family;

/// What one [`Dataplane::clear_stale_udp_flows`] sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClearedFlows {
    /// Flows cleared (service-direction conntrack entries deleted).
    pub flows: usize,
    /// Conntrack entries deleted, both directions.
    pub ct_entries: usize,
    /// Source NAT entries deleted (one per SNATed flow).
    pub snat_entries: usize,
    /// Socket-level translations of the node's own UDP sockets to such a
    /// backend, deleted from the socket maps.
    pub socket_entries: usize,
    /// Connected UDP sockets of the node translated to such a backend,
    /// closed under their owner (`SOCK_DESTROY`: its next call fails with
    /// `ECONNABORTED` and it connects anew, reaching a live backend).
    pub sockets_closed: usize,
}

/// The flow a conntrack entry of either family belongs to.
fn flow_of<K: CtFamily>(k: &K, v: &K::Value) -> Option<StaleFlow> {
    let e = k.decode(v);
    StaleFlow::of_entry(e.dir, e.src, e.dst, e.nat, e.svc_id, e.backend_id)
}

/// One family's sweep: deletes the UDP conntrack entries (and SNAT
/// entries) of `ct` whose flow is in `stale`, walking at most `limit` keys.
fn sweep<K: CtFamily, S: aya::Pod>(
    (ct, ct_name): (&mut HashMap<MapData, K, K::Value>, &'static str),
    (snat, snat_name): (&mut HashMap<MapData, K, S>, &'static str),
    limit: usize,
    stale: &BTreeSet<StaleFlow>,
    out: &mut ClearedFlows,
) -> Result<()> {
    let is_stale = |k: &K, v: &K::Value| flow_of(k, v).is_some_and(|s| stale.contains(&s));
    let mut doomed = Vec::new();
    for k in ct.keys().take(limit) {
        let k = k.map_err(map_err(ct_name))?;
        if k.proto() != IPPROTO_UDP {
            continue;
        }
        match ct.get(&k, 0) {
            Ok(v) if is_stale(&k, &v) => doomed.push(k),
            Ok(_) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(ct_name)(e)),
        }
    }
    // Service direction first: a client's next datagram then opens a
    // new flow, and no reply of the old one goes out untranslated.
    doomed.sort_by_key(|k| k.dir() != CT_DIR_SERVICE);
    for k in &doomed {
        // Read again just before: a new flow may have taken the key.
        let v = match ct.get(k, 0) {
            Ok(v) if is_stale(k, &v) => v,
            Ok(_) | Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(ct_name)(e)),
        };
        if removed(ct.remove(k)).map_err(map_err(ct_name))? {
            out.ct_entries += 1;
            if k.dir() == CT_DIR_SERVICE {
                out.flows += 1;
            }
        }
        // A SNATed flow's SNAT entry sits under its reply key.
        if k.decode(&v).flags & CT_F_SNAT != 0
            && removed(snat.remove(k)).map_err(map_err(snat_name))?
        {
            out.snat_entries += 1;
        }
    }
    Ok(())
}

impl Dataplane {
    /// Deletes the conntrack entries (both directions) and the source NAT
    /// entries of the UDP flows whose backend left their frontend since
    /// the last sweep, as kube-proxy clears the UDP conntrack entries of
    /// removed endpoints: otherwise a client that keeps sending from one
    /// port stays pinned to the removed backend for as long as it sends.
    /// TCP flows are never touched (they keep a removed but running
    /// backend). One walk of the conntrack map of each family that has
    /// stale flows, however many frontends changed; entries that vanish
    /// underneath (LRU, the datapath) are skipped, and an entry a new flow
    /// took over meanwhile is left alone. On error the stale backends stay
    /// noted for the next sweep.
    ///
    /// The same for the node's own sockets (the socket hooks): their
    /// translations to such a backend leave the socket maps, and the
    /// connected UDP sockets among them are closed under their owner, as
    /// Cilium's socket load balancer does, so that a long-lived resolver
    /// socket follows a replaced DNS pod: its next call fails with
    /// `ECONNABORTED` and the socket it connects anew gets a live backend.
    /// TCP sockets are left alone (as their flows are).
    pub fn clear_stale_udp_flows(&mut self) -> Result<ClearedFlows> {
        let mut out = ClearedFlows::default();
        if self.table.stale_udp.is_empty() {
            return Ok(out);
        }
        let (v4, v6): (BTreeSet<StaleFlow>, BTreeSet<StaleFlow>) = self
            .table
            .stale_udp
            .iter()
            .partition(|s| s.frontend.0.is_ipv4());
        let limit = self.capacity.conntrack as usize;
        let m = &mut self.maps;
        if !v4.is_empty() {
            sweep(
                (&mut m.CT4, map_names::CT4),
                (&mut m.SNAT4, map_names::SNAT4),
                limit,
                &v4,
                &mut out,
            )?;
        }
        if !v6.is_empty() {
            sweep(
                (&mut m.CT6, map_names::CT6),
                (&mut m.SNAT6, map_names::SNAT6),
                limit,
                &v6,
                &mut out,
            )?;
        }
        self.ct_removed += out.ct_entries as u64;
        let pairs: BTreeSet<StalePair> = self
            .table
            .stale_udp
            .iter()
            .map(|s| (s.frontend, s.backend))
            .collect();
        let m = &mut self.maps;
        let mut doomed = walk_sockets((&m.SOCK4, map_names::SOCK4), limit, &pairs)?;
        doomed.extend(walk_sockets((&m.SOCK6, map_names::SOCK6), limit, &pairs)?);
        for (key, _) in &doomed {
            let r = match key {
                SockMapKey::V4(k) => removed(m.SOCK4.remove(k)).map_err(map_err(map_names::SOCK4)),
                SockMapKey::V6(k) => removed(m.SOCK6.remove(k)).map_err(map_err(map_names::SOCK6)),
            };
            if r? {
                out.socket_entries += 1;
            }
        }
        out.sockets_closed = close_sockets(&doomed);
        self.table.stale_udp.clear();
        Ok(out)
    }

    /// Rewrites the session affinity entries of service id `svc_id` (of a
    /// frontend on `addr`, whose family says which affinity map holds its
    /// clients) that name a moved backend in its old slot to name its new
    /// slot. Entries that vanish meanwhile (LRU) are not written back.
    /// Returns how many entries it rewrote.
    pub(super) fn move_affinity(
        &mut self,
        svc_id: u32,
        addr: IpAddr,
        moves: &[SlotMove],
    ) -> Result<usize> {
        let to: StdHashMap<(u32, u32), u32> = moves
            .iter()
            .map(|m| ((m.backend_id, m.from), m.to))
            .collect();
        let limit = self.capacity.affinity as usize;
        if addr.is_ipv4() {
            let map = (&mut self.maps.AFFINITY4, map_names::AFFINITY4);
            move_in(map, limit, |k| k.svc_id == svc_id, &to)
        } else {
            let map = (&mut self.maps.AFFINITY6, map_names::AFFINITY6);
            move_in(map, limit, |k| k.svc_id == svc_id, &to)
        }
    }

    /// Deletes the session affinity entries of service id `svc_id` (of a
    /// frontend on `addr`). The map of its family is walked whole (an LRU
    /// map has no index by service), so the cost follows the number of
    /// live entries, at most the map's size. Returns how many entries it
    /// deleted.
    pub(super) fn flush_affinity(&mut self, svc_id: u32, addr: IpAddr) -> Result<usize> {
        if addr.is_ipv4() {
            prune(&mut self.maps.AFFINITY4, map_names::AFFINITY4, |k| {
                k.svc_id != svc_id
            })
        } else {
            prune(&mut self.maps.AFFINITY6, map_names::AFFINITY6, |k| {
                k.svc_id != svc_id
            })
        }
    }
}

/// A key of either socket map.
enum SockMapKey {
    V4(Sock4Key),
    V6(Sock6Key),
}

/// A frontend and one of the backends that left it.
type StalePair = ((IpAddr, u16), (IpAddr, u16));

/// A socket map entry of either family, read back.
trait SockEntry: aya::Pod {
    type Value: aya::Pod;
    /// The key, which the doomed entries are deleted by.
    fn wrap(self) -> SockMapKey;
    /// (cookie, protocol, frontend, backend) of the entry.
    fn decode(&self, v: &Self::Value) -> (u64, u8, (IpAddr, u16), (IpAddr, u16));
}

impl SockEntry for Sock4Key {
    type Value = Sock4Value;
    fn wrap(self) -> SockMapKey {
        SockMapKey::V4(self)
    }
    fn decode(&self, v: &Sock4Value) -> (u64, u8, (IpAddr, u16), (IpAddr, u16)) {
        let frontend = (IpAddr::from(v.vip), v.port);
        (
            self.cookie,
            self.proto,
            frontend,
            (IpAddr::from(self.addr), self.port),
        )
    }
}

impl SockEntry for Sock6Key {
    type Value = Sock6Value;
    fn wrap(self) -> SockMapKey {
        SockMapKey::V6(self)
    }
    fn decode(&self, v: &Sock6Value) -> (u64, u8, (IpAddr, u16), (IpAddr, u16)) {
        let frontend = (IpAddr::from(v.vip), v.port);
        (
            self.cookie,
            self.proto,
            frontend,
            (IpAddr::from(self.addr), self.port),
        )
    }
}

/// The UDP entries of one socket map whose socket was translated to a
/// backend that left its frontend (`stale`), with the socket's cookie and
/// the backend's address.
fn walk_sockets<K: SockEntry>(
    (map, name): (&HashMap<MapData, K, K::Value>, &'static str),
    limit: usize,
    stale: &BTreeSet<StalePair>,
) -> Result<Vec<(SockMapKey, (u64, SocketAddr))>> {
    Ok(walk(map, name, limit)?
        .into_iter()
        .filter_map(|(k, v)| {
            let (cookie, proto, frontend, backend) = k.decode(&v);
            (proto == IPPROTO_UDP && stale.contains(&(frontend, backend)))
                .then(|| (k.wrap(), (cookie, SocketAddr::new(backend.0, backend.1))))
        })
        .collect())
}

/// Closes the connected UDP sockets among `doomed` (cookie, backend) of
/// the calling thread's network namespace whose peer is still that
/// backend (an unconnected socket was translated per datagram and has no
/// peer: it reaches a live backend at its next send). Failures are
/// logged: the socket then keeps its backend, as before this sweep.
fn close_sockets(doomed: &[(SockMapKey, (u64, SocketAddr))]) -> usize {
    let mut closed = 0;
    for family in [Family::V4, Family::V6] {
        let want: StdHashMap<u64, SocketAddr> = doomed
            .iter()
            .filter(|(k, _)| {
                matches!(
                    (k, family),
                    (SockMapKey::V4(_), Family::V4) | (SockMapKey::V6(_), Family::V6)
                )
            })
            .map(|(_, c)| *c)
            .collect();
        if want.is_empty() {
            continue;
        }
        let peers: Vec<SocketAddr> = want.values().copied().collect();
        let sockets = match crate::sockdiag::udp_sockets(family, &peers) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("listing UDP sockets to close those of removed backends: {e}");
                continue;
            }
        };
        for s in sockets {
            if want.get(&s.cookie) != Some(&s.peer) {
                continue;
            }
            match crate::sockdiag::destroy_udp(&s) {
                Ok(true) => closed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    local = %s.local,
                    peer = %s.peer,
                    "closing a UDP socket of a removed backend: {e}"
                ),
            }
        }
    }
    closed
}

/// [`Dataplane::move_affinity`] on one family's affinity map: the entries
/// whose key `ours` accepts.
fn move_in<K: aya::Pod>(
    (map, name): (&mut HashMap<MapData, K, AffinityValue>, &'static str),
    limit: usize,
    ours: impl Fn(&K) -> bool,
    to: &StdHashMap<(u32, u32), u32>,
) -> Result<usize> {
    let entries = walk(map, name, limit)?;
    let mut moved = 0;
    for (k, mut v) in entries {
        if !ours(&k) {
            continue;
        }
        let Some(slot) = to.get(&(v.backend_id, v.slot)) else {
            continue;
        };
        v.slot = *slot;
        ignore_missing(map.insert(k, v, BPF_EXIST)).map_err(map_err(name))?;
        moved += 1;
    }
    Ok(moved)
}
