//! Typed, idempotent updates of the load-balancing table (frontends, slots,
//! backends, source ranges, VIP markers) in the order that keeps the
//! datapath consistent at every instant, and drift repair.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    net::IpAddr,
};

use proxy_common::{
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SVC_FLAG_VIP,
    SlotKey, SlotValue, SvcLabel, map_names,
};

use super::error::{DataplaneError, Result, map_err};
use super::handle::Dataplane;
use super::maps::{
    RangeId, SvcKey, backend_entry, backend_map_name, ensure, ignore_missing, normalize_range,
    prune, range_key, revnat_entry, same_family, svc_entry, svc_key, svc_map_name, vip_marker,
};
use super::table::{
    BackendKey, BackendSlot, BackendSpec, Frontend, FrontendSpec, ServiceMirror, ServiceOpts,
    SlotMove, Upsert, family_index, has_marker, same_set, slot_layout,
};

impl Dataplane {
    /// Deletes the VIP markers of addresses that have none in the mirror:
    /// markers an older agent wrote for external IPs and LB IPs (it marked
    /// every non-node address; now only cluster IPs are marked), which would
    /// otherwise reject the other ports of those addresses until the next
    /// [`Self::repair`]. Returns how many it deleted.
    pub fn prune_markers(&mut self) -> Result<usize> {
        let vips = &self.table.vips;
        self.maps.svc_prune(|addr, port, proto, _| {
            !(port == 0 && proto == 0) || vips.contains_key(&addr)
        })
    }

    /// Makes the maps equal to the mirror: rewrites every frontend, slot,
    /// backend, source range, VIP marker and service CIDR the mirror holds and deletes what
    /// it does not. Repairs drift such as an entry deleted by hand. Returns
    /// how many map entries it had to write or delete.
    pub fn repair(&mut self) -> Result<usize> {
        let mut fixed = 0;
        // Source ranges: an LPM lookup matches prefixes, not exact keys, so
        // compare the sets of keys.
        let want_ranges: BTreeSet<RangeId> = self
            .table
            .services
            .values()
            .chain(self.table.internal.values())
            .flat_map(|s| s.ranges.iter().map(|r| range_key(s.svc_id, *r)))
            .collect();
        let have_ranges: BTreeSet<RangeId> = self.maps.range_ids()?.into_iter().collect();
        for id in want_ranges.difference(&have_ranges) {
            self.maps.range_insert(id)?;
            fixed += 1;
        }
        // Backends first, then slots, then frontends (the safe order).
        for (key, b) in &self.table.backends {
            fixed += usize::from(
                self.maps
                    .backend_ensure(b.id, backend_entry(key, b.flags))?,
            );
        }
        for (scope, fe, s) in self
            .table
            .services
            .iter()
            .map(|(f, s)| (SCOPE_EXTERNAL, f, s))
            .chain(
                self.table
                    .internal
                    .iter()
                    .map(|(f, s)| (SCOPE_INTERNAL, f, s)),
            )
        {
            for (i, id) in s.backend_ids.iter().enumerate() {
                let k = SlotKey {
                    svc_id: s.svc_id,
                    slot: i as u32 + 1,
                };
                let v = SlotValue { backend_id: *id };
                fixed += usize::from(ensure(&mut self.maps.SLOTS, map_names::SLOTS, k, v)?);
            }
            if let Some(rv) = revnat_entry(fe) {
                fixed += usize::from(ensure(
                    &mut self.maps.REVNAT4,
                    map_names::REVNAT4,
                    s.svc_id,
                    rv,
                )?);
            }
            let label = SvcLabel::new(&s.label);
            fixed += usize::from(ensure(
                &mut self.maps.LABELS,
                map_names::LABELS,
                s.svc_id,
                label,
            )?);
            let (k, v) = svc_entry(fe, scope, s);
            fixed += usize::from(self.maps.svc_ensure(k, v)?);
        }
        for vip in self.table.vips.keys() {
            let (k, v) = vip_marker(*vip);
            fixed += usize::from(self.maps.svc_ensure(k, v)?);
        }
        // Deletions last: what the maps hold and the mirror does not.
        let (services, internal, vips) =
            (&self.table.services, &self.table.internal, &self.table.vips);
        fixed += self.maps.svc_prune(|addr, port, proto, scope| {
            if port == 0 && proto == 0 {
                return vips.contains_key(&addr);
            }
            let fe = Frontend { addr, port, proto };
            (scope == SCOPE_EXTERNAL && services.contains_key(&fe))
                || (scope == SCOPE_INTERNAL && internal.contains_key(&fe))
        })?;
        let by_svc: StdHashMap<u32, (usize, IpAddr)> = self
            .table
            .services
            .iter()
            .chain(self.table.internal.iter())
            .map(|(fe, s)| (s.svc_id, (s.backend_ids.len(), fe.addr)))
            .collect();
        fixed += prune(&mut self.maps.SLOTS, map_names::SLOTS, |k| {
            by_svc
                .get(&k.svc_id)
                .is_some_and(|(n, _)| k.slot >= 1 && k.slot as usize <= *n)
        })?;
        // Reverse NAT entries of IPv4 frontends only.
        fixed += prune(&mut self.maps.REVNAT4, map_names::REVNAT4, |k| {
            by_svc.get(k).is_some_and(|(_, addr)| addr.is_ipv4())
        })?;
        fixed += prune(&mut self.maps.LABELS, map_names::LABELS, |k| {
            by_svc.contains_key(k)
        })?;
        // A backend belongs in the map of its address's family.
        let backend_keys = &self.table.backend_keys;
        fixed += self.maps.backend_prune(|id, family| {
            backend_keys
                .get(&id)
                .is_some_and(|k| k.addr.is_ipv4() == family.is_ipv4())
        })?;
        for id in have_ranges.difference(&want_ranges) {
            self.maps.range_remove(id)?;
            fixed += 1;
        }
        fixed += self.write_service_cidrs()?;
        Ok(fixed)
    }

