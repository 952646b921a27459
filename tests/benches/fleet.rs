//! Fleet scale: N simulated agents (real mutual TLS, real protocol) against one release
//! controller on loopback. Scenarios: connect storm, idle, one fleet-wide action, reconnect
//! storm after a controller kill -9, and one device offboarded.
//!
//! `cargo build --release --workspace --bins --benches && PALISADE_FLEET_N=20000 cargo bench --workspace --bench fleet`
//! (`PALISADE_FLEET_IDLE_SECS`, default 60, sets the idle window;
//! `PALISADE_FLEET_MAX_HANDSHAKES` the controller's `--max-handshakes`). Simulated agents share a
//! UDP socket per 500 ([`fleet::AGENTS_PER_ENDPOINT`]), so the default open-file limit does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use palisade_tests::Controller;
use palisade_tests::bench::{knob, smoke};
use palisade_tests::fleet::{self, Stats};
use serde_json::{Value, json};

/// (CPU seconds used so far, RSS in MiB) of a process.
fn usage(pid: i32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let rss_kib = palisade_tests::proc_status_kib(pid, "VmRSS").unwrap_or(0);
    (cpu / ticks, rss_kib as f64 / 1024.0)
}

/// The CPU the controller and this process (the simulator) used since `at` (their CPU
/// seconds then), as shares of one core over `secs`: which side a scenario waited on.
fn cpu_since(controller: i32, at: (f64, f64), secs: f64) -> String {
    let now = (usage(controller).0, usage(std::process::id() as i32).0);
    format!(
        "CPU: controller {:.0} %, simulator {:.0} % of one core",
        (now.0 - at.0) / secs * 100.0,
        (now.1 - at.1) / secs * 100.0
    )
}

