//! Chaos, lab tier (root: network namespaces, nftables, tc): a stream of mixed actions across
//! several agents while a driver kills -9 the controller and agents at random moments, cuts
//! and restores links, adds packet loss and delay with `tc netem`, and restarts processes.
//! Afterwards every action is terminal, none is lost or duplicated, none took effect twice
//! on the hosts (samples, vault entries, nftables tables), observed state equals desired
//! state, and the audit chain verifies.
//!
//! Short by default (CI); `PALISADE_CHAOS_ACTIONS=1000 PALISADE_CHAOS_AGENTS=5` for the long
//! form, `PALISADE_CHAOS_SEED=<seed>` to replay a run's choices (the seed is printed).
//! Exec restriction is left out: its fanotify marks may only go on a tmpfs in a private mount
//! namespace (see `exec_lab.rs`), and these agents share the host's mount namespace.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_tests::fuzz::Rng;
use palisade_tests::lab::{Lab, LabHost};
use palisade_tests::traffic::nft_table;
use palisade_tests::{Agent, Controller, eventually, sha256_hex, sqlite3};
use serde_json::{Value, json};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

/// What the driver undoes later.
#[derive(Debug)]
enum Restore {
    LinkUp(usize),
    NetemOff(usize),
    AgentStart(usize),
}

/// One requested action, as the test knows it.
#[derive(Debug, Clone)]
struct Requested {
    external_id: String,
    agent: usize,
    kind: &'static str,
    /// The file a sample or a quarantine names.
    path: Option<PathBuf>,
    /// Its bytes' SHA-256.
    sha256: Option<String>,
}

/// Loss and delay on a host's link: `tc netem` when the kernel has it; otherwise loss by an
/// nftables table of the test's own in the host's namespace (`numgen random`) and delay by a
/// `tbf` rate limit that queues (this machine's kernel has no netem).
fn degrade(host: &LabHost, netem_works: bool, on: Option<(u64, u64)>) {
    if netem_works {
        let out = tc_netem(host, on);
        assert!(
            out.status.success() || on.is_none(),
            "tc netem: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    match on {
        Some((loss, _)) => {
            let script = format!(
                "table inet chaos {{\n chain i {{ type filter hook input priority -10; numgen random mod 100 < {loss} drop; }}\n chain o {{ type filter hook output priority -10; numgen random mod 100 < {loss} drop; }}\n}}\n"
            );
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &host.netns, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("run nft");
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "nft chaos table");
            host.throttle_out("2mbit").unwrap();
        }
        None => {
            let _ = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &host.netns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "chaos",
                ])
                .output();
            let _ = host.unthrottle();
        }
    }
}

fn tc_netem(host: &LabHost, on: Option<(u64, u64)>) -> std::process::Output {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &host.netns, "tc", "qdisc"]);
    match on {
        Some((loss, delay)) => cmd
            .args(["replace", "dev", "eth0", "root", "netem", "loss"])
            .arg(format!("{loss}%"))
            .arg("delay")
            .arg(format!("{delay}ms")),
        None => cmd.args(["del", "dev", "eth0", "root"]),
    };
    cmd.output().expect("run tc")
}

