//! Lab tier: isolation and containment enforced with real nftables in network namespaces,
//! checked with real traffic (TCP, UDP, ICMP; IPv4 and IPv6) between lab hosts. The
//! controller runs on the lab bridge in this host's namespace. Needs root; fails otherwise.

use std::time::Duration;

use palisade_tests::lab::Lab;
use palisade_tests::traffic::{
    assert_reach, echoes, hold, nft, nft_table, ping, reach, serve_echo, serve_echo_held, tcp, udp,
};
use palisade_tests::{Agent, Controller, bin, eventually, sha256_hex};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
/// Agents notice a dead controller within seconds, not the default half minute.
const AGENT_ARGS: &[&str] = &["--link-timeout", "5s"];
/// The port of the echo servers that keep their connections open.
const HELD_PORT: u16 = 9001;

/// A lab with a controller on its bridge, whose policy runs the network actions without
/// approval, echo servers on every host, and agents on `agents`.
fn setup(hosts: &[&str], agents: &[&str]) -> (Lab, Controller, Vec<Agent>) {
    let lab = Lab::up(hosts).expect("lab up (needs root)");
    let ctl = Controller::start_on(&format!("{}:0", lab.gateway_v4), &[]);
    ctl.without_approval(&["isolate", "release_isolation", "contain", "uncontain"]);
    for h in &lab.hosts {
        serve_echo(h);
    }
    let mut started = Vec::new();
    for name in agents {
        let mut agent = ctl.enroll_agent();
        agent.start_in_with(lab.host(name), AGENT_ARGS);
        let device = agent.device_id();
        eventually(T, &format!("agent {name} online"), || {
            ctl.device_online(&device).then_some(())
        });
        started.push(agent);
    }
    (lab, ctl, started)
}

fn device(ctl: &Controller, id: &str) -> Value {
    ctl.json(&["devices", "show", id])
}