    /// Makes the maps hold `fe` with exactly `backends` (duplicates are
    /// removed). A new frontend gets them in this slot order; a changed one
    /// keeps its surviving backends in their slots, so that session
    /// affinity survives other backends coming and going. An empty list keeps the frontend and makes
    /// the datapath reject its traffic. Idempotent. On error the maps are
    /// left consistent: either unchanged or fully updated for the parts
    /// written. A plain frontend: no policy flags, one scope.
    pub fn upsert_service(
        &mut self,
        fe: Frontend,
        backends: &[BackendSpec],
        opts: &ServiceOpts,
    ) -> Result<Upsert> {
        self.upsert_frontend(
            fe,
            &FrontendSpec {
                backends: backends.to_vec(),
                opts: opts.clone(),
                ..FrontendSpec::default()
            },
        )
    }

    /// Makes the maps hold `fe` as `spec` says: the frontend entry with its
    /// flags, backends and source ranges, and the internal-scope entry when
    /// `spec.internal_backends` is set (written before the flag that sends
    /// pods to it, deleted after). Idempotent; same consistency as
    /// [`Self::upsert_service`].
    pub fn upsert_frontend(&mut self, fe: Frontend, spec: &FrontendSpec) -> Result<Upsert> {
        // Every address in the frontend's family, before anything is
        // written (a frontend is written whole or not at all, in the maps
        // of its family).
        let internal = spec.internal_backends.iter().flatten();
        for b in spec.backends.iter().chain(internal) {
            same_family(fe.addr, b.addr)?;
        }
        for (a, _) in &spec.source_ranges {
            same_family(fe.addr, *a)?;
        }
        let mut flags = spec.flags & !(SVC_FLAG_VIP | SVC_FLAG_TWO_SCOPES);
        let mut changed = false;
        if let Some(internal) = &spec.internal_backends {
            flags |= SVC_FLAG_TWO_SCOPES;
            let r = self.upsert_scoped(
                fe,
                SCOPE_INTERNAL,
                internal,
                &spec.opts,
                flags & !(SVC_FLAG_TWO_SCOPES | SVC_FLAG_SOURCE_RANGES),
                &[],
            )?;
            changed |= r != Upsert::Unchanged;
        }
        // Normalized, so that the mirror equals what adoption reads back.
        let mut ranges: Vec<(IpAddr, u8)> = spec
            .source_ranges
            .iter()
            .map(|r| normalize_range(*r))
            .collect();
        ranges.sort();
        ranges.dedup();
        let r = self.upsert_scoped(
            fe,
            SCOPE_EXTERNAL,
            &spec.backends,
            &spec.opts,
            flags,
            &ranges,
        )?;
        if spec.internal_backends.is_none() && self.table.internal.contains_key(&fe) {
            // Pods' flows to backends the frontend entry still has stay.
            let kept = self
                .table
                .services
                .get(&fe)
                .map(|s| s.backend_ids.clone())
                .unwrap_or_default();
            self.delete_scoped(&fe, SCOPE_INTERNAL, &kept)?;
            changed = true;
        }
        Ok(match r {
            Upsert::Unchanged if changed => Upsert::Updated,
            other => other,
        })
    }

