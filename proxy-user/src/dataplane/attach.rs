//! Attaching the programs: TCX links on pod-facing interfaces, XDP and TC
//! egress on node interfaces, interface matching, pinned links adopted with
//! an atomic program swap, and the node address map.

use std::{fs, net::IpAddr, os::fd::AsFd, path::Path};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use proxy_common::{NodeAddr4, NodeAddr6, map_names, program_names};

use super::error::{DataplaneError, Result, io_err, map_err};
use super::handle::Dataplane;
use super::loader::program_mut;
use crate::host::{addresses, interfaces, is_node_address};

/// What one [`Dataplane::attach_matching`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Interfaces newly attached (fresh links).
    pub attached: Vec<String>,
    /// Interfaces whose pinned links now run this agent's programs.
    pub adopted: Vec<String>,
    /// Pins removed because their interface is gone.
    pub removed: Vec<String>,
    /// Interfaces that could not be attached, with the reason.
    pub failed: Vec<(String, String)>,
}

impl Dataplane {
    /// Attaches both pod programs to every interface of the current network
    /// namespace whose name matches one of `patterns` (shell globs), and
    /// removes pins of interfaces that are gone. Call it periodically to
    /// cover interfaces created later. Links are pinned; an interface with
    /// pinned links from an earlier agent gets this agent's programs swapped
    /// in atomically.
    pub fn attach_matching(&mut self, patterns: &[glob::Pattern]) -> Result<AttachReport> {
        let mut report = AttachReport::default();
        let ifaces = interfaces().map_err(io_err(Path::new("if_nameindex")))?;
        let wanted: Vec<&(u32, String)> = ifaces
            .iter()
            .filter(|(_, n)| patterns.iter().any(|p| p.matches(n)))
            .collect();
        for (index, name) in &wanted {
            if self.attached.contains(&(*index, name.clone())) {
                continue;
            }
            match self.attach_one(*index, name) {
                Ok(true) => report.adopted.push(name.clone()),
                Ok(false) => report.attached.push(name.clone()),
                Err(e) => {
                    report.failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            self.attached.insert((*index, name.clone()));
        }
        // Pins whose interface no longer exists (or was renamed/reindexed).
        let links = self.dir.join("links");
        let live: Vec<String> = ifaces.iter().map(|(i, n)| format!("{i}-{n}-")).collect();
        if let Ok(rd) = fs::read_dir(&links) {
            for entry in rd.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with(proxy_common::SOCK_LINK_PREFIX) {
                    // A socket hook's link (`sockets.rs`), not an interface's.
                    continue;
                }
                if !live.iter().any(|p| file.starts_with(p.as_str())) {
                    let _ = fs::remove_file(entry.path());
                    report.removed.push(file);
                }
            }
        }
        self.attached
            .retain(|(i, n)| ifaces.iter().any(|(ii, nn)| ii == i && nn == n));
        Ok(report)
    }

    /// Attaches ingress and egress on one interface. Returns whether pinned
    /// links were adopted (true) rather than created (false).
    pub(super) fn attach_one(&mut self, index: u32, name: &str) -> Result<bool> {
        let ingress = self.attach_tc(
            program_names::TC_POD_INGRESS,
            TcAttachType::Ingress,
            index,
            name,
            "ingress",
        )?;
        let egress = self.attach_tc(
            program_names::TC_POD_EGRESS,
            TcAttachType::Egress,
            index,
            name,
            "egress",
        )?;
        Ok(ingress && egress)
    }

    /// Attaches TC program `prog_name` on `kind` of interface `name` as a
    /// TCX link pinned as `<index>-<name>-<suffix>`: a link already pinned
    /// there gets the program swapped in atomically (returns true), else a
    /// new link is made and pinned (false).
    fn attach_tc(
        &mut self,
        prog_name: &str,
        kind: TcAttachType,
        index: u32,
        name: &str,
        suffix: &str,
    ) -> Result<bool> {
        let pin = self
            .dir
            .join("links")
            .join(format!("{index}-{name}-{suffix}"));
        let link_err = |what: String| DataplaneError::Link {
            ifname: name.into(),
            what,
        };
        let prog_err = |source| DataplaneError::Program {
            name: format!("{prog_name} on {name}"),
            source,
        };
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, prog_name)?;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                // Atomic replacement of the program behind the existing link.
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| link_err(format!("pinned link {}: {e}", pin.display())))?;
                let id = prog.attach_to_link(link).map_err(prog_err)?;
                // The pin keeps the link; our handle can go.
                drop(prog.take_link(id));
                Ok(true)
            }
            Err(_) => {
                let id = prog
                    .attach_with_options(
                        name,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(prog_err)?;
                let link = prog.take_link(id).map_err(prog_err)?;
                let fd =
                    FdLink::try_from(link).map_err(|e| link_err(format!("not a TCX link: {e}")))?;
                fd.pin(&pin)
                    .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
                Ok(false)
            }
        }
    }

    /// Attaches the node programs to every interface of the current network
    /// namespace whose name matches one of `patterns`: XDP (native mode where
    /// the driver has it, else generic mode with one warning) and TC egress
    /// (reverse NAT of replies from local backends). Links are pinned as
    /// `<ifindex>-<ifname>-xdp` and `-node-egress`, and adopted like the pod
    /// ones. Each interface's first IPv4 address and first IPv6 address
    /// that is not link-local are written to the node address maps of
    /// their family (the source of SNATed flows that arrive on it), and
    /// `accept_local` is set on it: the kernel routes packets the XDP program
    /// rewrote to carry the node's own address as source. Call it
    /// periodically; interfaces already done are skipped.
    pub fn attach_node_matching(&mut self, patterns: &[glob::Pattern]) -> Result<AttachReport> {
        let mut report = AttachReport::default();
        let ifaces = interfaces().map_err(io_err(Path::new("if_nameindex")))?;
        let addrs = addresses().map_err(io_err(Path::new("getifaddrs")))?;
        for (index, name) in ifaces
            .iter()
            .filter(|(_, n)| patterns.iter().any(|p| p.matches(n)))
        {
            // The interface's first address of each family (IPv6: not a
            // link-local one, which SNATed flows cannot come back to).
            let of = |v4: bool| {
                addrs
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .find(|a| a.is_ipv4() == v4 && is_node_address(a))
            };
            for addr in [of(true), of(false)].into_iter().flatten() {
                self.set_node_address(*index, addr)?;
            }
            if self.node_attached.contains(&(*index, name.clone())) {
                continue;
            }
            let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/accept_local");
            if let Err(e) = fs::write(&sysctl, "1") {
                report.failed.push((name.clone(), format!("{sysctl}: {e}")));
                continue;
            }
            match self.attach_node_one(*index, name) {
                Ok(true) => report.adopted.push(name.clone()),
                Ok(false) => report.attached.push(name.clone()),
                Err(e) => {
                    report.failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            self.node_attached.insert((*index, name.clone()));
        }
        self.node_attached
            .retain(|(i, n)| ifaces.iter().any(|(ii, nn)| ii == i && nn == n));
        Ok(report)
    }

    /// Records `addr` as the address of node interface `ifindex` in the
    /// node address map of its family (`SVCNAT_NODE4` or `SVCNAT_NODE6`).
    pub fn set_node_address(&mut self, ifindex: u32, addr: impl Into<IpAddr>) -> Result<()> {
        match addr.into() {
            IpAddr::V4(a) => {
                let v = NodeAddr4 { addr: a.octets() };
                if self.maps.NODE4.get(&ifindex, 0).ok() != Some(v) {
                    self.maps
                        .NODE4
                        .insert(ifindex, v, 0)
                        .map_err(map_err(map_names::NODE4))?;
                }
            }
            IpAddr::V6(a) => {
                let v = NodeAddr6 { addr: a.octets() };
                if self.maps.NODE6.get(&ifindex, 0).ok() != Some(v) {
                    self.maps
                        .NODE6
                        .insert(ifindex, v, 0)
                        .map_err(map_err(map_names::NODE6))?;
                }
            }
        }
        Ok(())
    }

    /// Sets the address a pod sees as the source when it reaches itself
    /// through a service (hairpin), for the family of `addr`; the datapath
    /// uses [`proxy_common::HAIRPIN_ADDR_DEFAULT`] and
    /// [`proxy_common::HAIRPIN6_ADDR_DEFAULT`] until this is called. It
    /// must not be an address in use: the pod answers it through its
    /// default route, and the datapath turns the answer back at the pod's
    /// veth.
    pub fn set_hairpin_address(&mut self, addr: impl Into<IpAddr>) -> Result<()> {
        let addr = addr.into();
        let key = if addr.is_ipv4() {
            proxy_common::NODE4_HAIRPIN_KEY
        } else {
            proxy_common::NODE6_HAIRPIN_KEY
        };
        self.set_node_address(key, addr)
    }

    pub(super) fn attach_node_one(&mut self, index: u32, name: &str) -> Result<bool> {
        let link_err = |what: String| DataplaneError::Link {
            ifname: name.into(),
            what,
        };
        let prog_err = |source| DataplaneError::Program {
            name: format!("{} on {name}", program_names::XDP_NODE),
            source,
        };
        let links = self.dir.join("links");
        let pin = links.join(format!("{index}-{name}-xdp"));
        let prog: &mut Xdp = program_mut(&mut self.ebpf, program_names::XDP_NODE)?;
        let mut adopted = true;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = XdpLink::try_from(FdLink::from(old))
                    .map_err(|e| link_err(format!("pinned link {}: {e}", pin.display())))?;
                let id = prog.attach_to_link(link).map_err(prog_err)?;
                drop(prog.take_link(id));
            }
            Err(_) => {
                adopted = false;
                let id = match prog.attach_to_if_index(index, XdpMode::Driver) {
                    Ok(id) => id,
                    Err(native) => {
                        tracing::warn!(
                            "interface {name}: no native XDP ({native}); using generic mode, which is slower"
                        );
                        prog.attach_to_if_index(index, XdpMode::Skb)
                            .map_err(prog_err)?
                    }
                };
                let link = prog.take_link(id).map_err(prog_err)?;
                let fd = FdLink::try_from(link)
                    .map_err(|e| link_err(format!("not an XDP bpf_link: {e}")))?;
                fd.pin(&pin)
                    .map_err(|e| link_err(format!("pin {}: {e}", pin.display())))?;
            }
        }
        let egress = self.attach_tc(
            program_names::TC_NODE_EGRESS,
            TcAttachType::Egress,
            index,
            name,
            "node-egress",
        )?;
        Ok(adopted && egress)
    }
}

/// The program fd of one loaded program (for `BPF_PROG_TEST_RUN`).
pub fn program_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Option<std::os::fd::BorrowedFd<'a>> {
    let prog: &SchedClassifier = ebpf.program(name)?.try_into().ok()?;
    Some(prog.fd().ok()?.as_fd())
}
