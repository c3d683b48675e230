//! Per-packet cost of the real TC programs through `BPF_PROG_TEST_RUN`, at
//! several numbers of services (5 backends each). Prints a Markdown table of
//! ns/packet; asserts nothing. Used by `cargo xtask bench`.
//!
//! `cargo run --release -p proxy-user --example packet_cost -- [REPEAT] [SIZES...]`
//!
//! A repeated test run executes the program again and again on the same
//! buffer, so a path that rewrites the packet would only run once (the next
//! iteration sees the rewritten packet). Hence:
//! - not a service (the packet is left alone): `REPEAT` runs, median of 5;
//! - established (conntrack hit, DNAT), reply (reverse NAT) and new flow
//!   (conntrack miss, backend choice, two inserts): 20,000 single runs each on
//!   a fresh copy of the packet, median of the kernel's per-run times. A
//!   single run carries the kernel's timing overhead, so "not a service" is
//!   also given measured that way, for calibration.

use std::net::{Ipv4Addr, SocketAddrV4};

use proxy_common::map_names;
use svcnat::testing::{
    datapath::{TcProgram, TestDatapath},
    packet::PacketBuilder,
    prog_run::test_run,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// VIP of service `i`: 198.19.0.0/16 first, then 198.18.0.0/16 (131,072 in
/// all, so 100,000 services get distinct VIPs inside 198.18.0.0/15).
fn vip(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(0xc613_0000 - (i & 0x1_0000) + (i & 0xffff)),
        80,
    )
}

/// Backend `id`: addresses cycle through 198.18.0.0/16 and the port moves
/// on every lap, so every (address, port) is distinct.
fn backend(id: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(0xc612_0000 + (id & 0xffff)),
        8080 + (id >> 16) as u16,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn repeated(dp: &TestDatapath, prog: TcProgram, frame: &[u8], repeat: u32) -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            f64::from(
                test_run(dp.program_fd(prog), frame, repeat)
                    .expect("test run")
                    .duration_ns,
            )
        })
        .collect();
    median(runs)
}

/// Median of 20,000 single runs, each on a fresh copy of `frame`.
fn singles(dp: &TestDatapath, prog: TcProgram, frame: &[u8]) -> f64 {
    median(
        (0..20_000)
            .map(|_| {
                f64::from(
                    test_run(dp.program_fd(prog), frame, 1)
                        .expect("test run")
                        .duration_ns,
                )
            })
            .collect(),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeat: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut sizes: Vec<u32> = args.filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1, 1_000, 10_000, 100_000];
    }
    println!(
        "| services | new flow ns (single) | established ns (single) | reply ns (single) | not a service ns (single) | not a service ns (repeat) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let map_sizes = [
            (map_names::SVC4, 2 * n + 16),
            (map_names::SLOTS, 5 * n + 16),
            (map_names::BACKEND4, 5 * n + 16),
            (map_names::REVNAT4, n + 16),
            (map_names::CT4, 131_072),
            (map_names::FRAG4, 1024),
        ];
        let mut dp = match TestDatapath::load_with_sizes(&map_sizes) {
            Ok(dp) => dp,
            Err(e) => {
                eprintln!(
                    "cannot load the datapath (root and `cargo xtask build-ebpf --release` needed): {e}"
                );
                std::process::exit(1);
            }
        };
        for i in 0..n {
            let backends: Vec<(u32, SocketAddrV4)> = (0..5)
                .map(|b| {
                    let id = i * 5 + b + 1;
                    (id, backend(id))
                })
                .collect();
            dp.add_service(vip(i), 6, i + 1, &backends)
                .expect("seed service");
        }
        let target = vip(n / 2);
        // Outside the VIPs of up to 120,000 services.
        let client = Ipv4Addr::new(198, 18, 250, 1);
        // New flows: distinct source ports, one run each.
        let mut new_flow = Vec::with_capacity(20_000);
        for p in 0..20_000u16 {
            let syn = PacketBuilder::tcp(SocketAddrV4::new(client, 10_000 + p), target)
                .flags(TCP_SYN)
                .build();
            new_flow.push(f64::from(
                test_run(dp.program_fd(TcProgram::PodIngress), &syn, 1)
                    .expect("run")
                    .duration_ns,
            ));
        }
        // Established: the flow of port 10000 exists now.
        let ack = PacketBuilder::tcp(SocketAddrV4::new(client, 10_000), target)
            .flags(TCP_ACK)
            .build();
        let out = test_run(dp.program_fd(TcProgram::PodIngress), &ack, 1).expect("run");
        let backend = Ipv4Addr::from(<[u8; 4]>::try_from(&out.data_out[30..34]).expect("4 bytes"));
        let bport = u16::from_be_bytes([out.data_out[36], out.data_out[37]]);
        let established = singles(&dp, TcProgram::PodIngress, &ack);
        let reply = PacketBuilder::tcp(
            SocketAddrV4::new(backend, bport),
            SocketAddrV4::new(client, 10_000),
        )
        .flags(TCP_ACK)
        .build();
        let reply_ns = singles(&dp, TcProgram::PodEgress, &reply);
        let other = PacketBuilder::tcp(
            SocketAddrV4::new(client, 10_000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 251, 9), 80),
        )
        .flags(TCP_ACK)
        .build();
        let other_ns = repeated(&dp, TcProgram::PodIngress, &other, repeat);
        let other_single = singles(&dp, TcProgram::PodIngress, &other);
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(new_flow),
            established,
            reply_ns,
            other_single,
            other_ns
        );
    }
}
