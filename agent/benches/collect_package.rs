//! Investigation package: collection time and package size on this host, side by side with
//! the classic way of collecting the same areas with standard tools from a shell script
//! (ps, /proc, ip, nft, find, sha256sum, tail, tar czf).
//!
//! `cargo bench --workspace --bench collect_package` (as root, to read everything).
//! Environment: `PALISADE_BENCH_N` (runs of each side, default 3).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use palisade_agent::host::linux::LinuxHost;
use palisade_agent::host::{CollectLimits, Host};
use palisade_agent::package::{self, Origin};
use palisade_common::ActionId;

const SHELL_COLLECTION: &str = r#"
set +e
d="$1"
cd "$d" || exit 1
uname -a > uname.txt; cat /etc/os-release > os-release; cat /proc/meminfo > meminfo; cat /proc/cpuinfo > cpuinfo
df -P > df.txt; cat /proc/self/mounts > mounts
ps -eo pid,ppid,user,lstart,args > ps.txt 2>/dev/null
for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | sort -u | xargs -r sha256sum > exe-sha256.txt 2>/dev/null
ls -l /proc/[0-9]*/fd > open-files.txt 2>/dev/null
cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 > sockets.txt
ss -tunap > ss.txt 2>/dev/null
ip addr > ip-addr.txt 2>/dev/null; ip route > ip-route.txt 2>/dev/null; ip neigh > ip-neigh.txt 2>/dev/null
cp /etc/resolv.conf /etc/hosts /etc/environment . 2>/dev/null
nft list ruleset > nft.txt 2>/dev/null
cp /etc/passwd /etc/group . ; mkdir sudoers; cp -r /etc/sudoers /etc/sudoers.d sudoers/ 2>/dev/null
last -f /var/log/wtmp > last.txt 2>/dev/null; who > who.txt 2>/dev/null
ls -l /etc/systemd/system/*.wants > systemd-wants.txt 2>/dev/null
mkdir cron; cp -r /etc/crontab /etc/cron.* /var/spool/cron cron/ 2>/dev/null
cp /etc/rc.local /etc/ld.so.preload . 2>/dev/null; cp -r /etc/profile /etc/profile.d . 2>/dev/null
cat /proc/modules > modules.txt 2>/dev/null
dpkg -l > dpkg.txt 2>/dev/null || rpm -qa > rpm.txt 2>/dev/null
find / \( -fstype proc -o -fstype sysfs -o -fstype devtmpfs -o -fstype devpts -o -fstype cgroup -o -fstype cgroup2 -o -fstype nfs -o -fstype nfs4 -o -fstype cifs \) -prune -o -type f -perm /6000 -exec sha256sum {} + > suid-sgid.txt 2>/dev/null
find /tmp /var/tmp /dev/shm -maxdepth 6 -type f -size -64M -exec sha256sum {} + > tmp-sha256.txt 2>/dev/null
for f in /var/log/syslog /var/log/messages /var/log/auth.log /var/log/secure /var/log/kern.log; do
  [ -f "$f" ] && tail -c 4194304 "$f" > "log-$(basename "$f")"
done
exit 0
"#;

fn main() {
    let n: usize = std::env::var("PALISADE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let host = LinuxHost::default();
    let limits = CollectLimits::default();
    let spool = tempfile::tempdir().expect("temp dir");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut last = None;
    for i in 0..n {
        let started = Instant::now();
        let collected = host.collect_package(&limits);
        let origin = Origin {
            action: ActionId(i as u64 + 1),
            hostname: "bench",
            agent_version: env!("CARGO_PKG_VERSION"),
            created_unix: 0,
        };
        let built = package::build(spool.path(), &origin, &collected).expect("build");
        ours.push((started.elapsed(), built.size));
        last = Some(collected);

        let dir = tempfile::tempdir().expect("temp dir");
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let archive = dir.path().join("out.tar.gz");
        let started = Instant::now();
        let status = Command::new("bash")
            .arg("-c")
            .arg(SHELL_COLLECTION)
            .arg("bench")
            .arg(&out_dir)
            .status()
            .expect("bash");
        assert!(status.success(), "shell collection failed");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&out_dir)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar failed");
        theirs.push((started.elapsed(), size(&archive)));
    }
    println!("investigation package on this host, {n} runs each (median)\n");
    println!("{:<44} {:>10} {:>14}", "", "time", "package");
    for (name, runs) in [
        ("palisade-agent collect_package", &mut ours),
        ("shell script (ps, find, sha256sum, tar czf)", &mut theirs),
    ] {
        runs.sort();
        let (t, s) = runs[runs.len() / 2];
        println!(
            "{name:<44} {:>8.2} s {:>10.1} KiB",
            t.as_secs_f64(),
            s as f64 / 1024.0
        );
    }
    println!("\nper collector (last run):");
    for c in last.unwrap_or_default() {
        println!(
            "  {:<16} {:<12} {:>7} ms {:>10} bytes  {}",
            c.collector,
            format!("{:?}", c.status),
            c.duration_ms,
            c.files.iter().map(|f| f.bytes.len()).sum::<usize>(),
            c.error.as_deref().unwrap_or("")
        );
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
