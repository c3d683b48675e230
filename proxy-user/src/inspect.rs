//! `svcnat inspect`: reads the pinned maps (the agent need not run) and shows
//! them joined back to names, as tables or JSON. Both families: IPv6
//! addresses with ports are shown as `[2001:db8::10]:80`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_FIN_REPLY,
    CT_F_FIN_SERVICE, CT_F_SEEN_NON_SYN, SCOPE_INTERNAL, SVC_FLAG_LOCAL_ONLY,
    SVC_FLAG_SOURCE_RANGES, SVC_FLAG_VIP, SlotKey, SvcValue, map_names,
};
use serde::Serialize;

use crate::{
    dataplane::{
        CtEntry, CtFamily, DataplaneError, Maps, SvcEntry, kind_of, map_err, proto_name, range_of,
        read_stats,
    },
    model::FrontendKind,
};

mod pods;
mod view;

pub use pods::{PodRow, pods, render_pods};
pub use view::{Output, Requirement, SelectorError, Syntax, View, ViewError, parse_selector};
use view::{Row, service_parts, show};

type Result<T> = std::result::Result<T, DataplaneError>;

/// One service frontend: its kind, policies and backends, with the
/// internal-scope entry of the same frontend folded in.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceRow {
    /// `namespace/name:port` (empty if unknown).
    pub name: String,
    /// How traffic reaches it, from the entry's `SVC_FLAG_*` bits:
    /// `cluster-ip`, `node-port`, `load-balancer` or `external-ip`.
    pub kind: &'static str,
    /// VIP (or node address), of either family.
    pub vip: IpAddr,
    /// Port.
    pub port: u16,
    /// `tcp` / `udp`.
    pub protocol: &'static str,
    /// Service id.
    pub svc_id: u32,
    /// Backends as `addr:port` (`[addr]:port` for IPv6), in slot order: what traffic from anywhere
    /// gets (with a traffic policy `local`, this node's backends only).
    pub backends: Vec<String>,
    /// `cluster`, or `local` when a traffic policy Local applies
    /// (`externalTrafficPolicy` for node-port, external and load-balancer
    /// frontends, `internalTrafficPolicy` for cluster IPs): no backend here
    /// means drop rather than reject.
    pub traffic_policy: &'static str,
    /// Service id of the internal-scope entry, when the frontend has one.
    pub internal_svc_id: Option<u32>,
    /// Backends this node's pods get when they differ from `backends`
    /// (`externalTrafficPolicy: Local`: pods still reach every backend), as
    /// `addr:port` in slot order; `None` when pods get `backends`.
    pub internal_backends: Option<Vec<String>>,
    /// `loadBalancerSourceRanges` as `addr/len`; `None` when every client is
    /// admitted, an empty list when none is.
    pub source_ranges: Option<Vec<String>>,
    /// Session affinity (`ClientIP`) timeout in seconds (0: none).
    pub affinity_timeout: u32,
}

/// The kind of a frontend entry with `flags` (see [`ServiceRow::kind`]).
pub fn frontend_kind(flags: u16) -> &'static str {
    match kind_of(flags) {
        FrontendKind::ClusterIp => "cluster-ip",
        FrontendKind::NodePort => "node-port",
        FrontendKind::LoadBalancer => "load-balancer",
        FrontendKind::ExternalIp => "external-ip",
    }
}

/// One backend.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendRow {
    /// Backend id.
    pub id: u32,
    /// Address, of either family.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: &'static str,
    /// `local`, `terminating`.
    pub flags: Vec<&'static str>,
    /// Services (names) whose slots name it.
    pub services: Vec<String>,
}

/// One conntrack entry.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConntrackRow {
    /// `service` (client -> VIP) or `reply` (backend -> client).
    pub direction: &'static str,
    /// Protocol.
    pub protocol: &'static str,
    /// Source `addr:port`.
    pub source: String,
    /// Destination `addr:port`.
    pub destination: String,
    /// What is written: the backend (service direction) or the VIP (reply).
    pub nat: String,
    /// Backend id.
    pub backend_id: u32,
    /// Service name.
    pub service: String,
    /// Seconds since creation.
    pub age_s: f64,
    /// Seconds until expiry (negative: expired, awaiting reuse or eviction).
    pub expires_in_s: f64,
    /// `seen_non_syn`, `fin_client`, `fin_backend`, `closed`.
    pub flags: Vec<&'static str>,
}

