//! Approve → result latency with the real release binaries on loopback: one controller, one
//! enrolled agent, `request_sample` actions of a small file approved one at a time. Each action
//! is approved only after the previous one has succeeded, so the figures are latency, not
//! queueing.
//!
//! The harness runs the binaries next to this executable's directory (`target/release/`), so
//! build them first:
//!
//! `cargo build --release --workspace --bins --benches && cargo bench --workspace --bench approve_latency`
//!
//! Environment: `PALISADE_BENCH_N` (actions, default 1000), `PALISADE_BENCH_SAMPLE_BYTES`
//! (default 4096).

use std::time::{Duration, Instant};

use palisade_tests::bench::{Api, env_usize, knob, stats, unix_ms};
use palisade_tests::{Controller, eventually};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One action's figures, in milliseconds.
struct Sample {
    /// Server hop timestamps (ms resolution): decided, delivered, acknowledged, started, finished.
    hops: [i64; 5],
    /// Approve request sent → approve response received.
    approve_call: Duration,
    /// Approve response received → `succeeded` first seen by polling.
    seen_after_approve: Duration,
    /// Wall clock (unix ms, same machine as the controller) when the approve request was sent
    /// and when its response arrived, to place `decided_at` inside the call.
    approve_sent_ms: i64,
    approve_returned_ms: i64,
    /// Round trips of the status polls (GET /api/v1/actions/N).
    polls: Vec<Duration>,
}

fn hop(action: &Value, name: &str) -> i64 {
    action[name]
        .as_i64()
        .unwrap_or_else(|| panic!("action {} has no {name}: {action}", action["id"]))
}

fn one_action(
    api: &Api,
    device: &str,
    path: &std::path::Path,
    n: usize,
    size: usize,
    poll: Duration,
) -> Sample {
    // A different file each time: the controller stores artifacts by content, and a repeated
    // sample would skip the upload.
    let mut bytes = vec![0u8; size];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let word = (((n as u64) << 32) | i as u64).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    std::fs::write(path, &bytes).expect("write sample file");

    let created = api.post(
        "/api/v1/actions",
        &json!({
            "devices": [device],
            "params": {"kind": "request_sample", "path": path.to_str().expect("utf-8 path")},
            "comment": "bench",
        }),
        201,
    );
    let id = created["actions"][0]["id"]
        .as_u64()
        .expect("created action id");
    assert_eq!(
        created["actions"][0]["status"], "pending_approval",
        "{created}"
    );

    let approve_sent_ms = unix_ms();
    let sent = Instant::now();
    api.post(
        "/api/v1/actions/approve",
        &json!({"ids": [id], "comment": "ok"}),
        200,
    );
    let approved = Instant::now();
    let approve_returned_ms = unix_ms();
    let mut polls = Vec::new();
    let action = loop {
        let asked = Instant::now();
        let v = api.get(&format!("/api/v1/actions/{id}"));
        polls.push(asked.elapsed());
        match v["action"]["status"].as_str().unwrap_or_default() {
            "succeeded" => break v["action"].clone(),
            "approved" | "delivered" | "acknowledged" | "in_progress" => {}
            other => panic!("action {id} ended {other}: {v}"),
        }
        if approved.elapsed() > TIMEOUT {
            panic!("action {id} not succeeded after {TIMEOUT:?}: {v}");
        }
        std::thread::sleep(poll);
    };
    let seen = Instant::now();
    assert_eq!(
        action["artifacts"][0]["size"].as_u64(),
        Some(size as u64),
        "{action}"
    );
    Sample {
        hops: [
            hop(&action, "decided_at"),
            hop(&action, "delivered_at"),
            hop(&action, "acknowledged_at"),
            hop(&action, "started_at"),
            hop(&action, "finished_at"),
        ],
        approve_call: approved - sent,
        seen_after_approve: seen - approved,
        approve_sent_ms,
        approve_returned_ms,
        polls,
    }
}

