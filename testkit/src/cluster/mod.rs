//! A cluster on one machine, for end-to-end tests and the demo.
//!
//! Every piece is a network namespace this module creates and deletes:
//!
//! ```text
//!                      fabric namespace: bridge fab0 (198.18.0.0/24 and 2001:db8::/64, no address)
//!          ┌───────────────────────┼────────────────────────┬──────────────┐
//!   node-a: eth0 198.18.0.10     node-b: eth0 198.18.0.11     ...     outside: eth0 198.18.0.200
//!                2001:db8::10                 2001:db8::11                       2001:db8::200
//!     cni0 198.18.1.1/24           cni0 198.18.2.1/24                   default via node-a
//!          2001:db8:1::1/64             2001:db8:2::1/64                (both families)
//!     ├─ vp0 ── pod 198.18.1.x     ├─ vp0 ── pod 198.18.2.x
//!     │             2001:db8:1::x  │             2001:db8:2::x
//!     └─ vp1 ── pod ...            └─ ...
//! ```
//!
//! Node `i` (0-based) is called `node-a`, `node-b`, ... (as the endpoints'
//! `nodeName` in `deploy/examples` spell them), has the address
//! `198.18.0.(10+i)` on the fabric and the pod range `198.18.(i+1).0/24`
//! behind a bridge `cni0` whose address is the pods' gateway. Nodes reach
//! the other nodes' pod ranges through those nodes' addresses (host-gateway
//! routing), forward, and send no ICMP redirects. A pod is a namespace whose
//! `eth0` is one end of a veth; the other end, `vpN` in the node, is enslaved
//! to `cni0`. svcnat attaches its TC programs to those `vp*` veths, not to
//! `cni0`: replies between pods of one node are bridged and never pass
//! `cni0`'s host side.
//!
//! Every interface is dual-stack: each IPv4 address of the plan in
//! 198.18.0.0/16 has an IPv6 twin in 2001:db8::/32 ([`twin6`]):
//! 198.18.Y.Z is 2001:db8:Y::Z, Y and Z in the same decimal digits, so that
//! the two read alike. The fabric is 2001:db8::/64 (node `i` at
//! `2001:db8::(10+i)`, the outside client at 2001:db8::200, a load-balancer
//! IP 198.18.0.Z at 2001:db8::Z), node `i`'s pods are 2001:db8:(i+1)::/64
//! with the gateway `::1` on `cni0`, and 2001:db8:ff::/64
//! ([`SERVICE_NET6`]) is nobody's, for IPv6 cluster IPs. The routes of the
//! IPv4 plan have IPv6 twins: nodes route each other's pod /64s via each
//! other's fabric address and forward IPv6; pods and outside clients have
//! default routes of both families. IPv6 addresses are added without
//! duplicate address detection (`nodad`, and `accept_dad=0` for link-local
//! ones), so they are usable at once; every namespace ignores ICMPv6
//! redirects (IPv6 has no `send_redirects` to turn off on the nodes). The
//! agents get a hairpin address of each family ([`HAIRPIN_ADDR`],
//! [`HAIRPIN_ADDR6`]).
//!
//! Each node runs the real `svcnat run` (`nsenter --net`, so that it sees the
//! host's bpffs) with its own pin folder, all reading one manifests folder
//! that the test edits ([`Cluster::write_manifest`]). Servers (nginx,
//! dnsmasq, iperf3) and clients (curl, dig, iperf3) run in pods through
//! `ip netns exec`. Dropping the [`Cluster`] kills every process it started,
//! runs `svcnat cleanup` on every pin folder, deletes the namespaces and the
//! temporary folder, also when a test panics. Only 198.18.0.0/15 and
//! 2001:db8::/32 are used, and nothing is added to the root namespace: no
//! namespace of the cluster has an interface to it (the fabric is a bridge
//! of its own), so no test address is routed through it.
//!
//! Every interface on the fabric (the nodes' and the outside clients'
//! `eth0`) has TX checksum offload turned off: svcnat's XDP programs on the
//! nodes' `eth0` rewrite checksums incrementally and so need the complete
//! checksums a real wire delivers, while a veth otherwise hands frames over
//! with only the pseudo-header sum filled in (`CHECKSUM_PARTIAL`). More
//! outside clients can join the fabric ([`Cluster::add_outside`]), and an
//! outside client can send chosen addresses (an LB IP) to a chosen node
//! ([`Cluster::route_via_node`]).
//!
//! Its parts: `topology` (the address plan, the namespaces and their
//! wiring), `agent` (the agents and what `svcnat inspect` shows of their
//! maps), `yaml` (the manifests they read), `servers` (nginx, dnsmasq,
//! iperf3 in pods), `traffic` (curl, dig and iperf3 clients), `process`
//! (child processes with time limits). This file tears the cluster down.

mod agent;
mod process;
mod servers;
mod topology;
mod traffic;
mod yaml;

use std::{fs, process::Command, time::Duration};

use topology::lock;

pub use agent::{CtEntry, Frontend, tail};
pub use process::{Finished, Proc, output_within};
pub use servers::{AccessLogEntry, BIG_FILE_BYTES, BIG_PATH};
pub use topology::{
    Cluster, ClusterConfig, FABRIC_NET, FABRIC_NET6, HAIRPIN_ADDR, HAIRPIN_ADDR6, Host, MAX_NODES,
    OUTSIDE_ADDR, OUTSIDE_ADDR6, POD_GLOB, SERVICE_NET6, node_addr, node_addr6, node_name,
    node_of_pod_addr, pod_addr, pod_addr6, pod_gateway, pod_gateway6, twin6, twin6_of_plan,
};
pub use traffic::{
    ClientLoop, CurlOutcome, DigLoop, DigOutcome, Download, DownloadOutcome, Iperf3, Iperf3Outcome,
    Query, Request, url,
};
pub use yaml::{
    Endpoint, Exposed, IpFamily, Port, Proto, dual_stack_endpoints, exposed_service, node_yaml,
    pod_yaml, service_with_slice, service_with_slices, service_yaml, service_yaml_ips, slice_yaml,
    slice_yaml_of,
};

pub use crate::skip::find_program;

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 0..self.agents.len() {
                eprintln!(
                    "---- agent log of {} (last lines) ----\n{}",
                    node_name(n),
                    tail(&self.agent_log(n), 40)
                );
            }
        }
        // Processes first (they keep namespaces alive), then pins, then
        // namespaces, then files.
        for mut p in std::mem::take(&mut *lock(&self.servers)) {
            p.kill();
        }
        for a in &self.agents {
            let mut a = lock(a);
            if let Some(mut p) = a.proc.take() {
                p.kill();
            }
            let _ = output_within(
                Command::new(&self.cfg.svcnat)
                    .arg("cleanup")
                    .arg("--bpffs")
                    .arg(&a.bpffs),
                Duration::from_secs(20),
            );
            let _ = fs::remove_dir(&a.bpffs);
        }
        self.pods.clear();
        self.more_outside.clear();
        self.outside = None;
        self.nodes.clear();
        self.fabric = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}
