//! Service CIDRs: parsing as strictly as the API server validates
//! ServiceCIDRs, and which set applies (objects, else the configured ones).

use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::*;

fn cidr(text: &str) -> Cidr {
    parse_service_cidr(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn object(yaml: &str) -> ServiceCIDR {
    serde_saphyr::from_str(yaml).expect("a ServiceCIDR")
}

#[test]
fn service_cidrs_parse_strictly_with_a_reason_for_each_refusal() {
    assert_eq!(cidr("198.19.0.0/16"), (ip("198.19.0.0"), 16));
    assert_eq!(cidr(" 2001:db8:1::/112 "), (ip("2001:db8:1::"), 112));
    assert_eq!(cidr("198.19.0.7/32"), (ip("198.19.0.7"), 32));
    for (text, why) in [
        ("198.19.0.0", "no prefix length"),
        ("198.19.0.0/", "prefix length \"\""),
        ("198.19.0.0/33", "prefix length \"33\""),
        ("2001:db8::/129", "prefix length \"129\""),
        ("198.19.0.0/x", "prefix length \"x\""),
        ("198.19.0.0/-1", "prefix length"),
        ("198.19.1/16", "not an IP address"),
        ("010.0.0.0/8", "not an IP address"),
        ("fe80::1%eth0/64", "not an IP address"),
        ("", "no prefix length"),
        ("0.0.0.0/0", "covers every address"),
        ("::/0", "covers every address"),
        (
            "198.19.0.10/16",
            "host bits are set (the network is 198.19.0.0/16)",
        ),
        ("2001:db8::1/64", "the network is 2001:db8::/64"),
    ] {
        let e = parse_service_cidr(text).expect_err(text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn objects_replace_the_configured_cidrs_and_bad_entries_are_left_out() {
    let configured = vec![cidr("198.19.0.0/16")];
    let mut s = ServiceCidrs::new(configured.clone());
    assert_eq!(s.effective(), configured.iter().copied().collect());
    assert_eq!(s.origin(), "--service-cidr");

    let kubernetes = object(
        "metadata: {name: kubernetes}\nspec: {cidrs: [198.18.128.0/20, '2001:db8:5::/112']}",
    );
    assert_eq!(s.apply(&kubernetes), Some(vec![]));
    assert_eq!(
        s.effective(),
        [cidr("198.18.128.0/20"), cidr("2001:db8:5::/112")].into()
    );
    assert_eq!(s.origin(), "ServiceCIDR objects");
    // The same object again: nothing to do (no problems logged twice).
    assert_eq!(s.apply(&kubernetes), None);

    // A second object adds its own; a bad entry is reported and left out.
    let extra =
        object("metadata: {name: extra}\nspec: {cidrs: [198.18.144.1/20, 198.18.160.0/24]}");
    let problems = s.apply(&extra).expect("a new object");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("ServiceCIDR extra: spec.cidrs: \"198.18.144.1/20\""),
        "{problems:?}"
    );
    assert_eq!(s.effective().len(), 3);
    assert_eq!(s.names().collect::<Vec<_>>(), ["extra", "kubernetes"]);

    // Objects whose CIDRs are all bad give none: the configured ones apply.
    assert!(s.delete("kubernetes"));
    assert!(!s.delete("kubernetes"), "deleting what is gone is no error");
    let bad = object("metadata: {name: extra}\nspec: {cidrs: [nonsense]}");
    assert_eq!(s.apply(&bad).map(|p| p.len()), Some(1));
    assert_eq!(s.effective(), configured.iter().copied().collect());
    let none = object("metadata: {name: extra}");
    assert_eq!(s.apply(&none), Some(vec![]));
    assert_eq!(s.origin(), "--service-cidr");

    // Neither objects nor a flag: nothing (today's behaviour).
    assert!(ServiceCidrs::default().effective().is_empty());
    assert_eq!(ServiceCidrs::default().origin(), "none");
}
