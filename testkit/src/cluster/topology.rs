//! The cluster's shape: the address plan, the namespaces of the fabric,
//! the nodes, the pods and the outside clients, and how they are wired
//! (see the [module documentation](super)).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::process::Proc;
use crate::netns::{self, IPV6_SYSCTLS, NetNs, unique_tag, veth};

/// The glob of the pods' host-side veths (`--pod-interfaces`).
pub const POD_GLOB: &str = "vp*";
/// The source address a pod sees when it reaches itself through a service
/// (`--hairpin-address`; the agent's default is outside the test ranges).
pub const HAIRPIN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
/// [`HAIRPIN_ADDR`] for IPv6 (its [`twin6`], 2001:db8:255::254).
pub const HAIRPIN_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x255, 0, 0, 0, 0, 0x254);
/// The outside client's address on the fabric.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The outside client's IPv6 address on the fabric (the [`twin6`] of
/// [`OUTSIDE_ADDR`]).
pub const OUTSIDE_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);
/// The fabric's network: nodes, outside clients (and free addresses, for
/// load-balancer IPs, between them).
pub const FABRIC_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The fabric's IPv6 network (a /64), the [`twin6`] of [`FABRIC_NET`].
pub const FABRIC_NET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);
/// A /64 no interface of the cluster has and no [`twin6`] falls in, for the
/// IPv6 cluster IPs of tests (as tests take 198.19.0.0/16 for IPv4 ones).
pub const SERVICE_NET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0);
/// At most this many nodes (pod ranges 198.18.1.0/24 ..= 198.18.26.0/24).
pub const MAX_NODES: usize = 26;

/// How often wait loops look again.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// The name of node `i`: `node-a`, `node-b`, ...
pub fn node_name(i: usize) -> String {
    let letter = b"abcdefghijklmnopqrstuvwxyz"[i % 26] as char;
    format!("node-{letter}")
}

/// Node `i`'s address on the fabric: 198.18.0.(10+i).
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// Node `i`'s IPv6 address on the fabric: 2001:db8::(10+i) (node-a
/// 2001:db8::10, the [`twin6`] of [`node_addr`]).
pub fn node_addr6(i: usize) -> Ipv6Addr {
    twin(node_addr(i))
}

/// The IPv6 twin of an IPv4 address of the plan: 198.18.Y.Z is
/// 2001:db8:Y::Z with Y and Z written in the same decimal digits (so that
/// they read alike: pod 198.18.2.10 is 2001:db8:2::10, the outside client
/// 198.18.0.200 is 2001:db8::200). None outside 198.18.0.0/16. Every
/// address the cluster gives an interface has its twin on that interface
/// too, and a load-balancer IP on the fabric (198.18.0.Z) has its twin on
/// the IPv6 fabric.
pub fn twin6(addr: Ipv4Addr) -> Option<Ipv6Addr> {
    let o = addr.octets();
    (o[0] == 198 && o[1] == 18).then(|| twin(addr))
}

/// The IPv6 address that stands for an IPv4 address of the plan in tests
/// that run once per family: [`twin6`] in 198.18.0.0/16 (nodes, pods, the
/// outside clients, load-balancer IPs), and for a cluster IP 198.19.Y.Z,
/// the address Z (same digits) of [`SERVICE_NET6`] (198.19.0.10 is
/// 2001:db8:ff::10). None outside 198.18.0.0/15, and for 198.19.Y.Z with Y
/// other than 0 (the IPv6 service range is one /64).
pub fn twin6_of_plan(addr: Ipv4Addr) -> Option<Ipv6Addr> {
    let o = addr.octets();
    match (o[0], o[1], o[2]) {
        (198, 18, _) => twin6(addr),
        (198, 19, 0) => {
            let t = twin(addr).segments();
            let s = SERVICE_NET6.segments();
            Some(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, t[7]))
        }
        _ => None,
    }
}

/// [`twin6`] for an address known to be in 198.18.0.0/16.
fn twin(addr: Ipv4Addr) -> Ipv6Addr {
    /// The decimal digits of `n` read as hex: 10 -> 0x10.
    fn digits(n: u8) -> u16 {
        let (h, t, u) = (
            u16::from(n / 100),
            u16::from(n / 10 % 10),
            u16::from(n % 10),
        );
        h << 8 | t << 4 | u
    }
    let o = addr.octets();
    Ipv6Addr::new(0x2001, 0xdb8, digits(o[2]), 0, 0, 0, 0, digits(o[3]))
}

