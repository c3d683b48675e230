//! Loading the object: map sizes, pins and their adoption, the layout
//! marker and migrations from older layouts, and removing every pin
//! (`svcnat cleanup`). Everything is driven by the one table of maps
//! ([`proxy_common::MAPS`]).

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{CgroupSockAddr, ProgramError, ProgramFd, SchedClassifier, Xdp},
};
use proxy_common::{
    LAYOUT_VERSION, MAPS, SCOPE_EXTERNAL, SCOPE_INTERNAL, SOCK_HOOKS, SVC_FLAG_VIP, SlotKey,
    TAIL_CALLS, program_names,
};

use super::error::{DataplaneError, Result, io_err, map_err};
use super::handle::{Dataplane, DataplaneConfig, MapSizes};
use super::maps::{BackendEntry, Maps, range_of};
use super::table::{BackendKey, BackendSlot, Frontend, ServiceMirror, Table, has_marker};

impl Dataplane {
    /// Loads the embedded object, adopting maps already pinned under
    /// `cfg.bpffs` (their contents are kept and read back) or creating and
    /// pinning new ones. Programs are loaded but not attached.
    pub fn open(cfg: &DataplaneConfig) -> Result<Self> {
        Self::open_object(cfg, crate::EBPF_OBJECT)
    }

    /// [`Dataplane::open`] with an explicit object (tests, tools).
    pub fn open_object(cfg: &DataplaneConfig, object: &[u8]) -> Result<Self> {
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let dir = cfg.bpffs.clone();
        fs::create_dir_all(dir.join("links")).map_err(io_err(&dir))?;
        let migrate_from = check_layout(&dir)?;
        if let Some(from) = migrate_from {
            super::migrate::prepare(&dir, from)?;
        }
        let mut loader = EbpfLoader::new();
        for (name, entries) in cfg.sizes.sizeable() {
            loader.map_max_entries(name, entries);
        }
        let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (m.name, dir.join(m.name))).collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        let layout = dir.join(layout_marker(LAYOUT_VERSION));
        match fs::create_dir(&layout) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&layout)(e)),
            _ => {}
        }
        for name in [
            program_names::TC_POD_INGRESS,
            program_names::TC_POD_EGRESS,
            program_names::TC_NODE_EGRESS,
        ] {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: name.into(),
                    source,
                })?;
        }
        program_mut::<Xdp>(&mut ebpf, program_names::XDP_NODE)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program_names::XDP_NODE.into(),
                source,
            })?;
        for hook in &SOCK_HOOKS {
            program_mut::<CgroupSockAddr>(&mut ebpf, hook.program)?
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: hook.program.into(),
                    source,
                })?;
        }
        // Before any program is attached: the slots of an adopted program
        // array hold the programs of the agent before us, which its attached
        // programs keep reaching until ours replace them.
        load_tail_calls(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf)?;
        let capacity = MapSizes::pinned(&dir)?;
        let mut dp = Self {
            dir,
            ebpf,
            maps,
            capacity,
            table: Table::default(),
            attached: BTreeSet::new(),
            node_attached: BTreeSet::new(),
            pending_migration: None,
            ct_removed: 0,
            service_cidrs: BTreeSet::new(),
        };
        dp.adopt()?;
        if let Some(from) = migrate_from {
            // Step 1 of the migration: new-layout entries next to the old
            // ones, before any of our programs runs.
            let r = super::migrate::migrate(&dp.dir, from, false)?;
            tracing::info!(
                from,
                to = LAYOUT_VERSION,
                rekeyed = r.rekeyed,
                lost = r.lost,
                "migrating pinned maps in place; finished once our programs are attached"
            );
            dp.pending_migration = Some(from);
        }
        Ok(dp)
    }

    /// Finishes a migration from an older layout, once this agent's
    /// programs have replaced the old ones in the pinned links: migrates the
    /// flows the old programs created meanwhile, removes the entries only
    /// they used, and the old layout marker. `None` when nothing was
    /// pending.
    pub fn finish_migration(&mut self) -> Result<Option<super::migrate::MigrationReport>> {
        let Some(from) = self.pending_migration else {
            return Ok(None);
        };
        let report = super::migrate::migrate(&self.dir, from, true)?;
        let marker = self.dir.join(layout_marker(from));
        match fs::remove_dir(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&marker)(e)),
            _ => {}
        }
        self.pending_migration = None;
        Ok(Some(report))
    }
}

