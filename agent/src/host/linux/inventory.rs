//! Device inventory from sysinfo.

use std::net::IpAddr;

use palisade_common::wire::Inventory;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

pub fn collect() -> Inventory {
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
    );
    Inventory {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        addresses: addresses(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: sys.total_memory(),
        boot_time_unix: System::boot_time(),
        gateways: super::net::gateways(),
    }
}

/// The device's addresses but loopback, sorted, once each: one `getifaddrs` (two netlink
/// dumps), cheap enough to poll.
pub fn addresses() -> Vec<IpAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = ifaddrs
        .filter_map(|i| i.address)
        .filter_map(|a| match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
            (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
            _ => None,
        })
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}