    pub(super) fn upsert_scoped(
        &mut self,
        fe: Frontend,
        scope: u8,
        backends: &[BackendSpec],
        opts: &ServiceOpts,
        flags: u16,
        ranges: &[(IpAddr, u8)],
    ) -> Result<Upsert> {
        let affinity_timeout = opts.affinity_timeout;
        let mut want: Vec<BackendSpec> = Vec::with_capacity(backends.len());
        for b in backends {
            if !want.iter().any(|w| w.addr == b.addr && w.port == b.port) {
                want.push(*b);
            }
        }
        if want.len() > usize::from(u16::MAX) {
            return Err(DataplaneError::TooManyBackends {
                count: want.len(),
                max: usize::from(u16::MAX),
            });
        }
        if let Some(cur) = self.table.scope(scope).get(&fe)
            && same_set(&self.table.backends_of(&cur.backend_ids), &want)
            && cur.affinity_timeout == affinity_timeout
            && cur.label == opts.label
            && cur.flags == flags
            && cur.ranges == ranges
        {
            return Ok(Upsert::Unchanged);
        }
        self.check_capacity(&fe, scope, &want)?;

        // 1. Backends: new ones written, changed flags rewritten.
        let mut ids = Vec::with_capacity(want.len());
        let mut taken = Vec::new();
        for b in &want {
            let key = BackendKey {
                addr: b.addr,
                port: b.port,
                proto: fe.proto,
            };
            let value = backend_entry(&key, b.flags);
            let id = match self.table.backends.get_mut(&key) {
                Some(slot) => {
                    if slot.flags != b.flags {
                        self.maps.backend_insert(slot.id, value)?;
                        slot.flags = b.flags;
                    }
                    slot.id
                }
                None => {
                    let id = self.table.backend_ids.take();
                    if let Err(e) = self.maps.backend_insert(id, value) {
                        self.table.backend_ids.give(id);
                        self.release_backends(&taken)?;
                        return Err(e);
                    }
                    id
                }
            };
            // Count the reference now so a failure below releases it.
            self.table.reference_backend(
                key,
                BackendSlot {
                    id,
                    flags: b.flags,
                    refs: 0,
                },
            );
            taken.push(id);
            ids.push(id);
        }

        let cur = self.table.scope(scope).get(&fe);
        let created = cur.is_none();
        let old_affinity = cur.map_or(0, |s| s.affinity_timeout);
        let (svc_id, old_ids, old_label, old_flags, old_ranges) = match cur {
            Some(s) => (
                s.svc_id,
                s.backend_ids.clone(),
                Some(s.label.clone()),
                Some(s.flags),
                s.ranges.clone(),
            ),
            None => (
                self.table.svc_ids.take(),
                Vec::new(),
                None,
                None,
                Vec::new(),
            ),
        };
        // Surviving backends keep their slots (session affinity names a
        // slot); see `slot_layout`.
        let (ids, moves) = slot_layout(&old_ids, &ids);
        let mirror = ServiceMirror {
            svc_id,
            backend_ids: ids.clone(),
            affinity_timeout,
            label: opts.label.clone(),
            flags,
            ranges: ranges.to_vec(),
        };
        // Affinity entries follow a moved backend (entries of a service
        // whose affinity is just turned on or off need no care).
        let moves = if old_affinity != 0 && affinity_timeout != 0 {
            moves
        } else {
            Vec::new()
        };
        let result = self
            .write_service(&fe, scope, &mirror, &old_ids, &old_ranges, created, &moves)
            .and_then(|()| {
                if old_label.as_deref() != Some(opts.label.as_str()) {
                    self.maps
                        .LABELS
                        .insert(svc_id, SvcLabel::new(&opts.label), 0)
                        .map_err(map_err(map_names::LABELS))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            if created {
                self.table.svc_ids.give(svc_id);
            }
            self.release_backends(&taken)?;
            return Err(e);
        }
        self.table.slot_count = self.table.slot_count + ids.len() - old_ids.len();
        self.table.insert_mirror(scope, fe, mirror);
        self.table.note_udp_change(&fe, svc_id, &old_ids, &ids);
        if scope == SCOPE_EXTERNAL {
            let had = old_flags.is_some_and(has_marker);
            if has_marker(flags) && !had {
                self.table.add_marker(fe.addr);
                let (k, v) = vip_marker(fe.addr);
                self.maps.svc_insert(k, v)?;
            } else if had && !has_marker(flags) {
                self.drop_marker(fe.addr)?;
            }
        }
        // 4. Backends no slot names any more go last.
        self.release_backends(&old_ids)?;
        // Affinity turned off: forget the clients, so that turning it on
        // again starts afresh.
        if old_affinity != 0 && affinity_timeout == 0 {
            self.flush_affinity(svc_id, fe.addr)?;
        }
        Ok(if created {
            Upsert::Created
        } else {
            Upsert::Updated
        })
    }

    /// Slots, reverse NAT, source ranges and the frontend entry, in the safe
    /// order. The affinity entries of each moved backend (`moves`: backend
    /// id, old slot, new slot) are rewritten to its new slot while both
    /// slots name it: after the new slot is written, before the count that
    /// hides the old one is lowered.
    #[expect(
        clippy::too_many_arguments,
        reason = "one caller; the parts of one update"
    )]
    pub(super) fn write_service(
        &mut self,
        fe: &Frontend,
        scope: u8,
        s: &ServiceMirror,
        old_ids: &[u32],
        old_ranges: &[(IpAddr, u8)],
        created: bool,
        moves: &[SlotMove],
    ) -> Result<()> {
        // 2. Slots that change, before the count that exposes them.
        for (i, id) in s.backend_ids.iter().enumerate() {
            if old_ids.get(i) != Some(id) {
                let k = SlotKey {
                    svc_id: s.svc_id,
                    slot: i as u32 + 1,
                };
                self.maps
                    .SLOTS
                    .insert(k, SlotValue { backend_id: *id }, 0)
                    .map_err(map_err(map_names::SLOTS))?;
            }
        }
        if created && let Some(rv) = revnat_entry(fe) {
            self.maps
                .REVNAT4
                .insert(s.svc_id, rv, 0)
                .map_err(map_err(map_names::REVNAT4))?;
        }
        // New ranges before the entry that may start checking them.
        for r in &s.ranges {
            if !old_ranges.contains(r) {
                self.maps.range_insert(&range_key(s.svc_id, *r))?;
            }
        }
        if !moves.is_empty() {
            let moved = self.move_affinity(s.svc_id, fe.addr, moves)?;
            tracing::debug!(
                frontend = %fe,
                moved_backends = moves.len(),
                affinity_entries = moved,
                "backends moved to other slots; their session affinity follows them"
            );
        }
        // 3. The frontend with its new count, then slots past the count.
        let (k, v) = svc_entry(fe, scope, s);
        self.maps.svc_insert(k, v)?;
        for slot in s.backend_ids.len() + 1..=old_ids.len() {
            let k = SlotKey {
                svc_id: s.svc_id,
                slot: slot as u32,
            };
            ignore_missing(self.maps.SLOTS.remove(&k)).map_err(map_err(map_names::SLOTS))?;
        }
        for r in old_ranges {
            if !s.ranges.contains(r) {
                self.maps.range_remove(&range_key(s.svc_id, *r))?;
            }
        }
        Ok(())
    }

