//! A network namespace joined to the host by a veth pair with addresses from 192.0.2.128/25
//! (TEST-NET-2), for lab tests that need a device with its own network. Needs root; a test
//! that is not root fails with a clear message rather than skipping. The namespace and its
//! links are removed on drop, also when the test panics; namespaces left by a test process
//! that was killed are swept by the next one.
//!
//! ```text
//! let ns = NetNs::new();
//! let ctl = Controller::start_on(&format!("{}:0", ns.host_addr), &[]);
//! let agent = ctl.enroll_agent().in_netns(&ns).started();
//! ```

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Address blocks are chosen under this lock within one test process.
static ALLOCATE: Mutex<()> = Mutex::new(());

pub struct NetNs {
    pub name: String,
    /// The host's end of the veth pair, and its address.
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    /// The namespace's end, and its address.
    pub ns_if: String,
    pub ns_addr: Ipv4Addr,
}

/// Fails the calling test unless it runs as root.
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this lab test needs root for {what}; run the suite as root (CI does)"
    );
}

/// Runs `ip` (or another tool) and panics with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (iproute2 is needed): {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetNs {
    pub fn new() -> NetNs {
        require_root("network namespaces");
        sweep_stale();
        let _guard = ALLOCATE.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pal-{pid}-{n}");
        let tag = format!("{}{n}", pid % 100_000);
        let host_if = format!("pv{tag}h");
        let ns_if = format!("pv{tag}n");
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        // A /30 whose addresses no interface on the host holds yet.
        let used =
            String::from_utf8_lossy(&run("ip", &["-o", "-4", "addr", "show"]).stdout).into_owned();
        // 192.0.2.128/25 is this helper's; the lab (`lab.rs`) uses 198.51.100.0/24 and
        // 192.0.2.0/25, so the two never route over each other.
        let start = (pid as usize + n as usize * 7) % 32;
        let block = (0..32)
            .map(|i| 32 + (start + i) % 32)
            .find(|b| {
                let net = format!("192.0.2.{}/", b * 4 + 1);
                let peer = format!("192.0.2.{}/", b * 4 + 2);
                !used.contains(&net) && !used.contains(&peer)
            })
            .expect("a free /30 in 192.0.2.128/25");
        let host_addr = Ipv4Addr::new(192, 0, 2, (block * 4 + 1) as u8);
        let ns_addr = Ipv4Addr::new(192, 0, 2, (block * 4 + 2) as u8);
        run("ip", &["netns", "add", &name]);
        let ns = NetNs {
            name,
            host_if,
            host_addr,
            ns_if,
            ns_addr,
        };
        // From here on, Drop cleans up whatever was made.
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
            ],
        );
        run("ip", &["link", "set", &ns.ns_if, "netns", &ns.name]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", ns.host_addr),
                "dev",
                &ns.host_if,
            ],
        );
        run("ip", &["link", "set", &ns.host_if, "up"]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.ns_addr),
            "dev",
            &ns.ns_if,
        ]);
        ns.exec_ok(&["ip", "link", "set", &ns.ns_if, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Runs a command inside the namespace and asserts it succeeds.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Takes the host's end of the link down (nothing passes either way) or up again.
    pub fn set_link(&self, up: bool) {
        run(
            "ip",
            &["link", "set", &self.host_if, if up { "up" } else { "down" }],
        );
    }

    /// Limits what leaves the namespace to `rate` (a tc rate such as `400kbit`).
    pub fn throttle_out(&self, rate: &str) {
        self.exec_ok(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.ns_if,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "10kb",
            "latency",
            "1s",
        ]);
    }

    pub fn unthrottle(&self) {
        self.exec_ok(&["tc", "qdisc", "del", "dev", &self.ns_if, "root"]);
    }

    /// The namespace's file under /run/netns, for `setns`.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }
}

impl Default for NetNs {
    fn default() -> NetNs {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting either end removes the pair; deleting the namespace removes its end.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes namespaces (and so their links) left by test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("pal-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
