//! The `dataplane` module against the real kernel: maps pinned under a
//! private bpffs folder per test, checked through the pins themselves.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use aya::maps::{
    HashMap,
    lpm_trie::{Key, LpmTrie},
};
use proxy_common::{
    Affinity6Key, AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend4, Backend6, CT_DIR_REPLY,
    CT_DIR_SERVICE, CT_F_SNAT, Ct4Key, Ct6Key, Ct6Value, CtValue, IPPROTO_TCP, IPPROTO_UDP,
    RevNat4, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_EXTERNAL, SVC_FLAG_LOAD_BALANCER,
    SVC_FLAG_LOCAL_ONLY, SVC_FLAG_NODE_PORT, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    SVC_FLAG_VIP, SlotKey, SlotValue, Snat4Value, Snat6Value, Sock6Key, Sock6Value, SrcRange4,
    Svc4Key, Svc6Key, SvcValue, map_names, program_names,
};
use svcnat::{
    dataplane::{
        BackendSpec, ClearedFlows, Dataplane, DataplaneError, Frontend, FrontendSpec, MapSizes,
        Maps, ServiceOpts, Upsert, open_pinned, program_fd,
    },
    inspect,
};
use svcnat_testkit::pins::PinDir;
use svcnat_testkit::{
    datapath::{TCX_NEXT, XDP_PASS},
    netns::{NetNs, unique_tag},
    packet::{PacketBuilder, ParsedL4, TCP_SYN, parse},
    prog_run::test_run,
    skip::Needs,
    skip_unless,
};

fn small() -> MapSizes {
    MapSizes {
        services: 64,
        slots: 64,
        backends: 16,
        revnat: 64,
        conntrack: 1024,
        fragments: 64,
        snat: 64,
        node_addresses: 16,
        affinity: 64,
        source_ranges: 64,
    }
}

/// The IPv4 address of a frontend or backend (every one these tests make).
fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("{a}: the tests make IPv4 addresses only"),
    }
}

fn fe(last: u8, port: u16) -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(198, 19, 0, last).into(),
        port,
        proto: 6,
    }
}

fn be(last: u8) -> BackendSpec {
    BackendSpec {
        addr: Ipv4Addr::new(198, 18, 1, last).into(),
        port: 8080,
        flags: 0,
    }
}

/// What the pinned maps say about one frontend: its entry and its backends
/// in slot order, read without the dataplane's mirror.
fn read_back(dir: &PinDir, f: Frontend) -> Option<(SvcValue, Vec<Backend4>)> {
    let svc: HashMap<_, Svc4Key, SvcValue> =
        HashMap::try_from(open_pinned(&dir.0, map_names::SVC4).expect("svc map")).expect("svc");
    let slots: HashMap<_, SlotKey, SlotValue> =
        HashMap::try_from(open_pinned(&dir.0, map_names::SLOTS).expect("slots map"))
            .expect("slots");
    let backends: HashMap<_, u32, Backend4> =
        HashMap::try_from(open_pinned(&dir.0, map_names::BACKEND4).expect("be map")).expect("be");
    let key = Svc4Key {
        vip: v4(f.addr).octets(),
        port: f.port,
        proto: f.proto,
        scope: SCOPE_EXTERNAL,
    };
    let v = svc.get(&key, 0).ok()?;
    let list = (1..=u32::from(v.count))
        .map(|slot| {
            let s = slots
                .get(
                    &SlotKey {
                        svc_id: v.svc_id,
                        slot,
                    },
                    0,
                )
                .expect("slot present");
            backends.get(&s.backend_id, 0).expect("backend present")
        })
        .collect();
    Some((v, list))
}

fn count_entries(dir: &PinDir, name: &'static str) -> usize {
    count_keys(aya::maps::MapData::from_pin(dir.0.join(name)).expect("pinned map"))
}

fn count_keys(m: aya::maps::MapData) -> usize {
    // Key sizes differ per map: walk BPF_MAP_GET_NEXT_KEY with a buffer of
    // the map's key size.
    let info = m.info().expect("info");
    let key_size = info.key_size() as usize;
    let fd = m.fd();
    let mut count = 0;
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    loop {
        let r = get_next_key(fd, if first { None } else { Some(&key) }, &mut next);
        if !r {
            break;
        }
        first = false;
        count += 1;
        key.copy_from_slice(&next);
    }
    count
}

fn get_next_key(fd: &aya::maps::MapFd, key: Option<&[u8]>, next: &mut [u8]) -> bool {
    use std::os::fd::{AsFd, AsRawFd};
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
        rest: [u64; 13],
    }
    let attr = Attr {
        map_fd: fd.as_fd().as_raw_fd() as u32,
        pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        next_key: next.as_mut_ptr() as u64,
        rest: [0; 13],
    };
    // SAFETY: BPF_MAP_GET_NEXT_KEY (4) with buffers of the map's key size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            4,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    r == 0
}

#[test]
fn upsert_writes_frontend_slots_backends_marker_and_revnat() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("upsert");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let f = fe(10, 80);
    assert_eq!(
        dp.upsert_service(f, &[be(1), be(2), be(3)], &opts(0))
            .expect("upsert"),
        Upsert::Created
    );
    let (v, list) = read_back(&dir, f).expect("frontend in map");
    assert_eq!(v.count, 3);
    assert_eq!(
        list.iter()
            .map(|b| (Ipv4Addr::from(b.addr), b.port, b.proto))
            .collect::<Vec<_>>(),
        vec![
            (Ipv4Addr::new(198, 18, 1, 1), 8080, 6),
            (Ipv4Addr::new(198, 18, 1, 2), 8080, 6),
            (Ipv4Addr::new(198, 18, 1, 3), 8080, 6)
        ]
    );
    let svc: HashMap<_, Svc4Key, SvcValue> =
        HashMap::try_from(open_pinned(&dir.0, map_names::SVC4).expect("map")).expect("svc");
    let marker = svc
        .get(
            &Svc4Key {
                vip: v4(f.addr).octets(),
                port: 0,
                proto: 0,
                scope: SCOPE_EXTERNAL,
            },
            0,
        )
        .expect("VIP marker");
    assert_eq!(marker.flags & SVC_FLAG_VIP, SVC_FLAG_VIP);
    let rev: HashMap<_, u32, RevNat4> =
        HashMap::try_from(open_pinned(&dir.0, map_names::REVNAT4).expect("map")).expect("rev");
    let r = rev.get(&v.svc_id, 0).expect("revnat entry");
    assert_eq!(
        (Ipv4Addr::from(r.vip), r.port, r.proto),
        (v4(f.addr), 80, 6)
    );

    // Idempotent.
    assert_eq!(
        dp.upsert_service(f, &[be(1), be(2), be(3)], &opts(0))
            .expect("again"),
        Upsert::Unchanged
    );
    // Duplicates collapse.
    assert_eq!(
        dp.upsert_service(f, &[be(1), be(2), be(3), be(2)], &opts(0))
            .expect("dup"),
        Upsert::Unchanged
    );
}

/// Only cluster IPs get a VIP marker (their undefined ports are rejected),
/// as kube-proxy's nftables `cluster-ips` set holds only cluster IPs: an
/// external IP or LB IP may be a real host whose other ports must stay
/// reachable. Markers an older agent wrote for them are pruned at once.
#[test]
fn only_cluster_ips_get_a_vip_marker_and_stale_external_markers_are_pruned() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("markers");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let (cluster_ip, external, lb) = (fe(10, 80), fe(11, 80), fe(12, 80));
    dp.upsert_service(cluster_ip, &[be(1)], &opts(0))
        .expect("cluster ip");
    for (f, flags) in [
        (external, SVC_FLAG_EXTERNAL),
        (lb, SVC_FLAG_EXTERNAL | SVC_FLAG_LOAD_BALANCER),
    ] {
        let spec = FrontendSpec {
            backends: vec![be(1)],
            flags,
            ..FrontendSpec::default()
        };
        dp.upsert_frontend(f, &spec).expect("external frontend");
    }
    let markers = |dir: &PinDir| -> BTreeSet<Ipv4Addr> {
        let svc: HashMap<_, Svc4Key, SvcValue> =
            HashMap::try_from(open_pinned(&dir.0, map_names::SVC4).expect("map")).expect("svc");
        svc.iter()
            .map(|e| e.expect("entry"))
            .filter(|(k, v)| k.port == 0 && v.flags & SVC_FLAG_VIP != 0)
            .map(|(k, _)| Ipv4Addr::from(k.vip))
            .collect()
    };
    assert_eq!(markers(&dir), [v4(cluster_ip.addr)].into());
    // An older agent marked the external IP too.
    {
        let mut svc: HashMap<_, Svc4Key, SvcValue> =
            HashMap::try_from(open_pinned(&dir.0, map_names::SVC4).expect("map")).expect("svc");
        svc.insert(
            Svc4Key::vip_marker(v4(external.addr).octets()),
            SvcValue::VIP_MARKER,
            0,
        )
        .expect("old marker");
    }
    drop(dp);
    let mut dp = Dataplane::open(&dir.config(small())).expect("adopt");
    assert_eq!(dp.prune_markers().expect("prune"), 1);
    assert_eq!(markers(&dir), [v4(cluster_ip.addr)].into());
    assert_eq!(dp.prune_markers().expect("again"), 0);
    assert_eq!(
        dp.repair().expect("repair"),
        0,
        "the mirror equals the maps"
    );
    assert_eq!(dp.services().len(), 3);
}