    pub(super) fn check_capacity(
        &self,
        fe: &Frontend,
        scope: u8,
        want: &[BackendSpec],
    ) -> Result<()> {
        let cur = self.table.scope(scope).get(fe);
        let new_backends = want
            .iter()
            .filter(|b| {
                !self.table.backends.contains_key(&BackendKey {
                    addr: b.addr,
                    port: b.port,
                    proto: fe.proto,
                })
            })
            .count();
        let old_slots = cur.map_or(0, |s| s.backend_ids.len());
        let slots_after = self.table.slot_count - old_slots + want.len();
        // Each family has its own backend and service map, of the size of
        // the knob; the slot map is shared.
        let used = self.table.family[family_index(fe.addr)];
        let free_backends = (self.capacity.backends as usize).saturating_sub(used.backends);
        if new_backends > free_backends {
            return Err(DataplaneError::MapFull {
                map: backend_map_name(fe.addr),
                needed: new_backends,
                free: free_backends,
                capacity: self.capacity.backends,
            });
        }
        if slots_after > self.capacity.slots as usize {
            return Err(DataplaneError::MapFull {
                map: map_names::SLOTS,
                needed: want.len().saturating_sub(old_slots),
                free: (self.capacity.slots as usize).saturating_sub(self.table.slot_count),
                capacity: self.capacity.slots,
            });
        }
        if cur.is_none() {
            let needed = 1 + usize::from(!self.table.vips.contains_key(&fe.addr));
            let free = (self.capacity.services as usize).saturating_sub(used.services);
            if needed > free {
                return Err(DataplaneError::MapFull {
                    map: svc_map_name(fe.addr),
                    needed,
                    free,
                    capacity: self.capacity.services,
                });
            }
        }
        Ok(())
    }