/// The pods' gateway on node `i` (the address of its `cni0`): 198.18.(i+1).1.
pub fn pod_gateway(i: usize) -> Ipv4Addr {
    pod_addr(i, 1)
}

/// The pods' IPv6 gateway on node `i` (also on its `cni0`):
/// 2001:db8:(i+1)::1.
pub fn pod_gateway6(i: usize) -> Ipv6Addr {
    pod_addr6(i, 1)
}

/// Address `host` in node `i`'s pod range: 198.18.(i+1).host.
pub fn pod_addr(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8 + 1, host)
}

/// Address `host` in node `i`'s IPv6 pod range (a /64), the [`twin6`] of
/// [`pod_addr`]: 2001:db8:(i+1)::host, both in the same decimal digits.
pub fn pod_addr6(i: usize, host: u8) -> Ipv6Addr {
    twin(pod_addr(i, host))
}

/// The node whose pod range (of either family) holds `addr`, if any.
pub fn node_of_pod_addr(addr: impl Into<IpAddr>, nodes: usize) -> Option<usize> {
    let node = match addr.into() {
        IpAddr::V4(a) => {
            let o = a.octets();
            (o[0] == 198 && o[1] == 18).then_some(o[2])?
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let net = (1..=MAX_NODES).find(|&n| pod_addr6(n - 1, 0).segments()[..4] == s[..4])?;
            u8::try_from(net).ok()?
        }
    };
    (node >= 1 && usize::from(node) <= nodes).then(|| usize::from(node) - 1)
}

/// Turns TX checksum offload off on interface `ifname` of the calling
/// thread's network namespace (`ethtool -K IF tx off`, by ioctl: ethtool
/// may not be installed). See the module documentation for why.
fn tx_checksum_offload_off(ifname: &str) -> std::io::Result<()> {
    /// `struct ethtool_value` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `ETHTOOL_STXCSUM`: set TX checksum offload.
    const SET_TX_CHECKSUM: u32 = 0x17;
    let name = ifname.as_bytes();
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name too long: {ifname}"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let mut value = EthtoolValue {
        cmd: SET_TX_CHECKSUM,
        data: 0,
    };
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `req` names the interface and points at `value`; both outlive
    // the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCETHTOOL,
            &raw mut req,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// [`tx_checksum_offload_off`] for `ifname` in namespace `ns`.
fn no_tx_checksum_offload(ns: &NetNs, ifname: &str) -> Result<()> {
    let name = ifname.to_string();
    ns.run(move || tx_checksum_offload_off(&name))
        .with_context(|| format!("enter {}", ns.name()))?
        .with_context(|| format!("turn TX checksum offload off on {ifname} in {}", ns.name()))
}

/// How to build a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of nodes (1..=[`MAX_NODES`]).
    pub nodes: usize,
    /// The `svcnat` binary.
    pub svcnat: PathBuf,
    /// A short prefix for namespace names (say the test's initials).
    pub prefix: String,
    /// Extra arguments to every `svcnat run`.
    pub agent_args: Vec<String>,
    /// `RUST_LOG` for the agents.
    pub agent_log_filter: String,
    /// Agents read this folder instead of the cluster's own temporary one
    /// (which [`Cluster::write_manifest`] edits; it refuses then).
    pub manifests: Option<PathBuf>,
}

impl ClusterConfig {
    /// `nodes` nodes running `svcnat`, with a small conntrack table and a
    /// drift repair every 5 s.
    pub fn new(svcnat: impl Into<PathBuf>, nodes: usize) -> Self {
        Self {
            nodes,
            svcnat: svcnat.into(),
            prefix: "sc".into(),
            agent_args: ["--conntrack-size", "65536", "--repair-interval", "5"]
                .map(String::from)
                .to_vec(),
            agent_log_filter: "info".into(),
            manifests: None,
        }
    }

    /// Sets the namespace name prefix.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }
}

/// A namespace one can run programs in: a pod or the outside client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name (nginx answers with it).
    pub name: String,
    /// The node it lives on (None: the outside client).
    pub node: Option<usize>,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its IPv6 address (the [`twin6`] of `addr`).
    pub addr6: Ipv6Addr,
    /// Its network namespace's name.
    pub netns: String,
    /// The host-side veth in the node (pods only).
    pub veth: Option<String>,
}