#[test]
fn shrinking_and_deleting_remove_slots_and_unreferenced_backends_only() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("shrink");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let a = fe(10, 80);
    let b = fe(10, 443);
    dp.upsert_service(a, &[be(1), be(2), be(3)], &opts(0))
        .expect("a");
    dp.upsert_service(b, &[be(3)], &opts(0)).expect("b");
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 3);
    assert_eq!(count_entries(&dir, map_names::SLOTS), 4);
    // 3 frontends entries: two ports + one marker for the shared VIP.
    assert_eq!(count_entries(&dir, map_names::SVC4), 3);

    assert_eq!(
        dp.upsert_service(a, &[be(1)], &opts(0)).expect("shrink"),
        Upsert::Updated
    );
    let (v, list) = read_back(&dir, a).expect("a present");
    assert_eq!(v.count, 1);
    assert_eq!(Ipv4Addr::from(list[0].addr), Ipv4Addr::new(198, 18, 1, 1));
    // be(2) is gone; be(3) stays because b still uses it.
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 2);
    assert_eq!(count_entries(&dir, map_names::SLOTS), 2);

    assert!(dp.delete_service(&a).expect("delete a"));
    assert!(
        !dp.delete_service(&a)
            .expect("delete a again is not an error")
    );
    assert!(read_back(&dir, a).is_none());
    // The VIP still has port 443: the marker stays.
    assert_eq!(count_entries(&dir, map_names::SVC4), 2);
    assert!(dp.delete_service(&b).expect("delete b"));
    for m in [
        map_names::SVC4,
        map_names::SLOTS,
        map_names::BACKEND4,
        map_names::REVNAT4,
    ] {
        assert_eq!(count_entries(&dir, m), 0, "{m} should be empty");
    }
}

#[test]
fn empty_backend_list_keeps_the_frontend_with_count_zero() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("empty");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let f = fe(11, 53);
    dp.upsert_service(f, &[be(1)], &opts(0)).expect("one");
    dp.upsert_service(f, &[], &opts(0)).expect("none");
    let (v, list) = read_back(&dir, f).expect("frontend kept");
    assert_eq!(v.count, 0);
    assert!(list.is_empty());
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 0);
}

#[test]
fn a_new_dataplane_adopts_pinned_maps_without_changing_them() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("adopt");
    let before = {
        let mut dp = Dataplane::open(&dir.config(small())).expect("open");
        dp.upsert_service(fe(10, 80), &[be(1), be(2)], &opts(0))
            .expect("a");
        dp.upsert_service(fe(12, 81), &[be(2), be(4)], &opts(30))
            .expect("b");
        dp.services()
    };
    let mut dp = Dataplane::open(&dir.config(small())).expect("reopen");
    assert_eq!(dp.services(), before);
    assert_eq!(
        dp.repair().expect("repair"),
        0,
        "adopted state must already match the maps"
    );
    // Further updates work on adopted state: ids are not handed out twice.
    dp.upsert_service(fe(13, 82), &[be(5)], &opts(0))
        .expect("c");
    let ids: std::collections::BTreeSet<u32> = dp.services().values().map(|s| s.svc_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        dp.upsert_service(fe(10, 80), &[be(1), be(2)], &opts(0))
            .expect("same"),
        Upsert::Unchanged
    );
}

#[test]
fn repair_restores_entries_deleted_by_hand_and_removes_strays() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("repair");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let f = fe(10, 80);
    dp.upsert_service(f, &[be(1), be(2)], &opts(0))
        .expect("upsert");
    {
        let mut svc: HashMap<_, Svc4Key, SvcValue> =
            HashMap::try_from(open_pinned(&dir.0, map_names::SVC4).expect("map")).expect("svc");
        svc.remove(&Svc4Key {
            vip: v4(f.addr).octets(),
            port: 80,
            proto: 6,
            scope: SCOPE_EXTERNAL,
        })
        .expect("delete by hand");
        let stray = Svc4Key {
            vip: [198, 19, 9, 9],
            port: 9,
            proto: 17,
            scope: SCOPE_EXTERNAL,
        };
        svc.insert(
            stray,
            SvcValue {
                svc_id: 999,
                count: 0,
                flags: 0,
                affinity_timeout: 0,
                pad: 0,
            },
            0,
        )
        .expect("stray");
    }
    assert!(read_back(&dir, f).is_none());
    assert_eq!(dp.repair().expect("repair"), 2);
    let (v, _) = read_back(&dir, f).expect("restored");
    assert_eq!(v.count, 2);
    assert_eq!(
        count_entries(&dir, map_names::SVC4),
        2,
        "frontend + marker, stray removed"
    );
}

#[test]
fn capacity_is_checked_before_anything_is_written() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("full");
    let sizes = MapSizes {
        backends: 4,
        ..small()
    };
    let mut dp = Dataplane::open(&dir.config(sizes)).expect("open");
    dp.upsert_service(fe(10, 80), &[be(1), be(2)], &opts(0))
        .expect("fits");
    let err = dp
        .upsert_service(fe(10, 81), &[be(3), be(4), be(5)], &opts(0))
        .expect_err("three more backends do not fit in four");
    assert!(
        matches!(err, DataplaneError::MapFull { map, .. } if map == map_names::BACKEND4),
        "{err}"
    );
    assert!(read_back(&dir, fe(10, 81)).is_none());
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 2);
    // Sharing existing backends needs no new entries.
    dp.upsert_service(fe(10, 82), &[be(1), be(2), be(3), be(4)], &opts(0))
        .expect("exactly fits");
}

/// Each family has its own service and backend maps, each of the knob's
/// size: a full IPv4 backend map leaves the IPv6 one its whole size, and
/// the other way round; what each family uses is read back from the pins by
/// a restarted agent, and freeing room in one family frees none in the
/// other.
#[test]
fn each_family_has_maps_of_the_full_size() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("full-families");
    let sizes = MapSizes {
        backends: 4,
        services: 4,
        ..small()
    };
    let (v4, v6) = (
        [be(1), be(2), be(3), be(4)],
        [be6(1), be6(2), be6(3), be6(4)],
    );
    let mut dp = Dataplane::open(&dir.config(sizes)).expect("open");
    dp.upsert_service(fe(10, 80), &v4, &opts(0))
        .expect("IPv4 fills its backend map");
    dp.upsert_service(fe6(10, 80), &v6, &opts(0))
        .expect("IPv6 has a backend map of its own");
    for port in [81, 82] {
        dp.upsert_service(fe(10, port), &v4, &opts(0))
            .expect("shares the IPv4 backends");
        dp.upsert_service(fe6(10, port), &v6, &opts(0))
            .expect("shares the IPv6 backends");
    }
    drop(dp);
    let mut dp = Dataplane::open(&dir.config(sizes)).expect("reopen on the pins");
    let full = |dp: &mut Dataplane, fe: Frontend, b: BackendSpec, map: &str| {
        let err = dp
            .upsert_service(fe, &[b], &opts(0))
            .expect_err("the family's map is full");
        assert!(
            matches!(&err, DataplaneError::MapFull { map: m, .. } if *m == map),
            "{fe:?}: {err}"
        );
    };
    // Three frontends and a VIP marker: each service map is full.
    full(&mut dp, fe(11, 80), be(1), map_names::SVC4);
    full(&mut dp, fe6(11, 80), be6(1), map_names::SVC6);
    // A new backend on an existing frontend: each backend map is full.
    full(&mut dp, fe(10, 80), be(5), map_names::BACKEND4);
    full(&mut dp, fe6(10, 80), be6(5), map_names::BACKEND6);
    // Room made in IPv4 is IPv4's only.
    for port in [81, 82] {
        dp.delete_service(&fe(10, port)).expect("delete");
    }
    dp.upsert_service(fe(10, 80), &[be(1), be(2), be(3)], &opts(0))
        .expect("fewer backends");
    dp.upsert_service(fe(10, 80), &[be(1), be(2), be(3), be(5)], &opts(0))
        .expect("a freed IPv4 backend entry");
    dp.upsert_service(fe(11, 80), &[be(1)], &opts(0))
        .expect("a freed IPv4 service entry");
    full(&mut dp, fe6(10, 80), be6(5), map_names::BACKEND6);
    full(&mut dp, fe6(11, 80), be6(1), map_names::SVC6);
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 4);
    assert_eq!(count_entries(&dir, map_names::BACKEND6), 4);
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn fe6(last: u16, port: u16) -> Frontend {
    Frontend {
        addr: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last).into(),
        port,
        proto: 6,
    }
}

fn be6(last: u16) -> BackendSpec {
    BackendSpec {
        addr: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, last).into(),
        port: 8080,
        flags: 0,
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => panic!("{a}: an IPv6 address expected"),
    }
}

fn svc6_key(f: Frontend, scope: u8) -> Svc6Key {
    Svc6Key {
        vip: v6(f.addr),
        port: f.port,
        proto: f.proto,
        scope,
    }
}

