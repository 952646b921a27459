//! The real agent's idle footprint: a release agent connected to a release controller on
//! loopback, doing nothing for a while; its RSS (from /proc/PID/status) and CPU time (utime +
//! stime from /proc/PID/stat) sampled every second. Side by side in the same run, the same
//! figures for the controller holding that one agent.
//!
//! `cargo build --release --workspace --bins && cargo bench -p palisade-tests --bench agent_idle`
//!
//! Environment: `PALISADE_IDLE_SECS` (default 600).

use std::time::{Duration, Instant};

use palisade_tests::Controller;
use palisade_tests::bench::knob;

/// (RSS in KiB, CPU time in clock ticks) of a process.
fn sample(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

fn main() {
    let secs = knob("PALISADE_IDLE_SECS", 600, 5).max(5) as u64;
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    palisade_tests::eventually(Duration::from_secs(30), "the agent online", || {
        ctl.device_online(&device).then_some(())
    });
    // Settle: the first session's work (vault listing, desired state) is not idling.
    std::thread::sleep(Duration::from_secs(5));
    let tick = 100.0; // USER_HZ on Linux
    let pid = |p: &Option<palisade_tests::Proc>| p.as_ref().expect("running").pid();
    let procs = [("agent", pid(&agent.proc)), ("controller", pid(&ctl.proc))];
    let start: Vec<(u64, u64)> = procs.iter().map(|(_, p)| sample(*p)).collect();
    let mut peak: Vec<u64> = start.iter().map(|s| s.0).collect();
    let t0 = Instant::now();
    println!("agent_idle: {secs} s of an idle agent connected to a controller on loopback");
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, (_, pid)) in procs.iter().enumerate() {
            peak[i] = peak[i].max(sample(*pid).0);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "\n{:<12} {:>12} {:>12} {:>14}",
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
    println!("over {wall:.0} s");
    assert!(ctl.device_online(&device), "the agent stayed connected");
}