fn events(ctl: &Controller, id: &str) -> Vec<Value> {
    ctl.json(&["devices", "events", id])["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// Kills the controller and waits until `agent` has noticed (its session ended and it tries
/// to reconnect): what follows happens with no controller reachable.
fn kill_controller(ctl: &mut Controller, agent: &Agent) {
    let lost = |a: &Agent| a.log().matches("connection lost").count();
    let before = lost(agent);
    ctl.kill9();
    eventually(T, "the agent to lose the controller", || {
        (lost(agent) > before).then_some(())
    });
}

fn tampers(ctl: &Controller, id: &str) -> usize {
    events(ctl, id)
        .iter()
        .filter(|e| e["kind"] == "net_tamper")
        .count()
}

fn isolate(ctl: &Controller, id: &str, extra: &[&str]) -> Value {
    let mut args = vec!["isolate", id, "--comment", "lab: isolate"];
    args.extend_from_slice(extra);
    let action = ctl.request(&args);
    ctl.wait_status(action, "succeeded", T)
}

#[test]
fn full_isolation_cuts_everything_but_the_controller_and_holds_against_tamper_and_restarts() {
    let (lab, mut ctl, mut agents) = setup(&["a", "b", "outsider"], &["a", "b"]);
    let (a, b, out) = (lab.host("a"), lab.host("b"), lab.host("outsider"));
    let dev_a = agents[0].device_id();
    for (x, y) in [(a, b), (b, a), (out, a), (a, out), (b, out)] {
        assert_reach(x, y, true);
    }
    // Connections opened before the isolation, both ways (an attacker's shell into a, a
    // reverse shell out of it).
    serve_echo_held(a, HELD_PORT);
    serve_echo_held(out, HELD_PORT);
    let mut shell_in = hold(out, (a.v4, HELD_PORT).into());
    let mut shell_out = hold(a, (out.v6, HELD_PORT).into());
    assert!(echoes(&mut shell_in) && echoes(&mut shell_out));

    let v = isolate(&ctl, &dev_a, &[]);
    let detail = &v["action"]["result_detail"];
    // The result names the ruleset the kernel holds, not an exit code.
    let table = nft_table(a).expect("our table on a");
    assert_eq!(
        detail["digest"].as_str().unwrap(),
        sha256_hex(table.as_bytes())
    );
    assert!(
        v["action"]["result_summary"]
            .as_str()
            .unwrap()
            .contains("controller verified reachable"),
        "{v}"
    );
    for (x, y) in [(a, b), (b, a), (out, a), (a, out)] {
        assert_reach(x, y, false);
    }
    assert_reach(b, out, true);
    assert!(
        !echoes(&mut shell_in),
        "a connection into a outlived the isolation"
    );
    assert!(
        !echoes(&mut shell_out),
        "a connection out of a outlived the isolation"
    );
    assert!(ctl.device_online(&dev_a), "the controller still reaches a");
    eventually(T, "a reported isolated", || {
        (device(&ctl, &dev_a)["device"]["observed"]["isolated"] == true).then_some(())
    });

    // Someone flushes the whole ruleset: the table is back within seconds, and the history
    // says so.
    nft(a, &["flush", "ruleset"]);
    eventually(Duration::from_secs(10), "the table put back", || {
        (nft_table(a).as_deref() == Some(table.as_str())).then_some(())
    });
    eventually(T, "the tamper in a's history", || {
        events(&ctl, &dev_a)
            .iter()
            .any(|e| e["kind"] == "net_tamper")
            .then_some(())
    });
    assert_reach(a, b, false);

    // kill -9: the kernel keeps the rules.
    agents[0].kill9();
    assert_reach(a, b, false);
    assert!(nft_table(a).is_some());
    // A reboot: the table is gone, the controller is out of reach. The agent puts the table
    // back from its journal before any connection.
    let seen = tampers(&ctl, &dev_a);
    ctl.kill9();
    nft(a, &["delete", "table", "inet", "palisade"]);
    assert!(tcp(a, b.v4.into()), "no rules left");
    agents[0].start_in_with(a, AGENT_ARGS);
    eventually(Duration::from_secs(10), "the table back at start", || {
        (nft_table(a).as_deref() == Some(table.as_str())).then_some(())
    });
    assert_reach(a, b, false);
    // The tamper check holds with no controller: a flush is undone within seconds.
    eventually(T, "a to try the controller", || {
        agents[0]
            .log()
            .contains("cannot reach the controller")
            .then_some(())
    });
    nft(a, &["flush", "ruleset"]);
    eventually(
        Duration::from_secs(10),
        "the table put back offline",
        || (nft_table(a).as_deref() == Some(table.as_str())).then_some(()),
    );
    assert_reach(a, b, false);
    assert!(
        !agents[0].log().contains("session established"),
        "all of this happened before any connection"
    );
    // The controller comes back: a reconnects, still isolated, and reports the tamper.
    ctl.restart();
    eventually(Duration::from_secs(60), "a back online", || {
        ctl.device_online(&dev_a).then_some(())
    });
    eventually(T, "the offline tamper in a's history", || {
        (tampers(&ctl, &dev_a) > seen).then_some(())
    });
    assert_eq!(nft_table(a).as_deref(), Some(table.as_str()));
    assert_reach(a, b, false);

    // Release is the undo: our table goes, everything passes again.
    let isolated_by = v["action"]["id"].as_u64().unwrap().to_string();
    let undo = ctl.json(&["actions", "undo", &isolated_by, "--comment", "lab: release"]);
    let release = undo["actions"][0]["id"].as_u64().unwrap();
    ctl.wait_status(release, "succeeded", T);
    assert!(nft_table(a).is_none());
    for (x, y) in [(a, b), (b, a), (out, a), (a, out)] {
        assert_reach(x, y, true);
    }
    eventually(T, "a reported released", || {
        (device(&ctl, &dev_a)["device"]["observed"]["isolated"] == false).then_some(())
    });
}

#[test]
fn selective_isolation_time_box_and_break_glass() {
    let (lab, mut ctl, mut agents) = setup(&["a", "b", "outsider"], &["a", "b"]);
    let (a, b, out) = (lab.host("a"), lab.host("b"), lab.host("outsider"));
    let (dev_a, dev_b) = (agents[0].device_id(), agents[1].device_id());

    // Bad exceptions are refused when requested.
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "isolate",
            &dev_a,
            "--comment",
            "x",
            "--selective",
            "--except",
            "example.com tcp 443",
        ],
    );
    assert!(err.contains("invalid exception"), "{err}");

    // Selective: a may open TCP to b's IPv4 echo port; outsider may reach a's over IPv6.
    let to_b = format!("{}/32 tcp 9000 out", b.v4);
    let from_out = format!("{}/128 tcp 9000 in", out.v6);
    let v = isolate(
        &ctl,
        &dev_a,
        &["--selective", "--except", &to_b, "--except", &from_out],
    );
    let sel = v["action"]["id"].as_u64().unwrap().to_string();
    assert!(tcp(a, b.v4.into()), "the exception to b");
    assert!(!udp(a, b.v4.into()), "udp is not excepted");
    assert!(!tcp(a, b.v6.into()), "b's IPv6 is not excepted");
    assert!(!tcp(a, out.v4.into()));
    assert!(!tcp(b, a.v4.into()), "inbound from b is not excepted");
    assert!(tcp(out, a.v6.into()), "the inbound exception from outsider");
    assert!(!tcp(out, a.v4.into()));
    let undo = ctl.json(&["actions", "undo", &sel, "--comment", "lab: release"]);
    ctl.wait_status(undo["actions"][0]["id"].as_u64().unwrap(), "succeeded", T);
    assert_reach(a, b, true);

    // Time box: released by the agent itself even with no controller reachable, and the
    // controller hears of it when it is back.
    isolate(&ctl, &dev_a, &["--for", "20s"]);
    assert_reach(a, b, false);
    kill_controller(&mut ctl, &agents[0]);
    assert!(nft_table(a).is_some(), "the time box is not over yet");
    eventually(T, "the time box to end offline", || {
        nft_table(a).is_none().then_some(())
    });
    assert_reach(a, b, true);
    ctl.restart();
    eventually(Duration::from_secs(60), "a back online", || {
        ctl.device_online(&dev_a).then_some(())
    });
    eventually(T, "the controller to clear the isolation", || {
        let d = device(&ctl, &dev_a);
        (d["desired"]["isolation"].is_null()
            && events(&ctl, &dev_a).iter().any(|e| {
                // Whichever clock ends it first, the agent's or the controller's, says so.
                (e["kind"] == "isolation_released_on_device"
                    && e["summary"].as_str().unwrap().contains("time box expired"))
                    || e["kind"] == "isolation_time_box_ended"
            }))
        .then_some(())
    });

    // Break-glass: a code for a, one for b, one that expires at once.
    isolate(&ctl, &dev_a, &[]);
    let code = |dev: &str, valid: &str| {
        ctl.json(&["devices", "break-glass", dev, "--valid", valid])["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (for_a, for_b, short) = (code(&dev_a, "1h"), code(&dev_b, "1h"), code(&dev_a, "1s"));
    // Offline: the agent is dead and the controller is out of reach.
    agents[0].kill9();
    a.set_link(false).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let release = |code: &str| {
        a.command(bin("palisade-agent"))
            .arg("--state-dir")
            .arg(&agents[0].state_dir)
            .args(["release-isolation", "--code", code])
            .output()
            .unwrap()
    };
    let refused = |code: &str, why: &str| {
        let out = release(code);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
    };
    refused(&for_b, "not valid for this device");
    refused(&short, "expired");
    assert!(nft_table(a).is_some(), "still isolated");
    let ok = release(&for_a);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(nft_table(a).is_none());
    refused(&for_a, "already used");
    a.set_link(true).unwrap();
    // Just after the link comes back, the first probe may wait out a neighbour resolution
    // longer than its own time-out (tcp4 failed so once in a suite run): what is asserted is
    // that the release opened the way, so give the link a moment.
    eventually(
        Duration::from_secs(5),
        "a to reach b once its link is back",
        || {
            reach(a, b)
                .iter()
                .all(|(_, through)| *through)
                .then_some(())
        },
    );
    // Back online, the agent reports the release; the controller clears the isolation.
    agents[0].start_in_with(a, AGENT_ARGS);
    eventually(T, "the break-glass release in a's history", || {
        let d = device(&ctl, &dev_a);
        (d["desired"]["isolation"].is_null()
            && events(&ctl, &dev_a).iter().any(|e| {
                e["kind"] == "isolation_released_on_device"
                    && e["summary"].as_str().unwrap().contains("break-glass code")
            }))
        .then_some(())
    });
    assert_reach(a, b, true);
}

fn contain(ctl: &Controller, args: &[&str]) -> u64 {
    let mut all = vec!["contain"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--comment", "lab: contain"]);
    let id = ctl.request(&all);
    ctl.wait_status(id, "succeeded", T);
    id
}

fn contained_on(ctl: &Controller, dev: &str) -> Vec<String> {
    device(ctl, dev)["device"]["observed"]["contained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn containment_blocks_the_target_both_ways_reaches_late_agents_and_follows_its_address() {
    let (lab, ctl, agents) = setup(&["a", "b", "c", "outsider"], &["a", "b"]);
    let (a, b, c, out) = (
        lab.host("a"),
        lab.host("b"),
        lab.host("c"),
        lab.host("outsider"),
    );
    let (dev_a, dev_b) = (agents[0].device_id(), agents[1].device_id());

    // Safety first: the controller's own address is refused; an address another device
    // uses needs --force.
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "contain",
            "--ip",
            &lab.gateway_v4.to_string(),
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("controller's own address"), "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "contain",
            "--ip",
            &a.v4.to_string(),
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("--force"), "{err}");

    let id = contain(&ctl, &[&dev_a]);
    // The action succeeds when the set changes on the controller; peers enforce it when
    // their new desired state reaches them, and report it.
    eventually(T, "b to report the containment enforced", || {
        contained_on(&ctl, &dev_b)
            .contains(&a.v4.to_string())
            .then_some(())
    });
    for (x, y) in [(b, a), (a, b)] {
        assert_reach(x, y, false);
    }
    for (x, y) in [(b, out), (out, b), (a, out), (out, a)] {
        assert_reach(x, y, true);
    }
    assert!(
        contained_on(&ctl, &dev_a).is_empty(),
        "a does not block itself"
    );

    // An agent enrolled after the containment gets it when it connects.
    let mut late = ctl.enroll_agent();
    late.start_in(c);
    let dev_c = late.device_id();
    eventually(T, "c online", || ctl.device_online(&dev_c).then_some(()));
    eventually(T, "c to block a", || (!tcp(c, a.v4.into())).then_some(()));
    assert_reach(c, a, false);
    assert_reach(c, b, true);

    // a moves to another address: the block follows it.
    let o = a.v4.octets();
    let new_v4 = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3] + 15);
    let ns = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &a.netns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The new address becomes the primary when the old one goes (not removed with it).
    let sysctl = std::process::Command::new("ip")
        .args(["netns", "exec", &a.netns, "sysctl", "-qw"])
        .arg("net.ipv4.conf.eth0.promote_secondaries=1")
        .status()
        .unwrap();
    assert!(sysctl.success());
    ns(&["addr", "add", &format!("{new_v4}/27"), "dev", "eth0"]);
    ns(&["addr", "del", &format!("{}/27", a.v4), "dev", "eth0"]);
    ns(&[
        "route",
        "replace",
        "default",
        "via",
        &lab.gateway_v4.to_string(),
    ]);
    eventually(T, "b to block a's new address", || {
        contained_on(&ctl, &dev_b)
            .contains(&new_v4.to_string())
            .then_some(())
    });
    assert!(!tcp(b, new_v4.into()), "b reaches a's new address");
    assert!(!udp(b, new_v4.into()));
    assert!(
        !contained_on(&ctl, &dev_b).contains(&a.v4.to_string()),
        "the old address is no longer blocked"
    );
    ns(&["addr", "add", &format!("{}/27", a.v4), "dev", "eth0"]);
    ns(&["addr", "del", &format!("{new_v4}/27"), "dev", "eth0"]);
    ns(&[
        "route",
        "replace",
        "default",
        "via",
        &lab.gateway_v4.to_string(),
    ]);

    // Uncontain restores.
    let undo = ctl.json(&[
        "actions",
        "undo",
        &id.to_string(),
        "--comment",
        "lab: uncontain",
    ]);
    ctl.wait_status(undo["actions"][0]["id"].as_u64().unwrap(), "succeeded", T);
    assert_eq!(ctl.status(id), "undone");
    eventually(T, "b to reach a again", || {
        reach(b, a).iter().all(|(_, r)| *r).then_some(())
    });
    assert_reach(a, b, true);
    assert_reach(c, a, true);

    // An unmanaged address with its MAC: every agent drops the address, and frames from the
    // MAC whatever address they carry; a contained target is not contained twice.
    let mac = String::from_utf8(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &out.netns,
                "cat",
                "/sys/class/net/eth0/address",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_uppercase();
    contain(&ctl, &["--ip", &out.v6.to_string(), "--mac", &mac]);
    eventually(T, "a and b to block the outsider's IPv6", || {
        (!tcp(a, out.v6.into()) && !tcp(b, out.v6.into())).then_some(())
    });
    assert!(
        !tcp(out, a.v4.into()),
        "the outsider's MAC, from another address"
    );
    assert!(!ping(out, a.v4.into()));
    assert_reach(a, b, true);
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "contain",
            "--ip",
            &out.v6.to_string(),
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("already contained"), "{err}");
}
