//! End to end with the real binaries on loopback: enrolment, the approval queue, delivery,
//! results, artifacts, offboarding, crashes of either side, and the refusals.

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_agent::transport;
use palisade_tests::proxy::UdpProxy;
use palisade_tests::{Controller, eventually, fleet, raw, sha256_hex, sqlite3};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn sample_file(ctl: &Controller, name: &str, bytes: &[u8]) -> String {
    let path = ctl.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The action's artifact, downloaded with `palisadectl artifacts download`.
fn download(ctl: &Controller, id: u64) -> Vec<u8> {
    let out = ctl.dir.path().join(format!("download-{id}"));
    let dl = ctl.ctl(&[
        "artifacts",
        "download",
        &id.to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        dl.status.success(),
        "{}",
        String::from_utf8_lossy(&dl.stderr)
    );
    std::fs::read(&out).unwrap()
}

fn hop_times(v: &Value) -> Vec<(String, bool)> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hop"].as_str().unwrap().to_owned(), !h["at"].is_null()))
        .collect()
}

#[test]
fn sample_is_approved_delivered_and_downloaded_with_matching_hash() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let bytes: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let path = sample_file(&ctl, "evidence.bin", &bytes);

    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "suspicious file",
    ]);
    assert_eq!(ctl.status(id), "pending_approval");
    let pending = ctl.json(&["actions", "list", "--pending"]);
    assert_eq!(pending["total"], 1);

    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "go"]);
    let v = ctl.wait_status(id, "succeeded", T);
    for (hop, set) in hop_times(&v) {
        assert!(set, "hop {hop} has no timestamp: {v}");
    }
    assert_eq!(v["action"]["decided_by"], "admin");

    assert_eq!(sha256_hex(&download(&ctl, id)), sha256_hex(&bytes));
    assert_eq!(v["action"]["artifacts"][0]["sha256"], sha256_hex(&bytes));
    // 800 KB: a file of its own in the artifact store, not a row.
    let sha = sha256_hex(&bytes);
    assert!(
        ctl.data_dir()
            .join("artifacts")
            .join(&sha[..2])
            .join(&sha)
            .is_file()
    );
    assert_eq!(
        sqlite3(&ctl.db(), "SELECT count(*) FROM artifact_blobs").trim(),
        "0"
    );
}

#[test]
fn a_small_sample_is_kept_in_the_database_and_downloaded_from_it() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    // 16 KiB exactly: the largest artifact the controller keeps as a row.
    let bytes: Vec<u8> = (0..4096u32).flat_map(|i| i.to_be_bytes()).collect();
    let path = sample_file(&ctl, "small.conf", &bytes);
    let id = ctl.request(&["request-sample", &device, "--path", &path, "--comment", "x"]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "go"]);
    let v = ctl.wait_status(id, "succeeded", T);
    let sha = sha256_hex(&bytes);
    assert_eq!(v["action"]["artifacts"][0]["sha256"], sha);
    assert_eq!(v["action"]["artifacts"][0]["size"], 16384);
    assert_eq!(
        sqlite3(
            &ctl.db(),
            &format!("SELECT length(bytes) FROM artifact_blobs WHERE sha256 = '{sha}'")
        )
        .trim(),
        "16384"
    );
    assert!(!ctl.data_dir().join("artifacts").join(&sha[..2]).exists());

    assert_eq!(download(&ctl, id), bytes);
}

