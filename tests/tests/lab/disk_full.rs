//! Disk full, lab tier (root: it mounts small tmpfs filesystems): the controller's data
//! directory and the agent's state directory fill up. Requests are refused with a clear JSON
//! error, nothing panics, the work is finished once space returns, and neither database nor
//! the audit chain is damaged.

use std::sync::Arc;
use std::time::Duration;

use palisade_tests::lab::require_root;
use palisade_tests::{Controller, Tmpfs, eventually, sqlite3};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

fn sample_body(device: &str, path: &str, comment: &str) -> Value {
    json!({
        "devices": [device],
        "params": {"kind": "request_sample", "path": path},
        "comment": comment,
    })
}

fn request(ctl: &Controller, body: Value) -> (u16, Value) {
    ctl.api(
        "POST",
        "/api/v1/actions",
        Some(&ctl.admin_token),
        Some(body),
    )
}

fn audit_verifies(ctl: &Controller) {
    let (status, v) = ctl.api("GET", "/api/v1/audit/verify", Some(&ctl.admin_token), None);
    assert_eq!(status, 200, "{v}");
    assert!(v["records"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["first_broken"].is_null(),
        "the audit chain is broken: {v}"
    );
}

fn assert_no_panic(what: &str, log: &str) {
    assert!(!log.contains("panicked"), "{what} panicked:\n{log}");
}

#[test]
fn a_full_controller_data_dir_refuses_writes_with_507_and_recovers_when_space_returns() {
    require_root("the disk-full test").unwrap();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let fs = Tmpfs::mount(&dir.path().join("data"), "24m");
    let ctl = Controller::start_in(dir.clone(), "127.0.0.1:0", &[]);
    ctl.without_approval(&[]);
    let mut agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let evidence = dir.path().join("evidence.txt");
    std::fs::write(&evidence, b"what the responder wants").unwrap();
    let evidence = evidence.to_str().unwrap();

    let (status, v) = request(&ctl, sample_body(&device, evidence, "before"));
    assert_eq!(status, 201, "{v}");
    let first = v["actions"][0]["id"].as_u64().unwrap();
    ctl.wait_status(first, "succeeded", T);

    // An action approved while the agent is away, whose delivery (a write) meets the full
    // disk when the agent comes back.
    agent.kill9();
    let (status, v) = request(&ctl, sample_body(&device, evidence, "while away"));
    assert_eq!(status, 201, "{v}");
    let away = v["actions"][0]["id"].as_u64().unwrap();
    let filler = fs.fill();
    agent.start();
    // The session's writes (hello, delivery, receipt) fail: the session ends, the agent
    // reconnects, and nothing goes out that is not recorded.
    eventually(T, "the agent's session to meet the full disk", || {
        ctl.log()
            .contains("error=the data directory is full")
            .then_some(())
    });
    let status = ctl.status(away);
    assert!(
        ["approved", "delivered", "acknowledged"].contains(&status.as_str()),
        "an action cannot finish while its result cannot be recorded: {status}"
    );

    // SQLite may still fit a few transactions into pages it already has: ask until refused.
    let mut accepted = Vec::new();
    let refusal = (0..2000)
        .find_map(|i| {
            let (status, v) = request(&ctl, sample_body(&device, evidence, &format!("full {i}")));
            match status {
                201 => {
                    accepted.push(v["actions"][0]["id"].as_u64().unwrap());
                    None
                }
                _ => Some((status, v)),
            }
        })
        .expect("a request is refused once the data directory is full");
    let (status, v) = refusal;
    eprintln!(
        "{} requests accepted while filling, then: {status} {v}",
        accepted.len()
    );
    assert_eq!(status, 507, "a full disk is 507 Insufficient Storage: {v}");
    assert_eq!(v["error"]["status"], 507, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_storage", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("full"),
        "the message says why: {v}"
    );
    // Reading still works while full, and the controller is still up.
    let (status, v) = ctl.api("GET", "/api/v1/actions", Some(&ctl.admin_token), None);
    assert_eq!(status, 200, "{v}");
    assert_no_panic("the controller", &ctl.log());

    std::fs::remove_file(&filler).unwrap();
    let (status, v) = request(&ctl, sample_body(&device, evidence, "after"));
    assert_eq!(status, 201, "space is back: {v}");
    let after = v["actions"][0]["id"].as_u64().unwrap();
    // Everything accepted, before, during and after, finishes.
    for id in accepted.iter().copied().chain([away, after]) {
        ctl.wait_status(id, "succeeded", T);
    }
    audit_verifies(&ctl);
    assert_no_panic("the controller", &ctl.log());

    let mut ctl = ctl;
    ctl.proc.as_mut().unwrap().terminate();
    assert_eq!(sqlite3(&ctl.db(), "PRAGMA integrity_check").trim(), "ok");
    ctl.restart();
    audit_verifies(&ctl);
}

#[test]
fn a_full_agent_state_dir_delays_the_action_and_it_finishes_when_space_returns() {
    require_root("the disk-full test").unwrap();
    let ctl = Controller::start();
    ctl.without_approval(&[]);
    let mut agent = ctl.enroll_agent();
    let fs = Tmpfs::mount(&agent.state_dir, "16m");
    agent.start();
    let device = agent.device_id();
    eventually(T, "the agent to be online", || {
        ctl.device_online(&device).then_some(())
    });
    let evidence = ctl.dir.path().join("evidence.txt");
    std::fs::write(&evidence, b"what the responder wants").unwrap();
    let evidence = evidence.to_str().unwrap();

    let (status, v) = request(&ctl, sample_body(&device, evidence, "before"));
    assert_eq!(status, 201, "{v}");
    ctl.wait_status(v["actions"][0]["id"].as_u64().unwrap(), "succeeded", T);

    let filler = fs.fill();
    let (status, v) = request(&ctl, sample_body(&device, evidence, "while full"));
    assert_eq!(status, 201, "the controller has room: {v}");
    let id = v["actions"][0]["id"].as_u64().unwrap();
    // The agent cannot journal it, so it must not confirm it: it stays delivered (or is
    // delivered again), never acknowledged, until there is room.
    std::thread::sleep(Duration::from_secs(5));
    let status = ctl.status(id);
    assert!(
        ["approved", "delivered"].contains(&status.as_str()),
        "an action the agent could not journal is {status}"
    );
    assert_no_panic("the agent", &agent.log());
    // It keeps running (an exit would drop an exec restriction until restarted).
    let exited = agent.proc.as_mut().and_then(|p| p.exited());
    assert!(
        exited.is_none(),
        "the agent exited on the full disk: {exited:?}\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("cannot journal the action"),
        "the agent says why it cannot take the action:\n{}",
        agent.log()
    );

    std::fs::remove_file(&filler).unwrap();
    ctl.wait_status(id, "succeeded", T);
    assert_no_panic("the agent", &agent.log());
    agent.kill9();
    assert_eq!(
        sqlite3(&agent.journal(), "PRAGMA integrity_check").trim(),
        "ok"
    );
    audit_verifies(&ctl);
}