fn backend6(b: BackendSpec, proto: u8) -> Backend6 {
    Backend6 {
        addr: v6(b.addr),
        port: b.port,
        proto,
        flags: b.flags,
    }
}

/// Every entry of the pinned `SVCNAT_SVC6`.
fn svc6_entries(dir: &PinDir) -> BTreeMap<Svc6Key, SvcValue> {
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    maps.SVC6.iter().map(|e| e.expect("entry")).collect()
}

/// Every entry of the pinned `SVCNAT_BACKEND6`.
fn backend6_entries(dir: &PinDir) -> BTreeMap<u32, Backend6> {
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    maps.BACKEND6.iter().map(|e| e.expect("entry")).collect()
}

/// The backend ids in slots 1..=count of service id `svc_id`.
fn slot_ids(dir: &PinDir, svc_id: u32, count: u16) -> Vec<u32> {
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    (1..=u32::from(count))
        .map(|slot| {
            maps.SLOTS
                .get(&SlotKey { svc_id, slot }, 0)
                .expect("slot present")
                .backend_id
        })
        .collect()
}

/// The keys of the pinned `SVCNAT_SRCRANGE6` as (service id, address,
/// prefix length).
fn pinned_ranges6(dir: &PinDir) -> BTreeSet<(u32, Ipv6Addr, u32)> {
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    maps.SRCRANGE6
        .keys()
        .map(|k| {
            let k = k.expect("key");
            let d = k.data();
            (
                u32::from_be_bytes(d.svc_id),
                Ipv6Addr::from(d.addr),
                k.prefix_len(),
            )
        })
        .collect()
}

/// An IPv6 frontend goes to the IPv6 maps entry for entry as an IPv4 one
/// goes to the IPv4 maps (frontend entries of both scopes, VIP marker,
/// backends, slots, source ranges, labels), with no reverse NAT entry and
/// nothing in the IPv4 maps; service and backend ids are one id space with
/// the IPv4 frontend next to it.
#[test]
fn an_ipv6_frontend_is_written_to_the_ipv6_maps_exactly() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("v6maps");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let lb = fe6(0x10, 443);
    let local = BackendSpec {
        flags: BACKEND_FLAG_LOCAL,
        ..be6(1)
    };
    let spec = FrontendSpec {
        backends: vec![local],
        internal_backends: Some(vec![local, be6(2)]),
        flags: SVC_FLAG_EXTERNAL
            | SVC_FLAG_LOAD_BALANCER
            | SVC_FLAG_LOCAL_ONLY
            | SVC_FLAG_SOURCE_RANGES,
        // Host bits are cleared: 2001:db8:77::5/48 is 2001:db8:77::/48.
        source_ranges: vec![(ip("2001:db8:77::5"), 48), (ip("2001:db8::"), 32)],
        opts: ServiceOpts {
            affinity_timeout: 300,
            label: "shop/web6:https".into(),
        },
    };
    assert_eq!(
        dp.upsert_frontend(lb, &spec).expect("upsert"),
        Upsert::Created
    );
    let v4_fe = fe(10, 80);
    dp.upsert_service(v4_fe, &[be(1)], &opts(0)).expect("IPv4");

    let svc6 = svc6_entries(&dir);
    assert_eq!(
        svc6.len(),
        2,
        "frontend and internal scope; no VIP marker on an LB IP: {svc6:?}"
    );
    let ext = svc6[&svc6_key(lb, SCOPE_EXTERNAL)];
    let int = svc6[&svc6_key(lb, SCOPE_INTERNAL)];
    assert_eq!(
        ext,
        SvcValue {
            svc_id: ext.svc_id,
            count: 1,
            flags: spec.flags | SVC_FLAG_TWO_SCOPES,
            affinity_timeout: 300,
            pad: 0,
        }
    );
    assert_eq!(
        int,
        SvcValue {
            svc_id: int.svc_id,
            count: 2,
            flags: spec.flags & !SVC_FLAG_SOURCE_RANGES,
            affinity_timeout: 300,
            pad: 0,
        }
    );
    let ext_slots = slot_ids(&dir, ext.svc_id, 1);
    let int_slots = slot_ids(&dir, int.svc_id, 2);
    assert_eq!(ext_slots[0], int_slots[0], "one backend entry per backend");
    let backends = backend6_entries(&dir);
    assert_eq!(
        backends,
        [
            (int_slots[0], backend6(local, IPPROTO_TCP)),
            (int_slots[1], backend6(be6(2), IPPROTO_TCP)),
        ]
        .into()
    );
    let svc_id = ext.svc_id;
    assert_eq!(
        pinned_ranges6(&dir),
        [
            (
                svc_id,
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
                32 + 32
            ),
            (
                svc_id,
                Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0),
                32 + 48
            ),
        ]
        .into()
    );
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    for id in [ext.svc_id, int.svc_id] {
        assert_eq!(
            maps.LABELS.get(&id, 0).expect("label").as_str(),
            "shop/web6:https"
        );
    }
    // The IPv4 maps hold the IPv4 frontend only; no reverse NAT for IPv6.
    assert_eq!(count_entries(&dir, map_names::SVC4), 2);
    assert_eq!(count_entries(&dir, map_names::BACKEND4), 1);
    assert_eq!(count_entries(&dir, map_names::SRCRANGE4), 0);
    let v4_id = dp.service(&v4_fe).expect("IPv4 frontend").svc_id;
    let revnat: Vec<u32> = maps.REVNAT4.keys().map(|k| k.expect("key")).collect();
    assert_eq!(revnat, [v4_id]);
    let svc_ids: BTreeSet<u32> = [ext.svc_id, int.svc_id, v4_id].into();
    assert_eq!(svc_ids.len(), 3, "one id space for services");
    let mut backend_ids: BTreeSet<u32> = backends.keys().copied().collect();
    backend_ids.extend(maps.BACKEND4.keys().map(|k| k.expect("key")));
    assert_eq!(backend_ids.len(), 3, "one id space for backends");
    // Metrics count both families' frontends and backends.
    let sample = svcnat::metrics::DatapathSample::read(&dp).expect("sample");
    assert_eq!(
        (sample.frontends, sample.backends, sample.backend_slots),
        (2, 2, 2),
        "the IPv6 and the IPv4 frontend (external scope), one backend each"
    );
    // The mirror agrees, and says the same after adoption.
    let state = dp.service(&lb).expect("mirror");
    assert_eq!(state.backends, [local]);
    assert_eq!(state.internal_backends, Some(vec![local, be6(2)]));
    assert_eq!(
        state.source_ranges,
        [(ip("2001:db8::"), 32), (ip("2001:db8:77::"), 48)]
    );
    assert_eq!(
        dp.upsert_frontend(lb, &spec).expect("again"),
        Upsert::Unchanged
    );
    assert_eq!(dp.repair().expect("repair"), 0);
    let before = dp.services();
    drop(dp);
    let mut dp = Dataplane::open(&dir.config(small())).expect("reopen");
    assert_eq!(dp.services(), before);
    assert_eq!(dp.repair().expect("repair"), 0, "adopted as written");
    assert_eq!(
        dp.upsert_frontend(lb, &spec).expect("adopted"),
        Upsert::Unchanged
    );
    // An IPv6 cluster IP is marked, in the IPv6 map.
    let cluster6 = fe6(0x11, 80);
    dp.upsert_service(cluster6, &[be6(2)], &opts(0))
        .expect("IPv6 cluster IP");
    assert_eq!(
        svc6_entries(&dir)[&Svc6Key::vip_marker(v6(cluster6.addr))],
        SvcValue::VIP_MARKER
    );
}

/// `svcnat inspect` shows IPv6 frontends, backends and conntrack entries
/// with the address in brackets, next to IPv4 ones.
#[test]
fn inspect_shows_ipv6_frontends_and_backends_in_brackets() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("v6inspect");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let web = fe6(0x10, 80);
    dp.upsert_service(
        web,
        &[be6(1), be6(2)],
        &ServiceOpts {
            affinity_timeout: 0,
            label: "shop/web:http".into(),
        },
    )
    .expect("IPv6");
    dp.upsert_service(
        fe(10, 80),
        &[be(1)],
        &ServiceOpts {
            affinity_timeout: 0,
            label: "shop/web:http".into(),
        },
    )
    .expect("IPv4");
    let rows = inspect::services(&dir.0).expect("inspect");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r = rows
        .iter()
        .find(|r| r.vip == web.addr)
        .expect("the IPv6 row");
    assert_eq!(
        (r.kind, r.port, r.protocol),
        ("cluster-ip", 80, "tcp"),
        "{r:?}"
    );
    assert_eq!(r.backends, ["[2001:db8:2::1]:8080", "[2001:db8:2::2]:8080"]);
    let text =
        inspect::render(&dir.0, inspect::What::Services, &inspect::View::default()).expect("text");
    let line = text
        .lines()
        .find(|l| l.contains("[2001:db8:1::10]:80"))
        .unwrap_or_else(|| panic!("no IPv6 frontend line in\n{text}"));
    assert!(
        line.contains("[2001:db8:2::1]:8080, [2001:db8:2::2]:8080"),
        "{line}"
    );
    assert!(text.contains("198.19.0.10:80"), "{text}");
    let json = inspect::render(
        &dir.0,
        inspect::What::Services,
        &inspect::View::new(inspect::Output::Json),
    )
    .expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert!(
        v.as_array()
            .expect("array")
            .iter()
            .any(|r| r["vip"] == "2001:db8:1::10"),
        "{json}"
    );
    let backends = inspect::backends(&dir.0).expect("backends");
    let addrs: Vec<String> = backends
        .iter()
        .map(|b| inspect::socket(b.address, b.port))
        .collect();
    assert_eq!(
        addrs,
        [
            "198.18.1.1:8080",
            "[2001:db8:2::1]:8080",
            "[2001:db8:2::2]:8080"
        ]
    );
    assert!(backends.iter().all(|b| b.services == ["shop/web:http"]));
    let text =
        inspect::render(&dir.0, inspect::What::Backends, &inspect::View::default()).expect("text");
    assert!(text.contains("[2001:db8:2::2]:8080"), "{text}");
}