/// The API without the harness's panic on a broken connection: the controller may be dead.
fn post(ctl: &Controller, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut resp = http
        .post(format!("{}{path}", ctl.url()))
        .header("Authorization", format!("Bearer {}", ctl.admin_token))
        .send_json(body)
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Every action, by external id.
fn by_external_id(ctl: &Controller) -> HashMap<String, Vec<Value>> {
    let v = ctl.api(
        "GET",
        "/api/v1/actions?view=all&limit=10000",
        Some(&ctl.admin_token),
        None,
    );
    assert_eq!(v.0, 200, "{}", v.1);
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for a in v.1["actions"].as_array().unwrap() {
        if let Some(x) = a["external_id"].as_str() {
            out.entry(x.to_owned()).or_default().push(a.clone());
        }
    }
    out
}

const TERMINAL: &[&str] = &[
    "succeeded",
    "failed",
    "rejected",
    "cancelled",
    "expired",
    "timed_out",
    "undone",
];

#[test]
fn a_stream_of_actions_survives_kills_cut_links_and_lossy_links() {
    let actions = env_or("PALISADE_CHAOS_ACTIONS", 100);
    let n_agents = env_or("PALISADE_CHAOS_AGENTS", 3) as usize;
    let seed = env_or("PALISADE_CHAOS_SEED", palisade_tests::fuzz::seed());
    eprintln!(
        "chaos: {actions} actions, {n_agents} agents, seed {seed} (replay with PALISADE_CHAOS_SEED={seed})"
    );
    let mut rng = Rng::new(seed);

    let names: Vec<String> = (1..=n_agents).map(|i| format!("c{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let lab = Lab::up(&name_refs).expect("lab up (needs root)");
    let mut ctl = Controller::start_on(&format!("{}:0", lab.gateway_v4), &[]);
    ctl.without_approval(&[]);
    ctl.without_approval(&[
        "isolate",
        "release_isolation",
        "quarantine",
        "request_sample",
    ]);
    let mut agents: Vec<Agent> = Vec::new();
    let mut devices = Vec::new();
    for name in &names {
        let mut agent = ctl.enroll_agent();
        agent.start_in(lab.host(name));
        let device = agent.device_id();
        eventually(
            Duration::from_secs(30),
            &format!("agent {name} online"),
            || ctl.device_online(&device).then_some(()),
        );
        devices.push(device);
        agents.push(agent);
    }
    let netem_works = tc_netem(lab.host(&names[0]), Some((0, 1))).status.success();
    if netem_works {
        tc_netem(lab.host(&names[0]), None);
    }
    eprintln!(
        "chaos: loss and delay by {}",
        if netem_works {
            "tc netem"
        } else {
            "nftables numgen drops and a tbf rate limit (no netem in this kernel)"
        }
    );
    let files = ctl.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    // The stream, with the chaos interleaved at random moments.
    let mut requested: Vec<Requested> = Vec::new();
    let mut pending: Vec<(Instant, Restore)> = Vec::new();
    let mut agent_down = vec![false; n_agents];
    let mut log: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    while n < actions {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= now);
        pending = later;
        for (_, r) in due {
            match r {
                Restore::LinkUp(i) => lab.host(&names[i]).set_link(true).unwrap(),
                Restore::NetemOff(i) => degrade(lab.host(&names[i]), netem_works, None),
                Restore::AgentStart(i) => {
                    agents[i].start_in(lab.host(&names[i]));
                    agent_down[i] = false;
                }
            }
        }
        let t = started.elapsed().as_millis();
        match rng.below(20) {
            0 => {
                log.push(format!("{t} ms: kill -9 controller, restart"));
                ctl.restart();
            }
            1 | 2 => {
                let i = rng.below(n_agents);
                if !agent_down[i] {
                    let back = Duration::from_millis(200 + rng.below(2500) as u64);
                    log.push(format!("{t} ms: kill -9 {}, back in {back:?}", names[i]));
                    agents[i].kill9();
                    agent_down[i] = true;
                    pending.push((now + back, Restore::AgentStart(i)));
                }
            }
            3 | 4 => {
                let i = rng.below(n_agents);
                // Up to beyond the silence limit (3 heartbeats of 2 s): sessions end too.
                let back = Duration::from_millis(300 + rng.below(8000) as u64);
                log.push(format!("{t} ms: link of {} down for {back:?}", names[i]));
                lab.host(&names[i]).set_link(false).unwrap();
                pending.push((now + back, Restore::LinkUp(i)));
            }
            5 => {
                let i = rng.below(n_agents);
                let (loss, delay) = (5 + rng.below(30) as u64, 10 + rng.below(150) as u64);
                let back = Duration::from_millis(1000 + rng.below(5000) as u64);
                log.push(format!(
                    "{t} ms: {} loses {loss}% with {delay} ms delay for {back:?}",
                    names[i]
                ));
                degrade(lab.host(&names[i]), netem_works, Some((loss, delay)));
                pending.push((now + back, Restore::NetemOff(i)));
            }
            _ => {
                let agent = rng.below(n_agents);
                let external_id = format!("chaos-{seed}-{n}");
                let (kind, params, path, sha256) = match rng.below(8) {
                    0..=2 => {
                        let path = files.join(format!("sample-{n}.txt"));
                        let bytes =
                            format!("sample {n} of seed {seed}\n").repeat(1 + n as usize % 50);
                        std::fs::write(&path, &bytes).unwrap();
                        let p = path.to_str().unwrap().to_owned();
                        (
                            "request_sample",
                            json!({"kind": "request_sample", "path": p}),
                            Some(path),
                            Some(sha256_hex(bytes.as_bytes())),
                        )
                    }
                    3..=5 => {
                        let path = files.join(format!("quarantine-{n}.bin"));
                        let bytes = format!("quarantine me: {n} of seed {seed}\n");
                        std::fs::write(&path, &bytes).unwrap();
                        let p = path.to_str().unwrap().to_owned();
                        (
                            "quarantine",
                            json!({"kind": "quarantine", "path": p}),
                            Some(path),
                            Some(sha256_hex(bytes.as_bytes())),
                        )
                    }
                    6 => ("isolate", json!({"kind": "isolate"}), None, None),
                    _ => (
                        "release_isolation",
                        json!({"kind": "release_isolation"}),
                        None,
                        None,
                    ),
                };
                let body = json!({
                    "devices": [devices[agent]],
                    "params": params,
                    "comment": "chaos",
                    "external_id": external_id,
                });
                // Now and then the controller dies while the request is in flight.
                let mut killer = rng.chance(12).then(|| {
                    let pid = ctl.proc.as_ref().unwrap().pid();
                    let after = Duration::from_millis(rng.below(40) as u64);
                    log.push(format!(
                        "{t} ms: kill -9 controller {after:?} into request {external_id}, restart"
                    ));
                    std::thread::spawn(move || {
                        std::thread::sleep(after);
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    })
                });
                // A request whose answer is lost may still have been committed: look for
                // its external id before asking again, so that a retry never doubles it.
                let mut tries = 0;
                loop {
                    tries += 1;
                    let answer = post(&ctl, "/api/v1/actions", &body);
                    if let Some(k) = killer.take() {
                        k.join().unwrap();
                        ctl.restart();
                    }
                    match answer {
                        Ok((201, _)) => break,
                        Ok((409, v)) if kind == "release_isolation" || kind == "isolate" => {
                            // e.g. nothing to release: refused before it became an action
                            log.push(format!("{t} ms: {external_id} refused: {v}"));
                            break;
                        }
                        Ok((status, v)) => panic!("request {external_id}: {status} {v}"),
                        Err(e) => {
                            assert!(tries < 10, "request {external_id} keeps failing: {e}");
                            if by_external_id(&ctl).contains_key(&external_id) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
                requested.push(Requested {
                    external_id,
                    agent,
                    kind,
                    path,
                    sha256,
                });
                n += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(400) as u64));
    }
    eprintln!(
        "chaos: stream done in {:.1?}; what the driver did:\n  {}",
        started.elapsed(),
        log.join("\n  ")
    );

    // Calm: links up, no loss, every process running.
    for (_, r) in pending.drain(..) {
        match r {
            Restore::LinkUp(i) => lab.host(&names[i]).set_link(true).unwrap(),
            Restore::NetemOff(i) => degrade(lab.host(&names[i]), netem_works, None),
            Restore::AgentStart(i) => agents[i].start_in(lab.host(&names[i])),
        }
    }

    // Every action terminal, none lost, none doubled.
    let settle = Duration::from_secs(120 + actions / 5);
    let all = eventually(settle, "every chaos action to be terminal", || {
        let all = by_external_id(&ctl);
        let open: Vec<String> = all
            .values()
            .flatten()
            .filter(|a| !TERMINAL.contains(&a["status"].as_str().unwrap_or("")))
            .map(|a| format!("{} {} {}", a["id"], a["kind"], a["status"]))
            .collect();
        if open.is_empty() { Some(all) } else { None }
    });
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for r in &requested {
        let Some(found) = all.get(&r.external_id) else {
            // Only a refused isolate/release may be missing (logged above).
            assert!(
                log.iter()
                    .any(|l| l.contains(&format!("{} refused", r.external_id))),
                "action {} was lost",
                r.external_id
            );
            continue;
        };
        assert_eq!(
            found.len(),
            1,
            "{} became {} actions",
            r.external_id,
            found.len()
        );
        let a = &found[0];
        let status = a["status"].as_str().unwrap();
        *tally.entry(format!("{} {status}", r.kind)).or_default() += 1;
        if status != "succeeded" {
            eprintln!(
                "chaos: {} ({}) {status}: {}",
                r.external_id, r.kind, a["result_summary"]
            );
        }
        match r.kind {
            "request_sample" => {
                assert_eq!(status, "succeeded", "{a}");
                let arts = a["artifacts"].as_array().unwrap();
                assert_eq!(arts.len(), 1, "one sample, not more: {a}");
                assert_eq!(arts[0]["sha256"].as_str(), r.sha256.as_deref(), "{a}");
            }
            "quarantine" => {
                assert_eq!(status, "succeeded", "{a}");
                let path = r.path.as_ref().unwrap();
                assert!(
                    !path.exists(),
                    "{} was quarantined but is still there",
                    path.display()
                );
            }
            _ => {}
        }
    }
    eprintln!("chaos: outcomes {tally:?}");

    // On the hosts: one vault entry per quarantined file, our table iff isolated, and the
    // observed state the desired one.
    for (i, device) in devices.iter().enumerate() {
        let quarantined: Vec<&Requested> = requested
            .iter()
            .filter(|r| r.agent == i && r.kind == "quarantine")
            .collect();
        let (status, vault) = ctl.api(
            "GET",
            &format!("/api/v1/devices/{device}/vault"),
            Some(&ctl.admin_token),
            None,
        );
        assert_eq!(status, 200, "{vault}");
        let entries = vault["entries"].as_array().cloned().unwrap_or_default();
        for r in &quarantined {
            let p = r.path.as_ref().unwrap().to_str().unwrap();
            let n = entries.iter().filter(|e| e["path"] == p).count();
            assert_eq!(
                n, 1,
                "{p} is {n} times in the vault of {}: {vault}",
                names[i]
            );
        }
        let bins = std::fs::read_dir(agents[i].state_dir.join("vault"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(
            bins,
            quarantined.len(),
            "{}: vault files on the host vs quarantines",
            names[i]
        );
        let d = eventually(
            Duration::from_secs(60),
            &format!("{}'s observed state to equal its desired state", names[i]),
            || {
                let d = ctl.json(&["devices", "show", device]);
                let want_isolated = !d["desired"]["isolation"].is_null();
                let obs = &d["device"]["observed"];
                (obs["desired_revision"] == d["desired"]["revision"]
                    && obs["isolated"] == want_isolated
                    && obs["drift"].is_null())
                .then_some(d)
            },
        );
        let isolated = !d["desired"]["isolation"].is_null();
        assert_eq!(
            nft_table(lab.host(&names[i])).is_some(),
            isolated,
            "{}: our nftables table is there iff the device is isolated",
            names[i]
        );
    }

    let (status, v) = ctl.api("GET", "/api/v1/audit/verify", Some(&ctl.admin_token), None);
    assert_eq!(status, 200, "{v}");
    assert!(v["first_broken"].is_null(), "audit chain broken: {v}");
    ctl.proc.as_mut().unwrap().terminate();
    assert_eq!(sqlite3(&ctl.db(), "PRAGMA integrity_check").trim(), "ok");
    for a in &mut agents {
        a.kill9();
        assert_eq!(sqlite3(&a.journal(), "PRAGMA integrity_check").trim(), "ok");
    }
}
