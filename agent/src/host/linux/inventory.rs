//! Device inventory from sysinfo.

use palisade_common::wire::Inventory;
use sysinfo::{MemoryRefreshKind, Networks, RefreshKind, System};

pub fn collect() -> Inventory {
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
    );
    let networks = Networks::new_with_refreshed_list();
    let mut addresses: Vec<std::net::IpAddr> = networks
        .values()
        .flat_map(|data| data.ip_networks().iter().map(|n| n.addr))
        .filter(|a| !a.is_loopback())
        .collect();
    addresses.sort();
    addresses.dedup();
    Inventory {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        addresses,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: sys.total_memory(),
        boot_time_unix: System::boot_time(),
        gateways: super::net::gateways(),
    }
}