/// One stats counter.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StatRow {
    /// Reason name.
    pub reason: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One pinned link: a program attached to an interface or a socket hook
/// attached at the cgroup root.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LinkRow {
    /// The pin's name under `links/`.
    pub pin: String,
    /// `interface` (TC or XDP on a pod or node interface) or `socket-hook`.
    pub kind: &'static str,
    /// Where it is attached: `<ifname> <ingress|egress|xdp|node-egress>`, or
    /// the cgroup hook (`connect4`, ...).
    pub attach: String,
    /// The kernel's link id (0: unreadable).
    pub link_id: u32,
    /// The program it runs: its id and name (empty: unreadable).
    pub program_id: u32,
    /// The program's name (the kernel keeps 15 bytes of it).
    pub program: String,
    /// For socket hooks: the cookie of the network namespace whose sockets
    /// they translate (`SVCNAT_SOCK_CFG`; none: they translate nothing).
    pub netns_cookie: Option<u64>,
}

/// The links pinned under `dir/links`, with the program each runs.
pub fn links(dir: &Path) -> Result<Vec<LinkRow>> {
    use aya::programs::links::{FdLink, PinnedLink};
    let folder = dir.join("links");
    let rd = std::fs::read_dir(&folder).map_err(|source| DataplaneError::Io {
        path: folder.clone(),
        source,
    })?;
    let programs: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect();
    let cookie = Maps::pinned(dir)
        .ok()
        .and_then(|m| m.SOCK_CFG.get(&proxy_common::SOCK_CFG_KEY, 0).ok())
        .map(|c| c.netns_cookie);
    let mut rows = Vec::new();
    for e in rd.flatten() {
        let pin = e.file_name().to_string_lossy().into_owned();
        let info = PinnedLink::from_pin(e.path())
            .ok()
            .and_then(|p| FdLink::from(p).info().ok());
        let (link_id, program_id) = info.map_or((0, 0), |i| (i.id(), i.program_id()));
        let (kind, attach, netns_cookie) = match pin.strip_prefix(proxy_common::SOCK_LINK_PREFIX) {
            Some(hook) => ("socket-hook", hook.to_string(), cookie),
            None => {
                let attach = interface_attach(&pin);
                ("interface", attach, None)
            }
        };
        rows.push(LinkRow {
            program: programs.get(&program_id).cloned().unwrap_or_default(),
            pin,
            kind,
            attach,
            link_id,
            program_id,
            netns_cookie,
        });
    }
    rows.sort_by(|a, b| (a.kind, &a.pin).cmp(&(b.kind, &b.pin)));
    Ok(rows)
}

/// `<ifname> <kind>` of an interface link's pin `<ifindex>-<ifname>-<kind>`
/// (interface names may hold '-').
fn interface_attach(pin: &str) -> String {
    let rest = pin.split_once('-').map_or(pin, |(_, r)| r);
    ["node-egress", "ingress", "egress", "xdp"]
        .iter()
        .find_map(|k| {
            let name = rest.strip_suffix(k)?.strip_suffix('-')?;
            Some(format!("{name} {k}"))
        })
        .unwrap_or_else(|| rest.to_string())
}

fn labels(maps: &Maps) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for e in maps.LABELS.iter() {
        let (k, v) = e.map_err(map_err(map_names::LABELS))?;
        out.insert(k, v.as_str().to_string());
    }
    Ok(out)
}

/// The source ranges in the pinned map, by service id, as `addr/len`.
fn source_ranges(maps: &Maps) -> Result<BTreeMap<u32, Vec<String>>> {
    let mut out: BTreeMap<u32, Vec<(IpAddr, u8)>> = BTreeMap::new();
    for id in maps.range_ids()? {
        if let Some((svc_id, range)) = range_of(&id) {
            out.entry(svc_id).or_default().push(range);
        }
    }
    Ok(out
        .into_iter()
        .map(|(id, mut ranges)| {
            ranges.sort();
            let text = ranges.iter().map(|(a, l)| format!("{a}/{l}")).collect();
            (id, text)
        })
        .collect())
}

