//! The `svcnat` command: `run`, `inspect`, `cleanup`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use proxy_common::default_sizes;
use svcnat::{
    agent::{self, AgentConfig, DEFAULT_CGROUP_ROOT, Hairpin, SocketLb, SourceConfig},
    dataplane::{self, DEFAULT_BPFFS, MapSizes},
    health, healthcheck, inspect, metrics,
    sources::kube::{ApiServerOverride, KubeConfigSource},
    sync::LoopConfig,
    version,
};

#[derive(Parser)]
#[command(
    name = "svcnat",
    version,
    long_version = svcnat::version::LONG_VERSION,
    after_help = "Exit status: 0 done; 1 failed (pins or manifests unreadable, the agent stopped on an error); 2 usage error (a flag, selector or configuration that cannot work); 3 `inspect`: no svcnat pins at --bpffs.",
    about = "Kubernetes Services in eBPF: a kube-proxy replacement"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start-up")]
enum Command {
    /// Watch Services and EndpointSlices and keep the datapath equal to them.
    Run(RunArgs),
    /// Show what the pinned maps hold (works while the agent is stopped), as
    /// `kubectl get` shows objects.
    Inspect {
        /// What to show.
        #[arg(value_enum)]
        what: inspect::What,
        /// Pin folder.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Output format: text (the main columns), wide (every column),
        /// json or yaml.
        #[arg(short, long, value_enum, default_value_t = inspect::Output::Text)]
        output: inspect::Output,
        /// Same as `-o json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        /// Only rows of this namespace (counters and links have none and are
        /// always shown).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Label selector, as kubectl's (`app=web,tier!=db,env in (a,b),
        /// !canary`); only Pods have labels.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Field selector (`kind=node-port,protocol!=udp`); an unknown field
        /// is an error that lists the known ones.
        #[arg(long)]
        field_selector: Option<String>,
        /// For `pods`: the manifests file or folder to read.
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Print the version, the commit it was built from and the pin layout.
    Version {
        /// Output format: text, json or yaml (wide is text).
        #[arg(short, long, value_enum, default_value_t = inspect::Output::Text)]
        output: inspect::Output,
    },
    /// Print a shell completion script (`source <(svcnat completions bash)`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Remove every program link and map pin svcnat installed under the folder.
    Cleanup {
        /// Pin folder.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name, as endpoints' `nodeName` spell it.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Read Services and EndpointSlices from this file or folder of manifests
    /// (watched for changes) instead of a cluster.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig file; without it and without --manifests, the in-cluster
    /// configuration is used.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// API server host, to reach it without the `kubernetes` ClusterIP.
    #[arg(long, env = "SVCNAT_API_SERVER_HOST")]
    api_server_host: Option<String>,
    /// API server port (with --api-server-host).
    #[arg(long, env = "SVCNAT_API_SERVER_PORT", default_value_t = 6443)]
    api_server_port: u16,
    /// Pod-facing interfaces (globs), e.g. 'veth*' or 'lxc*'. Repeat or separate with commas.
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    pod_interfaces: Vec<String>,
    /// Node interfaces (globs): XDP runs there, and their addresses are the
    /// NodePort addresses unless --nodeport-addresses is given.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "eth0")]
    node_interfaces: Vec<String>,
    /// Serve node ports on the node's addresses (on any interface) inside
    /// these CIDRs, like kube-proxy's `--nodeport-addresses`; default: the
    /// addresses of the `--node-interfaces` (kube-proxy's `primary`).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// Cluster-wide policy on `spec.externalIPs`: only addresses inside
    /// these CIDRs are served, others are refused and reported (what the
    /// externalip-webhook's --allowed-external-ip-cidrs enforces at
    /// admission). Given with no CIDR: every external IP is refused.
    /// Default: any external IP that is no cluster IP or node address.
    #[arg(long, num_args = 0.., value_delimiter = ',', value_name = "CIDR")]
    external_ip_cidrs: Option<Vec<String>>,
    /// The networks cluster IPs are allocated from (the API server's
    /// `--service-cluster-ip-range`, also accepted under that name), used
    /// while the cluster has no ServiceCIDR objects: pods' traffic to an
    /// address inside one that no Service holds is dropped. Repeat or
    /// separate with commas (one per family, like 198.19.0.0/16 and
    /// 2001:db8:1::/112).
    #[arg(
        long,
        num_args = 1..,
        value_delimiter = ',',
        value_name = "CIDR",
        alias = "service-cluster-ip-range"
    )]
    service_cidr: Vec<String>,
    /// Pin folder on a bpffs.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Conntrack entries (two per flow); applies when the map is created.
    #[arg(long, default_value_t = default_sizes::CT4, value_parser = size_parser())]
    conntrack_size: u32,
    /// Source NAT entries (two per node-port flow to a backend on another
    /// node); applies when the map is created.
    #[arg(long, default_value_t = default_sizes::SNAT4, value_parser = size_parser())]
    snat_size: u32,
    /// Session affinity entries (one per client and service); applies when
    /// the map is created.
    #[arg(long, default_value_t = default_sizes::AFFINITY4, value_parser = size_parser())]
    affinity_size: u32,
    /// Load balancer source ranges over all services; applies when the map
    /// is created.
    #[arg(long, default_value_t = default_sizes::SRCRANGE4, value_parser = size_parser())]
    source_ranges_size: u32,
    /// Node interface addresses; applies when the map is created.
    #[arg(long, default_value_t = default_sizes::NODE4, value_parser = size_parser())]
    node_addresses_size: u32,
    /// Seconds between full drift repairs of the maps.
    #[arg(long, default_value_t = 60)]
    repair_interval: u64,
    /// Milliseconds between safety-net rescans for new interfaces (link
    /// events attach at once; this catches any the kernel dropped).
    #[arg(long, default_value_t = 10_000)]
    attach_interval_ms: u64,
    /// Address of the Prometheus `/metrics` server; empty to serve none.
    #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR)]
    metrics_addr: String,
    /// Address of the `/healthz` and `/readyz` server; empty to serve none.
    #[arg(long, default_value = health::DEFAULT_HEALTHZ_ADDR)]
    healthz_addr: String,
    /// IP address the healthCheckNodePorts of LoadBalancer services with
    /// externalTrafficPolicy Local are served on; empty to serve none.
    #[arg(long, default_value_t = healthcheck::DEFAULT_BIND_ADDRESS.to_string())]
    healthcheck_bind_address: String,
    /// Source address a pod sees when it reaches itself through a service
    /// (hairpin; kube-proxy masquerades these), one per family: repeat the
    /// flag to set both; a family not given keeps its default (169.254.42.1
    /// and 100::a9fe:2a01). An address nothing uses and that the pod
    /// reaches through its default route (so not link-local): svcnat turns
    /// the answer back at the pod's veth.
    #[arg(long = "hairpin-address", value_name = "ADDR")]
    hairpin_addresses: Vec<IpAddr>,
    /// Socket-level load balancing (cgroup socket hooks) for processes in
    /// the node's own network namespace: `host` translates their
    /// connect/sendmsg to Services, `off` detaches the hooks.
    #[arg(long, value_enum, default_value_t = SocketLb::Host)]
    socket_lb: SocketLb,
    /// cgroup v2 folder the socket hooks attach at (its `unified` folder
    /// where cgroup v2 is mounted there, as in systemd's hybrid layout).
    #[arg(long, default_value = DEFAULT_CGROUP_ROOT)]
    cgroup_root: PathBuf,
}

