//! The network as the agent's namespace sees it: sockets with their owning processes,
//! interfaces, routes, neighbours, DNS and hosts, proxy settings and the firewall ruleset.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;
use serde_json::json;
use sysinfo::Networks;

use super::{Ctx, Out, find_program, processes::pids, run_program};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Socket {
    pub proto: &'static str,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    pub state: &'static str,
    pub uid: Option<u32>,
    pub inode: u64,
    pub pid: Option<u32>,
    pub process: Option<String>,
}

pub fn sockets(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut all = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let path = Path::new("/proc/net").join(proto);
        match std::fs::read_to_string(&path) {
            Ok(text) => all.extend(parse_sockets(proto, &text)),
            Err(e) => out.partly(format!("cannot read {}: {e}", path.display())),
        }
        out.raw(&path, ctx.max_bytes / 8);
    }
    // Socket inode → owning process, from every process's descriptors.
    let mut owners: HashMap<u64, (u32, String)> = HashMap::new();
    for pid in pids() {
        if ctx.expired() {
            out.partly("time budget ran out while mapping sockets to processes".into());
            break;
        }
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse().ok())
            {
                owners
                    .entry(inode)
                    .or_insert_with(|| (pid, comm.trim().to_owned()));
            }
        }
    }
    for s in &mut all {
        if let Some((pid, name)) = owners.get(&s.inode) {
            s.pid = Some(*pid);
            s.process = Some(name.clone());
        }
    }
    let listening: Vec<&Socket> = all
        .iter()
        .filter(|s| s.state == "LISTEN" || (s.proto.starts_with("udp") && s.remote_port == 0))
        .collect();
    out.json("sockets.json", &json!({"listening": listening, "all": all}));
    Ok(out)
}

/// Parses /proc/net/{tcp,tcp6,udp,udp6}.
pub fn parse_sockets(proto: &'static str, text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local_addr, local_port) = parse_endpoint(f.get(1)?)?;
            let (remote_addr, remote_port) = parse_endpoint(f.get(2)?)?;
            let st = u8::from_str_radix(f.get(3)?, 16).ok()?;
            Some(Socket {
                proto,
                local_addr,
                local_port,
                remote_addr,
                remote_port,
                state: if proto.starts_with("udp") {
                    if st == 1 {
                        "ESTABLISHED"
                    } else {
                        "UNCONNECTED"
                    }
                } else {
                    tcp_state(st)
                },
                uid: f.get(7).and_then(|u| u.parse().ok()),
                inode: f.get(9)?.parse().ok()?,
                pid: None,
                process: None,
            })
        })
        .collect()
}