#[test]
fn status_shows_the_agents_connected_now() {
    let ctl = Controller::start();
    let text = |ctl: &Controller| {
        let out = ctl.ctl(&["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(text(&ctl).contains("connected agents: 0"), "{}", text(&ctl));
    let agent = ctl.enroll_agent().started();
    eventually(T, "the agent counted as connected", || {
        text(&ctl).contains("connected agents: 1").then_some(())
    });
    let v = ctl.json(&["status"]);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["connections"]["handshaking"], 0, "{v}");
    drop(agent);
    eventually(T, "the agent gone from the count", || {
        text(&ctl).contains("connected agents: 0").then_some(())
    });
}

/// Agents from before whole uploads wait for the controller's `Resume` before sending a small
/// file's bytes; today's send them with the opening. The controller takes both.
#[test]
fn a_small_upload_sent_after_resume_as_older_agents_do_is_stored() {
    use palisade_common::action::{ActionReport, ArtifactRef, Outcome};
    use palisade_common::wire::{
        AgentMessage, CONTROLLER_SERVER_NAME, Hello, ObservedState, Opening, UploadBegin,
        UploadReply,
    };
    use palisade_common::{ActionId, ActionKind, frame};

    let ctl = Controller::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = ctl.enroll_token(1, "1h");
    let identity = rt
        .block_on(fleet::enroll(
            &ctl.quic.to_string(),
            &ctl.ca_sha256,
            &token,
            1,
        ))
        .unwrap();
    let device = identity.info.device_id.to_string();
    // Approved while the device is offline: outstanding, so an upload for it is taken.
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "go"]);
    let bytes = b"a sample sent the old way\n".to_vec();
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .try_into()
        .unwrap();

    rt.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(
                raw::client(&identity.ca_der, Some(&identity)),
                ctl.quic,
                CONTROLLER_SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let begin = Opening::Upload(UploadBegin {
            action: ActionId(id),
            name: "sample".into(),
            size: bytes.len() as u64,
            sha256: sha,
        });
        send.write_all(&frame::encode(&begin).unwrap())
            .await
            .unwrap();
        // The old agent sends nothing more until the controller says where to start.
        let first: Option<UploadReply> = tokio::time::timeout(T, raw::read_frame(&mut recv))
            .await
            .expect("the controller's reply in time");
        assert_eq!(first, Some(UploadReply::Resume { offset: 0 }));
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let second: Option<UploadReply> = tokio::time::timeout(T, raw::read_frame(&mut recv))
            .await
            .expect("the controller's reply in time");
        assert_eq!(second, Some(UploadReply::Stored));
        conn.close(0u32.into(), b"done");
    });

    // Its result names the artifact; the controller holds it, so the action succeeds.
    rt.block_on(async {
        let hello = Hello {
            agent_version: "0.1.0".into(),
            capabilities: vec![ActionKind::RequestSample],
            inventory: Default::default(),
            observed: ObservedState::default(),
        };
        let mut link = transport::connect(&identity, &hello, T).await.unwrap();
        link.send(&AgentMessage::Receipt { id: ActionId(id) })
            .await
            .unwrap();
        link.send(&AgentMessage::Result(ActionReport {
            id: ActionId(id),
            outcome: Outcome::Succeeded,
            summary: "sample".into(),
            detail: "{}".into(),
            artifacts: vec![ArtifactRef {
                name: "sample".into(),
                size: bytes.len() as u64,
                sha256: hex::encode(sha),
            }],
        }))
        .await
        .unwrap();
        ctl.wait_status(id, "succeeded", T);
        link.close("done");
    });
    assert_eq!(download(&ctl, id), bytes);
}

#[test]
fn a_sample_of_something_that_is_not_a_regular_file_fails_with_the_reason() {
    let ctl = Controller::start_with(&[]);
    ctl.without_approval(&[]);
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let dir = ctl.dir.path().to_str().unwrap().to_owned();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &dir,
        "--comment",
        "a directory",
    ]);
    let v = ctl.wait_status(id, "failed", T);
    assert!(
        v["action"]["result_summary"]
            .as_str()
            .unwrap()
            .contains("is a directory"),
        "{v}"
    );
    assert_eq!(v["action"]["decided_by"], "policy");
}

#[test]
fn reject_needs_a_comment_and_cancel_stops_a_pending_action() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let a = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "one",
    ]);
    let b = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "two",
    ]);

    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "reject", &a.to_string()]);
    assert!(err.contains("comment is required"), "{err}");
    ctl.json(&[
        "actions",
        "reject",
        &a.to_string(),
        "--comment",
        "not needed",
    ]);
    assert_eq!(ctl.status(a), "rejected");
    assert_eq!(ctl.action(a)["action"]["decision_comment"], "not needed");

    ctl.json(&[
        "actions",
        "cancel",
        &b.to_string(),
        "--comment",
        "changed my mind",
    ]);
    assert_eq!(ctl.status(b), "cancelled");
    // A rejected action cannot be approved afterwards.
    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "approve", &a.to_string()]);
    assert!(err.contains("not pending approval"), "{err}");
}

