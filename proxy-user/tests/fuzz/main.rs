//! Packet fuzz of every datapath program, through `BPF_PROG_TEST_RUN`
//! (issue 11, "Conntrack you can trust"; IPv6 since issue 13,
//! "Dual-stack").
//!
//! Random and mutated frames of both families go through
//! `svcnat_pod_ingress`, `svcnat_pod_egress`, `svcnat_node_xdp` and
//! `svcnat_node_egress` (which tail-call the IPv6 pipelines for IPv6
//! frames) with a world of services seeded in both families (cluster IPs,
//! node ports with local and remote backends, source ranges, session
//! affinity, traffic policy Local), established flows and SNAT entries
//! seeded, and addresses and ports biased towards the seeded ones.
//! Replies to what the programs let through, ICMP (ICMPv6) errors about
//! it and the later fragments of translated first fragments are sent back
//! in, so that the reverse paths are reached too. IPv6 frames also carry
//! extension headers (hop-by-hop, routing, destination options, atomic
//! and real fragment headers, one the datapath does not walk), and NDP.
//!
//! The world is written once, in terms of [`Host`]s and ports
//! (`world.rs`); a [`Family`] (`family.rs`: [`V4`], [`V6`]) gives each
//! host its address, builds and reads the headers that differ (the IP
//! header, fragments, ICMP numbers, what NAT may rewrite) and reads its
//! maps as family-free rows. The generator ([`Side`], `generate.rs`), the
//! per-packet checks ([`Run::run_one`] here, [`check_output`] and
//! [`check_rewrite`] in `check.rs`) and the map checks ([`check_state`])
//! are one code for both. The two families' packets alternate, on one
//! loaded datapath holding both worlds (their service and backend ids
//! apart).
//!
//! After every packet: exactly one stats reason was counted, for the input's
//! length; the verdict is one the program may return; a packet counted under
//! a `pass_*` reason is unchanged; a `reject_*` one is a well-formed reply to
//! the sender (a TCP RST or a port unreachable, ICMP 3/3 or ICMPv6 1/4,
//! quoting the packet as it came); any other changed packet keeps its
//! length and structure, changes only addresses, ports, checksums, MACs
//! and the TTL (hop limit), and keeps the residue of every checksum (see
//! [`checksum_residues`]: a valid checksum stays valid, a wrong one stays
//! wrong by as much, UDP without checksum stays without; over IPv6 every
//! layer 4 checksum, ICMPv6's included, covers the pseudo-header, and a
//! rewritten UDP datagram never carries a checksum of 0). New flows go to
//! a backend of the frontend addressed; reverse-translated replies come
//! from a frontend.
//!
//! Every [`CHECK_EVERY`] packets and at the end of each round the maps of
//! both families are checked: the service, slot, backend, reverse NAT, node
//! address and source range maps are exactly as seeded; every conntrack,
//! SNAT, affinity and fragment entry is one the packets could have created
//! from the seeded services of its family (see [`check_state`]). Dumping
//! the maps costs a few hundred syscalls, against one run and one stats
//! read per packet, so checking after every packet would multiply the run
//! time; every 16 packets keeps a violation attributed to the 16 packets
//! printed with it (`SVCNAT_FUZZ_CHECK_EVERY=1` checks after each one). The
//! state maps are cleared and the flows reseeded every [`ROUND`] packets,
//! so they stay small.
//!
//! Checks are keyed on the public types of `proxy-common` and on stats
//! reason names (`pass_*`, `drop_*`, `reject_*`), not on the datapath's
//! internals, so reasons added later are classified by their names.
//!
//! `SVCNAT_FUZZ_PACKETS` (default 20,000, half of each family) and
//! `SVCNAT_FUZZ_SEED` set the run; `cargo xtask fuzz --packets N --seed S`
//! runs it with many packets. Needs root and the eBPF object; without them
//! the test prints why and passes.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::{Debug, Display, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::Instant,
};