fn tcp_state(st: u8) -> &'static str {
    match st {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// "0100007F:1F90" → 127.0.0.1:8080. The kernel prints each 32-bit word of the address as a
/// number in the host's byte order.
fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

pub fn interfaces(_: &Ctx) -> anyhow::Result<Out> {
    let networks = Networks::new_with_refreshed_list();
    let mut list: Vec<_> = networks
        .iter()
        .map(|(name, data)| {
            let operstate = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                .map(|s| s.trim().to_owned())
                .ok();
            json!({
                "name": name,
                "mac": data.mac_address().to_string(),
                "addresses": data.ip_networks().iter().map(|n| format!("{}/{}", n.addr, n.prefix)).collect::<Vec<_>>(),
                "operstate": operstate,
                "mtu": data.mtu(),
                "rx_bytes": data.total_received(),
                "tx_bytes": data.total_transmitted(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut out = Out::default();
    out.json("interfaces.json", &json!({"interfaces": list}));
    Ok(out)
}

pub fn routes(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v4: Vec<_> = v4
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = |s: &str| {
                Some(Ipv4Addr::from(
                    u32::from_str_radix(s, 16).ok()?.to_ne_bytes(),
                ))
            };
            let mask = ip(f.get(7)?)?;
            Some(json!({
                "interface": f.first()?,
                "destination": format!("{}/{}", ip(f.get(1)?)?, u32::from(mask).count_ones()),
                "gateway": ip(f.get(2)?)?,
                "flags": f.get(3)?,
                "metric": f.get(6)?.parse::<u64>().ok(),
            }))
        })
        .collect();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let v6: Vec<_> = v6
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = |s: &str| -> Option<Ipv6Addr> {
                Some(Ipv6Addr::from(u128::from_str_radix(s, 16).ok()?))
            };
            Some(json!({
                "destination": format!("{}/{}", ip(f.first()?)?, u8::from_str_radix(f.get(1)?, 16).ok()?),
                "gateway": ip(f.get(4)?)?,
                "metric": u32::from_str_radix(f.get(5)?, 16).ok(),
                "interface": f.get(9)?,
            }))
        })
        .collect();
    out.json("routes.json", &json!({"ipv4": v4, "ipv6": v6}));
    out.raw(Path::new("/proc/net/route"), ctx.max_bytes / 4);
    out.raw(Path::new("/proc/net/ipv6_route"), ctx.max_bytes / 4);
    Ok(out)
}

pub fn neighbours(ctx: &Ctx) -> anyhow::Result<Out> {
    let text = std::fs::read_to_string("/proc/net/arp")
        .map_err(|e| anyhow::anyhow!("cannot read /proc/net/arp: {e}"))?;
    let list: Vec<_> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(json!({
                "ip": f.first()?,
                "mac": f.get(3)?,
                "flags": f.get(2)?,
                "interface": f.get(5)?,
            }))
        })
        .collect();
    let mut out = Out::default();
    out.json("neighbours.json", &json!({"arp": list}));
    out.raw(Path::new("/proc/net/arp"), ctx.max_bytes / 2);
    // IPv6 neighbours are not in /proc: ask iproute2 when it is there.
    if let Some(ip) = find_program("ip") {
        match run_program(&ip, &["neigh", "show"], ctx) {
            Ok(text) => out.files.push(crate::host::CollectedFile {
                name: "ip-neigh.txt".into(),
                bytes: text,
            }),
            Err(e) => out.partly(format!("{e:#}")),
        }
    }
    Ok(out)
}

pub fn dns(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let values = |key: &str| -> Vec<String> {
        resolv
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
            .collect()
    };
    let hosts: Vec<_> = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(json!({"address": f.next()?, "names": f.collect::<Vec<_>>()}))
        })
        .collect();
    out.json(
        "dns.json",
        &json!({
            "nameservers": values("nameserver "),
            "search": values("search "),
            "options": values("options "),
            "hosts": hosts,
        }),
    );
    for f in [
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
    ] {
        out.raw(Path::new(f), ctx.max_bytes / 8);
    }
    Ok(out)
}

pub fn proxy(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut sources: Vec<String> = vec!["/etc/environment".into(), "/etc/apt/apt.conf".into()];
    let mut apt: Vec<String> = std::fs::read_dir("/etc/apt/apt.conf.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    apt.sort();
    sources.extend(apt);
    let mut settings = Vec::new();
    for source in &sources {
        let text = std::fs::read_to_string(source).unwrap_or_default();
        for line in text.lines() {
            let l = line.trim();
            if !l.starts_with('#') && l.to_ascii_lowercase().contains("proxy") {
                settings.push(json!({"source": source, "line": l}));
            }
        }
    }
    out.json("proxy.json", &json!({"settings": settings}));
    out.raw(Path::new("/etc/environment"), ctx.max_bytes / 4);
    Ok(out)
}

pub fn firewall(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let Some(nft) = find_program("nft") else {
        out.unavailable = Some("nft is not installed".into());
        return Ok(out);
    };
    let ruleset = run_program(&nft, &["list", "ruleset"], ctx)?;
    out.files.push(crate::host::CollectedFile {
        name: "firewall/nft-ruleset.txt".into(),
        bytes: ruleset,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_become_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1\n";
        let s = parse_sockets("tcp", tcp);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s[0].local_port, 8080);
        assert_eq!(s[0].state, "LISTEN");
        assert_eq!(s[0].inode, 12345);
        assert_eq!(s[1].remote_port, 0xD431);
        assert_eq!(s[1].state, "ESTABLISHED");
        assert_eq!(s[1].uid, Some(1000));
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        let s = parse_sockets("tcp6", tcp6);
        assert_eq!(s[0].local_addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s[0].local_port, 22);
        assert!(parse_sockets("udp", "header\n garbage line\n").is_empty());
    }
}
