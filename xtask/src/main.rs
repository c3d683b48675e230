//! `cargo xtask`: setup, build and test tasks for svcnat.
//!
//! The alias in `.cargo/config.toml` runs this crate; `cargo xtask --help`
//! lists the tasks. Every command run for real is echoed first.

mod bench;
mod cmd;
mod demo;
mod ebpf;
mod fuzz;
mod imports;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "svcnat setup, build and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly with rust-src and
    /// clippy, bpf-linker for the nightly's LLVM, Debian packages, bpffs.
    /// Idempotent; a second run only checks.
    Setup,
    /// Run setup, then build the eBPF object (printed on stdout).
    BuildEbpf {
        /// Release profile: the object the agent embeds by default.
        #[arg(long)]
        release: bool,
    },
    /// Run setup, then clippy on the eBPF crate for its own target.
    ClippyEbpf,
    /// Run setup, build-ebpf --release, then `cargo test` on the workspace.
    Test {
        /// Passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, build-ebpf --release, then the benchmarks (per-packet
    /// cost, control plane, end to end against kube-proxy's iptables and
    /// nftables modes) and write `bench/REPORT.md` and `bench/report.json`.
    /// Needs root.
    Bench {
        /// Small sizes and short runs (CI smoke; a couple of minutes). Writes
        /// to `target/bench-quick/` unless `--out` is given.
        #[arg(long)]
        quick: bool,
        /// Folder for REPORT.md and report.json.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Run setup, build-ebpf --release, then the packet fuzz of the
    /// datapath (`proxy-user/tests/fuzz/`) with many packets. Needs root.
    Fuzz {
        /// Packets to send through the programs.
        #[arg(long, default_value_t = fuzz::DEFAULT_PACKETS)]
        packets: u64,
        /// Seed of the packet generator (decimal or 0x hex); a new one
        /// from the clock by default. The run prints it.
        #[arg(long, value_parser = fuzz::parse_seed)]
        seed: Option<u64>,
    },
    /// Print the import graphs of the agent's and the datapath's modules
    /// and fail if either has a circle (see `xtask/src/imports.rs`).
    Imports,
    /// Run setup, build-ebpf --release, then the demo (`proxy-user/examples/demo.rs`) in release mode.
    Demo {
        /// Passed to the demo (`--requests N`, `--manifests DIR`, `--svcnat PATH`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let toolchain = setup::run(&root)?;
    match task {
        Task::Setup => Ok(()),
        Task::BuildEbpf { release } => {
            let object = ebpf::build(&root, &toolchain, release)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::ClippyEbpf => ebpf::clippy(&root, &toolchain),
        Task::Test { args } => {
            let object = ebpf::build(&root, &toolchain, true)?;
            test::run(&root, &object, &args)
        }
        Task::Bench { quick, out } => {
            let object = ebpf::build(&root, &toolchain, true)?;
            bench::run(&root, &object, quick, out.as_deref())
        }
        Task::Fuzz { packets, seed } => {
            let object = ebpf::build(&root, &toolchain, true)?;
            fuzz::run(&root, &object, packets, seed)
        }
        Task::Imports => imports::run(&root),
        Task::Demo { args } => {
            let object = ebpf::build(&root, &toolchain, true)?;
            demo::run(&root, &object, &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .expect("arguments parse")
            .task
    }

    #[test]
    fn test_passes_everything_after_the_separator_to_cargo_test() {
        let Task::Test { args } = parse(&["test", "--", "-p", "proxy-user", "--", "--nocapture"])
        else {
            panic!("not the test task");
        };
        assert_eq!(args, ["-p", "proxy-user", "--", "--nocapture"]);
    }

    #[test]
    fn demo_passes_its_arguments_through() {
        let Task::Demo { args } = parse(&["demo", "--nodes", "3"]) else {
            panic!("not the demo task");
        };
        assert_eq!(args, ["--nodes", "3"]);
    }

    #[test]
    fn bench_takes_quick_and_out() {
        assert!(matches!(
            parse(&["bench"]),
            Task::Bench {
                quick: false,
                out: None
            }
        ));
        let Task::Bench { quick, out } = parse(&["bench", "--quick", "--out", "x"]) else {
            panic!("not the bench task");
        };
        assert!(quick);
        assert_eq!(out.as_deref(), Some(std::path::Path::new("x")));
    }

    #[test]
    fn fuzz_takes_packets_and_a_seed_in_decimal_or_hex() {
        let Task::Fuzz { packets, seed } = parse(&["fuzz"]) else {
            panic!("not the fuzz task");
        };
        assert_eq!((packets, seed), (fuzz::DEFAULT_PACKETS, None));
        let Task::Fuzz { packets, seed } = parse(&["fuzz", "--packets", "500", "--seed", "0x2a"])
        else {
            panic!("not the fuzz task");
        };
        assert_eq!((packets, seed), (500, Some(42)));
        assert!(matches!(
            parse(&["fuzz", "--seed", "42"]),
            Task::Fuzz { seed: Some(42), .. }
        ));
        assert!(
            Cli::try_parse_from(["xtask", "fuzz", "--seed", "x"]).is_err(),
            "a bad seed is refused"
        );
    }

    #[test]
    fn build_ebpf_takes_release() {
        assert!(matches!(
            parse(&["build-ebpf", "--release"]),
            Task::BuildEbpf { release: true }
        ));
    }
}
