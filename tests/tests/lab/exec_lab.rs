//! Lab tier: the code-execution restriction with real fanotify, in a private mount namespace
//! whose tmpfs is the only marked filesystem (see `ExecLab`). Needs root; fails otherwise.

use std::time::Duration;

use palisade_tests::{Agent, Controller, Exec, ExecLab, eventually, sha256_hex};

const EPERM: i32 = 1;
const T: Duration = Duration::from_secs(20);

/// A controller whose policy lets restrict/release run without approval, and an agent in
/// `lab`.
fn setup(lab: &ExecLab) -> (Controller, Agent, String) {
    let ctl = Controller::start();
    ctl.without_approval(&["restrict_execution", "release_execution"]);
    let mut agent = ctl.enroll_agent();
    agent.start_in_exec_lab(lab);
    let device = agent.device_id();
    eventually(T, "the agent to connect", || {
        ctl.device_online(&device).then_some(())
    });
    (ctl, agent, device)
}

fn restrict(ctl: &Controller, device: &str) -> u64 {
    let id = ctl.request(&["restrict-execution", device, "--comment", "lab: restrict"]);
    let v = ctl.wait_status(id, "succeeded", T);
    let summary = v["action"]["result_summary"].as_str().unwrap().to_owned();
    assert!(summary.contains("listener answering"), "{summary}");
    id
}

fn until(lab: &ExecLab, rel: &str, want: Exec) {
    eventually(T, &format!("{rel} to give {want:?}"), || {
        (lab.exec(rel) == want).then_some(())
    });
}

#[test]
fn restricted_devices_run_only_trusted_or_allowlisted_code_and_release_undoes_it() {
    let lab = ExecLab::new();
    let (ctl, _agent, device) = setup(&lab);

    // Unrestricted: everything runs.
    assert_eq!(lab.exec("usr/bin/true"), Exec::Ran(0));
    assert_eq!(lab.exec("tmp/true"), Exec::Ran(0));

    let id = restrict(&ctl, &device);
    let root = lab.root.display().to_string();
    let action = ctl.action(id);
    assert!(
        action["action"]["result_detail"]["exec"]["marked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == root.as_str()),
        "the lab root is reported marked: {action}"
    );
    // The trusted binary runs; the same bytes in a world-writable directory do not.
    assert_eq!(lab.exec("usr/bin/true"), Exec::Ran(0));
    assert_eq!(lab.exec("tmp/true"), Exec::Refused(EPERM));
    assert_eq!(lab.exec("tmp/false"), Exec::Refused(EPERM));
    // A binary made writable by others loses its trust.
    lab.sh(&format!("chmod 0777 '{root}/usr/bin/true'"));
    assert_eq!(lab.exec("usr/bin/true"), Exec::Refused(EPERM));
    lab.sh(&format!("chmod 0755 '{root}/usr/bin/true'"));
    assert_eq!(lab.exec("usr/bin/true"), Exec::Ran(0));

    // The desired state says so, and the agent reports it enforced.
    let dev = ctl.json(&["devices", "show", &device]);
    assert_eq!(dev["desired"]["restrict_execution"], true, "{dev}");
    eventually(T, "observed restriction", || {
        let d = ctl.json(&["devices", "show", &device]);
        (d["device"]["observed"]["restrict_execution"] == true
            && d["device"]["observed"]["drift"].is_null())
        .then_some(())
    });

    // The allowlist is desired state: a hash reaches the restricted agent.
    let false_sha = sha256_hex(&std::fs::read("/bin/false").unwrap());
    ctl.json(&[
        "exec-allowlist",
        "set",
        "--group",
        "default",
        "--sha256",
        &false_sha,
    ]);
    until(&lab, "tmp/false", Exec::Ran(1));
    assert_eq!(
        lab.exec("tmp/true"),
        Exec::Refused(EPERM),
        "only the listed hash"
    );
    // And a path.
    let copy = format!("{root}/tmp/true");
    ctl.json(&[
        "exec-allowlist",
        "set",
        "--group",
        "default",
        "--path",
        &copy,
    ]);
    until(&lab, "tmp/true", Exec::Ran(0));
    until(&lab, "tmp/false", Exec::Refused(EPERM));
    let lists = ctl.json(&["exec-allowlist", "list"]);
    assert_eq!(lists["allowlists"][0]["paths"][0], copy.as_str(), "{lists}");
    ctl.json(&["exec-allowlist", "set", "--group", "default"]);
    until(&lab, "tmp/true", Exec::Refused(EPERM));

    // A filesystem mounted later under the marked root is marked too.
    lab.sh(&format!(
        "mount -t tmpfs late '{root}/mnt' && cp /bin/true '{root}/mnt/true' && chmod 0755 '{root}/mnt/true'"
    ));
    until(&lab, "mnt/true", Exec::Refused(EPERM));

    // Denials reach the device's history as automated device action events, and the audit.
    let events = eventually(T, "denial events", || {
        let v = ctl.json(&["devices", "events", &device]);
        let list = v["events"].as_array().cloned().unwrap_or_default();
        list.iter()
            .any(|e| e["detail"]["path"] == copy.as_str())
            .then_some(list)
    });
    let e = events
        .iter()
        .find(|e| e["detail"]["path"] == copy.as_str())
        .unwrap();
    assert_eq!(e["source"], "automated_device_action", "{e}");
    assert_eq!(e["kind"], "exec_denied", "{e}");
    assert_eq!(e["detail"]["user"], "root", "{e}");
    assert_eq!(
        e["detail"]["sha256"],
        sha256_hex(&std::fs::read("/bin/true").unwrap()).as_str(),
        "{e}"
    );
    assert!(e["detail"]["pid"].as_u64().unwrap() > 0, "{e}");
    assert!(e["detail"]["ppid"].as_u64().unwrap() > 0, "{e}");
    let audit = ctl.json(&["audit", "list", "--limit", "500"]);
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "exec_denied"),
        "denials are audited: {audit}"
    );

    // Release (the undo) removes every mark: the copies run again.
    let v = ctl.json(&[
        "actions",
        "undo",
        &id.to_string(),
        "--comment",
        "lab: release",
    ]);
    let release = v["actions"][0]["id"].as_u64().unwrap();
    let r = ctl.wait_status(release, "succeeded", T);
    assert!(
        r["action"]["result_summary"]
            .as_str()
            .unwrap()
            .contains("no mount marked"),
        "{r}"
    );
    assert_eq!(ctl.status(id), "undone");
    assert_eq!(lab.exec("tmp/true"), Exec::Ran(0));
    assert_eq!(lab.exec("mnt/true"), Exec::Ran(0));
    let dev = ctl.json(&["devices", "show", &device]);
    assert_eq!(dev["desired"]["restrict_execution"], false, "{dev}");
}

