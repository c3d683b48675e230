//! Address and CIDR parsing with the leniency kube-proxy has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses an IP address as kube-proxy does (`netutils.ParseIPSloppy`): the
/// standard text forms, plus IPv4 with leading zeros in a field (`010.0.0.1`),
/// read as decimal (`10.0.0.1`) like older Kubernetes releases stored them.
///
/// Returns `None` for anything else (empty text, IPv6 zones, ranges, host names).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    parse_ipv4_leading_zeros(text).map(IpAddr::V4)
}

/// IPv4 in dotted decimal where fields may carry leading zeros.
fn parse_ipv4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut fields = text.split('.');
    for octet in &mut octets {
        let field = fields.next()?;
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = field.parse().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a CIDR as kube-proxy reads `loadBalancerSourceRanges`: surrounding
/// whitespace is trimmed, the prefix length is optional (a bare address means a
/// single host: /32 or /128), and host bits after the prefix are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`).
///
/// Returns the network address and the prefix length, or `None` when the text
/// is not a CIDR (bad address, prefix not a number or longer than the address).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let text = text.trim();
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address = parse_ip(address)?;
    let max = match address {
        IpAddr::V4(_) => 32u8,
        IpAddr::V6(_) => 128u8,
    };
    let prefix = match prefix {
        None => max,
        Some(prefix) => {
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let prefix: u8 = prefix.parse().ok()?;
            if prefix > max {
                return None;
            }
            prefix
        }
    };
    Some((mask(address, prefix), prefix))
}

/// Whether `address` is inside the network `cidr` (as [`parse_cidr`]
/// returns it); never across families.
pub fn cidr_contains(cidr: (IpAddr, u8), address: IpAddr) -> bool {
    let (net, prefix) = cidr;
    let same_family = matches!(
        (net, address),
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
    );
    same_family && mask(address, prefix) == net
}

/// Clears the bits of `address` after the first `prefix` bits.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}
