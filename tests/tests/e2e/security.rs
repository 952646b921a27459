//! The agents' side of the attack surface, against the real controller over real QUIC: a
//! certificate speaks only for its own device, a certificate of another CA gets no session,
//! oversized frames end only the connection that sent them, one source flooding handshakes
//! cannot crowd out the fleet, and the secret files are private. (The API's side is in
//! `web_api.rs`; the agent's file handling in the agent's unit tests and `quarantine.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_agent::identity::Identity;
use palisade_agent::transport;
use palisade_common::action::{ActionReport, Outcome};
use palisade_common::frame::MAX_FRAME_LEN;
use palisade_common::wire::{
    AgentMessage, CONTROLLER_SERVER_NAME, ControllerMessage, Hello, Inventory, ObservedState,
};
use palisade_common::{ActionId, ActionKind};
use palisade_tests::{Controller, eventually, fleet, raw, sqlite3};

const T: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hello() -> Hello {
    Hello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec![ActionKind::RequestSample, ActionKind::Offboard],
        inventory: Inventory {
            hostname: "intruder".into(),
            ..Default::default()
        },
        observed: ObservedState::default(),
    }
}

fn enroll(rt: &tokio::runtime::Runtime, ctl: &Controller, n: usize) -> Identity {
    let token = ctl.enroll_token(1, "1h");
    rt.block_on(fleet::enroll(
        &ctl.quic.to_string(),
        &ctl.ca_sha256,
        &token,
        n,
    ))
    .unwrap()
}

/// Connects a session and waits for the controller's welcome.
async fn session(identity: &Identity) -> transport::Link {
    let mut link = transport::connect(identity, &hello(), T).await.unwrap();
    let first = tokio::time::timeout(T, link.incoming.recv())
        .await
        .expect("an answer in time");
    assert!(
        matches!(first, Some(Ok(ControllerMessage::Welcome(_)))),
        "{first:?}"
    );
    link
}