#[test]
fn the_restriction_survives_restarts_and_fails_open_when_the_agent_dies() {
    let lab = ExecLab::new();
    let (mut ctl, mut agent, device) = setup(&lab);
    restrict(&ctl, &device);
    assert_eq!(lab.exec("tmp/true"), Exec::Refused(EPERM));

    // A stalled agent holds pending execs: they wait for its answer ...
    let pid = agent.proc.as_ref().unwrap().pid();
    let stop = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    stop(nix::sys::signal::Signal::SIGSTOP);
    // kill(2) returns before every thread has stopped: wait until they all have.
    eventually(T, "every agent thread to stop", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks
            .flatten()
            .all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                    .unwrap_or(false)
            })
            .then_some(())
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(lab.exec("tmp/true")).unwrap());
        let early = rx.recv_timeout(Duration::from_millis(700));
        assert!(
            early.is_err(),
            "an exec finished while the agent was stopped: {early:?}"
        );
        // ... and when it dies (kill -9), the kernel allows them: fail-open.
        agent.kill9();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).expect("released"),
            Exec::Ran(0)
        );
    });
    assert_eq!(
        lab.exec("tmp/true"),
        Exec::Ran(0),
        "no marks without the agent"
    );

    // Restarted with the controller down, the agent restricts again before connecting.
    ctl.kill9();
    agent.start_in_exec_lab(&lab);
    until(&lab, "tmp/true", Exec::Refused(EPERM));
    assert_eq!(lab.exec("usr/bin/true"), Exec::Ran(0));
    assert!(
        agent.log().contains("desired state enforced"),
        "{}",
        agent.log()
    );

    // A clean stop ends the restriction too (the descriptor closes); the next start restores
    // it, and the controller sees it enforced.
    let status = agent.proc.as_mut().unwrap().terminate();
    assert!(status.is_some(), "the agent stops on SIGTERM");
    assert_eq!(lab.exec("tmp/true"), Exec::Ran(0));
    ctl.restart();
    agent.start_in_exec_lab(&lab);
    until(&lab, "tmp/true", Exec::Refused(EPERM));
    eventually(T, "observed restriction after restarts", || {
        let d = ctl.json(&["devices", "show", &device]);
        (d["device"]["online"] == true && d["device"]["observed"]["restrict_execution"] == true)
            .then_some(())
    });
}
