//! What the code-execution restriction adds to every exec: spawns a trusted binary (a
//! root-owned copy of `/bin/true` under a system path on a marked tmpfs) 10,000 times without
//! and 10,000 times with the restriction, interleaved in blocks, in one run, and prints p50 /
//! p99 of each and the difference.
//!
//! Needs root. It marks nothing but a tmpfs it mounts itself inside its own private mount
//! namespace.
//!
//! ```text
//! cargo bench --workspace --bench exec_restrict [-- --execs 10000]
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use palisade_agent::host::linux::LinuxHost;
use palisade_agent::host::linux::exec::ExecConfig;
use palisade_agent::host::{ExecPolicy, Host};

const BLOCKS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let execs: usize = args
        .iter()
        .position(|a| a == "--execs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the exec restriction benchmark needs root (mount namespace, fanotify)"
    );
    // Our own mount namespace, before any thread exists: nothing we mount or mark is seen
    // outside this process.
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make mounts private");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    mount(
        Some("palisade-bench"),
        &root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .expect("mount the tmpfs");
    let bin = root.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let trusted = bin.join("true");
    std::fs::copy("/bin/true", &trusted).unwrap();
    for p in [root.join("usr"), bin.clone(), trusted.clone()] {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == root.to_str() && l.contains(" - tmpfs ")),
        "the mark target must be our tmpfs"
    );

    let host = LinuxHost::new(ExecConfig {
        mark_roots: vec![root.clone()],
        system_paths: vec![root.join("usr")],
        max_hash: 64 << 20,
    });
    let restrict = ExecPolicy {
        restrict: true,
        ..Default::default()
    };
    let release = ExecPolicy::default();

    let per_block = execs.div_ceil(BLOCKS);
    let mut plain = Vec::with_capacity(execs);
    let mut restricted = Vec::with_capacity(execs);
    spawn_n(&trusted, 200, &mut Vec::new()); // warm up
    let (mut answered, mut denied) = (0, 0);
    for _ in 0..BLOCKS {
        host.set_exec_policy(&release).unwrap();
        spawn_n(&trusted, per_block, &mut plain);
        let status = host.set_exec_policy(&restrict).unwrap();
        assert!(status.restricted, "not restricted: {status:?}");
        spawn_n(&trusted, per_block, &mut restricted);
        let status = host.exec_status();
        answered += status.answered;
        denied += status.denied;
    }
    host.set_exec_policy(&release).unwrap();
    assert_eq!(denied, 0, "the trusted binary was denied");
    assert_eq!(
        answered as usize,
        restricted.len(),
        "the listener did not answer every restricted exec: the mark is not in place"
    );

    let (p50a, p99a) = percentiles(&mut plain);
    let (p50b, p99b) = percentiles(&mut restricted);
    println!(
        "exec of a trusted binary on the marked tmpfs, {} + {} spawns (fork+exec+wait), {} blocks interleaved",
        plain.len(),
        restricted.len(),
        BLOCKS
    );
    println!("{:<24} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    println!("{:<24} {:>10.1} {:>10.1}", "unrestricted", p50a, p99a);
    println!(
        "{:<24} {:>10.1} {:>10.1}",
        "restricted (fanotify)", p50b, p99b
    );
    println!(
        "{:<24} {:>10.1} {:>10.1}",
        "added per exec",
        p50b - p50a,
        p99b - p99a
    );
    println!("exec events answered by the listener: {answered}");
}

fn spawn_n(path: &Path, n: usize, out: &mut Vec<Duration>) {
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("spawn the trusted binary");
        out.push(t.elapsed());
        assert!(s.success());
    }
}

fn percentiles(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}