pub fn main() {
    let n = knob("PALISADE_BENCH_N", 1000, 20).max(1);
    let size = env_usize("PALISADE_BENCH_SAMPLE_BYTES", 4096);
    let poll = Duration::from_micros(env_usize("PALISADE_BENCH_POLL_US", 1000) as u64);

    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let api = Api::new(&ctl);
    eventually(TIMEOUT, "the agent to connect", || {
        (api.get(&format!("/api/v1/devices/{device}"))["device"]["online"] == true).then_some(())
    });
    let path = ctl.dir.path().join("bench-sample.bin");
    println!(
        "approve_latency: {n} request_sample actions of {size} bytes, approved one at a time; lab in {}",
        ctl.dir.path().display()
    );

    // Warm-up: connection pools, page cache, the agent's first upload stream.
    for i in 0..10.min(n) {
        one_action(&api, &device, &path, usize::MAX - i, size, poll);
    }

    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        samples.push(one_action(&api, &device, &path, i, size, poll));
        if (i + 1) % 200 == 0 {
            eprintln!("  {}/{n} done", i + 1);
        }
    }
    let elapsed = started.elapsed();

    let listed = api.get("/api/v1/actions?status=succeeded&limit=10000");
    let warmup = 10.min(n) as u64;
    assert_eq!(
        listed["total"].as_u64(),
        Some(n as u64 + warmup),
        "succeeded actions"
    );

    let span = |a: usize, b: usize| -> Vec<f64> {
        samples
            .iter()
            .map(|s| (s.hops[b] - s.hops[a]) as f64)
            .collect()
    };
    let dur = |f: fn(&Sample) -> Duration| -> Vec<f64> {
        samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect()
    };
    let rows = [
        ("server: decided -> finished", stats(span(0, 4))),
        ("  decided -> delivered", stats(span(0, 1))),
        ("  delivered -> acknowledged", stats(span(1, 2))),
        ("  acknowledged -> finished", stats(span(2, 4))),
        ("    acknowledged -> started", stats(span(2, 3))),
        ("    started -> finished", stats(span(3, 4))),
        (
            "client: approve returned -> succeeded seen",
            stats(dur(|s| s.seen_after_approve)),
        ),
        (
            "client: approve call (HTTP round trip)",
            stats(dur(|s| s.approve_call)),
        ),
        (
            "client: approve sent -> succeeded seen",
            stats(dur(|s| s.approve_call + s.seen_after_approve)),
        ),
        (
            "  approve sent -> decided_at (wall clock)",
            stats(
                samples
                    .iter()
                    .map(|s| (s.hops[0] - s.approve_sent_ms) as f64)
                    .collect(),
            ),
        ),
        (
            "  decided_at -> approve returned (wall)",
            stats(
                samples
                    .iter()
                    .map(|s| (s.approve_returned_ms - s.hops[0]) as f64)
                    .collect(),
            ),
        ),
        (
            "client: one status poll (GET round trip)",
            stats(
                samples
                    .iter()
                    .flat_map(|s| s.polls.iter().map(|d| d.as_secs_f64() * 1e3))
                    .collect(),
            ),
        ),
    ];
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p99", "max", "mean"
    );
    for (name, s) in rows {
        println!(
            "{name:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            s.p50, s.p99, s.max, s.mean
        );
    }
    println!();
    println!(
        "{n} actions in {:.1} s ({:.1} actions/s sequentially, including request and polling)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    // Does latency drift as history grows? First tenth against last tenth of the run.
    let tenth = (n / 10).max(1);
    let (first, last) = (&samples[..tenth], &samples[n - tenth..]);
    let server_p50 = |part: &[Sample]| {
        stats(
            part.iter()
                .map(|s| (s.hops[4] - s.hops[0]) as f64)
                .collect(),
        )
        .p50
    };
    let poll_p50 = |part: &[Sample]| {
        stats(
            part.iter()
                .flat_map(|s| s.polls.iter().map(|d| d.as_secs_f64() * 1e3))
                .collect(),
        )
        .p50
    };
    println!(
        "drift: decided -> finished p50 {:.0} ms in the first {tenth} actions, {:.0} ms in the last {tenth}; \
         status poll p50 {:.2} ms, then {:.2} ms",
        server_p50(first),
        server_p50(last),
        poll_p50(first),
        poll_p50(last)
    );
    let polls: usize = samples.iter().map(|s| s.polls.len()).sum();
    println!(
        "{:.1} status polls per action, {} us sleep between polls",
        polls as f64 / n as f64,
        poll.as_micros()
    );
    println!("server spans come from ms-resolution timestamps (+-1 ms each)");

    // Anything the binaries complained about while we measured.
    for (who, log) in [("controller", ctl.log()), ("agent", agent.log())] {
        let noisy: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        println!(
            "{who} log: {} lines, {} WARN/ERROR",
            log.lines().count(),
            noisy.len()
        );
        for line in noisy.iter().take(5) {
            println!("  {line}");
        }
    }
    drop(agent);
}
