//! Service CIDRs: the networks cluster IPs are allocated from
//! (`networking.k8s.io/v1` ServiceCIDR objects, GA in Kubernetes 1.33, or
//! the agent's `--service-cidr`). The datapath drops pods' traffic to an
//! address inside one that no Service holds, as kube-proxy's nftables mode
//! does ("Drop traffic to unallocated ClusterIPs").
//!
//! Which set applies, as kube-proxy takes it (the union of every
//! ServiceCIDR's `spec.cidrs`, one being deleted included: its addresses
//! stay allocated until it is gone): the objects' CIDRs when there are
//! any, else the configured ones, else none (nothing is dropped).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::networking::v1::ServiceCIDR;

/// A service CIDR: its network address and prefix length.
pub type Cidr = (IpAddr, u8);

/// Parses one service CIDR (an entry of a ServiceCIDR's `spec.cidrs`, or
/// of `--service-cidr`) as strictly as the API server validates
/// ServiceCIDRs: an address, `/` and a prefix length no longer than the
/// address, the address being the network's own (no host bits set).
/// Surrounding whitespace is ignored. A prefix length of 0 is refused:
/// it would drop every destination no Service holds.
///
/// Returns why the text is not one otherwise.
pub fn parse_service_cidr(text: &str) -> Result<Cidr, String> {
    let t = text.trim();
    let Some((addr, len)) = t.split_once('/') else {
        return Err(format!(
            "{t:?} is not a CIDR: no prefix length (like 198.19.0.0/16 or 2001:db8:1::/112)"
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{t:?} is not a CIDR: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 =
        len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
            format!("{t:?} is not a CIDR: prefix length {len:?} is not 0..={max}")
        })?;
    if len == 0 {
        return Err(format!(
            "{t:?} covers every address: a service CIDR needs a prefix length of 1 or more"
        ));
    }
    let net = crate::model::addr::parse_cidr(t).map(|(n, _)| n);
    if net != Some(addr) {
        return Err(format!(
            "{t:?} is not a network address: host bits are set (the network is {}/{len})",
            net.map_or_else(|| "?".into(), |n| n.to_string())
        ));
    }
    Ok((addr, len))
}

/// The service CIDRs of the cluster: every ServiceCIDR object's, by name,
/// and the configured ones that apply while there are none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidrs {
    /// Each object's `spec.cidrs` as given, and the CIDRs read from them.
    objects: BTreeMap<String, (Vec<String>, Vec<Cidr>)>,
    configured: Vec<Cidr>,
}

impl ServiceCidrs {
    /// No objects yet; `configured` (`--service-cidr`) applies until some
    /// come.
    pub fn new(configured: Vec<Cidr>) -> Self {
        Self {
            objects: BTreeMap::new(),
            configured,
        }
    }

    /// Takes a ServiceCIDR object (replacing the one of its name). Returns
    /// `None` when its `spec.cidrs` did not change, else the problems of
    /// its entries, one line each naming the object (an entry that is not
    /// a CIDR is left out; the others apply).
    pub fn apply(&mut self, obj: &ServiceCIDR) -> Option<Vec<String>> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let given = obj
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.clone())
            .unwrap_or_default();
        if self.objects.get(&name).is_some_and(|(g, _)| *g == given) {
            return None;
        }
        let mut problems = Vec::new();
        let mut cidrs = Vec::new();
        for text in &given {
            match parse_service_cidr(text) {
                Ok(c) => cidrs.push(c),
                Err(e) => problems.push(format!("ServiceCIDR {name}: spec.cidrs: {e}; left out")),
            }
        }
        self.objects.insert(name, (given, cidrs));
        Some(problems)
    }

    /// Forgets the object `name`; whether there was one.
    pub fn delete(&mut self, name: &str) -> bool {
        self.objects.remove(name).is_some()
    }

    /// The names of the objects held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.objects.keys().map(String::as_str)
    }

    /// The set that applies: the union of the objects' CIDRs when they
    /// give any, else the configured ones (possibly none).
    pub fn effective(&self) -> BTreeSet<Cidr> {
        let from_objects: BTreeSet<Cidr> = self
            .objects
            .values()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        if from_objects.is_empty() {
            self.configured.iter().copied().collect()
        } else {
            from_objects
        }
    }

    /// Where [`Self::effective`] comes from, for logs.
    pub fn origin(&self) -> &'static str {
        if self.objects.values().any(|(_, c)| !c.is_empty()) {
            "ServiceCIDR objects"
        } else if self.configured.is_empty() {
            "none"
        } else {
            "--service-cidr"
        }
    }
}