use proxy_common::{
    BACKEND_FLAG_LOCAL, CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_CLOSED, CT_F_SEEN_NON_SYN, CT_F_SNAT,
    FRAG_DIR_REVSNAT_SRC, FRAG_DIR_SNAT_SRC, HAIRPIN_ADDR_DEFAULT, HAIRPIN6_ADDR_DEFAULT,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, REMAP_PORT_MAX, REMAP_PORT_MIN, Reason,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_EXTERNAL,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, SlotKey,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use svcnat_testkit::{
    datapath::{
        Flow, Flow6, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, TcProgram,
        TestDatapath, XDP_DROP, XDP_PASS, XDP_TX, monotonic_ns,
    },
    fixture::hex,
    packet::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ExtHeader, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED,
        ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG,
        ICMP6_PARAM_PROBLEM, ICMP6_PORT_UNREACH, ICMP6_TIME_EXCEEDED, IP6_OFFSET_MASK,
        IPPROTO_EXPERIMENT1, IPPROTO_FRAGMENT, IPV6_HLEN, IpAddress, IpFamily, Ipv4Fields,
        Ipv6Fields, NA_OVERRIDE, NA_SOLICITED, PacketBuilder, Residue, SocketAddress, TCP_ACK,
        TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, arp_request, checksum_residues, checksums_ok,
        ethernet_frame, ext_chain, fragment, fragment6, internet_checksum, parse,
    },
    skip::Needs,
    skip_unless,
};

/// Packets between two map checks.
const CHECK_EVERY: u64 = 16;
/// Packets between two clears of the state maps.
const ROUND: u64 = 256;
/// Default number of packets of `cargo test`, both families together.
const DEFAULT_PACKETS: u64 = 20_000;
/// Default seed.
const DEFAULT_SEED: u64 = 0x5eed_0011;
/// Failures printed in full; the rest are counted.
const MAX_REPORTED: usize = 12;

/// `TC_ACT_UNSPEC` (`TCX_NEXT` for TCX links): the datapath may return it
/// for "pass" instead of `TC_ACT_OK`.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const NS: u64 = 1_000_000_000;

mod check;
mod family;
mod generate;
mod world;

use check::*;
use family::*;
use generate::*;
use world::*;

// ---------------------------------------------------------------------------
// The run: one datapath, both families
// ---------------------------------------------------------------------------

/// One failed check, with what to reproduce it.
struct Failure {
    what: String,
    packets: Vec<String>,
}

/// The loaded datapath with both worlds seeded, and what the run counted.
struct Run {
    dp: TestDatapath,
    /// The configuration maps as seeded.
    config: String,
    /// The packets since the last map check, printed with a violation.
    window: Vec<String>,
    stats: Vec<u64>,
    /// Counts by (family, stats reason / kind of packet / program).
    by_reason: BTreeMap<(&'static str, &'static str), u64>,
    by_kind: BTreeMap<(&'static str, &'static str), u64>,
    by_prog: BTreeMap<(&'static str, &'static str), u64>,
    refused: u64,
    failures: Vec<Failure>,
    failed: u64,
}

impl Run {
    fn new() -> Result<Self, String> {
        let mut dp = TestDatapath::load().map_err(|e| format!("load: {e}"))?;
        seed_services::<V4>(&mut dp)?;
        seed_services::<V6>(&mut dp)?;
        let config = config_dump(&dp)?;
        Ok(Run {
            dp,
            config,
            window: Vec::new(),
            stats: vec![0; Reason::ALL.len()],
            by_reason: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            by_prog: BTreeMap::new(),
            refused: 0,
            failures: Vec::new(),
            failed: 0,
        })
    }

    /// Clears the state maps and seeds both families' flows of a round.
    fn new_round(&mut self, v4: &mut Side<V4>, v6: &mut Side<V6>) -> Result<(), String> {
        self.dp
            .clear_state()
            .map_err(|e| format!("clear state: {e}"))?;
        v4.new_round(&mut self.dp)?;
        v6.new_round(&mut self.dp)?;
        self.stats = self.read_stats()?;
        Ok(())
    }

