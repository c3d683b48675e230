//! The maps, as statics generated from the one table of maps in
//! proxy-common ([`proxy_common::svcnat_maps`]). Sizes here are the
//! defaults: the agent resizes them at load time. All are BTF maps so that
//! `bpftool map dump` prints their fields by name.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};

/// The aya type of a map of kind `$kind` with key `$k`, value `$v` and
/// `$n` entries.
macro_rules! map_type {
    (Hash, $k:ty, $v:ty, $n:expr) => { HashMap<$k, $v, $n> };
    (LruHash, $k:ty, $v:ty, $n:expr) => { LruHashMap<$k, $v, $n> };
    (PerCpuArray, $k:ty, $v:ty, $n:expr) => { PerCpuArray<$v, $n> };
    (LpmTrie, $k:ty, $v:ty, $n:expr) => { LpmTrie<$k, $v, $n> };
    (ProgArray, $k:ty, $v:ty, $n:expr) => { ProgramArray<$n> };
}

macro_rules! statics {
    ($( $(#[$doc:meta])* $id:ident = $name:tt, $kind:ident,
        $k:ty => $v:ty, $size:expr, $since:literal, $layout:literal; )*) => {
        $(
            $(#[$doc])*
            #[btf_map(name = $name)]
            pub(crate) static $id: map_type!($kind, $k, $v, { $size.default_entries() as usize }) =
                <map_type!($kind, $k, $v, { $size.default_entries() as usize })>::new();
        )*
    };
}

proxy_common::svcnat_maps!(statics);