    /// Removes `fe` from the maps (both scopes). Returns whether it was there
    /// (deleting what is absent is not an error). Established flows keep
    /// their conntrack entries and so their backend; new ones are rejected
    /// if the VIP still has other ports, else no longer translated.
    pub fn delete_service(&mut self, fe: &Frontend) -> Result<bool> {
        let found = self.delete_scoped(fe, SCOPE_EXTERNAL, &[])?;
        self.delete_scoped(fe, SCOPE_INTERNAL, &[])?;
        Ok(found)
    }

    /// Removes one scope of `fe`; the UDP flows of its backends other than
    /// `kept` become stale.
    pub(super) fn delete_scoped(&mut self, fe: &Frontend, scope: u8, kept: &[u32]) -> Result<bool> {
        let Some(s) = self.table.remove_mirror(scope, fe) else {
            return Ok(false);
        };
        self.table
            .note_udp_change(fe, s.svc_id, &s.backend_ids, kept);
        self.maps.svc_remove(&svc_key(fe, scope))?;
        if scope == SCOPE_EXTERNAL && has_marker(s.flags) {
            self.drop_marker(fe.addr)?;
        }
        for slot in 1..=s.backend_ids.len() {
            let k = SlotKey {
                svc_id: s.svc_id,
                slot: slot as u32,
            };
            ignore_missing(self.maps.SLOTS.remove(&k)).map_err(map_err(map_names::SLOTS))?;
        }
        for r in &s.ranges {
            self.maps.range_remove(&range_key(s.svc_id, *r))?;
        }
        if revnat_entry(fe).is_some() {
            ignore_missing(self.maps.REVNAT4.remove(&s.svc_id))
                .map_err(map_err(map_names::REVNAT4))?;
        }
        ignore_missing(self.maps.LABELS.remove(&s.svc_id)).map_err(map_err(map_names::LABELS))?;
        self.table.slot_count -= s.backend_ids.len();
        self.table.svc_ids.give(s.svc_id);
        self.release_backends(&s.backend_ids)?;
        // The id may name another service next: its clients start afresh.
        if s.affinity_timeout != 0 {
            self.flush_affinity(s.svc_id, fe.addr)?;
        }
        Ok(true)
    }

    /// One frontend fewer on `vip`; its marker goes with the last one.
    pub(super) fn drop_marker(&mut self, vip: IpAddr) -> Result<()> {
        if self.table.remove_marker(vip) {
            self.maps.svc_remove(&SvcKey::marker(vip))?;
        }
        Ok(())
    }

    /// Drops one reference of each backend id; deletes backends no slot names.
    pub(super) fn release_backends(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            let Some(key) = self.table.backend_keys.get(id).copied() else {
                continue;
            };
            let Some(slot) = self.table.backends.get_mut(&key) else {
                continue;
            };
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                self.table.remove_backend(&key);
                self.maps.backend_remove(*id, key.addr)?;
                self.table.backend_ids.give(*id);
            }
        }
        Ok(())
    }
}
