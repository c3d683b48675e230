//! Addresses and CIDRs, read as kube-proxy reads them.

use super::*;

#[test]
fn addresses_and_cidrs_parse_like_kube_proxy() {
    let ips = [
        ("198.18.0.1", Some("198.18.0.1")),
        ("010.001.0.1", Some("10.1.0.1")),
        ("2001:db8::1", Some("2001:db8::1")),
        ("198.18.0.256", None),
        ("198.18.0", None),
        ("198.18.0.1.2", None),
        ("+1.2.3.4", None),
        ("", None),
        ("fe80::1%eth0", None),
        ("host.example.com", None),
    ];
    for (text, expected) in ips {
        assert_eq!(parse_ip(text), expected.map(ip), "{text:?}");
    }
    let cidrs = [
        ("198.18.0.0/15", Some(("198.18.0.0", 15))),
        (" 198.18.3.4/16\t", Some(("198.18.0.0", 16))),
        ("198.18.3.4", Some(("198.18.3.4", 32))),
        ("0.0.0.0/0", Some(("0.0.0.0", 0))),
        ("2001:db8::1/32", Some(("2001:db8::", 32))),
        ("2001:db8::1", Some(("2001:db8::1", 128))),
        ("::/0", Some(("::", 0))),
        ("198.18.0.0/33", None),
        ("2001:db8::/129", None),
        ("198.18.0.0/", None),
        ("198.18.0.0/+8", None),
        ("198.18.0.0/8/8", None),
        ("", None),
    ];
    for (text, expected) in cidrs {
        assert_eq!(
            parse_cidr(text),
            expected.map(|(a, p)| (ip(a), p)),
            "{text:?}"
        );
    }
}
