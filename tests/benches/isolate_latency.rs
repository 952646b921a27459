//! Approve → rules enforced, for isolate and release, in the lab: a controller on the lab
//! bridge, one agent in its own network namespace, N isolate/release cycles approved one at a
//! time. "Enforced" is the agent's `enforced_at_ms` (the moment `nft -f` returned and our table
//! was read back), against the controller's `decided_at`; same machine, same clock. Side by
//! side in the same run: `nft -f` of the same ruleset by hand in the same namespace, the floor
//! no agent can beat.
//!
//! Needs root (network namespaces) and the release binaries:
//!
//! `cargo build --release --workspace --bins --benches && cargo bench --workspace --bench isolate_latency`
//!
//! Environment: `PALISADE_BENCH_N` (cycles, default 200).

use std::time::{Duration, Instant};

use palisade_tests::Controller;
use palisade_tests::bench::{Api, knob, stats};
use palisade_tests::lab::Lab;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One action's times (unix ms): decided_at, enforced_at_ms, finished_at, verified_in_ms,
/// acknowledged_at.
type Times = (i64, i64, i64, Option<i64>, i64);

/// One action approved and waited for.
fn one(api: &Api, device: &str, params: Value) -> Times {
    let created = api.post(
        "/api/v1/actions",
        &json!({"devices": [device], "params": params, "comment": "bench"}),
        201,
    );
    let id = created["actions"][0]["id"].as_u64().expect("action id");
    api.post(
        "/api/v1/actions/approve",
        &json!({"ids": [id], "comment": "ok"}),
        200,
    );
    let started = Instant::now();
    let action = loop {
        let v = api.get(&format!("/api/v1/actions/{id}"));
        match v["action"]["status"].as_str().unwrap_or_default() {
            "succeeded" => break v["action"].clone(),
            "approved" | "delivered" | "acknowledged" | "in_progress" => {}
            other => panic!("action {id} ended {other}: {v}"),
        }
        assert!(started.elapsed() < TIMEOUT, "action {id} too slow: {v}");
        std::thread::sleep(Duration::from_millis(1));
    };
    let at = |k: &str| {
        action[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{k}: {action}"))
    };
    (
        at("decided_at"),
        action["result_detail"]["enforced_at_ms"]
            .as_i64()
            .unwrap_or_else(|| panic!("no enforced_at_ms: {action}")),
        at("finished_at"),
        action["result_detail"]["verified_in_ms"].as_i64(),
        at("acknowledged_at"),
    )
}

pub fn main() {
    let n = knob("PALISADE_BENCH_N", 200, 3).max(1);
    let lab = Lab::up(&["a"]).expect("lab up (needs root)");
    let ctl = Controller::start_on(&format!("{}:0", lab.gateway_v4), &[]);
    let mut agent = ctl.enroll_agent();
    agent.start_in(lab.host("a"));
    let device = agent.device_id();
    let api = Api::new(&ctl);
    palisade_tests::eventually(TIMEOUT, "the agent online", || {
        (api.get(&format!("/api/v1/devices/{device}"))["device"]["online"] == true).then_some(())
    });
    println!("isolate_latency: {n} isolate/release cycles, each approved one at a time");
    let isolate = json!({"kind": "isolate"});
    let release = json!({"kind": "release_isolation"});
    for _ in 0..5 {
        one(&api, &device, isolate.clone());
        one(&api, &device, release.clone());
    }
    let mut iso = Vec::new();
    let mut rel = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        iso.push(one(&api, &device, isolate.clone()));
        rel.push(one(&api, &device, release.clone()));
        if (i + 1) % 50 == 0 {
            eprintln!("  {}/{n} cycles", i + 1);
        }
    }
    let elapsed = t0.elapsed();

    // The floor: the same kind of ruleset applied by hand with `nft -f` in the same namespace.
    let script = palisade_agent::host::net_plan::script(&palisade_agent::host::net_plan::NetPlan {
        controller: vec![format!("{}:7443", lab.gateway_v4).parse().unwrap()],
        isolation: Some(vec![]),
        contained: vec![],
        contained_macs: vec![],
    });
    let file = ctl.dir.path().join("bench.nft");
    std::fs::write(&file, script).unwrap();
    let empty = ctl.dir.path().join("empty.nft");
    std::fs::write(&empty, "table inet palisade\ndelete table inet palisade\n").unwrap();
    // Spawned from a thread inside the namespace, as the agent spawns it: no `ip netns exec`.
    let host = lab.host("a").clone();
    let nft = move |f: &std::path::Path| {
        let f = f.to_owned();
        palisade_tests::traffic::in_netns(&host, move || {
            let t = Instant::now();
            let ok = std::process::Command::new("nft")
                .arg("-f")
                .arg(&f)
                .status()
                .unwrap()
                .success();
            assert!(ok, "nft -f failed");
            t.elapsed().as_secs_f64() * 1e3
        })
    };
    let (mut floor, mut floor_delete) = (Vec::new(), Vec::new());
    for _ in 0..n {
        floor.push(nft(&file));
        floor_delete.push(nft(&empty));
    }

    let ms =
        |v: &[Times], f: fn(&Times) -> i64| v.iter().map(|s| f(s) as f64).collect::<Vec<f64>>();
    let rows = [
        (
            "isolate: approved -> rules enforced",
            stats(ms(&iso, |s| s.1 - s.0)),
        ),
        (
            "  approved -> agent's receipt",
            stats(ms(&iso, |s| s.4 - s.0)),
        ),
        (
            "  receipt -> rules enforced",
            stats(ms(&iso, |s| s.1 - s.4)),
        ),
        (
            "isolate: approved -> succeeded (verified)",
            stats(ms(&iso, |s| s.2 - s.0)),
        ),
        (
            "isolate: live-link verification",
            stats(ms(&iso, |s| s.3.unwrap_or(0))),
        ),
        (
            "release: approved -> rules removed",
            stats(ms(&rel, |s| s.1 - s.0)),
        ),
        (
            "release: approved -> succeeded",
            stats(ms(&rel, |s| s.2 - s.0)),
        ),
        ("floor: `nft -f` of the same ruleset by hand", stats(floor)),
        ("floor: `nft -f` deleting it by hand", stats(floor_delete)),
    ];
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}",
        "latency (ms)", "p50", "p99", "max", "mean"
    );
    for (name, s) in rows {
        println!(
            "{name:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            s.p50, s.p99, s.max, s.mean
        );
    }
    println!(
        "\n{n} cycles in {:.1} s; server and agent times are ms-resolution timestamps (+-1 ms)",
        elapsed.as_secs_f64()
    );
    for (who, log) in [("controller", ctl.log()), ("agent", agent.log())] {
        let noisy = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        println!("{who} log: {noisy} WARN/ERROR lines");
    }
}
