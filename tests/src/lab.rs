//! The lab: a bridge on this host with a controller address, and one network namespace per
//! lab host (agents, an unmanaged outsider) joined to it by a veth pair, each with an IPv4
//! address from a documentation range and an IPv6 address from 2001:db8::/32. Used by the lab
//! tests and by `cargo xtask lab`, so there is one lab, not several.
//!
//! Everything it makes is named `pal…` and recorded in `/run/palisade-lab/<id>.json`, so
//! [`Lab::down`] (and `cargo xtask lab down`) can remove it even after a crash. Needs root: a
//! test that is not root fails with a clear message instead of skipping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const STATE_DIR: &str = "/run/palisade-lab";

/// Fails unless running as root, naming what needed it.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (network namespaces); run as root — CI does");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The veth end on the bridge, in the host's namespace.
    pub veth: String,
}

impl LabHost {
    /// A command that runs inside this host's network namespace, with the host's name as its
    /// hostname (its own UTS namespace), so that agents report distinct hostnames.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "unshare", "--uts", "sh", "-c"])
            .arg(format!("hostname {} && exec \"$@\"", self.name))
            .arg("sh")
            .arg(program);
        c
    }

    pub fn addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }

    /// The command prefix that runs a program on this host (see [`LabHost::command`]).
    pub fn prefix(&self) -> Vec<String> {
        let c = self.command("true");
        let mut out = vec![c.get_program().to_string_lossy().into_owned()];
        out.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
        out.pop(); // "true"
        out
    }

    /// The namespace's file under /run/netns, for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Takes the host's link to the bridge down (nothing passes either way) or up again.
    pub fn set_link(&self, up: bool) -> Result<()> {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]).map(|_| ())
    }

    /// Limits what leaves this host to `rate` (a tc rate such as `400kbit`).
    pub fn throttle_out(&self, rate: &str) -> Result<()> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
            ])
            .args(["rate", rate, "burst", "10kb", "latency", "1s"])
            .output()
            .context("cannot run tc (install iproute2)")?;
        if !out.status.success() {
            bail!("tc failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    pub fn unthrottle(&self) -> Result<()> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "tc",
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ])
            .output()
            .context("cannot run tc")?;
        if !out.status.success() {
            bail!("tc failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

pub struct Lab {
    pub id: String,
    pub bridge: String,
    /// The controller's addresses: on the bridge, in the host's own namespace.
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    pub hosts: Vec<LabHost>,
    /// Processes started for the lab (recorded so `down` can stop them after a crash).
    pub pids: Vec<u32>,
    keep: bool,
}

/// Which /27 of the documentation ranges a lab uses: 8 in 198.51.100.0/24, then 4 in
/// 192.0.2.0/25.
fn block(slot: u32) -> (Ipv4Addr, u16) {
    let base = if slot < 8 {
        [198, 51, 100]
    } else {
        [192, 0, 2]
    };
    (
        Ipv4Addr::new(base[0], base[1], base[2], ((slot % 8) * 32) as u8),
        0x100 + slot as u16,
    )
}

impl Lab {
    /// Brings up a lab with the named hosts (e.g. `["a", "b", "outsider"]`).
    pub fn up(hosts: &[&str]) -> Result<Lab> {
        require_root("the lab")?;
        anyhow::ensure!(
            !hosts.is_empty() && hosts.len() <= 28,
            "a lab has 1 to 28 hosts"
        );
        std::fs::create_dir_all(STATE_DIR)?;
        // Claim a slot by creating its state file exclusively: concurrent tests get their own.
        let (slot, state) = (0..12)
            .find_map(|slot| {
                let path = PathBuf::from(format!("{STATE_DIR}/{slot}.json"));
                let stale = path.exists() && !Lab::state_alive(&path);
                if stale {
                    let _ = Lab::down_from_state(&path);
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .ok()?;
                // Owned from the first byte: another test process must not take it for stale.
                std::io::Write::write_all(
                    &mut file,
                    json!({"owner_pid": std::process::id()})
                        .to_string()
                        .as_bytes(),
                )
                .ok()?;
                Some((slot, path))
            })
            .context("all 12 lab slots are in use; `cargo xtask lab down` removes old labs")?;
        let (net, v6block) = block(slot);
        let o = net.octets();
        let id = format!("{slot}");
        let mut lab = Lab {
            id: id.clone(),
            bridge: format!("palbr{slot}"),
            gateway_v4: Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1),
            gateway_v6: Ipv6Addr::new(0x2001, 0xdb8, v6block, 0, 0, 0, 0, 1),
            hosts: Vec::new(),
            pids: Vec::new(),
            keep: false,
        };
        let made = (|| -> Result<()> {
            lab.save(&state)?;
            ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
            lab.save(&state)?;
            ip(&[
                "addr",
                "add",
                &format!("{}/27", lab.gateway_v4),
                "dev",
                &lab.bridge,
            ])?;
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", lab.gateway_v6),
                "dev",
                &lab.bridge,
                "nodad",
            ])?;
            ip(&["link", "set", &lab.bridge, "up"])?;
            for (i, name) in hosts.iter().enumerate() {
                let n = i as u8 + 10;
                let host = LabHost {
                    name: (*name).to_owned(),
                    netns: format!("pal{slot}-{name}"),
                    v4: Ipv4Addr::new(o[0], o[1], o[2], o[3] + n),
                    v6: Ipv6Addr::new(0x2001, 0xdb8, v6block, 0, 0, 0, 0, u16::from(n)),
                    veth: format!("pv{slot}x{i}"),
                };
                let peer = format!("pv{slot}y{i}");
                ip(&["netns", "add", &host.netns])?;
                lab.hosts.push(host.clone());
                lab.save(&state)?;
                ip(&[
                    "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
                ])?;
                ip(&["link", "set", &peer, "netns", &host.netns])?;
                ip(&["link", "set", &host.veth, "master", &lab.bridge, "up"])?;
                let ns = |args: &[&str]| {
                    let mut full = vec!["-n", host.netns.as_str()];
                    full.extend_from_slice(args);
                    ip(&full)
                };
                ns(&["link", "set", "lo", "up"])?;
                ns(&["link", "set", &peer, "name", "eth0"])?;
                ns(&["addr", "add", &format!("{}/27", host.v4), "dev", "eth0"])?;
                ns(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", host.v6),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                ns(&["link", "set", "eth0", "up"])?;
                ns(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &lab.gateway_v4.to_string(),
                ])?;
                ns(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &lab.gateway_v6.to_string(),
                ])?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = Lab::down_from_state(&state);
            return Err(e);
        }
        Ok(lab)
    }

    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    fn state_path(&self) -> PathBuf {
        PathBuf::from(format!("{STATE_DIR}/{}.json", self.id))
    }

    fn save(&self, path: &Path) -> Result<()> {
        let v = json!({
            "id": self.id,
            "owner_pid": std::process::id(),
            "keep": self.keep,
            "bridge": self.bridge,
            "gateway_v4": self.gateway_v4.to_string(),
            "gateway_v6": self.gateway_v6.to_string(),
            "hosts": self.hosts.iter().map(|h| json!({
                "name": h.name, "netns": h.netns, "v4": h.v4.to_string(), "v6": h.v6.to_string(), "veth": h.veth,
            })).collect::<Vec<_>>(),
            "pids": self.pids,
        });
        // Atomically: a concurrent reader sees the old state or the new, never half of one.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Records a process started for the lab, so that `down` stops it.
    pub fn track(&mut self, pid: u32) -> Result<()> {
        self.pids.push(pid);
        self.save(&self.state_path())
    }

    /// Keeps the lab after this value is dropped (for `cargo xtask lab up`).
    pub fn keep(mut self) -> Result<()> {
        self.keep = true;
        self.save(&self.state_path())?;
        std::mem::forget(self);
        Ok(())
    }

    /// A lab is alive while its owner runs, or when it was kept on purpose.
    fn state_alive(path: &Path) -> bool {
        let Ok(v) =
            std::fs::read(path).map(|b| serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
        else {
            return false;
        };
        // A state being written by its owner this very moment is not stale.
        let young = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| {
                t.elapsed()
                    .is_ok_and(|e| e < std::time::Duration::from_secs(60))
            });
        if v.is_null() && young {
            return true;
        }
        if v["keep"] == true {
            return true;
        }
        v["owner_pid"]
            .as_u64()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Removes everything a state file records: processes, namespaces, links, the file.
    pub fn down_from_state(path: &Path) -> Result<()> {
        let v: Value = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        for pid in v["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for host in v["hosts"].as_array().into_iter().flatten() {
            if let Some(ns) = host["netns"].as_str() {
                // Whatever still runs in the namespace goes with it.
                if let Ok(out) = ip(&["netns", "pids", ns]) {
                    for pid in String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                let _ = ip(&["netns", "del", ns]);
            }
            if let Some(veth) = host["veth"].as_str() {
                let _ = ip(&["link", "del", veth]);
            }
        }
        if let Some(br) = v["bridge"].as_str() {
            let _ = ip(&["link", "del", br]);
        }
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Removes every lab on this machine (`cargo xtask lab down`).
    pub fn down_all() -> Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(STATE_DIR).into_iter().flatten().flatten() {
            if entry.path().extension().is_none_or(|e| e != "json") {
                continue; // a state being written
            }
            Lab::down_from_state(&entry.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// The recorded labs, for `cargo xtask lab status`.
    pub fn states() -> Vec<Value> {
        std::fs::read_dir(STATE_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    pub fn down(&self) -> Result<()> {
        Lab::down_from_state(&self.state_path())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.down();
        }
    }
}