/// An approved sample request for `device`, not yet delivered (the device is offline).
fn approved_sample(ctl: &Controller, device: &str) -> u64 {
    let id = ctl.request(&[
        "request-sample",
        device,
        "--path",
        "/etc/hostname",
        "--comment",
        "x",
    ]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    assert_eq!(ctl.status(id), "approved");
    id
}

#[test]
fn a_device_cannot_report_on_or_upload_for_another_devices_action() {
    let ctl = Controller::start();
    let rt = runtime();
    let intruder = enroll(&rt, &ctl, 1);
    let victim = enroll(&rt, &ctl, 2);
    let id = approved_sample(&ctl, victim.info.device_id.as_str());
    let bytes = b"forged sample\n";
    let file = ctl.dir.path().join("forged");
    std::fs::write(&file, bytes).unwrap();
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .unwrap();

    // An upload for the victim's action is refused outright.
    let mut first = rt.block_on(async {
        let link = session(&intruder).await;
        let err = link
            .uploader()
            .upload(ActionId(id), "sample", &file, bytes.len() as u64, sha)
            .await
            .expect_err("upload for another device's action");
        assert!(err.to_string().contains("which is not its own"), "{err}");
        link
    });
    // A result for it ends the intruder's session and changes nothing.
    rt.block_on(first.send(&AgentMessage::Result(ActionReport {
        id: ActionId(id),
        outcome: Outcome::Succeeded,
        summary: "forged".into(),
        detail: "{}".into(),
        artifacts: vec![],
    })))
    .unwrap();
    eventually(T, "the forged result to be refused", || {
        ctl.log().contains("which is not its own").then_some(())
    });
    // So does a receipt, on a new session.
    let mut second = rt.block_on(session(&intruder));
    rt.block_on(second.send(&AgentMessage::Receipt { id: ActionId(id) }))
        .unwrap();
    eventually(T, "the forged receipt to be refused", || {
        (ctl.log().matches("which is not its own").count() >= 2).then_some(())
    });
    drop((first, second));
    let v = ctl.action(id);
    assert_eq!(v["action"]["status"], "approved", "{v}");
    assert!(
        v["action"]["artifacts"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{v}"
    );
    // Nor are the forged bytes kept: a small upload's check and its row are one write.
    assert_eq!(
        sqlite3(&ctl.db(), "SELECT count(*) FROM artifact_blobs").trim(),
        "0"
    );
    // The victim then gets its action and reports on it itself.
    let _victim_link = rt.block_on(async {
        let mut link = session(&victim).await;
        let delivered = tokio::time::timeout(T, async {
            loop {
                match link.incoming.recv().await {
                    Some(Ok(ControllerMessage::Deliver(spec))) => return spec.id,
                    Some(Ok(_)) => continue,
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .expect("delivery");
        assert_eq!(delivered, ActionId(id));
        link.send(&AgentMessage::Receipt { id: ActionId(id) })
            .await
            .unwrap();
        link
    });
    eventually(T, "the victim's own receipt to count", || {
        (ctl.status(id) == "acknowledged").then_some(())
    });
}

#[test]
fn a_client_certificate_of_another_ca_gets_no_session() {
    let ctl = Controller::start();
    let other = Controller::start();
    let rt = runtime();
    let mine = enroll(&rt, &ctl, 1);
    let mut foreign = enroll(&rt, &other, 2);
    // The foreign identity trusts this controller (so the controller is the one deciding) and
    // dials it, with a certificate this controller's CA never signed.
    foreign.ca_der = mine.ca_der.clone();
    foreign.info.controller = ctl.quic.to_string();
    let refused = rt.block_on(async {
        match transport::connect(&foreign, &hello(), T).await {
            Err(e) => format!("{e:#}"),
            Ok(mut link) => match tokio::time::timeout(T, link.incoming.recv()).await {
                Ok(Some(Ok(ControllerMessage::Welcome(_)))) => {
                    panic!("a certificate of another CA got a session")
                }
                other => format!("{other:?}"),
            },
        }
    });
    assert!(!refused.is_empty());
    let devices = ctl.json(&["devices", "list"]);
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{devices}");
    assert_ne!(list[0]["id"], foreign.info.device_id.as_str(), "{devices}");
    // The controller's own devices still connect.
    rt.block_on(session(&mine));
}

#[test]
fn an_oversized_frame_ends_that_connection_and_the_controller_serves_on() {
    let ctl = Controller::start();
    let rt = runtime();
    let device = enroll(&rt, &ctl, 1);
    rt.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = raw::client(&device.ca_der, Some(&device));
        for opening in [true, false] {
            let conn = endpoint
                .connect_with(config.clone(), ctl.quic, CONTROLLER_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            if !opening {
                // A proper session first: the oversized frame comes in the middle of it.
                let hello = palisade_common::frame::encode(
                    &palisade_common::wire::Opening::Session(hello()),
                )
                .unwrap();
                send.write_all(&hello).await.unwrap();
                let mut header = [0u8; 4];
                recv.read_exact(&mut header).await.unwrap();
            }
            // A length just over the limit, then more bytes than the limit: the controller must
            // refuse at the header, never buffer the body.
            send.write_all(&(MAX_FRAME_LEN + 1).to_be_bytes())
                .await
                .unwrap();
            let junk = vec![0x5a; 64 * 1024];
            for _ in 0..4 {
                if send.write_all(&junk).await.is_err() {
                    break;
                }
            }
            let _ = send.finish();
            if opening {
                // The opening never parses: no session, the stream is dropped.
                let mut buf = [0u8; 1];
                let r = tokio::time::timeout(T, recv.read(&mut buf)).await;
                assert!(
                    !matches!(r, Ok(Ok(Some(n))) if n > 0),
                    "the controller answered an oversized opening: {r:?}"
                );
            } else {
                let reason = tokio::time::timeout(T, conn.closed()).await.unwrap();
                assert!(reason.to_string().contains("malformed frame"), "{reason}");
            }
            conn.close(0u32.into(), b"done");
        }
    });
    // Alive, and still serving a session with the same certificate.
    eventually(T, "the controller to log the refusal", || {
        ctl.log().contains("exceeds the limit").then_some(())
    });
    rt.block_on(session(&device));
}

#[test]
fn while_one_source_floods_handshakes_another_agent_is_served() {
    // Small limits so that the flood hits them; the retry on every connection proves that
    // address validation does not stand in the agents' way.
    let ctl = Controller::start_with(&["--max-pending-per-source", "8", "--retry-above", "0"]);
    let rt = runtime();
    let device = enroll(&rt, &ctl, 1);
    let ca = device.ca_der.clone();
    let refused = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // The flood: anonymous handshakes from 127.0.0.2, each kept open (an enrolment that never
    // comes), as fast as they are answered.
    let flood = {
        let (refused, accepted, quic) = (refused.clone(), accepted.clone(), ctl.quic);
        rt.spawn(async move {
            let endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
            let config = raw::client(&ca, None);
            let mut held = Vec::new();
            while !*stop.borrow() {
                let mut attempts = Vec::new();
                for _ in 0..32 {
                    if let Ok(c) =
                        endpoint.connect_with(config.clone(), quic, CONTROLLER_SERVER_NAME)
                    {
                        attempts.push(c);
                    }
                }
                for a in attempts {
                    match tokio::time::timeout(Duration::from_secs(5), a).await {
                        Ok(Ok(conn)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            held.push(conn);
                        }
                        Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                            if close.error_code
                                == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                        {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                held.retain(|c| c.close_reason().is_none());
            }
        })
    };
    eventually(T, "the flood to be refused", || {
        (refused.load(Ordering::Relaxed) > 32).then_some(())
    });
    // Meanwhile a device from another address connects and gets its action.
    let id = approved_sample(&ctl, device.info.device_id.as_str());
    let _link = rt.block_on(async {
        let mut link = session(&device).await;
        tokio::time::timeout(T, async {
            loop {
                match link.incoming.recv().await {
                    Some(Ok(ControllerMessage::Deliver(spec))) if spec.id == ActionId(id) => {
                        return;
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .expect("delivery during the flood");
        link.send(&AgentMessage::Receipt { id: ActionId(id) })
            .await
            .unwrap();
        link
    });
    eventually(T, "the receipt during the flood", || {
        (ctl.status(id) == "acknowledged").then_some(())
    });
    // The admin sees the flood turned away, and the one agent connected.
    let seen = refused.load(Ordering::Relaxed);
    let status = ctl.json(&["status"]);
    assert!(
        status["connections"]["refused"].as_u64().unwrap() >= seen,
        "the flood saw {seen} refusals: {status}"
    );
    assert_eq!(status["connected"], 1, "{status}");
    let _ = stop_tx.send(true);
    rt.block_on(flood).unwrap();
    // Up to its limit, the flooding source is served like anyone (enrolment needs no
    // certificate); past it, refused.
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "the flood was never served at all"
    );
}

#[test]
fn secret_files_are_private() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    eventually(T, "agent online", || {
        ctl.device_online(&device).then_some(())
    });
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = ctl.data_dir();
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    for name in [
        "ca.key",
        "breakglass.key",
        "audit.key",
        "admin.token",
        "reset.key",
        "ticket.key",
        "controller.sqlite",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for extra in ["controller.sqlite-wal", "controller.sqlite-shm"] {
        if data.join(extra).exists() {
            assert_eq!(mode(&data.join(extra)), 0o600, "{extra}");
        }
    }
    let state = &agent.state_dir;
    assert_eq!(mode(state), 0o700, "{}", state.display());
    assert_eq!(mode(&state.join("identity")), 0o700);
    for name in ["key.der", "cert.der", "ca.der", "agent.json"] {
        assert_eq!(mode(&state.join("identity").join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&state.join("journal.sqlite")), 0o600);
}
