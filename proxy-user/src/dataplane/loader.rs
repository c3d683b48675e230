//! Loading the object: map sizes, pins and their adoption, the layout
//! marker and migrations from older layouts, and removing every pin
//! (`svcnat cleanup`). Everything is driven by the one table of maps
//! ([`proxy_common::MAPS`]).

use super::*;

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
            crate::migrate::prepare(&dir, from)?;
        }
        let pins: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        let s = cfg.sizes;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::SVC4, s.services)
            .map_max_entries(map_names::SLOTS, s.slots)
            .map_max_entries(map_names::BACKEND4, s.backends)
            .map_max_entries(map_names::REVNAT4, s.revnat)
            .map_max_entries(map_names::LABELS, s.revnat)
            .map_max_entries(map_names::CT4, s.conntrack)
            .map_max_entries(map_names::FRAG4, s.fragments)
            .map_max_entries(map_names::SNAT4, s.snat)
            .map_max_entries(map_names::NODE4, s.node_addresses)
            .map_max_entries(map_names::AFFINITY4, s.affinity)
            .map_max_entries(map_names::SRCRANGE4, s.source_ranges);
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
        let node4 = HashMap::try_from(take(&mut ebpf, map_names::NODE4)?)
            .map_err(map_err(map_names::NODE4))?;
        let srcrange4 = LpmTrie::try_from(take(&mut ebpf, map_names::SRCRANGE4)?)
            .map_err(map_err(map_names::SRCRANGE4))?;
        let affinity4 = HashMap::try_from(take(&mut ebpf, map_names::AFFINITY4)?)
            .map_err(map_err(map_names::AFFINITY4))?;
        let svc4 = HashMap::try_from(take(&mut ebpf, map_names::SVC4)?)
            .map_err(map_err(map_names::SVC4))?;
        let slots = HashMap::try_from(take(&mut ebpf, map_names::SLOTS)?)
            .map_err(map_err(map_names::SLOTS))?;
        let backend4 = HashMap::try_from(take(&mut ebpf, map_names::BACKEND4)?)
            .map_err(map_err(map_names::BACKEND4))?;
        let revnat4 = HashMap::try_from(take(&mut ebpf, map_names::REVNAT4)?)
            .map_err(map_err(map_names::REVNAT4))?;
        let labels = HashMap::try_from(take(&mut ebpf, map_names::LABELS)?)
            .map_err(map_err(map_names::LABELS))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, map_names::STATS)?)
            .map_err(map_err(map_names::STATS))?;
        let ct4 =
            HashMap::try_from(take(&mut ebpf, map_names::CT4)?).map_err(map_err(map_names::CT4))?;
        let snat4 = HashMap::try_from(take(&mut ebpf, map_names::SNAT4)?)
            .map_err(map_err(map_names::SNAT4))?;
        let capacity = MapSizes {
            services: pinned_max_entries(&dir, map_names::SVC4)?,
            slots: pinned_max_entries(&dir, map_names::SLOTS)?,
            backends: pinned_max_entries(&dir, map_names::BACKEND4)?,
            revnat: pinned_max_entries(&dir, map_names::REVNAT4)?,
            conntrack: pinned_max_entries(&dir, map_names::CT4)?,
            fragments: pinned_max_entries(&dir, map_names::FRAG4)?,
            snat: pinned_max_entries(&dir, map_names::SNAT4)?,
            node_addresses: pinned_max_entries(&dir, map_names::NODE4)?,
            affinity: pinned_max_entries(&dir, map_names::AFFINITY4)?,
            source_ranges: pinned_max_entries(&dir, map_names::SRCRANGE4)?,
        };
        let mut dp = Self {
            dir,
            ebpf,
            svc4,
            slots,
            backend4,
            revnat4,
            labels,
            stats,
            node4,
            srcrange4,
            affinity4,
            ct4,
            snat4,
            capacity,
            services: BTreeMap::new(),
            internal: BTreeMap::new(),
            backends: StdHashMap::new(),
            backend_keys: StdHashMap::new(),
            vips: StdHashMap::new(),
            slot_count: 0,
            svc_ids: Ids::default(),
            backend_ids: Ids::default(),
            attached: BTreeSet::new(),
            node_attached: BTreeSet::new(),
            pending_migration: None,
            stale_udp: BTreeSet::new(),
            ct_removed: 0,
        };
        dp.adopt()?;
        if let Some(from) = migrate_from {
            // Step 1 of the migration: new-layout entries next to the old
            // ones, before any of our programs runs.
            let r = crate::migrate::migrate(&dp.dir, from, false)?;
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
    pub fn finish_migration(&mut self) -> Result<Option<crate::migrate::MigrationReport>> {
        let Some(from) = self.pending_migration else {
            return Ok(None);
        };
        let report = crate::migrate::migrate(&self.dir, from, true)?;
        let marker = self.dir.join(layout_marker(from));
        match fs::remove_dir(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&marker)(e)),
            _ => {}
        }
        self.pending_migration = None;
        Ok(Some(report))
    }
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

pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DataplaneError::Map {
        map: name,
        source: MapError::InvalidName { name: name.into() },
    })
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
            Ok(n) if crate::migrate::MIGRATES_FROM.contains(&n) => from = Some(n),
            _ => {
                return Err(DataplaneError::Layout {
                    dir: dir.to_path_buf(),
                    found: v.clone(),
                    expected: LAYOUT_VERSION,
                });
            }
        }
    }
    if found.is_empty() && map_names::ALL.iter().any(|n| dir.join(n).exists()) {
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
    for name in map_names::ALL
        .iter()
        .chain(std::iter::once(&crate::migrate::OLD_CT4_PIN))
    {
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
