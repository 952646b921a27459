//! The real agent's idle footprint: a release agent connected to a release controller on
//! loopback, doing nothing for a while; its RSS (from /proc/PID/status) and CPU time (utime +
//! stime from /proc/PID/stat) sampled every second. Side by side in the same run, the same
//! figures for the controller holding that one agent. Twice: without scan rules, then with the
//! scan benchmark's rule set (120 YARA rules, 10,000 hash-list lines) uploaded and enforced.
//!
//! `cargo build --release --workspace --bins --benches && cargo bench --workspace --bench agent_idle`
//!
//! Environment: `PALISADE_IDLE_SECS` (default 600, for each of the two phases).

use std::time::{Duration, Instant};

use palisade_tests::bench::knob;
use palisade_tests::scan_rules::{HASHES, Rng, absent_hash_lines, signatures, yara_rules};
use palisade_tests::{Controller, eventually};

/// (RSS in KiB, CPU time in clock ticks) of a process.
fn sample(pid: i32) -> (u64, u64) {
    let rss = palisade_tests::proc_status_kib(pid, "VmRSS").expect("process alive");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

pub fn main() {
    let secs = knob("PALISADE_IDLE_SECS", 600, 5).max(5) as u64;
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    eventually(Duration::from_secs(30), "the agent online", || {
        ctl.device_online(&device).then_some(())
    });
    let pid = |p: &Option<palisade_tests::Proc>| p.as_ref().expect("running").pid();
    let procs = [("agent", pid(&agent.proc)), ("controller", pid(&ctl.proc))];
    println!("agent_idle: an idle agent connected to a controller on loopback, {secs} s each");
    idle("no scan rules", &procs, secs);

    let dir = tempfile::tempdir().unwrap();
    let (yar, hdb) = (dir.path().join("bench.yar"), dir.path().join("bench.hdb"));
    std::fs::write(&yar, yara_rules(&signatures())).unwrap();
    std::fs::write(&hdb, absent_hash_lines(&mut Rng(0x1d1e), 0..HASHES)).unwrap();
    let v = ctl.json(&[
        "rules",
        "upload",
        yar.to_str().unwrap(),
        hdb.to_str().unwrap(),
    ]);
    let version = v["rule_set"]["version"].clone();
    eventually(Duration::from_secs(60), "the rule set enforced", || {
        let d = ctl.json(&["devices", "show", &device]);
        (d["device"]["rules_version"] == version).then_some(())
    });
    idle(
        "the scan benchmark's rule set enforced (120 YARA rules, 10,000 hashes)",
        &procs,
        secs,
    );
    assert!(ctl.device_online(&device), "the agent stayed connected");
}

/// Samples each process every second for `secs` after 15 s of settling, and prints its RSS
/// at the end, its peak RSS and its CPU share.
fn idle(phase: &str, procs: &[(&str, i32)], secs: u64) {
    // Settle: the first session's work (vault listing, desired state, rules) is not idling,
    // nor is the agent handing back what that work touched, 10 s after it (`footprint`).
    std::thread::sleep(Duration::from_secs(15));
    let tick = 100.0; // USER_HZ on Linux
    let start: Vec<(u64, u64)> = procs.iter().map(|(_, p)| sample(*p)).collect();
    let mut peak: Vec<u64> = start.iter().map(|s| s.0).collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, (_, pid)) in procs.iter().enumerate() {
            peak[i] = peak[i].max(sample(*pid).0);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    println!("\n{phase}, over {wall:.0} s:");
    println!(
        "{:<12} {:>12} {:>12} {:>14}",
        "process", "RSS end MiB", "RSS peak MiB", "CPU % of core"
    );
    for (i, (name, pid)) in procs.iter().enumerate() {
        let (rss, ticks) = sample(*pid);
        let cpu = (ticks - start[i].1) as f64 / tick / wall * 100.0;
        println!(
            "{name:<12} {:>12.1} {:>12.1} {:>14.3}",
            rss as f64 / 1024.0,
            peak[i] as f64 / 1024.0,
            cpu
        );
    }
}