/// Every service frontend in the pinned maps, one row per frontend (the
/// internal-scope entry of a frontend is shown in its row).
pub fn services(dir: &Path) -> Result<Vec<ServiceRow>> {
    let maps = Maps::pinned(dir)?;
    let names = labels(&maps)?;
    let mut ranges = source_ranges(&maps)?;
    let list = |v: &SvcValue| -> Vec<String> {
        (1..=u32::from(v.count))
            .map(|slot| {
                let key = SlotKey {
                    svc_id: v.svc_id,
                    slot,
                };
                let b = maps
                    .SLOTS
                    .get(&key, 0)
                    .ok()
                    .and_then(|s| maps.backend(s.backend_id));
                match b {
                    Some(b) => socket(b.addr, b.port),
                    None => format!("<slot {slot} missing>"),
                }
            })
            .collect()
    };
    let mut external: BTreeMap<(IpAddr, u16, u8), ServiceRow> = BTreeMap::new();
    let mut internal: Vec<SvcEntry> = Vec::new();
    for e in maps.svc_entries()? {
        let v = e.value;
        if v.flags & SVC_FLAG_VIP != 0 {
            continue;
        }
        if e.scope == SCOPE_INTERNAL {
            internal.push(e);
            continue;
        }
        let row = ServiceRow {
            name: names.get(&v.svc_id).cloned().unwrap_or_default(),
            kind: frontend_kind(v.flags),
            vip: e.addr,
            port: e.port,
            protocol: proto_name(e.proto),
            svc_id: v.svc_id,
            backends: list(&v),
            traffic_policy: if v.flags & SVC_FLAG_LOCAL_ONLY != 0 {
                "local"
            } else {
                "cluster"
            },
            internal_svc_id: None,
            internal_backends: None,
            source_ranges: if v.flags & SVC_FLAG_SOURCE_RANGES != 0 {
                Some(ranges.remove(&v.svc_id).unwrap_or_default())
            } else {
                None
            },
            affinity_timeout: v.affinity_timeout,
        };
        external.insert((row.vip, row.port, e.proto), row);
    }
    let mut rows = Vec::new();
    for e in internal {
        let v = e.value;
        match external.get_mut(&(e.addr, e.port, e.proto)) {
            Some(row) => {
                row.internal_svc_id = Some(v.svc_id);
                row.internal_backends = Some(list(&v));
            }
            // An internal entry without its frontend entry (not written by
            // the agent, or drift): shown on its own, with no backends for
            // traffic from outside.
            None => rows.push(ServiceRow {
                name: names.get(&v.svc_id).cloned().unwrap_or_default(),
                kind: frontend_kind(v.flags),
                vip: e.addr,
                port: e.port,
                protocol: proto_name(e.proto),
                svc_id: v.svc_id,
                backends: Vec::new(),
                traffic_policy: "local",
                internal_svc_id: Some(v.svc_id),
                internal_backends: Some(list(&v)),
                source_ranges: None,
                affinity_timeout: v.affinity_timeout,
            }),
        }
    }
    rows.extend(external.into_values());
    rows.sort_by(|a, b| {
        (&a.name, a.vip, a.port, a.protocol).cmp(&(&b.name, b.vip, b.port, b.protocol))
    });
    Ok(rows)
}