#[test]
fn four_eyes_policy_refuses_self_approval() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    ctl.json(&[
        "policy",
        "set",
        "--kind",
        "request_sample",
        "--require-approval",
        "true",
        "--distinct-approver",
        "true",
    ]);
    let alice = ctl.add_user("alice", "approver", &[]);
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "check",
    ]);
    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "approve", &id.to_string()]);
    assert!(err.contains("requires another person"), "{err}");
    assert!(err.contains("HTTP 409"), "{err}");
    assert_eq!(ctl.status(id), "pending_approval");
    ctl.json_as(
        &alice,
        &[
            "actions",
            "approve",
            &id.to_string(),
            "--comment",
            "second pair of eyes",
        ],
    );
    assert_eq!(ctl.action(id)["action"]["decided_by"], "alice");
}

#[test]
fn bulk_approval_of_mixed_kinds_is_refused_whole() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let a = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    let b = ctl.request(&["offboard", &device, "--comment", "y"]);
    let c = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hosts",
        "--comment",
        "z",
    ]);
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "actions",
            "approve",
            &a.to_string(),
            &b.to_string(),
            &c.to_string(),
        ],
    );
    assert!(err.contains("different kinds"), "{err}");
    for id in [a, b, c] {
        assert_eq!(ctl.status(id), "pending_approval", "action {id} moved");
    }
    // The same kind together is fine.
    let v = ctl.json(&[
        "actions",
        "approve",
        &a.to_string(),
        &c.to_string(),
        "--comment",
        "both",
    ]);
    assert_eq!(v["actions"].as_array().unwrap().len(), 2);
    assert_eq!(ctl.status(a), "approved");
    assert_eq!(ctl.status(c), "approved");
}

#[test]
fn pending_approval_expires() {
    let ctl = Controller::start_with(&["--approval-expiry", "2s"]);
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    ctl.wait_status(id, "expired", Duration::from_secs(15));
    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "approve", &id.to_string()]);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn an_offline_device_gets_its_approved_action_when_it_reconnects() {
    let ctl = Controller::start();
    let mut agent = ctl.enroll_agent();
    let device = agent.device_id();
    let path = sample_file(&ctl, "later.txt", b"later");
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "offline",
    ]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ctl.status(id), "approved");
    let shown = ctl.json(&["devices", "show", &device]);
    assert_eq!(
        shown["queue"][0]["id"], id,
        "queue should show the waiting action: {shown}"
    );
    assert_eq!(shown["device"]["online"], false);

    agent.start();
    ctl.wait_status(id, "succeeded", T);
    assert!(ctl.device_online(&device));
}

