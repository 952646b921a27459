//! The machine itself: OS, kernel, CPU, memory, disks and mounts, kernel modules.

use std::path::Path;

use serde_json::json;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

use super::{Ctx, Out};

pub fn system(ctx: &Ctx) -> anyhow::Result<Out> {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::everything())
            .with_cpu(CpuRefreshKind::nothing().with_frequency()),
    );
    let load = System::load_average();
    let cpus: Vec<_> = sys
        .cpus()
        .iter()
        .map(|c| json!({"name": c.name(), "brand": c.brand(), "vendor": c.vendor_id(), "mhz": c.frequency()}))
        .collect();
    let mut out = Out::default();
    out.json(
        "system.json",
        &json!({
            "hostname": System::host_name(),
            "os": System::long_os_version(),
            "os_id": System::distribution_id(),
            "os_version": System::os_version(),
            "kernel": System::kernel_version(),
            "kernel_long": System::kernel_long_version(),
            "arch": System::cpu_arch(),
            "boot_time_unix": System::boot_time(),
            "uptime_secs": System::uptime(),
            "load_average": [load.one, load.five, load.fifteen],
            "cpu_count": cpus.len(),
            "cpus": cpus,
            "memory": {
                "total": sys.total_memory(),
                "used": sys.used_memory(),
                "available": sys.available_memory(),
                "free": sys.free_memory(),
                "swap_total": sys.total_swap(),
                "swap_used": sys.used_swap(),
            },
        }),
    );
    for f in ["/etc/os-release", "/proc/version", "/proc/cmdline"] {
        out.raw(Path::new(f), ctx.max_bytes / 8);
    }
    Ok(out)
}

pub fn disks(ctx: &Ctx) -> anyhow::Result<Out> {
    let disks = Disks::new_with_refreshed_list();
    let list: Vec<_> = disks
        .list()
        .iter()
        .map(|d| {
            json!({
                "device": d.name().to_string_lossy(),
                "mount_point": d.mount_point(),
                "file_system": d.file_system().to_string_lossy(),
                "kind": format!("{:?}", d.kind()),
                "total_bytes": d.total_space(),
                "available_bytes": d.available_space(),
                "removable": d.is_removable(),
                "read_only": d.is_read_only(),
            })
        })
        .collect();
    let mut out = Out::default();
    out.json("disks.json", &json!({"disks": list}));
    if !out.raw(Path::new("/proc/self/mounts"), ctx.max_bytes / 2) {
        out.partly("cannot read /proc/self/mounts".into());
    }
    out.raw(Path::new("/etc/fstab"), ctx.max_bytes / 4);
    Ok(out)
}

pub fn kernel_modules(ctx: &Ctx) -> anyhow::Result<Out> {
    let text = match std::fs::read_to_string("/proc/modules") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A kernel without loadable modules, or a container that hides them.
            return Ok(Out {
                unavailable: Some("no /proc/modules on this host".into()),
                ..Out::default()
            });
        }
        Err(e) => anyhow::bail!("cannot read /proc/modules: {e}"),
    };
    let modules: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(json!({
                "name": f.first()?,
                "size": f.get(1)?.parse::<u64>().ok(),
                "used_by_count": f.get(2)?.parse::<u64>().ok(),
                "used_by": f.get(3).map(|d| d.split(',').filter(|s| !s.is_empty() && *s != "-").collect::<Vec<_>>()),
                "state": f.get(4),
                "taint": f.get(6).map(|t| t.trim_matches(|c| c == '(' || c == ')')),
            }))
        })
        .collect();
    let tainted = std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let mut out = Out::default();
    out.json(
        "kernel_modules.json",
        &json!({"tainted": tainted, "modules": modules}),
    );
    out.raw(Path::new("/proc/modules"), ctx.max_bytes / 2);
    Ok(out)
}