/// Datagrams the kernel dropped for a full socket receive buffer, machine-wide
/// (`/proc/net/snmp`, `Udp: RcvbufErrors`): every one is a packet QUIC must detect as lost and
/// send again, so a scenario's count says whether loss, not work, paced it.
fn udp_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The controller's JSON API, as its admin.
struct Api {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl Api {
    fn new(ctl: &Controller) -> Api {
        Api {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(600)))
                .build()
                .into(),
            url: ctl.url(),
            token: ctl.admin_token.clone(),
        }
    }

    /// `GET path`; `None` while the controller does not answer (it restarts in a scenario).
    fn try_get(&self, path: &str) -> Option<Value> {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .ok()?;
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .ok()
    }

    fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path}: no answer"))
    }

    /// `POST path` with a JSON body; the answer's body is left unread.
    fn post(&self, path: &str, body: Value) -> ureq::http::Response<ureq::Body> {
        self.agent
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST path` with a JSON body, and its JSON answer.
    fn post_json(&self, path: &str, body: Value) -> Value {
        self.post(path, body)
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Agents with a live session now.
    fn online(&self) -> usize {
        self.try_get("/api/v1/status")
            .and_then(|v| v["connected"].as_u64())
            .unwrap_or(0) as usize
    }
}

/// In a smoke run, a scenario that did not complete fails the run.
fn complete(scenario: &str, done: usize, n: usize) {
    assert!(
        !smoke() || done == n,
        "{scenario}: only {done} of {n} within the time limit"
    );
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Starts from a cold page cache, so that a run does not pay for the files the previous one
/// deleted. On ext4 without a journal (this machine's root filesystem) creating a file skips
/// every inode freed in the last minutes whose block is still cached: after a run deleted its
/// data directory (20,000 artifacts), creating 20,000 files took 15.4 s instead of 0.7 s, and
/// the next run's uploads paid it (a seventh of the async workers' time in a profile).
fn cold_cache() {
    nix::unistd::sync();
    match std::fs::write("/proc/sys/vm/drop_caches", "3") {
        Ok(()) => println!("page cache dropped"),
        Err(e) => println!(
            "page cache not dropped ({e}): files deleted in the last minutes may slow the uploads"
        ),
    }
}

pub fn main() {
    // The simulated agents' failed attempts are errors too: as in the controller (its
    // `main`), they must not each capture a backtrace when RUST_BACKTRACE is set.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet: no thread has started that could read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    if !smoke() {
        cold_cache();
    }
    let n = knob("PALISADE_FLEET_N", 1000, 40);
    let idle_secs = knob("PALISADE_FLEET_IDLE_SECS", 60, 1) as u64;
    // How long each scenario may take. A smoke run (under `cargo test`) must complete every
    // scenario in that time; a measurement prints how far it got.
    let limit = Duration::from_secs(if smoke() { 60 } else { 600 });
    // Every simulated agent comes from 127.0.0.1: lift the per-source limit on connections
    // not yet verified (it guards against one flooding address; here it would measure the
    // simulator's retries, not the controller).
    // The controller's own default unless the knob says otherwise.
    let max_handshakes = std::env::var("PALISADE_FLEET_MAX_HANDSHAKES").ok();
    let mut args = vec!["--heartbeat", "30s", "--max-pending-per-source", "1000000"];
    if let Some(m) = &max_handshakes {
        args.extend(["--max-handshakes", m.as_str()]);
    }
    let mut ctl = Controller::start_with(&args);
    let pid = ctl.proc.as_ref().unwrap().pid();
    let api = Api::new(&ctl);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fleet benchmark: {n} simulated agents, controller pid {pid}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let enroll_token = ctl.enroll_token(n as u32, "2h");
    let t = Instant::now();
    let ids = rt
        .block_on(fleet::enroll_many(
            &ctl.quic.to_string(),
            &ctl.ca_sha256,
            &enroll_token,
            n,
            64,
        ))
        .expect("enrolment");
    println!(
        "enrolment: {n} agents in {:.1} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // Connect storm.
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let cpu_at_storm = (usage(pid).0, usage(std::process::id() as i32).0);
    let drops_at_storm = udp_drops();
    let endpoints = {
        let _guard = rt.enter();
        fleet::endpoints(ctl.quic, n).expect("client endpoints")
    };
    for (i, id) in ids.into_iter().enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        rt.spawn(fleet::run(id, endpoint, i, stats.clone(), stop.clone()));
    }
    while stats.connected.load(Ordering::Relaxed) < n as u64 && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    complete(
        "connect storm",
        stats.connected.load(Ordering::Relaxed) as usize,
        n,
    );
    let storm = t.elapsed().as_secs_f64();
    println!(
        "connect storm: {}/{n} connected in {storm:.1} s ({:.0} handshakes/s), {} failed attempts ({} timed out); {}; {} datagrams dropped",
        stats.connected.load(Ordering::Relaxed),
        n as f64 / storm,
        stats.errors.load(Ordering::Relaxed),
        stats.timeouts.load(Ordering::Relaxed),
        cpu_since(pid, cpu_at_storm, storm),
        udp_drops() - drops_at_storm
    );

    // Idle.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, _) = usage(pid);
    let drops_at_idle = udp_drops();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let (cpu1, rss) = usage(pid);
    println!(
        "idle {idle_secs} s: controller {:.1} % of one core, RSS {rss:.0} MiB; {} datagrams dropped",
        (cpu1 - cpu0) / idle_secs as f64 * 100.0,
        udp_drops() - drops_at_idle
    );

    // One fleet-wide action: a parent with a child per device, approved once.
    let created = api.post_json(
        "/api/v1/actions",
        json!({"fleet": true, "params": {"kind": "request_sample", "path": "/etc/hostname"}, "comment": "fleet-wide"}),
    );
    let parent = created["actions"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fleet-wide action: {created}"));
    let children = created["actions"].as_array().unwrap().len() - 1;
    assert_eq!(children, n, "a child per device");
    let results_before = stats.results.load(Ordering::Relaxed);
    let committed_before = stats.committed.load(Ordering::Relaxed);
    let cpu_at_action = (usage(pid).0, usage(std::process::id() as i32).0);
    let drops_at_action = udp_drops();
    let t = Instant::now();
    let approved = api.post(
        "/api/v1/actions/approve",
        json!({"ids": [parent], "comment": "go"}),
    );
    assert!(approved.status().is_success());
    let approve_call = t.elapsed().as_secs_f64();
    // Every result is in once the controller has acknowledged each: it does so after the
    // result's transaction, which also settles the parent. Watching the simulator's count
    // instead of polling the parent's detail keeps the benchmark's own reads out of the figure.
    while stats.committed.load(Ordering::Relaxed) - committed_before < n as u64
        && t.elapsed() < limit
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = t.elapsed().as_secs_f64();
    let action_cpu = cpu_since(pid, cpu_at_action, total);
    let action_drops = udp_drops() - drops_at_action;
    let mut settled = Value::Null;
    while t.elapsed() < limit {
        let v = api.get(&format!("/api/v1/actions/{parent}"));
        if v["action"]["finished_at"].is_i64() {
            settled = v;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = settled["action"]["children"]["succeeded"]
        .as_u64()
        .unwrap_or(0);
    // Each hop's time after the approval, from the children's records: where the time went.
    let hops = ["delivered_at", "acknowledged_at", "finished_at"];
    let mut after: Vec<Vec<i64>> = vec![Vec::new(); hops.len()];
    let mut offset = 0;
    while offset < n {
        let v = api.get(&format!(
            "/api/v1/actions?parent={parent}&limit=10000&offset={offset}"
        ));
        let page = v["actions"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            break;
        }
        offset += page.len();
        for a in &page {
            for (hop, times) in hops.iter().zip(after.iter_mut()) {
                if let (Some(at), Some(decided)) = (a[hop].as_i64(), a["decided_at"].as_i64()) {
                    times.push(at - decided);
                }
            }
        }
    }
    complete("fleet-wide action", done as usize, n);
    let timeline: Vec<String> = hops
        .iter()
        .zip(after.iter_mut())
        .map(|(hop, times)| {
            times.sort();
            format!(
                "{} p50 {} ms, p99 {} ms, max {} ms",
                hop.trim_end_matches("_at"),
                percentile(times, 0.5),
                percentile(times, 0.99),
                times.last().copied().unwrap_or(0)
            )
        })
        .collect();
    println!(
        "fleet-wide action: parent settled with {done}/{n} children succeeded in {total:.1} s (approve call {approve_call:.2} s); after approval: {}; {} results sent; {action_cpu}; {action_drops} datagrams dropped",
        timeline.join("; "),
        stats.results.load(Ordering::Relaxed) - results_before
    );

    // Reconnect storm after a controller kill -9.
    let sessions_before = stats.sessions.load(Ordering::Relaxed);
    let sim_cpu_at_reconnect = usage(std::process::id() as i32).0;
    let drops_at_reconnect = udp_drops();
    let errors_before = stats.errors.load(Ordering::Relaxed);
    let timeouts_before = stats.timeouts.load(Ordering::Relaxed);
    ctl.kill9();
    let t = Instant::now();
    ctl.restart();
    // The simulator counts new sessions; the controller's device list (every device, a heavy
    // call at this scale) only confirms once they all seem back. Every 10 s it notes how many
    // are back: a storm paced by the controller's work climbs evenly, one paced by the agents'
    // backoff flattens into a tail.
    let mut progress = Vec::new();
    let mut window = (
        0.0,
        sim_cpu_at_reconnect,
        stats.errors.load(Ordering::Relaxed),
        stats.timeouts.load(Ordering::Relaxed),
    );
    while t.elapsed() < limit {
        let back = stats.sessions.load(Ordering::Relaxed) - sessions_before;
        if t.elapsed() >= Duration::from_secs(10 * (progress.len() as u64 + 1)) {
            let now = (
                usage(ctl.proc.as_ref().unwrap().pid()).0,
                usage(std::process::id() as i32).0,
                stats.errors.load(Ordering::Relaxed),
                stats.timeouts.load(Ordering::Relaxed),
            );
            progress.push(format!(
                "{}s {back} ({} failed, {} timed out; CPU {:.0} % + {:.0} %)",
                10 * (progress.len() + 1),
                now.2 - window.2,
                now.3 - window.3,
                (now.0 - window.0) * 10.0,
                (now.1 - window.1) * 10.0
            ));
            window = now;
        }
        if back >= n as u64 && api.online() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reconnect = t.elapsed().as_secs_f64();
    // The restarted controller's CPU is all since its start, within the storm.
    let restarted = ctl.proc.as_ref().unwrap().pid();
    let (ctl_cpu, sim_cpu) = (
        usage(restarted).0,
        usage(std::process::id() as i32).0 - sim_cpu_at_reconnect,
    );
    let drops = udp_drops() - drops_at_reconnect;
    let back = api.online();
    complete("reconnect storm", back, n);
    println!(
        "reconnect storm: {back} of {n} back online {reconnect:.1} s after kill -9 (restart included); {} new sessions, {} failed attempts ({} timed out); back by {}; CPU: controller {:.0} %, simulator {:.0} % of one core; {drops} datagrams dropped",
        stats.sessions.load(Ordering::Relaxed) - sessions_before,
        stats.errors.load(Ordering::Relaxed) - errors_before,
        stats.timeouts.load(Ordering::Relaxed) - timeouts_before,
        progress.join(", "),
        ctl_cpu / reconnect * 100.0,
        sim_cpu / reconnect * 100.0
    );

    // One device offboarded, as an admin decommissions it: the simulated agent answers like a
    // real one and the controller revokes it.
    let device = api.get("/api/v1/devices")["devices"][0]["id"]
        .as_str()
        .expect("a device")
        .to_owned();
    let created = api.post_json(
        "/api/v1/actions",
        json!({"devices": [device], "params": {"kind": "offboard"}, "comment": "decommissioned"}),
    );
    let id = created["actions"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offboard action: {created}"));
    let approved = api.post(
        "/api/v1/actions/approve",
        json!({"ids": [id], "comment": "go"}),
    );
    assert!(approved.status().is_success());
    let t = Instant::now();
    let status = loop {
        let v = api.get(&format!("/api/v1/devices/{device}"));
        let status = v["device"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == "offboarded" || t.elapsed() > Duration::from_secs(30) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status, "offboarded",
        "device {device} after its offboard action"
    );
    println!(
        "offboard one device: offboarded {:.2} s after approval",
        t.elapsed().as_secs_f64()
    );
    let _ = stop_tx.send(true);
}