impl Host {
    /// `ip netns exec NS program`: `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// Spawns a thread that has entered this host's network namespace
    /// running `f` (a server or client written with `std::net`).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<std::io::Result<T>> {
        netns::spawn_in(PathBuf::from(format!("/var/run/netns/{}", self.netns)), f)
    }

    /// The name of its node (as endpoints' `nodeName`), if a pod.
    pub fn node_name(&self) -> Option<String> {
        self.node.map(node_name)
    }

    /// Its address of the family of `peer` (the source it uses towards
    /// `peer`).
    pub fn addr_for(&self, peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V4(_) => IpAddr::V4(self.addr),
            IpAddr::V6(_) => IpAddr::V6(self.addr6),
        }
    }
}

/// A new namespace of the cluster named `name` ([`IPV6_SYSCTLS`] set).
fn cluster_ns(name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    ns.sysctls(IPV6_SYSCTLS)
        .with_context(|| format!("IPv6 sysctls in {name}"))?;
    Ok(ns)
}

/// Adds `addr/prefix` to `dev` in `ns`; an IPv6 address without duplicate
/// address detection (`nodad`: usable at once).
fn add_addr(ns: &NetNs, addr: IpAddr, prefix: u8, dev: &str) -> Result<()> {
    let cidr = format!("{addr}/{prefix}");
    let mut args = vec!["addr", "add", &cidr, "dev", dev];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ns.ip(&args)?;
    Ok(())
}

/// Adds both families' default routes in `ns`, via `v4` and `v6`.
fn default_routes(ns: &NetNs, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    ns.ip(&["route", "add", "default", "via", &v4.to_string()])?;
    ns.ip(&["-6", "route", "add", "default", "via", &v6.to_string()])?;
    Ok(())
}

pub(super) struct NodeState {
    pub(super) ns: NetNs,
    pub(super) next_veth: u32,
}

pub(super) struct AgentState {
    pub(super) proc: Option<Proc>,
    pub(super) bpffs: PathBuf,
    pub(super) log: PathBuf,
    pub(super) starts: u32,
}

/// The cluster. Every method takes `&self` except adding pods, so client
/// threads can share it (`std::thread::scope`).
pub struct Cluster {
    pub(super) cfg: ClusterConfig,
    pub(super) tag: String,
    pub(super) dir: PathBuf,
    pub(super) manifests: PathBuf,
    pub(super) fabric: Option<NetNs>,
    pub(super) nodes: Vec<NodeState>,
    pub(super) outside: Option<(NetNs, Host)>,
    pub(super) more_outside: Vec<(NetNs, Host)>,
    pub(super) pods: Vec<(NetNs, Host)>,
    pub(super) agents: Vec<Mutex<AgentState>>,
    pub(super) servers: Mutex<Vec<Proc>>,
    pub(super) interrupt: Option<&'static AtomicBool>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// For a test: [`Cluster::new`], or `None` after printing why when this
    /// machine cannot run a cluster with `programs` (root, `ip`, and the
    /// servers and clients the test uses). Panics if building it fails.
    pub fn for_test(cfg: ClusterConfig, programs: &[&str]) -> Option<Self> {
        if let Some(why) = crate::skip::skip_reason(&crate::skip::Needs::cluster(programs)) {
            eprintln!("skipped: {why}");
            return None;
        }
        Some(Self::new(cfg).expect("build the cluster"))
    }