/// Every backend in the pinned maps (both families), with the services
/// that use it.
pub fn backends(dir: &Path) -> Result<Vec<BackendRow>> {
    let maps = Maps::pinned(dir)?;
    let names = labels(&maps)?;
    let mut counts: BTreeMap<u32, u16> = BTreeMap::new();
    for e in maps.svc_entries()? {
        if e.value.flags & SVC_FLAG_VIP == 0 {
            counts.insert(e.value.svc_id, e.value.count);
        }
    }
    let mut users: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for e in maps.SLOTS.iter() {
        let (k, v) = e.map_err(map_err(map_names::SLOTS))?;
        if counts
            .get(&k.svc_id)
            .is_some_and(|c| k.slot >= 1 && k.slot <= u32::from(*c))
        {
            let name = names
                .get(&k.svc_id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", k.svc_id));
            users.entry(v.backend_id).or_default().push(name);
        }
    }
    let mut rows = Vec::new();
    for (id, b) in maps.backend_entries()? {
        let mut flags = Vec::new();
        if b.flags & BACKEND_FLAG_LOCAL != 0 {
            flags.push("local");
        }
        if b.flags & BACKEND_FLAG_TERMINATING != 0 {
            flags.push("terminating");
        }
        let mut services = users.remove(&id).unwrap_or_default();
        services.sort();
        services.dedup();
        rows.push(BackendRow {
            id,
            address: b.addr,
            port: b.port,
            protocol: proto_name(b.proto),
            flags,
            services,
        });
    }
    rows.sort_by_key(|r| (r.address, r.port, r.id));
    Ok(rows)
}

/// `addr:port`, with an IPv6 address in brackets (`[2001:db8::10]:80`).
pub fn socket(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every conntrack entry in the pinned maps (IPv4, then IPv6).
pub fn conntrack(dir: &Path) -> Result<Vec<ConntrackRow>> {
    let maps = Maps::pinned(dir)?;
    let names = labels(&maps)?;
    let mut views: Vec<CtEntry> = Vec::new();
    for e in maps.CT4.iter() {
        let (k, v) = e.map_err(map_err(map_names::CT4))?;
        views.push(k.decode(&v));
    }
    for e in maps.CT6.iter() {
        let (k, v) = e.map_err(map_err(map_names::CT6))?;
        views.push(k.decode(&v));
    }
    let now = monotonic_ns() as f64;
    let mut rows = Vec::new();
    for v in views {
        let mut flags = Vec::new();
        for (bit, name) in [
            (CT_F_SEEN_NON_SYN, "seen_non_syn"),
            (CT_F_FIN_SERVICE, "fin_client"),
            (CT_F_FIN_REPLY, "fin_backend"),
            (CT_F_CLOSED, "closed"),
        ] {
            if v.flags & bit != 0 {
                flags.push(name);
            }
        }
        rows.push(ConntrackRow {
            direction: if v.dir == CT_DIR_SERVICE {
                "service"
            } else {
                "reply"
            },
            protocol: proto_name(v.proto),
            source: socket(v.src.0, v.src.1),
            destination: socket(v.dst.0, v.dst.1),
            nat: socket(v.nat.0, v.nat.1),
            backend_id: v.backend_id,
            service: names
                .get(&v.svc_id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", v.svc_id)),
            age_s: ((now - v.created_ns as f64) / 1e9 * 10.0).round() / 10.0,
            expires_in_s: ((v.expires_ns as f64 - now) / 1e9 * 10.0).round() / 10.0,
            flags,
        });
    }
    rows.sort_by(|a, b| {
        (&a.source, &a.destination, a.direction).cmp(&(&b.source, &b.destination, b.direction))
    });
    Ok(rows)
}

/// Datapath counters by reason (summed over CPUs).
pub fn stats(dir: &Path) -> Result<Vec<StatRow>> {
    Ok(read_stats(&Maps::pinned(dir)?.STATS)?
        .into_iter()
        .map(|(r, v)| StatRow {
            reason: r.name(),
            packets: v.packets,
            bytes: v.bytes,
        })
        .collect())
}

/// Renders rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// What `svcnat inspect` can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Service frontends and their backends.
    Services,
    /// Backends and the services that use them.
    Backends,
    /// Conntrack entries.
    Conntrack,
    /// Datapath counters by reason.
    Stats,
    /// Pinned links: programs on interfaces and socket hooks.
    Links,
    /// Standalone mode: per Service with a selector, the Pods of the
    /// manifests it selected and why the others of its namespace were not
    /// (`--manifests PATH`; reads the manifests, not the pins).
    Pods,
}

impl Row for ServiceRow {
    const WHAT: &'static str = "services";
    // SERVICE KIND FRONTEND PROTO POLICY BACKENDS.
    const NARROW: &'static [usize] = &[0, 1, 2, 3, 5, 8];
    const HEADERS: &'static [&'static str] = &[
        "SERVICE",
        "KIND",
        "FRONTEND",
        "PROTO",
        "ID",
        "POLICY",
        "AFFINITY",
        "SOURCE RANGES",
        "BACKENDS",
        "POD BACKENDS",
    ];
    fn fields(&self) -> Vec<(&'static str, String)> {
        let (ns, name, port_name) = service_parts(&self.name);
        vec![
            ("namespace", ns.to_owned()),
            ("name", name.to_owned()),
            ("port-name", port_name.to_owned()),
            ("kind", self.kind.to_owned()),
            ("vip", self.vip.to_string()),
            ("port", self.port.to_string()),
            ("protocol", self.protocol.to_owned()),
            ("policy", self.traffic_policy.to_owned()),
        ]
    }
    fn cells(&self) -> Vec<String> {
        let local = self.traffic_policy == "local";
        let backends = |list: &[String], local: bool| {
            if !list.is_empty() {
                list.join(", ")
            } else if local {
                "(none on this node: drops)".into()
            } else {
                "(none: rejects)".into()
            }
        };
        vec![
            self.name.clone(),
            self.kind.to_string(),
            socket(self.vip, self.port),
            self.protocol.to_string(),
            match self.internal_svc_id {
                Some(internal) if internal != self.svc_id => format!("{}/{internal}", self.svc_id),
                _ => self.svc_id.to_string(),
            },
            self.traffic_policy.to_string(),
            if self.affinity_timeout == 0 {
                "-".into()
            } else {
                format!("ClientIP {}s", self.affinity_timeout)
            },
            match &self.source_ranges {
                None => "-".into(),
                Some(r) if r.is_empty() => "(none: drops all)".into(),
                Some(r) => r.join(", "),
            },
            backends(&self.backends, local),
            match &self.internal_backends {
                None => "(same)".into(),
                Some(list) => backends(list, false),
            },
        ]
    }
}

impl Row for BackendRow {
    const WHAT: &'static str = "backends";
    const HEADERS: &'static [&'static str] = &["ID", "BACKEND", "PROTO", "FLAGS", "SERVICES"];
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("address", self.address.to_string()),
            ("port", self.port.to_string()),
            ("protocol", self.protocol.to_owned()),
        ];
        out.extend(self.flags.iter().map(|f| ("flag", (*f).to_owned())));
        for s in &self.services {
            let (ns, name, _) = service_parts(s);
            out.push(("namespace", ns.to_owned()));
            out.push(("service", name.to_owned()));
        }
        out
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            socket(self.address, self.port),
            self.protocol.to_string(),
            self.flags.join(","),
            self.services.join(", "),
        ]
    }
}