/// Updates, deletes, drift repair (an `SVCNAT_SVC6` entry and a backend
/// deleted by hand, strays written by hand) and session affinity work for
/// IPv6 frontends as for IPv4 ones.
#[test]
fn updates_deletes_and_repair_work_for_ipv6() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("v6repair");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let (web, other) = (fe6(0x20, 80), fe6(0x20, 81));
    dp.upsert_service(web, &[be6(1), be6(2), be6(3)], &opts(600))
        .expect("web");
    dp.upsert_service(other, &[be6(3)], &opts(600))
        .expect("other");
    assert_eq!(count_entries(&dir, map_names::BACKEND6), 3);
    assert_eq!(count_entries(&dir, map_names::SLOTS), 4);
    assert_eq!(
        count_entries(&dir, map_names::SVC6),
        3,
        "two ports, one VIP"
    );

    assert_eq!(
        dp.upsert_service(web, &[be6(1)], &opts(600))
            .expect("shrink"),
        Upsert::Updated
    );
    let web_v = svc6_entries(&dir)[&svc6_key(web, SCOPE_EXTERNAL)];
    assert_eq!(web_v.count, 1);
    let web_be = slot_ids(&dir, web_v.svc_id, 1)[0];
    assert_eq!(
        backend6_entries(&dir)[&web_be],
        backend6(be6(1), IPPROTO_TCP)
    );
    // be6(2) is gone; be6(3) stays because `other` still uses it.
    assert_eq!(count_entries(&dir, map_names::BACKEND6), 2);
    assert_eq!(count_entries(&dir, map_names::SLOTS), 2);

    // Drift: the frontend entry and a backend deleted by hand, strays added.
    let other_v = svc6_entries(&dir)[&svc6_key(other, SCOPE_EXTERNAL)];
    let other_be = slot_ids(&dir, other_v.svc_id, 1)[0];
    {
        let mut maps = Maps::pinned(&dir.0).expect("pinned maps");
        maps.SVC6
            .remove(&svc6_key(web, SCOPE_EXTERNAL))
            .expect("delete the frontend by hand");
        maps.BACKEND6
            .remove(&other_be)
            .expect("delete a backend by hand");
        maps.SVC6
            .insert(
                svc6_key(udp6(fe6(0x99, 9)), SCOPE_EXTERNAL),
                SvcValue {
                    svc_id: 999,
                    count: 0,
                    flags: 0,
                    affinity_timeout: 0,
                    pad: 0,
                },
                0,
            )
            .expect("stray frontend");
        maps.BACKEND6
            .insert(999, backend6(be6(9), IPPROTO_TCP), 0)
            .expect("stray backend");
    }
    assert_eq!(dp.repair().expect("repair"), 4);
    let svc6 = svc6_entries(&dir);
    assert_eq!(svc6.len(), 3, "{svc6:?}");
    assert_eq!(svc6[&svc6_key(web, SCOPE_EXTERNAL)], web_v, "restored");
    let backends = backend6_entries(&dir);
    assert_eq!(
        backends,
        [
            (web_be, backend6(be6(1), IPPROTO_TCP)),
            (other_be, backend6(be6(3), IPPROTO_TCP)),
        ]
        .into()
    );
    assert_eq!(dp.repair().expect("repair"), 0);
    assert_eq!(count_entries(&dir, map_names::REVNAT4), 0, "no reverse NAT");

    // Adoption reads the IPv6 maps back.
    let before = dp.services();
    drop(dp);
    let mut dp = Dataplane::open(&dir.config(small())).expect("reopen");
    assert_eq!(dp.services(), before);
    assert_eq!(dp.repair().expect("repair"), 0);

    // Session affinity entries of IPv6 clients go with their service.
    {
        let mut maps = Maps::pinned(&dir.0).expect("pinned maps");
        for (client, svc_id) in [(1, web_v.svc_id), (2, other_v.svc_id)] {
            maps.AFFINITY6
                .insert(
                    Affinity6Key {
                        client: Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, client).octets(),
                        svc_id,
                    },
                    AffinityValue {
                        backend_id: 1,
                        slot: 1,
                        last_ns: 1,
                    },
                    0,
                )
                .expect("affinity entry");
        }
    }
    assert!(dp.delete_service(&web).expect("delete web"));
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    let left: Vec<u32> = maps
        .AFFINITY6
        .keys()
        .map(|k| k.expect("key").svc_id)
        .collect();
    assert_eq!(left, [other_v.svc_id], "web's clients are forgotten");
    assert_eq!(count_entries(&dir, map_names::SVC6), 2, "other and its VIP");
    assert!(dp.delete_service(&other).expect("delete other"));
    assert!(!dp.delete_service(&other).expect("again: not an error"));
    for m in [
        map_names::SVC6,
        map_names::SLOTS,
        map_names::BACKEND6,
        map_names::LABELS,
        map_names::AFFINITY6,
    ] {
        assert_eq!(count_entries(&dir, m), 0, "{m} should be empty");
    }
}

fn udp6(f: Frontend) -> Frontend {
    Frontend {
        proto: IPPROTO_UDP,
        ..f
    }
}

/// A frontend's backends and source ranges are of its family: one of the
/// other family is refused with the family error, and nothing is written
/// (not a half-written frontend, not a stray backend), in either family.
#[test]
fn a_frontend_mixing_families_is_refused_before_anything_is_written() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("family");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let (f6, f4) = (fe6(0x10, 80), fe(10, 80));
    let with = |backends: Vec<BackendSpec>| FrontendSpec {
        backends,
        ..FrontendSpec::default()
    };
    let cases = [
        (f6, with(vec![be6(1), be(1)]), be(1).addr),
        (
            f6,
            FrontendSpec {
                internal_backends: Some(vec![be(2)]),
                ..with(vec![be6(1)])
            },
            be(2).addr,
        ),
        (
            f6,
            FrontendSpec {
                flags: SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
                source_ranges: vec![(ip("2001:db8::"), 32), range(18, 0, 0, 16)],
                ..with(vec![be6(1)])
            },
            ip("198.18.0.0"),
        ),
        (f4, with(vec![be(1), be6(1)]), be6(1).addr),
        (
            f4,
            FrontendSpec {
                flags: SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
                source_ranges: vec![(ip("2001:db8::"), 32)],
                ..with(vec![be(1)])
            },
            ip("2001:db8::"),
        ),
    ];
    for (f, spec, bad) in cases {
        let err = dp.upsert_frontend(f, &spec).expect_err("refused");
        assert!(
            matches!(err, DataplaneError::Family { addr, frontend } if addr == bad && frontend == f.addr),
            "{f}: {err}"
        );
        assert!(err.to_string().contains("is not of the IP family"), "{err}");
    }
    assert!(dp.services().is_empty());
    for name in [
        map_names::SVC4,
        map_names::SVC6,
        map_names::SLOTS,
        map_names::BACKEND4,
        map_names::BACKEND6,
        map_names::REVNAT4,
        map_names::LABELS,
        map_names::SRCRANGE4,
        map_names::SRCRANGE6,
    ] {
        assert_eq!(count_entries(&dir, name), 0, "{name}");
    }
    // The same frontends with backends of their own family are written.
    dp.upsert_frontend(f6, &with(vec![be6(1)]))
        .expect("IPv6 is written");
    dp.upsert_frontend(f4, &with(vec![be(1)]))
        .expect("IPv4 is written");
    assert!(read_back(&dir, f4).is_some());
    assert!(svc6_entries(&dir).contains_key(&svc6_key(f6, SCOPE_EXTERNAL)));
}

/// Both conntrack entries of an IPv6 flow from `client` through `vip` to
/// `backend`, as the datapath writes them.
fn ct6_pair(
    proto: u8,
    client: SocketAddrV6,
    vip: SocketAddrV6,
    backend: SocketAddrV6,
    ids: (u32, u32),
    flags: u8,
) -> [(Ct6Key, Ct6Value); 2] {
    let value = |nat: SocketAddrV6| Ct6Value {
        nat_addr: nat.ip().octets(),
        nat_port: nat.port(),
        flags,
        pad: 0,
        backend_id: ids.1,
        svc_id: ids.0,
        pad3: 0,
        created_ns: 1,
        expires_ns: u64::MAX,
        seq_next: 0,
        peer_addr: client.ip().octets(),
        peer_port: client.port(),
        pad2: 0,
    };
    [
        (
            Ct6Key {
                saddr: client.ip().octets(),
                daddr: vip.ip().octets(),
                sport: client.port(),
                dport: vip.port(),
                proto,
                dir: CT_DIR_SERVICE,
                pad: 0,
            },
            value(backend),
        ),
        (
            Ct6Key {
                saddr: backend.ip().octets(),
                daddr: client.ip().octets(),
                sport: backend.port(),
                dport: client.port(),
                proto,
                dir: CT_DIR_REPLY,
                pad: 0,
            },
            value(vip),
        ),
    ]
}