/// Loads the programs the attached ones reach by a tail call
/// ([`TAIL_CALLS`]: IPv6's pipelines) and puts each in its slot of its
/// program array. The agent's loader and the test kit's both call this.
pub fn load_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    for t in &TAIL_CALLS {
        let err = |source| DataplaneError::Program {
            name: t.program.into(),
            source,
        };
        let fd: ProgramFd = if t.xdp {
            let p = program_mut::<Xdp>(ebpf, t.program)?;
            p.load().map_err(err)?;
            p.fd().map_err(err)?.try_clone()
        } else {
            let p = program_mut::<SchedClassifier>(ebpf, t.program)?;
            p.load().map_err(err)?;
            p.fd().map_err(err)?.try_clone()
        }
        .map_err(|e| err(ProgramError::IOError(e)))?;
        let map = ebpf.map_mut(t.map).ok_or(DataplaneError::Map {
            map: t.map,
            source: aya::maps::MapError::InvalidName { name: t.map.into() },
        })?;
        ProgramArray::try_from(map)
            .and_then(|mut a| a.set(t.index, &fd, 0))
            .map_err(map_err(t.map))?;
    }
    Ok(())
}

/// The loaded program `name` as its concrete type.
pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let err = |source| DataplaneError::Program {
        name: name.into(),
        source,
    };
    ebpf.program_mut(name)
        .ok_or_else(|| err(ProgramError::NotLoaded))?
        .try_into()
        .map_err(err)
}

impl MapSizes {
    /// The sizes of the maps pinned in `dir` (a map adopted from an earlier
    /// agent keeps its size); a knob that sizes several maps reports the
    /// first of them.
    fn pinned(dir: &Path) -> Result<Self> {
        let mut sizes = MapSizes::default();
        for m in MAPS.iter().rev() {
            if let Some(n) = sizes.knob(m.size) {
                *n = pinned_max_entries(dir, m.name)?;
            }
        }
        Ok(sizes)
    }
}

/// Size of a pinned map (a map adopted from an earlier agent keeps its size).
pub(super) fn pinned_max_entries(dir: &Path, name: &'static str) -> Result<u32> {
    aya::maps::MapInfo::from_pin(dir.join(name))
        .map(|i| i.max_entries())
        .map_err(map_err(name))
}

/// Name of the marker folder that records the layout version of the maps
/// pinned next to it (bpffs holds only folders and BPF objects, no files).
pub(super) fn layout_marker(version: u32) -> String {
    format!("layout-v{version}")
}

/// The layout versions marked in `dir`.
pub(super) fn marked_layouts(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("layout-v")
                .map(str::to_string)
        })
        .collect()
}

/// Checks the layout markers of `dir`: returns the older layout to migrate
/// from, if any; refuses an unknown (newer) layout.
pub(super) fn check_layout(dir: &Path) -> Result<Option<u32>> {
    let found = marked_layouts(dir);
    let ours = LAYOUT_VERSION.to_string();
    let mut from = None;
    for v in &found {
        if *v == ours {
            continue;
        }
        match v.parse::<u32>() {
            Ok(n) if super::migrate::MIGRATES_FROM.contains(&n) => from = Some(n),
            _ => {
                return Err(DataplaneError::Layout {
                    dir: dir.to_path_buf(),
                    found: v.clone(),
                    expected: LAYOUT_VERSION,
                });
            }
        }
    }
    if found.is_empty() && MAPS.iter().any(|m| dir.join(m.name).exists()) {
        // Maps pinned by something that did not mark its layout.
        return Err(DataplaneError::Layout {
            dir: dir.to_path_buf(),
            found: "none".into(),
            expected: LAYOUT_VERSION,
        });
    }
    Ok(from)
}

