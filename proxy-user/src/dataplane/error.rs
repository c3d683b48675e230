//! Errors of the dataplane.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{maps::MapError, programs::ProgramError};

/// Errors of the dataplane. Each names what failed; none is matched by text.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The agent was built without its eBPF object.
    #[error(
        "the eBPF object is not embedded in this build: run `cargo xtask build-ebpf --release` and rebuild"
    )]
    NoObject,
    /// A backend or source range of another family than its frontend's:
    /// a frontend's entries all live in the maps of its family. Nothing of
    /// the frontend was written.
    #[error("{addr} is not of the IP family of frontend address {frontend}")]
    Family {
        /// The backend's or range's address.
        addr: std::net::IpAddr,
        /// The frontend's address.
        frontend: std::net::IpAddr,
    },
    /// The pin folder holds maps of another layout.
    #[error(
        "pinned maps in {dir} have layout version {found}, this agent uses {expected}: run `svcnat cleanup --bpffs {dir}` (this drops established flows) or use the agent version that pinned them"
    )]
    Layout {
        /// The pin folder.
        dir: PathBuf,
        /// Version found in its `layout` file.
        found: String,
        /// Version of this build.
        expected: u32,
    },
    /// Loading the object or a program failed (verifier, missing BTF, ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed.
    #[error("program {name}: {source}")]
    Program {
        /// Program or interface concerned.
        name: String,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// The map cannot take what the operation needs.
    #[error("map {map} is full: {needed} more entries needed, {free} free of {capacity}")]
    MapFull {
        /// Map name.
        map: &'static str,
        /// Entries the operation needs.
        needed: usize,
        /// Entries still free.
        free: usize,
        /// Map size.
        capacity: u32,
    },
    /// A service has more backends than one service can address.
    #[error("{count} backends exceed the {max} a service can have")]
    TooManyBackends {
        /// Backends asked for.
        count: usize,
        /// Limit (the count field is 16 bits).
        max: usize,
    },
    /// Filesystem operation on the pin folder.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Linking a program to an interface failed.
    #[error("interface {ifname}: {what}")]
    Link {
        /// Interface.
        ifname: String,
        /// What failed.
        what: String,
    },
}

pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}