/// The UDP flows of a backend that left an IPv6 frontend are cleared from
/// `SVCNAT_CT6` (both directions, and the SNAT entry of a source-NATed
/// one); the flows to the backend that stays and TCP flows are kept. The
/// entries are written as the datapath writes them (the programs of this
/// branch do not translate IPv6 yet).
#[test]
fn stale_udp_flows_of_ipv6_backends_are_cleared_from_the_ipv6_conntrack() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("v6udpct");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let dns = udp6(fe6(0x30, 53));
    let (b1, b2) = (be6(1), be6(2));
    dp.upsert_service(dns, &[b1, b2], &opts(0)).expect("dns");
    let v = svc6_entries(&dir)[&svc6_key(dns, SCOPE_EXTERNAL)];
    let ids = slot_ids(&dir, v.svc_id, 2);
    let sock6 = |a: IpAddr, port: u16| SocketAddrV6::new(Ipv6Addr::from(v6(a)), port, 0, 0);
    let vip = sock6(dns.addr, dns.port);
    let client = |host: u16| {
        SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, host),
            5353,
            0,
            0,
        )
    };
    let to = |b: BackendSpec| sock6(b.addr, b.port);
    let stale = ct6_pair(IPPROTO_UDP, client(1), vip, to(b1), (v.svc_id, ids[0]), 0);
    let snated = ct6_pair(
        IPPROTO_UDP,
        client(2),
        vip,
        to(b1),
        (v.svc_id, ids[0]),
        CT_F_SNAT,
    );
    let kept = ct6_pair(IPPROTO_UDP, client(3), vip, to(b2), (v.svc_id, ids[1]), 0);
    let tcp = ct6_pair(
        IPPROTO_TCP,
        client(4),
        sock6(dns.addr, 80),
        to(b1),
        (v.svc_id + 100, ids[0]),
        0,
    );
    {
        let mut maps = Maps::pinned(&dir.0).expect("pinned maps");
        for (k, val) in stale.iter().chain(&snated).chain(&kept).chain(&tcp) {
            maps.CT6.insert(k, val, 0).expect("conntrack entry");
        }
        maps.SNAT6
            .insert(
                snated[1].0,
                Snat6Value {
                    addr: client(2).ip().octets(),
                    port: client(2).port(),
                    stamp: 0,
                },
                0,
            )
            .expect("SNAT entry");
        // The node's own sockets (the socket hooks): one UDP socket
        // translated to the removed backend, one to the kept one, one TCP
        // socket to the removed one. No such sockets exist: only the map
        // entries are at stake here (e2e_host closes real ones).
        for (cookie, b, proto) in [
            (7, b1, IPPROTO_UDP),
            (8, b2, IPPROTO_UDP),
            (9, b1, IPPROTO_TCP),
        ] {
            let (k, val) = sock6_entry(cookie, to(b), proto, vip);
            maps.SOCK6.insert(k, val, 0).expect("socket entry");
        }
    }
    assert_eq!(
        svcnat::metrics::count_conntrack(&dir.0, 1_000).expect("count"),
        8,
        "the conntrack gauge counts IPv6 entries"
    );
    let rows = inspect::conntrack(&dir.0).expect("inspect conntrack");
    assert_eq!(rows.len(), 8);
    assert!(
        rows.iter()
            .any(|r| r.source == "[2001:db8:3::1]:5353" && r.nat == "[2001:db8:2::1]:8080"),
        "{rows:?}"
    );

    dp.upsert_service(dns, &[b2], &opts(0))
        .expect("dns without b1");
    let cleared = dp.clear_stale_udp_flows().expect("sweep");
    assert_eq!(
        cleared,
        ClearedFlows {
            flows: 2,
            ct_entries: 4,
            snat_entries: 1,
            socket_entries: 1,
            sockets_closed: 0,
        }
    );
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    let socks: BTreeSet<u64> = maps.SOCK6.keys().map(|k| k.expect("key").cookie).collect();
    assert_eq!(
        socks,
        BTreeSet::from([8, 9]),
        "the UDP socket's translation to the removed backend goes, the others stay"
    );
    let left: BTreeSet<Ct6Key> = maps.CT6.keys().map(|k| k.expect("key")).collect();
    let want: BTreeSet<Ct6Key> = kept.iter().chain(&tcp).map(|(k, _)| *k).collect();
    assert_eq!(left, want, "exactly the UDP flows of the removed backend");
    assert_eq!(maps.SNAT6.keys().count(), 0, "the SNATed flow's entry too");
    assert_eq!(count_entries(&dir, map_names::CT4), 0);
    assert_eq!(
        dp.clear_stale_udp_flows().expect("again"),
        ClearedFlows::default()
    );
}

/// A node interface's first IPv4 address goes to `SVCNAT_NODE4` and its
/// first IPv6 address that is not link-local to `SVCNAT_NODE6` (the
/// sources of SNATed flows that arrive on it); node ports are on the node
/// addresses of both families, link-local ones left out, and
/// `--nodeport-addresses` CIDRs of either family select among them.
#[test]
fn node_interfaces_give_node_addresses_and_node_ports_of_both_families() {
    skip_unless!(Needs::netns());
    let ns = NetNs::new(&format!("sn-dp6-{}", unique_tag())).expect("namespace");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .expect("veth");
    ns.ip(&["link", "set", "eth0p", "up"]).expect("peer up");
    ns.ip(&["link", "set", "eth0", "up"]).expect("up");
    ns.ip(&["addr", "add", "198.18.7.1/24", "dev", "eth0"])
        .expect("IPv4 address");
    ns.ip(&["addr", "add", "2001:db8:7::1/64", "dev", "eth0", "nodad"])
        .expect("IPv6 address");
    let dir = PinDir::new("node6");
    let cfg = dir.config(small());
    let (ifindex, addrs, nodeports) = ns
        .run(move || {
            use svcnat::{agent::nodeport_addresses, model::addr::parse_cidr};
            let eth0 = [glob::Pattern::new("eth0").expect("glob")];
            let mut dp = Dataplane::open(&cfg).expect("open");
            let r = dp.attach_node_matching(&eth0).expect("attach");
            assert!(r.failed.is_empty(), "{r:?}");
            let ifindex = svcnat::host::interfaces()
                .expect("interfaces")
                .into_iter()
                .find(|(_, n)| n == "eth0")
                .expect("eth0")
                .0;
            let cidr = |t: &str| parse_cidr(t).expect("cidr");
            let nodeports = (
                nodeport_addresses(&eth0, &[]),
                nodeport_addresses(&eth0, &[cidr("2001:db8:7::/48")]),
                nodeport_addresses(&eth0, &[cidr("fe80::/10"), cidr("198.18.0.0/15")]),
            );
            let addrs: Vec<IpAddr> = svcnat::host::addresses()
                .expect("addresses")
                .into_iter()
                .filter(|(n, _)| n == "eth0")
                .map(|(_, a)| a)
                .collect();
            drop(dp);
            (ifindex, addrs, nodeports)
        })
        .expect("in the namespace");
    assert!(
        addrs
            .iter()
            .any(|a| matches!(a, IpAddr::V6(a) if a.is_unicast_link_local())),
        "eth0 has a link-local address too: {addrs:?}"
    );
    let maps = Maps::pinned(&dir.0).expect("pinned maps");
    assert_eq!(
        maps.NODE4.get(&ifindex, 0).expect("NODE4 entry").addr,
        [198, 18, 7, 1]
    );
    assert_eq!(
        Ipv6Addr::from(maps.NODE6.get(&ifindex, 0).expect("NODE6 entry").addr),
        Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1)
    );
    assert_eq!(
        maps.NODE6.keys().count(),
        1,
        "no hairpin entry: the default"
    );
    let (all, v6_only, v4_and_link_local) = nodeports;
    assert_eq!(all, [ip("198.18.7.1"), ip("2001:db8:7::1")]);
    assert_eq!(v6_only, [ip("2001:db8:7::1")]);
    assert_eq!(
        v4_and_link_local,
        [ip("198.18.7.1")],
        "a link-local address is no node address"
    );
}

#[test]
fn a_pin_folder_of_another_layout_is_refused_with_a_clear_error() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("layout");
    drop(Dataplane::open(&dir.config(small())).expect("open"));
    std::fs::create_dir(dir.0.join("layout-v999")).expect("mark another layout");
    let err = Dataplane::open(&dir.config(small()))
        .err()
        .expect("must refuse");
    assert!(matches!(err, DataplaneError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("999"), "{err}");
}

fn opts(affinity_timeout: u32) -> ServiceOpts {
    ServiceOpts {
        affinity_timeout,
        label: String::new(),
    }
}