/// Removes every pin svcnat made under `dir` (links first, so traffic stops
/// being translated before its maps go) and the folder itself. Programs and
/// maps are freed by the kernel once nothing holds them. Returns the paths
/// removed; a missing folder is not an error.
pub fn cleanup(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let links = dir.join("links");
    if let Ok(rd) = fs::read_dir(&links) {
        for e in rd.flatten() {
            fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            removed.push(e.path());
        }
        fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for v in marked_layouts(dir) {
        let p = dir.join(format!("layout-v{v}"));
        fs::remove_dir(&p).map_err(io_err(&p))?;
        removed.push(p);
    }
    let names = MAPS.iter().map(|m| m.name.to_string());
    for name in names.chain(super::migrate::old_pins()) {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::Io { path: p, source: e }),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DataplaneError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(removed)
}

impl Dataplane {
    /// Reads what the pinned maps hold into the mirror, without changing
    /// them. Entries that do not hang together (a slot naming a missing
    /// backend, a backend no slot names) are left for [`Self::repair`].
    pub(super) fn adopt(&mut self) -> Result<()> {
        let by_id: StdHashMap<u32, BackendEntry> =
            self.maps.backend_entries()?.into_iter().collect();
        let entries = self.maps.svc_entries()?;
        let mut ranges: StdHashMap<u32, Vec<(IpAddr, u8)>> = StdHashMap::new();
        for id in self.maps.range_ids()? {
            // A key no agent writes (prefix outside 32 plus the family's
            // lengths) is left for repair.
            if let Some((svc_id, range)) = range_of(&id) {
                ranges.entry(svc_id).or_default().push(range);
            }
        }
        for e in entries {
            let v = e.value;
            if v.flags & SVC_FLAG_VIP != 0
                || (e.scope != SCOPE_EXTERNAL && e.scope != SCOPE_INTERNAL)
            {
                continue;
            }
            let fe = Frontend {
                addr: e.addr,
                port: e.port,
                proto: e.proto,
            };
            let mut ids = Vec::with_capacity(usize::from(v.count));
            for slot in 1..=u32::from(v.count) {
                let key = SlotKey {
                    svc_id: v.svc_id,
                    slot,
                };
                if let Ok(s) = self.maps.SLOTS.get(&key, 0)
                    && by_id.contains_key(&s.backend_id)
                {
                    ids.push(s.backend_id);
                }
            }
            for id in &ids {
                let b = by_id[id];
                let key = BackendKey {
                    addr: b.addr,
                    port: b.port,
                    proto: b.proto,
                };
                self.table.reference_backend(
                    key,
                    BackendSlot {
                        id: *id,
                        flags: b.flags,
                        refs: 0,
                    },
                );
            }
            self.table.slot_count += ids.len();
            if e.scope == SCOPE_EXTERNAL && has_marker(v.flags) {
                self.table.add_marker(fe.addr);
            }
            let label = self
                .maps
                .LABELS
                .get(&v.svc_id, 0)
                .map(|l| l.as_str().to_string())
                .unwrap_or_default();
            let mut r = ranges.remove(&v.svc_id).unwrap_or_default();
            r.sort();
            self.table.insert_mirror(
                e.scope,
                fe,
                ServiceMirror {
                    svc_id: v.svc_id,
                    backend_ids: ids,
                    affinity_timeout: v.affinity_timeout,
                    label,
                    flags: v.flags,
                    ranges: r,
                },
            );
        }
        let ids: Vec<u32> = self
            .table
            .services
            .values()
            .chain(self.table.internal.values())
            .map(|s| s.svc_id)
            .collect();
        self.table.svc_ids.rebuild(ids.into_iter());
        self.table.backend_ids.rebuild(by_id.keys().copied());
        // Kept as they are until the agent sets its own.
        self.service_cidrs = self.service_cidrs()?;
        Ok(())
    }
}