#[test]
fn controller_kill9_and_restart_mid_flow_loses_nothing() {
    let mut ctl = Controller::start();
    let mut agent = ctl.enroll_agent();
    let device = agent.device_id();
    let path = sample_file(&ctl, "f.txt", b"content");
    let pending = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "stays pending",
    ]);
    let approved = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "approved offline",
    ]);
    ctl.json(&[
        "actions",
        "approve",
        &approved.to_string(),
        "--comment",
        "ok",
    ]);

    ctl.kill9();
    ctl.restart();
    assert_eq!(ctl.status(pending), "pending_approval");
    assert_eq!(ctl.status(approved), "approved");

    agent.start();
    ctl.wait_status(approved, "succeeded", T);
    // Kill again while connected, with a new action approved right before.
    let third = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "third",
    ]);
    ctl.json(&["actions", "approve", &third.to_string(), "--comment", "ok"]);
    ctl.kill9();
    ctl.restart();
    ctl.wait_status(third, "succeeded", T);
    assert_eq!(ctl.status(pending), "pending_approval");
    let audit = ctl.ctl(&["audit", "verify"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    // Exactly one result per action in the audit log: nothing happened twice.
    for id in [approved, third] {
        let n = sqlite3(
            &ctl.db(),
            &format!("SELECT count(*) FROM audit WHERE action_id = {id} AND event = 'succeeded'"),
        );
        assert_eq!(n.trim(), "1", "action {id} finished {n} times");
    }
}

#[test]
fn agent_kill9_with_a_result_in_its_outbox_delivers_it_once_after_restart() {
    let ctl = Controller::start();
    let proxy = UdpProxy::start(ctl.quic);
    let mut agent = ctl.enroll_agent_via(&proxy.addr.to_string()).started();
    let device = agent.device_id();
    eventually(T, "agent online", || {
        ctl.device_online(&device).then_some(())
    });

    // Cut agent → controller: the delivery still arrives, but nothing the agent says does.
    // A sample of a directory fails at once, without an upload, so its result goes straight
    // to the outbox.
    proxy.block_up.store(true, Ordering::Relaxed);
    let path = ctl.dir.path().to_str().unwrap().to_owned();
    let id = ctl.request(&["request-sample", &device, "--path", &path, "--comment", "x"]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    let journal = agent.journal();
    eventually(T, "a result in the agent's outbox", || {
        let n = sqlite3(
            &journal,
            &format!("SELECT count(*) FROM outbox WHERE id = {id}"),
        );
        (n.trim() == "1").then_some(())
    });
    assert_eq!(ctl.status(id), "delivered");
    agent.kill9();

    proxy.block_up.store(false, Ordering::Relaxed);
    agent.start();
    let v = ctl.wait_status(id, "failed", T);
    assert!(
        v["action"]["result_summary"]
            .as_str()
            .unwrap()
            .contains("is a directory"),
        "{v}"
    );
    eventually(T, "the outbox to empty", || {
        (sqlite3(&journal, "SELECT count(*) FROM outbox").trim() == "0").then_some(())
    });
    let n = sqlite3(
        &ctl.db(),
        &format!("SELECT count(*) FROM audit WHERE action_id = {id} AND event = 'failed'"),
    );
    assert_eq!(n.trim(), "1");
    let received = sqlite3(
        &journal,
        &format!("SELECT count(*) FROM actions WHERE id = {id}"),
    );
    assert_eq!(received.trim(), "1");
}

#[test]
fn enrolment_refuses_reused_and_expired_tokens_and_a_wrong_fingerprint() {
    let ctl = Controller::start();
    let token = ctl.enroll_token(1, "1h");
    let first = ctl.enroll_agent();
    drop(first);
    let a = palisade_tests_agent(&ctl);
    let out = a.enroll(&ctl.quic.to_string(), &token, &ctl.ca_sha256);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = palisade_tests_agent(&ctl);
    let out = b.enroll(&ctl.quic.to_string(), &token, &ctl.ca_sha256);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enrolment token is used up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let short = ctl.enroll_token(5, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let out = b.enroll(&ctl.quic.to_string(), &short, &ctl.ca_sha256);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let good = ctl.enroll_token(1, "1h");
    let wrong = "ab".repeat(32);
    let out = b.enroll(&ctl.quic.to_string(), &good, &wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match --ca-sha256"), "{err}");
    // The refused attempt did not use the token up.
    let out = b.enroll(&ctl.quic.to_string(), &good, &ctl.ca_sha256);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor is a garbage fingerprint accepted.
    let c = palisade_tests_agent(&ctl);
    let out = c.enroll(&ctl.quic.to_string(), &good, "nothex");
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
}

fn palisade_tests_agent(ctl: &Controller) -> palisade_tests::Agent {
    palisade_tests::Agent::in_dir(ctl.dir.clone())
}

#[test]
fn a_certificate_from_another_controller_is_refused() {
    let ctl = Controller::start();
    let other = Controller::start();
    let agent = other.enroll_agent();
    // Point the other controller's agent at this controller: its CA is not ours.
    let info_path = agent.state_dir.join("identity/agent.json");
    let mut info: Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    info["controller"] = Value::String(ctl.quic.to_string());
    std::fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
    let agent = agent.started();
    eventually(T, "the agent to log the failed connection", || {
        agent
            .log()
            .contains("cannot reach the controller")
            .then_some(())
    });
    assert_eq!(
        ctl.json(&["devices", "list"])["devices"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn offboard_erases_the_agent_and_its_revoked_certificate_is_refused() {
    let ctl = Controller::start();
    let mut agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    eventually(T, "agent online", || {
        ctl.device_online(&device).then_some(())
    });
    // Keep a copy of the identity, as a thief would.
    let stolen = ctl.dir.path().join("stolen");
    copy_dir(&agent.state_dir.join("identity"), &stolen.join("identity"));

    let id = ctl.request(&["offboard", &device, "--comment", "decommissioned"]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    ctl.wait_status(id, "succeeded", T);
    let status = agent
        .proc
        .as_mut()
        .unwrap()
        .wait_exit(T)
        .expect("agent exits after offboarding");
    assert!(status.success(), "{status}");
    assert_eq!(
        std::fs::read_dir(&agent.state_dir).unwrap().count(),
        0,
        "state left behind"
    );
    let d = ctl.json(&["devices", "show", &device]);
    assert_eq!(d["device"]["status"], "offboarded");

    let mut thief = palisade_tests::Agent::at(ctl.dir.clone(), stolen);
    thief.start();
    eventually(T, "the revoked certificate to be refused", || {
        thief.log().contains("certificate revoked").then_some(())
    });
    assert!(ctl.log().contains("refused connection"));
    assert!(!ctl.device_online(&device));
    thief.kill9();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn the_api_refuses_the_unauthenticated_and_the_underprivileged_with_json() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);

    let err = ctl.ctl_fails("", &["devices", "list"]);
    assert!(
        err.contains("no API token") || err.contains("HTTP 401"),
        "{err}"
    );
    let err = ctl.ctl_fails("pal_not_a_token", &["devices", "list"]);
    assert!(
        err.contains("unknown API token") && err.contains("HTTP 401"),
        "{err}"
    );

    let viewer = ctl.add_user("victor", "viewer", &[]);
    assert_eq!(ctl.json_as(&viewer, &["actions", "list"])["total"], 1);
    let err = ctl.ctl_fails(&viewer, &["actions", "approve", &id.to_string()]);
    assert!(
        err.contains("lacks the approve permission") && err.contains("HTTP 403"),
        "{err}"
    );
    let err = ctl.ctl_fails(
        &viewer,
        &[
            "action",
            "request-sample",
            &device,
            "--path",
            "/etc/hosts",
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("HTTP 403"), "{err}");
    assert_eq!(ctl.status(id), "pending_approval");

    let responder = ctl.add_user("rita", "responder", &[]);
    let err = ctl.ctl_fails(
        &responder,
        &["artifacts", "download", &id.to_string(), "-o", "/dev/null"],
    );
    assert!(err.contains("no artifacts"), "{err}");
    let err = ctl.ctl_fails(&responder, &["users", "add", "x", "--role", "admin"]);
    assert!(err.contains("HTTP 403"), "{err}");

    // A responder of another group learns nothing of the device, not even its group: to it,
    // the device does not exist, alone or as one of a fleet-wide action's devices.
    let outsider = ctl.add_user("oscar", "responder", &["elsewhere"]);
    for fleet in [&[][..], &["--fleet"][..]] {
        let mut args = vec!["action", "request-sample"];
        args.extend(fleet);
        args.extend([device.as_str(), "--path", "/etc/hosts", "--comment", "x"]);
        let err = ctl.ctl_fails(&outsider, &args);
        assert!(
            err.contains("HTTP 404") && err.contains("no device") && !err.contains("default"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(ctl.json(&["actions", "list"])["total"], 1);
}

#[test]
fn kinds_the_agent_does_not_implement_are_refused_at_request_time() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    // An older agent: it declared fewer kinds at enrolment (this one has not connected since).
    sqlite3(
        &ctl.db(),
        &format!("UPDATE devices SET capabilities = '[\"request_sample\"]' WHERE id = '{device}'"),
    );
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "scan",
            "--mode",
            "quick",
            &device,
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("is not implemented by the agent"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert_eq!(ctl.json(&["actions", "list"])["total"], 0);
}

#[test]
fn audit_verify_finds_a_row_edited_with_the_sqlite3_shell() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    ctl.json(&["actions", "reject", &id.to_string(), "--comment", "no"]);
    let ok = ctl.ctl(&["audit", "verify"]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));

    let seq = sqlite3(&ctl.db(), "SELECT seq FROM audit WHERE event = 'rejected'");
    sqlite3(
        &ctl.db(),
        &format!(
            "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'someone-else' WHERE seq = {}",
            seq.trim()
        ),
    );
    let out = ctl.ctl(&["audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("broken at record {}", seq.trim())),
        "{err}"
    );
    assert!(err.contains("edited"), "{err}");
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let ctl = Controller::start();
    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "show", "abc"]);
    assert!(err.contains("invalid action id"), "{err}");
    let err = ctl.ctl_fails(&ctl.admin_token, &["actions", "show", "999"]);
    assert!(
        err.contains("no action 999") && err.contains("HTTP 404"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "request-sample",
            "nosuchhost",
            "--path",
            "/x",
            "--comment",
            "c",
        ],
    );
    assert!(err.contains("no device with id or hostname"), "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "request-sample",
            "nosuchhost",
            "--path",
            "relative",
            "--comment",
            "c",
        ],
    );
    assert!(err.contains("not absolute"), "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "request-sample",
            "x",
            "--path",
            "/x",
            "--comment",
            " ",
        ],
    );
    assert!(err.contains("comment is required"), "{err}");
    let out = std::process::Command::new(palisade_tests::bin("palisadectl"))
        .args([
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "devices",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the controller"));
}

#[test]
fn approved_actions_a_device_never_collects_time_out() {
    let ctl = Controller::start_with(&["--delivery-timeout", "2s"]);
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    let v = ctl.wait_status(id, "timed_out", Duration::from_secs(15));
    assert!(!v["action"]["finished_at"].is_null());
    // A device that comes back later does not get it.
    let queue = ctl.json(&["devices", "show", &device])["queue"].clone();
    assert_eq!(queue.as_array().unwrap().len(), 0, "{queue}");
}

#[test]
fn an_artifact_over_the_controllers_size_limit_fails_the_action() {
    let ctl = Controller::start_with(&["--max-artifact-size", "1000"]);
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let path = sample_file(&ctl, "big.bin", &[7u8; 5000]);
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        &path,
        "--comment",
        "too big",
    ]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    let v = ctl.wait_status(id, "failed", T);
    let summary = v["action"]["result_summary"].as_str().unwrap();
    assert!(
        summary.contains("exceeds the controller's limit of 1000"),
        "{summary}"
    );
    assert_eq!(v["action"]["artifacts"].as_array().unwrap().len(), 0);
}

#[test]
fn exec_allowlists_are_admin_only_validated_and_bump_the_groups_desired_revision() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    let before = ctl.json(&["devices", "show", &device])["desired"]["revision"]
        .as_u64()
        .unwrap();
    let viewer = ctl.add_user("vera", "viewer", &[]);
    let err = ctl.ctl_fails(
        &viewer,
        &[
            "exec-allowlist",
            "set",
            "--group",
            "default",
            "--path",
            "/opt/x",
        ],
    );
    assert!(err.contains("HTTP 403"), "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "exec-allowlist",
            "set",
            "--group",
            "default",
            "--sha256",
            "abc",
        ],
    );
    assert!(err.contains("HTTP 400") && err.contains("sha256"), "{err}");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "exec-allowlist",
            "set",
            "--group",
            "default",
            "--path",
            "rel/x",
        ],
    );
    assert!(
        err.contains("HTTP 400") && err.contains("absolute"),
        "{err}"
    );
    let sha = "AB".repeat(32);
    let v = ctl.json(&[
        "exec-allowlist",
        "set",
        "--group",
        "default",
        "--sha256",
        &sha,
        "--path",
        "/opt/x",
    ]);
    assert_eq!(v["allowlist"]["sha256"][0], "ab".repeat(32), "{v}");
    let dev = ctl.json(&["devices", "show", &device]);
    assert_eq!(
        dev["desired"]["revision"].as_u64().unwrap(),
        before + 1,
        "{dev}"
    );
    assert_eq!(
        dev["desired"]["exec_allowlist"]["paths"][0], "/opt/x",
        "{dev}"
    );
    assert_eq!(dev["desired"]["restrict_execution"], false, "{dev}");
    let listed = ctl.json_as(&viewer, &["exec-allowlist", "list"]);
    assert_eq!(
        listed["allowlists"][0]["device_group"], "default",
        "{listed}"
    );
}