fn range(a: u8, b: u8, c: u8, len: u8) -> (IpAddr, u8) {
    (Ipv4Addr::new(198, a, b, c).into(), len)
}

/// The source-range keys of the pinned LPM map as (service id, `addr/len`).
fn pinned_ranges(dir: &PinDir) -> BTreeSet<(u32, String)> {
    let m: LpmTrie<_, SrcRange4, u32> =
        LpmTrie::try_from(open_pinned(&dir.0, map_names::SRCRANGE4).expect("map")).expect("lpm");
    m.keys()
        .map(|k| {
            let k = k.expect("key");
            let d = k.data();
            (
                u32::from_be_bytes(d.svc_id),
                format!("{}/{}", Ipv4Addr::from(d.addr), k.prefix_len() - 32),
            )
        })
        .collect()
}

#[test]
fn repair_restores_source_ranges_deleted_by_hand_and_removes_strays() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("ranges");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let f = fe(20, 443);
    let spec = FrontendSpec {
        backends: vec![be(1)],
        flags: SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        // Host bits are cleared: 198.18.0.7/16 is 198.18.0.0/16.
        source_ranges: vec![range(18, 0, 7, 16), range(19, 5, 0, 24)],
        ..FrontendSpec::default()
    };
    dp.upsert_frontend(f, &spec).expect("upsert");
    let id = dp.service(&f).expect("frontend").svc_id;
    let want: BTreeSet<(u32, String)> = [
        (id, "198.18.0.0/16".to_string()),
        (id, "198.19.5.0/24".to_string()),
    ]
    .into();
    assert_eq!(pinned_ranges(&dir), want);
    assert_eq!(dp.repair().expect("repair"), 0, "nothing drifted yet");
    {
        let mut m: LpmTrie<_, SrcRange4, u32> =
            LpmTrie::try_from(open_pinned(&dir.0, map_names::SRCRANGE4).expect("map"))
                .expect("lpm");
        let key = |svc_id: u32, addr: [u8; 4], len: u32| {
            Key::new(
                32 + len,
                SrcRange4 {
                    svc_id: svc_id.to_be_bytes(),
                    addr,
                },
            )
        };
        m.remove(&key(id, [198, 19, 5, 0], 24))
            .expect("delete by hand");
        m.insert(&key(id, [198, 18, 77, 0], 24), 1, 0)
            .expect("stray range of the service");
        m.insert(&key(999, [198, 18, 0, 0], 15), 1, 0)
            .expect("stray range of no service");
    }
    assert_eq!(dp.repair().expect("repair"), 3);
    assert_eq!(pinned_ranges(&dir), want);
    // Adopted state has the same (normalized) ranges: nothing to change.
    drop(dp);
    let mut dp = Dataplane::open(&dir.config(small())).expect("reopen");
    assert_eq!(dp.repair().expect("repair"), 0);
    assert_eq!(
        dp.upsert_frontend(f, &spec).expect("same"),
        Upsert::Unchanged
    );
}

fn affinity_map(dir: &PinDir) -> HashMap<aya::maps::MapData, AffinityKey, AffinityValue> {
    HashMap::try_from(open_pinned(&dir.0, map_names::AFFINITY4).expect("map")).expect("affinity")
}

/// Affinity entries of the pinned map as (client's last byte, service id).
fn affinity_entries(dir: &PinDir) -> BTreeSet<(u8, u32)> {
    affinity_map(dir)
        .keys()
        .map(|k| {
            let k = k.expect("key");
            (k.client[3], k.svc_id)
        })
        .collect()
}

/// What the datapath writes when it sends `client` to slot 1 of `svc_id`.
fn remember(dir: &PinDir, client: u8, svc_id: u32) {
    affinity_map(dir)
        .insert(
            AffinityKey {
                client: [198, 18, 9, client],
                svc_id,
            },
            AffinityValue {
                backend_id: 1,
                slot: 1,
                last_ns: 1,
            },
            0,
        )
        .expect("affinity entry");
}

#[test]
fn affinity_entries_go_with_their_service_and_when_affinity_is_turned_off() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("affinity");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let (a, b, c) = (fe(30, 80), fe(30, 81), fe(30, 82));
    dp.upsert_service(a, &[be(1), be(2)], &opts(300))
        .expect("a");
    dp.upsert_service(b, &[be(1), be(2)], &opts(300))
        .expect("b");
    dp.upsert_service(c, &[be(1)], &opts(300)).expect("c");
    let id = |f: Frontend| dp.service(&f).expect("frontend").svc_id;
    let (ia, ib, ic) = (id(a), id(b), id(c));
    for (client, svc) in [(1, ia), (2, ia), (1, ib), (3, ib), (1, ic)] {
        remember(&dir, client, svc);
    }

    assert!(dp.delete_service(&a).expect("delete a"));
    assert_eq!(
        affinity_entries(&dir),
        [(1, ib), (3, ib), (1, ic)].into(),
        "a's clients are forgotten, the others' kept"
    );

    // A new timeout keeps the clients; turning affinity off forgets them.
    dp.upsert_service(b, &[be(1), be(2)], &opts(600))
        .expect("b, longer");
    assert_eq!(affinity_entries(&dir), [(1, ib), (3, ib), (1, ic)].into());
    dp.upsert_service(b, &[be(1), be(2)], &opts(0))
        .expect("b, no affinity");
    assert_eq!(affinity_entries(&dir), [(1, ic)].into());
}

