//! The lab itself: hosts in network namespaces on a bridge reach each other and the
//! controller over IPv4 and IPv6, agents enroll and run inside them, and nothing is left when
//! the lab goes down.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use palisade_tests::lab::Lab;
use palisade_tests::{Controller, eventually};

fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    lab.host(from)
        .command("ping")
        .args(["-c", "1", "-W", "2", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn lab_hosts_talk_over_v4_and_v6_and_run_agents() {
    let lab = Lab::up(&["a", "b", "outsider"]).expect("lab up (needs root)");
    for (from, to) in [("a", "b"), ("b", "outsider"), ("outsider", "a")] {
        for addr in lab.host(to).addrs() {
            assert!(
                ping(&lab, from, &addr.to_string()),
                "{from} cannot reach {to} at {addr}"
            );
        }
    }
    assert!(ping(&lab, "a", &lab.gateway_v4.to_string()));
    assert!(ping(&lab, "a", &lab.gateway_v6.to_string()));

    let ctl = Controller::start_on(&format!("{}:0", lab.gateway_v4), &[]);
    let mut agents = Vec::new();
    for name in ["a", "b"] {
        let mut agent = ctl.enroll_agent();
        agent.start_in(lab.host(name));
        agents.push(agent);
    }
    let devices = eventually(Duration::from_secs(30), "both lab agents online", || {
        let v = ctl.json(&["devices", "list"]);
        let online: Vec<_> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] == true)
            .cloned()
            .collect();
        (online.len() == 2).then_some(online)
    });
    // Each agent reports its own hostname and its own namespace's addresses.
    for name in ["a", "b"] {
        assert!(
            devices.iter().any(|d| d["hostname"] == name),
            "no device named {name}: {devices:?}"
        );
        let v4 = lab.host(name).v4.to_string();
        assert!(
            devices
                .iter()
                .any(|d| d["addresses"].as_array().unwrap().iter().any(|a| a == &v4)),
            "no device reports {v4}: {devices:?}"
        );
    }
}

#[test]
fn lab_down_leaves_nothing_behind() {
    let lab = Lab::up(&["x"]).expect("lab up (needs root)");
    let ns = lab.host("x").netns.clone();
    let bridge = lab.bridge.clone();
    let mut sleeper = lab.host("x").command("sleep").arg("300").spawn().unwrap();
    let pid = sleeper.id();
    // Down is for what runs in the lab: wait until the process is inside the namespace (the
    // spawn returns before `ip netns exec` has entered it).
    let netns_inode = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    eventually(
        Duration::from_secs(10),
        "the process inside the namespace",
        || {
            let inside = netns_inode(&format!("/proc/{pid}/ns/net"))
                == netns_inode(&format!("/run/netns/{ns}"))
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep");
            inside.then_some(())
        },
    );
    drop(lab);
    // `sleep 300` ends by itself in 300 s: only a kill ends it within the wait.
    eventually(
        Duration::from_secs(10),
        "the lab's process to be killed",
        || sleeper.try_wait().ok().flatten(),
    );
    let namespaces = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !namespaces
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
        "{ns} left: {namespaces}"
    );
    let links = std::process::Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!links.status.success(), "bridge {bridge} left");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} in the lab survived"
    );
}