    /// Builds the fabric, the nodes and the outside client (no pods, no
    /// agents yet). On error, whatever was built is torn down.
    pub fn new(cfg: ClusterConfig) -> Result<Self> {
        if cfg.nodes == 0 || cfg.nodes > MAX_NODES {
            bail!("1..={MAX_NODES} nodes, not {}", cfg.nodes);
        }
        let tag = unique_tag();
        let dir = std::env::temp_dir().join(format!("svcnat-cluster-{}-{tag}", cfg.prefix));
        let own_manifests = dir.join("manifests");
        let manifests = cfg.manifests.clone().unwrap_or(own_manifests.clone());
        let mut c = Self {
            tag,
            dir,
            manifests,
            fabric: None,
            nodes: Vec::new(),
            outside: None,
            more_outside: Vec::new(),
            pods: Vec::new(),
            agents: Vec::new(),
            servers: Mutex::new(Vec::new()),
            interrupt: None,
            cfg,
        };
        let _ = fs::remove_dir_all(&c.dir);
        fs::create_dir_all(&own_manifests).context("create the cluster's temporary folder")?;
        fs::create_dir_all(c.dir.join("logs"))?;

        let fabric = cluster_ns(&c.ns_name("fab"))?;
        fabric.ip(&["link", "add", "fab0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "fab0", "up"])?;
        c.fabric = Some(fabric);
        let fabric = c.fabric.as_ref().ok_or_else(|| anyhow!("no fabric"))?;

        for i in 0..c.cfg.nodes {
            let ns = cluster_ns(&c.ns_name(&format!("n{i}")))?;
            let leg = format!("fn{i}");
            veth(fabric, &leg, &ns, "eth0")?;
            fabric.ip(&["link", "set", &leg, "master", "fab0"])?;
            add_addr(&ns, node_addr(i).into(), 24, "eth0")?;
            add_addr(&ns, node_addr6(i).into(), 64, "eth0")?;
            // Complete checksums on what the node sends to other nodes'
            // XDP (replies of backends to SNATed flows): see the module doc.
            no_tx_checksum_offload(&ns, "eth0")?;
            ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
            // A fixed MAC: a bridge otherwise takes its lowest port's, which
            // changes as pods come and go (and pods cache the gateway's).
            ns.ip(&[
                "link",
                "set",
                "cni0",
                "address",
                &format!("02:00:c6:12:{:02x}:01", i + 1),
            ])?;
            add_addr(&ns, pod_gateway(i).into(), 24, "cni0")?;
            add_addr(&ns, pod_gateway6(i).into(), 64, "cni0")?;
            ns.ip(&["link", "set", "cni0", "up"])?;
            ns.sysctls(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
                ("net.ipv4.conf.cni0.send_redirects", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
                ("net.ipv4.conf.cni0.rp_filter", "0"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ])?;
            for j in (0..c.cfg.nodes).filter(|&j| j != i) {
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{}/24", pod_addr(j, 0)),
                    "via",
                    &node_addr(j).to_string(),
                    "dev",
                    "eth0",
                ])?;
                ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("{}/64", pod_addr6(j, 0)),
                    "via",
                    &node_addr6(j).to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
            let bpffs = PathBuf::from(format!(
                "/sys/fs/bpf/svcnat-{}{}-{}",
                c.cfg.prefix,
                c.tag,
                node_name(i)
            ));
            let log = c
                .dir
                .join("logs")
                .join(format!("agent-{}.log", node_name(i)));
            c.nodes.push(NodeState { ns, next_veth: 0 });
            c.agents.push(Mutex::new(AgentState {
                proc: None,
                bpffs,
                log,
                starts: 0,
            }));
        }

        c.outside = Some(c.new_outside("outside", "out", "fo", OUTSIDE_ADDR)?);
        Ok(c)
    }

    /// An outside client namespace `role` named `name` whose `eth0` has
    /// `addr` and its [`twin6`] on the fabric (leg `leg` on `fab0`), default
    /// routes of both families via node 0.
    fn new_outside(
        &self,
        name: &str,
        role: &str,
        leg: &str,
        addr: Ipv4Addr,
    ) -> Result<(NetNs, Host)> {
        let fabric = self.fabric.as_ref().ok_or_else(|| anyhow!("no fabric"))?;
        let addr6 = twin6(addr).ok_or_else(|| anyhow!("{addr} is not in 198.18.0.0/16"))?;
        let ns = cluster_ns(&self.ns_name(role))?;
        veth(fabric, leg, &ns, "eth0")?;
        fabric.ip(&["link", "set", leg, "master", "fab0"])?;
        add_addr(&ns, addr.into(), 24, "eth0")?;
        add_addr(&ns, addr6.into(), 64, "eth0")?;
        default_routes(&ns, node_addr(0), node_addr6(0))?;
        // Frames from outside reach the nodes' XDP with complete checksums,
        // as from a wire: see the module doc.
        no_tx_checksum_offload(&ns, "eth0")?;
        let host = Host {
            name: name.to_string(),
            node: None,
            addr,
            addr6,
            netns: ns.name().to_string(),
            veth: None,
        };
        Ok((ns, host))
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}{}-{role}", self.cfg.prefix, self.tag)
    }

    /// Polling loops stop with an error once `flag` is set (the demo's
    /// Ctrl-C).
    pub fn set_interrupt(&mut self, flag: &'static AtomicBool) {
        self.interrupt = Some(flag);
    }

    pub(super) fn check_interrupt(&self) -> Result<()> {
        if self.interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s namespace.
    pub fn node_ns(&self, i: usize) -> &NetNs {
        &self.nodes[i].ns
    }

    /// Node `i` itself as a host: its own network namespace, where the
    /// node's processes (kubelet, hostNetwork pods) run, with its fabric
    /// addresses. Clients run there reach Services through the socket
    /// hooks.
    pub fn node_host(&self, i: usize) -> Host {
        Host {
            name: node_name(i),
            node: Some(i),
            addr: node_addr(i),
            addr6: node_addr6(i),
            netns: self.nodes[i].ns.name().to_string(),
            veth: None,
        }
    }

    /// The folder every agent reads.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    /// The cluster's temporary folder (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The outside client (on the fabric, default routes via node 0).
    pub fn outside(&self) -> Option<&Host> {
        self.outside.as_ref().map(|(_, h)| h)
    }

    /// Adds another outside client `name` with address `addr` on the
    /// fabric (198.18.0.0/24; not a node's, not taken) and its [`twin6`],
    /// default routes via node 0, like [`Cluster::outside`].
    pub fn add_outside(&mut self, name: &str, addr: Ipv4Addr) -> Result<Host> {
        let o = addr.octets();
        let on_fabric = addr != FABRIC_NET && o[..3] == FABRIC_NET.octets()[..3] && o[3] != 255;
        let node = (0..self.nodes.len()).any(|i| node_addr(i) == addr);
        let taken = self
            .outside
            .iter()
            .chain(&self.more_outside)
            .chain(&self.pods)
            .any(|(_, h)| h.name == name || h.addr == addr);
        if !on_fabric || node || taken {
            bail!("{addr} is not a free fabric address ({FABRIC_NET}/24) or {name} exists");
        }
        let k = self.more_outside.len() + 1;
        let added = self.new_outside(name, &format!("out{k}"), &format!("fo{k}"), addr)?;
        let host = added.1.clone();
        self.more_outside.push(added);
        Ok(host)
    }

    /// Every outside client: [`Cluster::outside`] first, then those of
    /// [`Cluster::add_outside`].
    pub fn outside_clients(&self) -> impl Iterator<Item = &Host> {
        self.outside
            .iter()
            .chain(&self.more_outside)
            .map(|(_, h)| h)
    }

    /// Makes outside client `client` send traffic for `dst` (say a
    /// load-balancer IP that no interface has; of either family) to node
    /// `node` over the fabric, as a load balancer in front of the nodes
    /// would.
    pub fn route_via_node(&self, client: &Host, dst: impl Into<IpAddr>, node: usize) -> Result<()> {
        if node >= self.nodes.len() {
            bail!("no node {node}");
        }
        let (ns, _) = self
            .outside
            .iter()
            .chain(&self.more_outside)
            .find(|(_, h)| h.netns == client.netns)
            .ok_or_else(|| anyhow!("{} is not an outside client", client.name))?;
        let (family, host_route, via) = match dst.into() {
            IpAddr::V4(a) => ("-4", format!("{a}/32"), node_addr(node).to_string()),
            IpAddr::V6(a) => ("-6", format!("{a}/128"), node_addr6(node).to_string()),
        };
        ns.ip(&[
            family,
            "route",
            "replace",
            &host_route,
            "via",
            &via,
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// Every pod.
    pub fn pods(&self) -> impl Iterator<Item = &Host> {
        self.pods.iter().map(|(_, h)| h)
    }

    /// Adds pod `name` with address `addr` (in node `node`'s range) and its
    /// [`twin6`] behind a new `vpN` veth on the node's `cni0`.
    pub fn add_pod(&mut self, node: usize, name: &str, addr: Ipv4Addr) -> Result<Host> {
        if node >= self.nodes.len() {
            bail!("no node {node}");
        }
        if node_of_pod_addr(addr, self.nodes.len()) != Some(node)
            || addr == pod_gateway(node)
            || addr.octets()[3] == 0
            || addr.octets()[3] == 255
        {
            bail!(
                "{addr} is not a pod address of {} ({}/24)",
                node_name(node),
                pod_addr(node, 0)
            );
        }
        if self
            .pods
            .iter()
            .any(|(_, h)| h.name == name || h.addr == addr)
        {
            bail!("pod {name} or address {addr} exists already");
        }
        let st = &mut self.nodes[node];
        let host_if = format!("vp{}", st.next_veth);
        st.next_veth += 1;
        let addr6 = twin(addr);
        let ns = cluster_ns(&format!("{}{}-p-{name}", self.cfg.prefix, self.tag))?;
        let node_ns = &self.nodes[node].ns;
        veth(node_ns, &host_if, &ns, "eth0")?;
        node_ns.ip(&["link", "set", &host_if, "master", "cni0"])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.send_redirects"), "0")?;
        add_addr(&ns, addr.into(), 24, "eth0")?;
        add_addr(&ns, addr6.into(), 64, "eth0")?;
        default_routes(&ns, pod_gateway(node), pod_gateway6(node))?;
        let host = Host {
            name: name.to_string(),
            node: Some(node),
            addr,
            addr6,
            netns: ns.name().to_string(),
            veth: Some(host_if),
        };
        self.pods.push((ns, host.clone()));
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_name(0), "node-a");
        assert_eq!(node_name(1), "node-b");
        assert_eq!(node_addr(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(pod_gateway(0), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(pod_addr(1, 10), Ipv4Addr::new(198, 18, 2, 10));
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 2, 10), 2), Some(1));
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 3, 10), 2), None);
        assert_eq!(node_of_pod_addr(Ipv4Addr::new(198, 18, 0, 10), 2), None);
    }

    #[test]
    fn ipv6_addresses_are_the_twins_of_the_ipv4_ones() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("address");
        assert_eq!(node_addr6(0), v6("2001:db8::10"));
        assert_eq!(node_addr6(1), v6("2001:db8::11"));
        assert_eq!(pod_gateway6(0), v6("2001:db8:1::1"));
        assert_eq!(pod_addr6(1, 10), v6("2001:db8:2::10"));
        assert_eq!(pod_addr6(9, 254), v6("2001:db8:10::254"));
        assert_eq!(twin6(OUTSIDE_ADDR), Some(OUTSIDE_ADDR6));
        assert_eq!(twin6(FABRIC_NET), Some(FABRIC_NET6));
        assert_eq!(
            twin6(Ipv4Addr::new(198, 18, 0, 100)),
            Some(v6("2001:db8::100"))
        );
        assert_eq!(twin6(Ipv4Addr::new(198, 19, 0, 10)), None);
        assert_eq!(node_of_pod_addr(v6("2001:db8:2::10"), 2), Some(1));
        assert_eq!(node_of_pod_addr(v6("2001:db8:2:1::10"), 2), None);
        assert_eq!(node_of_pod_addr(v6("2001:db8:3::10"), 2), None);
        assert_eq!(node_of_pod_addr(v6("2001:db8::10"), 2), None);
        assert_eq!(node_of_pod_addr(SERVICE_NET6, MAX_NODES), None);
        assert_eq!(
            twin6_of_plan(Ipv4Addr::new(198, 19, 0, 10)),
            Some(v6("2001:db8:ff::10"))
        );
        assert_eq!(twin6_of_plan(pod_addr(1, 10)), Some(pod_addr6(1, 10)));
        assert_eq!(twin6_of_plan(Ipv4Addr::new(198, 19, 1, 10)), None);
        assert_eq!(twin6_of_plan(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(twin6(HAIRPIN_ADDR), Some(HAIRPIN_ADDR6));
        // Every node's pod range is a twin, the service range none.
        for i in 0..MAX_NODES {
            assert_eq!(twin6(pod_addr(i, 7)), Some(pod_addr6(i, 7)));
            assert_eq!(node_of_pod_addr(pod_addr6(i, 7), MAX_NODES), Some(i));
            assert_ne!(pod_addr6(i, 0).segments()[2], SERVICE_NET6.segments()[2]);
        }
    }
}