#[test]
fn inspect_shows_kinds_policies_scopes_source_ranges_and_affinity() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("inspect");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let local = BackendSpec {
        flags: BACKEND_FLAG_LOCAL,
        ..be(1)
    };
    let label = |l: &str| ServiceOpts {
        affinity_timeout: 0,
        label: l.into(),
    };
    let cluster_ip = fe(40, 80);
    dp.upsert_service(cluster_ip, &[local, be(2)], &label("shop/web:http"))
        .expect("cluster ip");
    let node_port = Frontend {
        addr: Ipv4Addr::new(198, 18, 0, 2).into(),
        port: 30080,
        proto: 6,
    };
    dp.upsert_frontend(
        node_port,
        &FrontendSpec {
            backends: vec![local],
            internal_backends: Some(vec![local, be(2)]),
            flags: SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT | SVC_FLAG_LOCAL_ONLY,
            opts: label("shop/web:http"),
            ..FrontendSpec::default()
        },
    )
    .expect("node port");
    let lb = fe(41, 80);
    dp.upsert_frontend(
        lb,
        &FrontendSpec {
            backends: vec![be(2)],
            flags: SVC_FLAG_EXTERNAL | SVC_FLAG_LOAD_BALANCER | SVC_FLAG_SOURCE_RANGES,
            source_ranges: vec![range(19, 0, 0, 16), range(18, 5, 0, 24)],
            opts: ServiceOpts {
                affinity_timeout: 10_800,
                label: "shop/lb:http".into(),
            },
            ..FrontendSpec::default()
        },
    )
    .expect("load balancer");
    let external = fe(42, 80);
    dp.upsert_frontend(
        external,
        &FrontendSpec {
            backends: vec![],
            flags: SVC_FLAG_EXTERNAL | SVC_FLAG_LOCAL_ONLY,
            opts: label("shop/ext:http"),
            ..FrontendSpec::default()
        },
    )
    .expect("external ip");

    let rows = inspect::services(&dir.0).expect("inspect");
    assert_eq!(
        rows.len(),
        4,
        "one row per frontend, scopes folded: {rows:?}"
    );
    let row = |f: Frontend| {
        rows.iter()
            .find(|r| r.vip == v4(f.addr) && r.port == f.port)
            .unwrap_or_else(|| panic!("no row for {f}"))
    };
    let r = row(cluster_ip);
    assert_eq!(
        (r.kind, r.traffic_policy, r.name.as_str()),
        ("cluster-ip", "cluster", "shop/web:http")
    );
    assert_eq!(r.backends, ["198.18.1.1:8080", "198.18.1.2:8080"]);
    assert_eq!(
        (r.internal_backends.clone(), r.source_ranges.clone()),
        (None, None)
    );
    let r = row(node_port);
    assert_eq!((r.kind, r.traffic_policy), ("node-port", "local"));
    assert_eq!(r.backends, ["198.18.1.1:8080"]);
    assert_eq!(
        r.internal_backends.as_deref(),
        Some(&["198.18.1.1:8080".to_string(), "198.18.1.2:8080".to_string()][..])
    );
    assert!(r.internal_svc_id.is_some_and(|i| i != r.svc_id));
    let r = row(lb);
    assert_eq!((r.kind, r.traffic_policy), ("load-balancer", "cluster"));
    assert_eq!(
        r.source_ranges.as_deref(),
        Some(&["198.18.5.0/24".to_string(), "198.19.0.0/16".to_string()][..])
    );
    assert_eq!(r.affinity_timeout, 10_800);
    let r = row(external);
    assert_eq!((r.kind, r.traffic_policy), ("external-ip", "local"));
    assert!(r.backends.is_empty());

    // `-o text` shows the main columns, `-o wide` every one (kubectl's).
    let narrow =
        inspect::render(&dir.0, inspect::What::Services, &inspect::View::default()).expect("text");
    let header = narrow.lines().next().expect("header");
    assert!(
        header.contains("BACKENDS") && header.contains("POLICY"),
        "{header}"
    );
    assert!(
        !header.contains("AFFINITY") && !header.contains("POD BACKENDS"),
        "{header}"
    );
    let wide = inspect::View::new(inspect::Output::Wide);
    let text = inspect::render(&dir.0, inspect::What::Services, &wide).expect("wide");
    let header = text.lines().next().expect("header");
    for h in [
        "KIND",
        "POLICY",
        "AFFINITY",
        "SOURCE RANGES",
        "POD BACKENDS",
    ] {
        assert!(header.contains(h), "{header}");
    }
    let lb_line = text
        .lines()
        .find(|l| l.starts_with("shop/lb:http"))
        .expect("lb line");
    for cell in [
        "load-balancer",
        "ClientIP 10800s",
        "198.18.5.0/24, 198.19.0.0/16",
    ] {
        assert!(lb_line.contains(cell), "{lb_line}");
    }
    let ext_line = text
        .lines()
        .find(|l| l.starts_with("shop/ext:http"))
        .expect("external line");
    assert!(
        ext_line.contains("(none on this node: drops)"),
        "{ext_line}"
    );

    // Filters: -n, --field-selector (an unknown field is an error naming the
    // known ones), -l (the maps have no labels: an error).
    let view = |namespace: Option<&str>, fields: &str| inspect::View {
        output: inspect::Output::Json,
        namespace: namespace.map(str::to_owned),
        fields: inspect::parse_selector(fields, inspect::Syntax::Fields).expect("selector"),
        labels: Vec::new(),
    };
    let names = |v: &inspect::View| -> Vec<String> {
        let json = inspect::render(&dir.0, inspect::What::Services, v).expect("filtered");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("JSON");
        rows.iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["name"].as_str().unwrap_or_default(),
                    r["kind"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let lb = names(&view(None, "kind=load-balancer"));
    assert!(
        !lb.is_empty() && lb.iter().all(|n| n.ends_with(" load-balancer")),
        "{lb:?}"
    );
    assert!(
        names(&view(Some("shop"), ""))
            .iter()
            .any(|n| n.starts_with("shop/lb:http"))
    );
    assert!(names(&view(Some("elsewhere"), "")).is_empty());
    assert!(
        names(&view(None, "name=lb,kind!=load-balancer"))
            .iter()
            .all(|n| n.starts_with("shop/lb:") && !n.ends_with(" load-balancer"))
    );
    let unknown = inspect::render(&dir.0, inspect::What::Services, &view(None, "colour=red"))
        .expect_err("an unknown field");
    assert!(unknown.to_string().contains("kind"), "{unknown}");
    let labels = inspect::View {
        labels: inspect::parse_selector("app=web", inspect::Syntax::Labels).expect("selector"),
        ..inspect::View::default()
    };
    let no_labels = inspect::render(&dir.0, inspect::What::Services, &labels)
        .expect_err("services have no labels");
    assert!(
        no_labels.to_string().contains("--field-selector"),
        "{no_labels}"
    );
    // YAML holds the same rows as JSON.
    let yaml = inspect::render(
        &dir.0,
        inspect::What::Services,
        &inspect::View::new(inspect::Output::Yaml),
    )
    .expect("yaml");
    let from_yaml: serde_json::Value = serde_saphyr::from_str(&yaml).expect("YAML");

    let json = inspect::render(
        &dir.0,
        inspect::What::Services,
        &inspect::View::new(inspect::Output::Json),
    )
    .expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(from_yaml, v, "YAML and JSON rows differ");
    let np = v
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["port"] == 30080)
        .expect("node port row");
    assert_eq!(np["kind"], "node-port");
    assert_eq!(np["traffic_policy"], "local");
    assert_eq!(np["internal_backends"][1], "198.18.1.2:8080");
    assert_eq!(np["source_ranges"], serde_json::Value::Null);
}

// ---------------------------------------------------------------------------
// Conntrack and session affinity across backend changes, driven through the
// real programs (BPF_PROG_TEST_RUN on the dataplane's own loaded programs,
// which use its pinned maps).
// ---------------------------------------------------------------------------

/// Runs `prog` of `dp` on `frame`; returns the verdict and the packet's
/// source and destination after it.
fn run_prog(dp: &Dataplane, prog: &str, frame: &[u8]) -> (u32, SocketAddrV4, SocketAddrV4) {
    use std::os::fd::AsFd;
    let fd = if prog == program_names::XDP_NODE {
        let p: &aya::programs::Xdp = dp
            .ebpf()
            .program(prog)
            .expect("xdp program")
            .try_into()
            .expect("an XDP program");
        p.fd().expect("fd").as_fd()
    } else {
        program_fd(dp.ebpf(), prog).expect("tc program")
    };
    let out = test_run(fd, frame, 1).expect("test run");
    let ip = parse(&out.data_out)
        .expect("output frame")
        .ipv4
        .expect("IPv4 out");
    let (sport, dport) = match &ip.l4 {
        ParsedL4::Tcp(t) => (t.sport, t.dport),
        ParsedL4::Udp(u) => (u.sport, u.dport),
        other => panic!("not TCP or UDP: {other:?}"),
    };
    (
        out.retval,
        SocketAddrV4::new(ip.src, sport),
        SocketAddrV4::new(ip.dst, dport),
    )
}

/// A datagram from `client` to `to` through the pod ingress program; the
/// backend it was sent to.
fn udp_from_pod(dp: &Dataplane, client: SocketAddrV4, to: SocketAddrV4) -> SocketAddrV4 {
    let frame = PacketBuilder::udp(client, to).payload(b"q").build();
    let (verdict, _, dst) = run_prog(dp, program_names::TC_POD_INGRESS, &frame);
    assert_eq!(verdict, TCX_NEXT, "{client} -> {to}");
    dst
}

/// A TCP SYN from `client` to `to` through the pod ingress program; the
/// backend it was sent to.
fn syn_from_pod(dp: &Dataplane, client: SocketAddrV4, to: SocketAddrV4) -> SocketAddrV4 {
    let frame = PacketBuilder::tcp(client, to).flags(TCP_SYN).build();
    let (verdict, _, dst) = run_prog(dp, program_names::TC_POD_INGRESS, &frame);
    assert_eq!(verdict, TCX_NEXT, "{client} -> {to}");
    dst
}

fn udp_fe(last: u8, port: u16) -> Frontend {
    Frontend {
        proto: IPPROTO_UDP,
        ..fe(last, port)
    }
}

fn sock(f: Frontend) -> SocketAddrV4 {
    SocketAddrV4::new(v4(f.addr), f.port)
}

fn be_sock(b: BackendSpec) -> SocketAddrV4 {
    SocketAddrV4::new(v4(b.addr), b.port)
}

fn ct_map(dir: &PinDir) -> HashMap<aya::maps::MapData, Ct4Key, CtValue> {
    HashMap::try_from(open_pinned(&dir.0, map_names::CT4).expect("map")).expect("ct")
}

fn ct_keys(dir: &PinDir) -> BTreeSet<Ct4Key> {
    ct_map(dir).keys().map(|k| k.expect("key")).collect()
}

fn snat_keys(dir: &PinDir) -> BTreeSet<Ct4Key> {
    let m: HashMap<aya::maps::MapData, Ct4Key, Snat4Value> =
        HashMap::try_from(open_pinned(&dir.0, map_names::SNAT4).expect("map")).expect("snat");
    m.keys().map(|k| k.expect("key")).collect()
}

/// Both conntrack keys of a flow the backend sees from `seen_from`.
fn flow_keys(
    proto: u8,
    client: SocketAddrV4,
    frontend: SocketAddrV4,
    backend: SocketAddrV4,
    seen_from: SocketAddrV4,
) -> [Ct4Key; 2] {
    [
        Ct4Key {
            saddr: client.ip().octets(),
            daddr: frontend.ip().octets(),
            sport: client.port(),
            dport: frontend.port(),
            proto,
            dir: CT_DIR_SERVICE,
            pad: 0,
        },
        Ct4Key {
            saddr: backend.ip().octets(),
            daddr: seen_from.ip().octets(),
            sport: backend.port(),
            dport: seen_from.port(),
            proto,
            dir: CT_DIR_REPLY,
            pad: 0,
        },
    ]
}

