//! The nftables applier: runs the planner's script through `nft -f -` (one atomic
//! transaction that replaces our table and nothing else) and reads our table back as the
//! kernel holds it, whose digest is what the agent reports and watches for tamper.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::{Command, Stdio};

use ring::digest;

use crate::host::net_plan::TABLE;
use crate::host::{HostError, NetStatus};

fn nft() -> Command {
    let mut c = Command::new("nft");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Replaces our table with `script` in one transaction, then reads it back. (Not with a
/// `list` in the same batch: nft answers that from its cache, without the rules just added.)
pub fn apply(script: &str) -> Result<NetStatus, HostError> {
    let mut child = nft()
        .args(["-f", "-"])
        .spawn()
        .map_err(|e| HostError::io("cannot run nft (is the nftables package installed?)", e))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| HostError::io("cannot write the ruleset to nft", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| HostError::io("nft did not finish", e))?;
    let committed_at_ms = Some(crate::clock::now_ms());
    if !out.status.success() {
        return Err(HostError::Refused(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !script.contains(&format!("table inet {TABLE} {{")) {
        // Removed: nothing to read back.
        return Ok(NetStatus {
            committed_at_ms,
            ..NetStatus::default()
        });
    }
    Ok(NetStatus {
        committed_at_ms,
        ..status()?
    })
}

fn listed(listing: String) -> NetStatus {
    NetStatus {
        digest: Some(hex::encode(digest::digest(
            &digest::SHA256,
            listing.as_bytes(),
        ))),
        listing,
        committed_at_ms: None,
    }
}

/// Our table as the kernel lists it now.
pub fn status() -> Result<NetStatus, HostError> {
    let out = nft()
        .args(["list", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HostError::io("cannot run nft (is the nftables package installed?)", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(NetStatus::default());
        }
        return Err(HostError::Refused(format!(
            "nft cannot list our table: {}",
            err.trim()
        )));
    }
    Ok(listed(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The addresses of `controller` (`HOST:PORT`), as the resolver gives them now.
pub fn resolve(controller: &str) -> Result<Vec<SocketAddr>, HostError> {
    let addrs: Vec<SocketAddr> = controller
        .to_socket_addrs()
        .map_err(|e| HostError::io(format!("cannot resolve the controller {controller}"), e))?
        .collect();
    if addrs.is_empty() {
        return Err(HostError::Refused(format!(
            "the controller {controller} resolves to no address"
        )));
    }
    Ok(addrs)
}

/// Default gateways from the kernel's routing tables.
pub fn gateways() -> Vec<IpAddr> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    parse_gateways(&v4, &v6)
}

/// The default routes' gateways in `/proc/net/route` (`v4`) and `/proc/net/ipv6_route`
/// (`v6`), sorted, once each.
fn parse_gateways(v4: &str, v6: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    // /proc/net/route: Iface Destination Gateway Flags … (hex), default = 0, after a header
    // line. The kernel prints the network-order bytes as a host-order word.
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2
            && f[1] == "00000000"
            && let Ok(gw) = u32::from_str_radix(f[2], 16)
            && gw != 0
        {
            out.push(IpAddr::V4(gw.to_ne_bytes().into()));
        }
    }
    // /proc/net/ipv6_route: dest plen src plen next-hop metric … (hex), default = ::/0.
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && let Ok(gw) = u128::from_str_radix(f[4], 16)
            && gw != 0
        {
            out.push(IpAddr::V6(gw.into()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Watches nf_tables for changes: a netlink socket subscribed to the kernel's nftables
/// multicast group, read without blocking. Any message means the ruleset changed (our own
/// transactions too); the caller then compares our table's digest.
#[derive(Default)]
pub struct Watch {
    sock: std::sync::Mutex<Option<std::os::fd::OwnedFd>>,
}

/// `NFNLGRP_NFTABLES` from linux/netfilter/nfnetlink.h.
const NFNLGRP_NFTABLES: u32 = 7;

impl Watch {
    /// Whether the ruleset may have changed since the last call: true when it did, when
    /// notifications were lost, and when there is no watch (yet).
    pub fn changed(&self) -> bool {
        use nix::errno::Errno;
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd;
        let mut guard = self.sock.lock().expect("watch lock");
        let Some(sock) = guard.as_ref() else {
            *guard = open_watch().ok();
            return true;
        };
        let mut buf = [0u8; 16 << 10];
        let mut any = false;
        loop {
            match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(Errno::EAGAIN) => return any,
                Err(Errno::ENOBUFS) => any = true, // overflowed: changes were lost
                Err(Errno::EINTR) => {}
                Err(_) => {
                    *guard = None;
                    return true;
                }
            }
        }
    }
}

fn open_watch() -> nix::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
    };
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(
        sock.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
    )?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn gateways_are_the_default_routes_next_hops_in_network_order() {
        // As the kernel prints them on a little-endian host: 198.51.100.1 is 0x0164_33C6.
        let v4 = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t016433C6\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t006433C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wg0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
eth1\t00000000\t016433C6\t0003\t0\t0\t200\t00000000\t0\t0\t0
";
        let v6 = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth0
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
";
        assert_eq!(
            parse_gateways(v4, v6),
            vec![
                "198.51.100.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ]
        );
        assert!(parse_gateways("", "").is_empty());
        assert!(parse_gateways("Iface\tDestination\tGateway\ngarbage\n", "junk\n").is_empty());
    }
}