/// Map sizes: at least one entry.
fn size_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

/// An IP address, or `None` for an empty string.
fn optional_ip(flag: &str, value: &str) -> Result<Option<std::net::IpAddr>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|e| format!("bad --{flag} {value:?}: {e} (expected an IP address)"))
}

/// `ADDR:PORT`, or `None` for an empty string.
fn optional_addr(flag: &str, value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|e| format!("bad --{flag} {value:?}: {e} (expected ADDRESS:PORT)"))
}

fn patterns(globs: &[String]) -> Result<Vec<glob::Pattern>, String> {
    globs
        .iter()
        .map(|g| glob::Pattern::new(g).map_err(|e| format!("bad interface glob {g:?}: {e}")))
        .collect()
}

fn cidrs(flag: &str, texts: &[String]) -> Result<Vec<(std::net::IpAddr, u8)>, String> {
    texts
        .iter()
        .map(|t| {
            svcnat::model::addr::parse_cidr(t)
                .ok_or_else(|| format!("--{flag}: {t:?} is not a CIDR (like 198.18.0.0/24)"))
        })
        .collect()
}

/// `--service-cidr`: every entry must be one (see
/// [`svcnat::model::parse_service_cidr`]).
fn service_cidrs(texts: &[String]) -> Result<Vec<svcnat::model::Cidr>, String> {
    texts
        .iter()
        .map(|t| svcnat::model::parse_service_cidr(t).map_err(|e| format!("--service-cidr: {e}")))
        .collect()
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Inspect {
            what,
            bpffs,
            output,
            json,
            namespace,
            selector,
            field_selector,
            manifests,
        } => {
            let view = match view_of(output, json, namespace, selector, field_selector) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("svcnat inspect: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            inspect_main(what, &bpffs, manifests.as_deref(), &view)
        }
        Command::Version { output } => {
            print!("{}", version::render(output));
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "svcnat", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Cleanup { bpffs } => match dataplane::cleanup(&bpffs) {
            Ok(removed) => {
                for p in &removed {
                    println!("removed {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("svcnat cleanup: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Exit status of a usage error: a flag or selector that does not parse, a
/// configuration that cannot work (clap's own code for usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit status of `svcnat inspect` when there are no svcnat pins at
/// `--bpffs` (no agent ever ran on this node, or it was cleaned up).
const EXIT_NO_PINS: u8 = 3;

/// The view `svcnat inspect`'s flags ask for.
fn view_of(
    output: inspect::Output,
    json: bool,
    namespace: Option<String>,
    selector: Option<String>,
    field_selector: Option<String>,
) -> Result<inspect::View, inspect::SelectorError> {
    let parse = |s: Option<String>, syntax| {
        s.map_or(Ok(Vec::new()), |s| inspect::parse_selector(&s, syntax))
    };
    Ok(inspect::View {
        output: if json { inspect::Output::Json } else { output },
        namespace,
        labels: parse(selector, inspect::Syntax::Labels)?,
        fields: parse(field_selector, inspect::Syntax::Fields)?,
    })
}

fn inspect_main(
    what: inspect::What,
    bpffs: &std::path::Path,
    manifests: Option<&std::path::Path>,
    view: &inspect::View,
) -> ExitCode {
    let rendered = if what == inspect::What::Pods {
        let Some(path) = manifests else {
            eprintln!("svcnat inspect pods: give --manifests PATH (the folder svcnat run reads)");
            return ExitCode::from(EXIT_USAGE);
        };
        inspect::render_pods(path, view)
    } else {
        if !bpffs.is_dir() {
            eprintln!(
                "svcnat inspect: no svcnat pins at {} (is svcnat running with --bpffs {0}?)",
                bpffs.display()
            );
            return ExitCode::from(EXIT_NO_PINS);
        }
        inspect::render(bpffs, what, view)
    };
    match rendered {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e @ inspect::InspectError::View(_)) => {
            eprintln!("svcnat inspect: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e @ inspect::InspectError::Pins(_)) => {
            eprintln!(
                "svcnat inspect: {e} (is svcnat running with --bpffs {}?)",
                bpffs.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("svcnat inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("svcnat run: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("svcnat run: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn build_config(args: RunArgs) -> Result<AgentConfig, String> {
    let source = match (args.manifests, args.kubeconfig) {
        (Some(path), _) => SourceConfig::Manifests(path),
        (None, kubeconfig) => SourceConfig::Kube {
            config: kubeconfig.map_or(KubeConfigSource::InCluster, KubeConfigSource::Kubeconfig),
            api_server: args.api_server_host.map(|host| ApiServerOverride {
                host,
                port: args.api_server_port,
            }),
        },
    };
    Ok(AgentConfig {
        node_name: args.node_name,
        source,
        pod_interfaces: patterns(&args.pod_interfaces)?,
        node_interfaces: patterns(&args.node_interfaces)?,
        nodeport_cidrs: cidrs("nodeport-addresses", &args.nodeport_addresses)?,
        external_ip_cidrs: args
            .external_ip_cidrs
            .as_deref()
            .map(|texts| cidrs("external-ip-cidrs", texts))
            .transpose()?,
        service_cidrs: service_cidrs(&args.service_cidr)?,
        bpffs: args.bpffs,
        sizes: MapSizes {
            conntrack: args.conntrack_size,
            snat: args.snat_size,
            affinity: args.affinity_size,
            source_ranges: args.source_ranges_size,
            node_addresses: args.node_addresses_size,
            ..MapSizes::default()
        },
        attach_every: Duration::from_millis(args.attach_interval_ms.max(10)),
        sync: LoopConfig {
            repair_every: Duration::from_secs(args.repair_interval.max(1)),
            ..LoopConfig::default()
        },
        metrics_addr: optional_addr("metrics-addr", &args.metrics_addr)?,
        healthz_addr: optional_addr("healthz-addr", &args.healthz_addr)?,
        hairpin: Hairpin::from_flags(&args.hairpin_addresses)?,
        healthcheck_bind: optional_ip("healthcheck-bind-address", &args.healthcheck_bind_address)?,
        socket_lb: args.socket_lb,
        cgroup_root: args.cgroup_root,
    })
}