/// kube-proxy clears the UDP conntrack entries of removed endpoints: a
/// sweep deletes exactly the UDP flows (both directions, and their SNAT
/// entries) whose backend left their frontend or whose frontend was
/// deleted; flows of other services to the same backend, TCP flows, flows
/// to surviving backends and flows to a backend that came back stay.
#[test]
fn stale_udp_flows_of_removed_backends_are_cleared_and_nothing_else() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("udpct");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let dns = udp_fe(40, 53);
    let dns2 = udp_fe(41, 53);
    let web = fe(40, 80);
    let node = Ipv4Addr::new(198, 18, 0, 1);
    let np = Frontend {
        addr: node.into(),
        port: 30053,
        proto: IPPROTO_UDP,
    };
    let (b1, b2, b3, b4) = (be(1), be(2), be(3), be(4));
    let client = |host: u8, port: u16| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, host), port);

    // Flows of dns to b1 (clients 1-3) and, while b1 was out for a moment,
    // to b2 (clients 4-6); b1 came back before any sweep, so its flows are
    // not stale.
    dp.upsert_service(dns, &[b1], &opts(0)).expect("dns");
    for h in 1..=3 {
        assert_eq!(udp_from_pod(&dp, client(h, 5353), sock(dns)), be_sock(b1));
    }
    dp.upsert_service(dns, &[b2], &opts(0)).expect("dns b2");
    for h in 4..=6 {
        assert_eq!(udp_from_pod(&dp, client(h, 5353), sock(dns)), be_sock(b2));
    }
    dp.upsert_service(dns, &[b1, b2], &opts(0))
        .expect("dns b1 b2");
    // Another UDP service and a TCP service with the same backend address.
    dp.upsert_service(dns2, &[b1], &opts(0)).expect("dns2");
    // (From another port: the same port would clash with the dns flow to
    // b1 and be remapped.)
    assert_eq!(udp_from_pod(&dp, client(1, 5354), sock(dns2)), be_sock(b1));
    dp.upsert_service(web, &[b1], &opts(0)).expect("web");
    assert_eq!(syn_from_pod(&dp, client(1, 40000), sock(web)), be_sock(b1));
    // A node port to a backend on another node: DNAT and SNAT at XDP.
    let np_spec = |b: BackendSpec| FrontendSpec {
        backends: vec![b],
        flags: SVC_FLAG_EXTERNAL | SVC_FLAG_NODE_PORT,
        ..FrontendSpec::default()
    };
    dp.upsert_frontend(np, &np_spec(b3)).expect("node port");
    let outside = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 200), 5000);
    let frame = PacketBuilder::udp(outside, sock(np)).payload(b"q").build();
    let (verdict, snat_src, dst) = run_prog(&dp, program_names::XDP_NODE, &frame);
    assert_eq!((verdict, dst), (XDP_PASS, be_sock(b3)));
    assert_eq!(*snat_src.ip(), node, "SNATed to the node port's address");
    assert_eq!(
        dp.clear_stale_udp_flows().expect("sweep"),
        ClearedFlows::default(),
        "nothing left a frontend for good yet"
    );

    let before = ct_keys(&dir);
    let snat_before = snat_keys(&dir);
    assert_eq!(before.len(), 2 * 9, "nine flows, two entries each");
    assert_eq!(
        snat_before.len(),
        1,
        "the node-port flow's SNAT entry (its port's allocation)"
    );

    // b1 leaves dns, b3 leaves the node port.
    dp.upsert_service(dns, &[b2], &opts(0))
        .expect("dns without b1");
    dp.upsert_frontend(np, &np_spec(b4))
        .expect("node port without b3");
    let cleared = dp.clear_stale_udp_flows().expect("sweep");
    let mut want_gone: BTreeSet<Ct4Key> = (1..=3)
        .flat_map(|h| {
            let c = client(h, 5353);
            flow_keys(IPPROTO_UDP, c, sock(dns), be_sock(b1), c)
        })
        .collect();
    want_gone.extend(flow_keys(
        IPPROTO_UDP,
        outside,
        sock(np),
        be_sock(b3),
        snat_src,
    ));
    let after = ct_keys(&dir);
    assert!(after.is_subset(&before), "the sweep only deletes");
    let gone: BTreeSet<Ct4Key> = before.difference(&after).copied().collect();
    assert_eq!(gone, want_gone, "exactly the UDP flows of removed backends");
    assert!(
        snat_keys(&dir).is_empty(),
        "the SNATed flow's entries go too"
    );
    assert_eq!(
        cleared,
        ClearedFlows {
            flows: 4,
            ct_entries: 8,
            snat_entries: 1,
            socket_entries: 0,
            sockets_closed: 0,
        }
    );
    // The next datagram of a cleared flow goes to a live backend.
    assert_eq!(udp_from_pod(&dp, client(1, 5353), sock(dns)), be_sock(b2));
    assert_eq!(
        dp.clear_stale_udp_flows().expect("sweep again"),
        ClearedFlows::default(),
        "a sweep forgets what it cleared"
    );

    // A deleted frontend takes its UDP flows along.
    let before = ct_keys(&dir);
    assert!(dp.delete_service(&dns2).expect("delete dns2"));
    let cleared = dp.clear_stale_udp_flows().expect("sweep");
    let gone: BTreeSet<Ct4Key> = before.difference(&ct_keys(&dir)).copied().collect();
    let c = client(1, 5354);
    assert_eq!(
        gone,
        flow_keys(IPPROTO_UDP, c, sock(dns2), be_sock(b1), c).into()
    );
    assert_eq!(cleared.flows, 1);
    // The TCP flow to b1 was never touched.
    let c = client(1, 40000);
    for k in flow_keys(IPPROTO_TCP, c, sock(web), be_sock(b1), c) {
        assert!(ct_keys(&dir).contains(&k), "TCP entry {k:?} kept");
    }
}

/// Session affinity follows the backend, not its slot: adding backends
/// that sort between the others, then removing backends so that others
/// move into their slots, sends every affine client to the backend it had
/// (as long as that backend stays).
#[test]
fn session_affinity_survives_other_backends_coming_and_going() {
    skip_unless!(Needs::pinned());
    let dir = PinDir::new("affslots");
    let mut dp = Dataplane::open(&dir.config(small())).expect("open");
    let web = fe(50, 80);
    let list = |hosts: &[u8]| hosts.iter().map(|h| be(*h)).collect::<Vec<_>>();
    let mut port = 10_000_u16;
    let mut connect = |dp: &Dataplane, host: u8| {
        port += 1;
        let c = SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, host), port);
        syn_from_pod(dp, c, sock(web))
    };
    let mut affine: BTreeMap<u8, SocketAddrV4> = BTreeMap::new();
    let check = |dp: &Dataplane,
                 affine: &BTreeMap<u8, SocketAddrV4>,
                 live: &[u8],
                 connect: &mut dyn FnMut(&Dataplane, u8) -> SocketAddrV4,
                 what: &str| {
        for (host, had) in affine {
            if !live.contains(&had.ip().octets()[3]) {
                continue;
            }
            assert_eq!(
                connect(dp, *host),
                *had,
                "{what}: client {host} keeps its backend"
            );
        }
    };

    dp.upsert_service(web, &list(&[2, 4, 6, 8]), &opts(600))
        .expect("web");
    for host in 1..=12 {
        affine.insert(host, connect(&dp, host));
    }
    check(&dp, &affine, &[2, 4, 6, 8], &mut connect, "unchanged");

    // Backends 3 and 5 join: in sorted order they sit between the others.
    assert_eq!(
        dp.upsert_service(web, &list(&[2, 3, 4, 5, 6, 8]), &opts(600))
            .expect("add"),
        Upsert::Updated
    );
    check(
        &dp,
        &affine,
        &[2, 3, 4, 5, 6, 8],
        &mut connect,
        "after adding 3 and 5",
    );
    // Clients until some use the new backends (the last slots), which move
    // when 2 and 4 leave.
    let mut host = 13;
    while !affine
        .values()
        .any(|b| [3, 5].contains(&b.ip().octets()[3]))
    {
        assert!(host < 250, "no client ever got backend 3 or 5");
        affine.insert(host, connect(&dp, host));
        host += 1;
    }
    let moved: Vec<u8> = affine
        .iter()
        .filter(|(_, b)| [3, 5].contains(&b.ip().octets()[3]))
        .map(|(h, _)| *h)
        .collect();

    // The same set in another order is no change.
    assert_eq!(
        dp.upsert_service(web, &list(&[8, 6, 5, 4, 3, 2]), &opts(600))
            .expect("same set"),
        Upsert::Unchanged
    );
    // 2 and 4 leave: 3 and 5 move into their slots.
    dp.upsert_service(web, &list(&[3, 5, 6, 8]), &opts(600))
        .expect("remove");
    let (v, _) = read_back(&dir, web).expect("web present");
    assert_eq!(v.count, 4);
    check(
        &dp,
        &affine,
        &[3, 5, 6, 8],
        &mut connect,
        "after removing 2 and 4",
    );
    eprintln!("clients {moved:?} used backends that moved slots and kept them");
    // Adoption reads the same slots back.
    drop(dp);
    let dp = Dataplane::open(&dir.config(small())).expect("adopt");
    let s = dp.service(&web).expect("adopted");
    let mut got: Vec<u8> = s.backends.iter().map(|b| v4(b.addr).octets()[3]).collect();
    got.sort_unstable();
    assert_eq!(got, vec![3, 5, 6, 8]);
    check(&dp, &affine, &[3, 5, 6, 8], &mut connect, "after adoption");
}

/// A socket map entry: the socket `cookie` translated from `vip` to
/// `backend`.
fn sock6_entry(
    cookie: u64,
    backend: SocketAddrV6,
    proto: u8,
    vip: SocketAddrV6,
) -> (Sock6Key, Sock6Value) {
    (
        Sock6Key {
            cookie,
            addr: backend.ip().octets(),
            port: backend.port(),
            proto,
            pad: [0; 5],
        },
        Sock6Value {
            vip: vip.ip().octets(),
            port: vip.port(),
            pad: 0,
        },
    )
}