impl Row for ConntrackRow {
    const WHAT: &'static str = "conntrack entries";
    // DIR PROTO SOURCE DESTINATION NAT SERVICE EXPIRES_S.
    const NARROW: &'static [usize] = &[0, 1, 2, 3, 4, 5, 7];
    const HEADERS: &'static [&'static str] = &[
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "NAT",
        "SERVICE",
        "AGE_S",
        "EXPIRES_S",
        "FLAGS",
    ];
    fn fields(&self) -> Vec<(&'static str, String)> {
        let (ns, name, _) = service_parts(&self.service);
        let mut out = vec![
            ("direction", self.direction.to_owned()),
            ("protocol", self.protocol.to_owned()),
            ("source", self.source.clone()),
            ("destination", self.destination.clone()),
            ("namespace", ns.to_owned()),
            ("service", name.to_owned()),
        ];
        out.extend(self.flags.iter().map(|f| ("flag", (*f).to_owned())));
        out
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.direction.to_string(),
            self.protocol.to_string(),
            self.source.clone(),
            self.destination.clone(),
            self.nat.clone(),
            self.service.clone(),
            format!("{:.1}", self.age_s),
            format!("{:.1}", self.expires_in_s),
            self.flags.join(","),
        ]
    }
}

impl Row for StatRow {
    const WHAT: &'static str = "counters";
    const HEADERS: &'static [&'static str] = &["REASON", "PACKETS", "BYTES"];
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![("reason", self.reason.to_owned())]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.reason.to_string(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

impl Row for LinkRow {
    const WHAT: &'static str = "links";
    // PIN KIND ATTACH PROGRAM.
    const NARROW: &'static [usize] = &[0, 1, 2, 4];
    const HEADERS: &'static [&'static str] =
        &["PIN", "KIND", "ATTACH", "LINK", "PROGRAM", "NETNS COOKIE"];
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("kind", self.kind.to_owned()),
            ("attach", self.attach.clone()),
            ("program", self.program.clone()),
        ]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.pin.clone(),
            self.kind.to_string(),
            self.attach.clone(),
            self.link_id.to_string(),
            format!("{} {}", self.program_id, self.program),
            self.netns_cookie.map_or("-".into(), |c| c.to_string()),
        ]
    }
}

