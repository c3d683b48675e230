//! A cluster on one machine, for end-to-end tests and the demo.
//!
//! Every piece is a network namespace this module creates and deletes:
//!
//! ```text
//!                      fabric namespace: bridge fab0 (198.18.0.0/24, no address)
//!          ┌──────────────────────┼───────────────────────┬──────────────┐
//!   node-a: eth0 198.18.0.10   node-b: eth0 198.18.0.11   ...     outside: eth0 198.18.0.200
//!     cni0 198.18.1.1/24         cni0 198.18.2.1/24                 default via node-a
//!     ├─ vp0 ── pod 198.18.1.x   ├─ vp0 ── pod 198.18.2.x
//!     └─ vp1 ── pod ...          └─ ...
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
//! Each node runs the real `svcnat run` (`nsenter --net`, so that it sees the
//! host's bpffs) with its own pin folder, all reading one manifests folder
//! that the test edits ([`Cluster::write_manifest`]). Servers (nginx,
//! dnsmasq, iperf3) and clients (curl, dig, iperf3) run in pods through
//! `ip netns exec`. Dropping the [`Cluster`] kills every process it started,
//! runs `svcnat cleanup` on every pin folder, deletes the namespaces and the
//! temporary folder, also when a test panics. Only 198.18.0.0/15 is used, and
//! nothing is added to the root namespace.
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
    Cluster, ClusterConfig, FABRIC_NET, HAIRPIN_ADDR, Host, MAX_NODES, OUTSIDE_ADDR, POD_GLOB,
    node_addr, node_name, node_of_pod_addr, pod_addr, pod_gateway,
};
pub use traffic::{
    ClientLoop, CurlOutcome, DigLoop, DigOutcome, Download, DownloadOutcome, Iperf3, Iperf3Outcome,
    Query, Request,
};
pub use yaml::{Endpoint, Port, Proto, service_with_slice, service_yaml, slice_yaml};

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
