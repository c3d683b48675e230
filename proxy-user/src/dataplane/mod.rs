//! The datapath from userspace: loads the eBPF object, sizes and pins its
//! maps, attaches the programs to interfaces, and offers typed, idempotent
//! operations on services and backends.
//!
//! Everything lives under one bpffs folder (`--bpffs`, default
//! `/sys/fs/bpf/svcnat`): maps as `<dir>/<MAP NAME>`, TCX links as
//! `<dir>/links/<ifindex>-<ifname>-<ingress|egress>`, the cgroup socket
//! hooks' links as `<dir>/links/cgroup-<hook>`, and a folder
//! `layout-v<N>` naming the [`LAYOUT_VERSION`] of the maps. Pins outlive the agent, so the programs keep running
//! while it is stopped, and a new agent adopts the maps (their contents are
//! read back into the mirror) and swaps its programs into the existing links
//! atomically: a restart changes nothing on the wire.
//!
//! Update order keeps the datapath consistent at every instant: backends are
//! written before the slots that name them, slots before the count that makes
//! them reachable; a count is lowered before its slots are deleted, and a
//! backend is deleted only when no slot names it any more. A backend keeps
//! its slot while it stays; when removals leave holes, backends from the
//! end move into them, and their session affinity entries are rewritten to
//! the new slot while both slots name the backend.

mod attach;
mod cidrs;
mod error;
mod flows;
mod handle;
mod loader;
mod maps;
pub mod migrate;
mod sockets;
mod table;
mod update;

pub use attach::{AttachReport, program_fd};
pub use cidrs::ServiceCidr;
pub use error::DataplaneError;
pub(crate) use error::map_err;
pub use flows::ClearedFlows;
pub use handle::{DEFAULT_BPFFS, Dataplane, DataplaneConfig, MapSizes};
pub use loader::{cleanup, load_tail_calls};
pub use maps::{
    BackendEntry, CtEntry, CtFamily, Maps, RangeId, SvcEntry, kind_of, open_pinned, range_of,
    read_stats, stat_slot,
};
pub use sockets::{attached_sockets, cgroup2_root, netns_cookie};
pub use table::{
    BackendSpec, Frontend, FrontendSpec, ServiceOpts, ServiceState, Upsert, proto_name,
};