/// Why `svcnat inspect` shows nothing.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The pins cannot be read.
    #[error(transparent)]
    Pins(#[from] DataplaneError),
    /// The manifests cannot be read (`inspect pods`).
    #[error(transparent)]
    Manifests(#[from] crate::sources::manifests::ManifestError),
    /// The rows cannot be shown as asked.
    #[error(transparent)]
    View(#[from] ViewError),
}

/// Renders `what` from the pins in `dir` as `view` asks.
pub fn render(dir: &Path, what: What, view: &View) -> std::result::Result<String, InspectError> {
    Ok(match what {
        What::Services => show(&services(dir)?, view)?,
        What::Backends => show(&backends(dir)?, view)?,
        What::Conntrack => show(&conntrack(dir)?, view)?,
        What::Stats => show(&stats(dir)?, view)?,
        What::Links => show(&links(dir)?, view)?,
        // Not in the pins: see [`render_pods`].
        What::Pods => "svcnat inspect pods reads the manifests: give --manifests PATH\n".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::{
        SVC_FLAG_EXTERNAL, SVC_FLAG_LOAD_BALANCER, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES,
    };

    #[test]
    fn interface_pins_name_the_interface_and_the_hook() {
        assert_eq!(interface_attach("7-vp0-ingress"), "vp0 ingress");
        assert_eq!(interface_attach("7-vp0-egress"), "vp0 egress");
        assert_eq!(interface_attach("2-eth0-node-egress"), "eth0 node-egress");
        assert_eq!(interface_attach("12-my-veth-xdp"), "my-veth xdp");
        assert_eq!(interface_attach("3-odd"), "odd");
    }

    #[test]
    fn frontend_kinds_follow_the_entry_flags() {
        assert_eq!(frontend_kind(0), "cluster-ip");
        assert_eq!(frontend_kind(SVC_FLAG_LOCAL_ONLY), "cluster-ip");
        assert_eq!(
            frontend_kind(SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT),
            "node-port"
        );
        assert_eq!(
            frontend_kind(SVC_FLAG_EXTERNAL | SVC_FLAG_LOAD_BALANCER),
            "load-balancer"
        );
        assert_eq!(
            frontend_kind(SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES),
            "external-ip"
        );
        assert_eq!(frontend_kind(SVC_FLAG_EXTERNAL), "external-ip");
    }

    #[test]
    fn service_rows_render_policies_scopes_and_ranges() {
        let row = ServiceRow {
            name: "shop/web:http".into(),
            kind: "node-port",
            vip: std::net::Ipv4Addr::new(198, 18, 0, 2).into(),
            port: 30080,
            protocol: "tcp",
            svc_id: 3,
            backends: vec![],
            traffic_policy: "local",
            internal_svc_id: Some(4),
            internal_backends: Some(vec!["198.18.1.1:8080".into()]),
            source_ranges: Some(vec![]),
            affinity_timeout: 60,
        };
        assert_eq!(
            row.cells(),
            [
                "shop/web:http",
                "node-port",
                "198.18.0.2:30080",
                "tcp",
                "3/4",
                "local",
                "ClientIP 60s",
                "(none: drops all)",
                "(none on this node: drops)",
                "198.18.1.1:8080",
            ]
        );
        let plain = ServiceRow {
            kind: "cluster-ip",
            traffic_policy: "cluster",
            internal_svc_id: None,
            internal_backends: None,
            source_ranges: None,
            affinity_timeout: 0,
            ..row
        };
        let cells = plain.cells();
        assert_eq!(
            cells[4..],
            ["3", "cluster", "-", "-", "(none: rejects)", "(same)"]
        );
        assert_eq!(cells.len(), ServiceRow::HEADERS.len());
    }

    #[test]
    fn table_aligns_columns_to_the_widest_cell() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), "ww".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    ww\n");
    }
}
