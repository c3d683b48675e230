//! The host's network interfaces and addresses, read from the calling
//! thread's network namespace (`if_nameindex`, `getifaddrs`).

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr},
};

/// The IPv4 and IPv6 addresses of the calling thread's network namespace,
/// by interface name, in the order the kernel lists them.
pub fn addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: walks the list getifaddrs returned; every node and its
    // address are valid until freeifaddrs, and each address is read as the
    // type its family says.
    unsafe {
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && !(*p).ifa_name.is_null() {
                let addr = match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = a as *const libc::sockaddr_in;
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            (*sin).sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = a as *const libc::sockaddr_in6;
                        Some(IpAddr::V6(std::net::Ipv6Addr::from(
                            (*sin6).sin6_addr.s6_addr,
                        )))
                    }
                    _ => None,
                };
                if let Some(addr) = addr {
                    let name = CStr::from_ptr((*p).ifa_name).to_string_lossy().into_owned();
                    out.push((name, addr));
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// The interfaces of the calling thread's network namespace: (index, name).
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = head;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push((
                (*p).if_index,
                CStr::from_ptr((*p).if_name).to_string_lossy().into_owned(),
            ));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// Whether `addr` can be a node address (of node ports, and the source of
/// SNATed flows): any IPv4 address (as before IPv6), an IPv6 address other
/// than loopback and link-local (`fe80::/10` is valid only with its
/// interface, which neither a node port nor a backend's reply carries).
pub fn is_node_address(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => !a.is_unicast_link_local() && !a.is_loopback(),
    }
}