    fn fail(&mut self, what: String, packets: Vec<String>) {
        self.failed += 1;
        if self.failures.len() < MAX_REPORTED
            && !self
                .failures
                .iter()
                .any(|f| first_words(&f.what) == first_words(&what))
        {
            self.failures.push(Failure { what, packets });
        }
    }

    fn read_stats(&self) -> Result<Vec<u64>, String> {
        Ok(self
            .dp
            .all_stats()
            .map_err(|e| format!("stats: {e}"))?
            .into_iter()
            .map(|(_, v)| v.packets)
            .collect())
    }

    /// Runs one packet of `side`'s family and checks what came out. The
    /// description of the packet goes into the window of the next map
    /// check.
    fn run_one<F: Family>(&mut self, side: &mut Side<F>, p: &Packet) -> Result<(), String> {
        *self.by_kind.entry((F::NAME, p.kind)).or_default() += 1;
        *self.by_prog.entry((F::NAME, p.prog.name())).or_default() += 1;
        let out = self.dp.run(p.prog, &p.frame);
        let before = std::mem::take(&mut self.stats);
        self.stats = self.read_stats()?;
        let counted: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(self.stats.iter().zip(&before))
            .filter(|(_, (a, b))| a != b)
            .map(|(r, (a, b))| (*r, a - b))
            .collect();
        let desc = |reason: &str, out: &[u8]| {
            format!(
                "{} {} {} [{}] in={} out={}",
                F::NAME,
                p.prog.name(),
                p.kind,
                reason,
                hex(&p.frame),
                hex(out)
            )
        };
        let what = |e: &str| format!("{} {}: {e}", F::NAME, p.prog.name());
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.window.push(desc("refused", &[]));
                if e.raw_os_error() == Some(libc::EINVAL) && kernel_refuses(p.prog, &p.frame) {
                    // The kernel runs nothing on such a frame.
                    self.refused += 1;
                    if !counted.is_empty() {
                        let d = desc("refused", &[]);
                        self.fail(what(&format!("a refused run counted {counted:?}")), vec![d]);
                    }
                    return Ok(());
                }
                return Err(format!("BPF_PROG_TEST_RUN: {e} on {}", desc("", &[])));
            }
        };
        let reason = match counted.as_slice() {
            [(r, 1)] => *r,
            _ => {
                let d = desc("?", &out.data_out);
                self.window.push(d.clone());
                self.fail(
                    what(&format!(
                        "expected one stats reason counted once, got {counted:?}"
                    )),
                    vec![d],
                );
                return Ok(());
            }
        };
        *self.by_reason.entry((F::NAME, reason.name())).or_default() += 1;
        let d = desc(reason.name(), &out.data_out);
        self.window.push(d.clone());
        if let Err(e) = check_output::<F>(&side.allowed, p, reason, out.retval, &out.data_out) {
            self.fail(what(&e), vec![d]);
            return Ok(());
        }
        let name = reason.name();
        let translated = !name.starts_with("pass_")
            && !name.starts_with("drop_")
            && !name.starts_with("reject_");
        if translated && out.data_out != p.frame {
            side.recent.push_back(Packet {
                prog: p.prog,
                frame: out.data_out,
                kind: "recent",
            });
            if side.recent.len() > 32 {
                side.recent.pop_front();
            }
        }
        Ok(())
    }

    /// Checks the maps of both families (see the module documentation); a
    /// violation is reported with the packets since the last check.
    fn check_maps(&mut self, v4: &Side<V4>, v6: &Side<V6>) -> Result<(), String> {
        let window = std::mem::take(&mut self.window);
        let mut problems = Vec::new();
        let config = config_dump(&self.dp)?;
        if config != self.config {
            problems.push(format!(
                "configuration maps changed:\n--- seeded\n{}\n--- now\n{config}",
                self.config
            ));
        }
        check_state(&self.dp, v4, &mut problems)?;
        check_state(&self.dp, v6, &mut problems)?;
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(8);
            self.fail(
                format!(
                    "map check: {n} bad entries:\n    {}",
                    problems.join("\n    ")
                ),
                window,
            );
        }
        Ok(())
    }

    fn report(&self, packets: u64, seed: u64, elapsed: std::time::Duration) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "packet fuzz: {packets} packets ({} IPv4, {} IPv6), seed {seed:#x}, {:.1} s \
             ({:.0} packets/s); {} runs refused by the kernel (frames shorter than their \
             link or network header)",
            packets.div_ceil(2),
            packets / 2,
            elapsed.as_secs_f64(),
            packets as f64 / elapsed.as_secs_f64().max(1e-9),
            self.refused
        );
        let table = |s: &mut String,
                     title: &str,
                     names: Vec<&'static str>,
                     counts: &BTreeMap<(&'static str, &'static str), u64>| {
            let _ = writeln!(s, "{title:<30} {:>8} {:>8}", V4::NAME, V6::NAME);
            for name in names {
                let n = |f| counts.get(&(f, name)).copied().unwrap_or(0);
                let _ = writeln!(s, "  {name:<28} {:>8} {:>8}", n(V4::NAME), n(V6::NAME));
            }
        };
        let names = |counts: &BTreeMap<(&'static str, &'static str), u64>| {
            counts
                .keys()
                .map(|(_, k)| *k)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let reasons = Reason::ALL.iter().map(|r| r.name()).collect();
        table(&mut s, "by stats reason:", reasons, &self.by_reason);
        table(&mut s, "by program:", names(&self.by_prog), &self.by_prog);
        table(
            &mut s,
            "by kind of packet:",
            names(&self.by_kind),
            &self.by_kind,
        );
        s
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim().replace('_', "");
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

#[test]
fn packet_fuzz() {
    skip_unless!(Needs::prog_run());
    let packets = env_u64("SVCNAT_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("SVCNAT_FUZZ_SEED", DEFAULT_SEED);
    let check_every = env_u64("SVCNAT_FUZZ_CHECK_EVERY", CHECK_EVERY).max(1);
    let mut run = Run::new().expect("load and seed the datapath");
    // Each family its own random stream, so that one family's packets do
    // not depend on how many random numbers the other drew.
    let mut v4 = Side::<V4>::new(seed);
    let mut v6 = Side::<V6>::new(seed ^ 0x6666_6666_6666_6666);
    let start = Instant::now();
    let mut n = 0u64;
    while n < packets {
        if n.is_multiple_of(ROUND) {
            run.check_maps(&v4, &v6).expect("read the maps");
            run.new_round(&mut v4, &mut v6).expect("seed a round");
        }
        // The families alternate: half the packets each.
        if n.is_multiple_of(2) {
            let p = v4.next_packet();
            run.run_one(&mut v4, &p)
        } else {
            let p = v6.next_packet();
            run.run_one(&mut v6, &p)
        }
        .expect("run a packet");
        n += 1;
        if n.is_multiple_of(check_every) {
            run.check_maps(&v4, &v6).expect("read the maps");
        }
    }
    run.check_maps(&v4, &v6).expect("read the maps");
    let report = run.report(n, seed, start.elapsed());
    println!("{report}");
    if run.failed > 0 {
        let mut s = format!(
            "{} checks failed (seed {seed:#x}, {n} packets; again: cargo xtask fuzz \
             --packets {n} --seed {seed:#x}, or SVCNAT_FUZZ_SEED={seed:#x} \
             SVCNAT_FUZZ_PACKETS={n} cargo test -p proxy-user --test fuzz); \
             first of each kind, with the packets since the last map check \
             (family, program, kind, stats reason, input and output in hex):\n",
            run.failed
        );
        for f in &run.failures {
            let _ = writeln!(s, "\n* {}", f.what);
            for p in &f.packets {
                let _ = writeln!(s, "    {p}");
            }
        }
        panic!("{s}\n{report}");
    }
}
