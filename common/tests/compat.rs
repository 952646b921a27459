//! Version skew: the frames an agent of the previous release sends, recorded as files in
//! `tests/frames/<version>/`, must still decode and drive a current controller session; the
//! frames the current controller sends for the same session must be the bytes that release
//! decodes. A recording is made once per release with `PALISADE_RECORD_FRAMES=<version>` and
//! never rewritten afterwards.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use palisade_common::action::{
    ActionReport, ActionSpec, ArtifactRef, Outcome, Progress, RequestSampleParams,
};
use palisade_common::frame;
use palisade_common::session::{ControllerEvent, ControllerSession};
use palisade_common::wire::{
    AgentMessage, ControllerMessage, DesiredState, Hello, Inventory, ObservedState, Opening,
    Welcome,
};
use palisade_common::{ActionId, ActionKind, ActionParams, DeviceId};

/// The releases whose agents the current controller must still serve.
const SUPPORTED: &[&str] = &["0.1.0"];

fn dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/frames")
        .join(version)
}

/// A whole session as that release's agent and controller spoke it.
fn agent_frames() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Opening::Session(Hello {
        agent_version: "0.1.0".into(),
        capabilities: vec![ActionKind::RequestSample, ActionKind::Offboard],
        inventory: Inventory {
            hostname: "old-agent".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10))],
            cpus: 2,
            memory_bytes: 1 << 30,
            boot_time_unix: 1_700_000_000,
            gateways: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))],
        },
        observed: ObservedState::default(),
    });
    let report = ActionReport {
        id: ActionId(7),
        outcome: Outcome::Succeeded,
        summary: "sample of /etc/hostname: 4 bytes".into(),
        detail: "{\"path\":\"/etc/hostname\"}".into(),
        artifacts: vec![ArtifactRef {
            name: "sample".into(),
            size: 4,
            sha256: "ab".repeat(32),
        }],
    };
    vec![
        ("01-hello", frame::encode(&hello).unwrap()),
        (
            "02-heartbeat",
            frame::encode(&AgentMessage::Heartbeat { seq: 1 }).unwrap(),
        ),
        (
            "03-receipt",
            frame::encode(&AgentMessage::Receipt { id: ActionId(7) }).unwrap(),
        ),
        (
            "04-progress",
            frame::encode(&AgentMessage::Progress {
                id: ActionId(7),
                progress: Progress {
                    message: "started".into(),
                    permille: None,
                },
            })
            .unwrap(),
        ),
        (
            "05-result",
            frame::encode(&AgentMessage::Result(report)).unwrap(),
        ),
        (
            "06-observed",
            frame::encode(&AgentMessage::Observed(ObservedState::default())).unwrap(),
        ),
    ]
}

fn controller_frames() -> Vec<(&'static str, Vec<u8>)> {
    let welcome = ControllerMessage::Welcome(Welcome {
        device_id: "0b5e0e2c-1111-2222-3333-444455556666"
            .parse::<DeviceId>()
            .unwrap(),
        server_time_ms: 1_764_000_000_000,
        heartbeat_secs: 10,
    });
    let deliver = ControllerMessage::Deliver(ActionSpec {
        id: ActionId(7),
        params: ActionParams::RequestSample(RequestSampleParams {
            path: "/etc/hostname".into(),
        }),
    });
    vec![
        ("c1-welcome", frame::encode(&welcome).unwrap()),
        (
            "c2-desired",
            frame::encode(&ControllerMessage::Desired(DesiredState::default())).unwrap(),
        ),
        ("c3-deliver", frame::encode(&deliver).unwrap()),
        (
            "c4-heartbeat-ack",
            frame::encode(&ControllerMessage::HeartbeatAck { seq: 1 }).unwrap(),
        ),
        (
            "c5-result-ack",
            frame::encode(&ControllerMessage::ResultAck { id: ActionId(7) }).unwrap(),
        ),
    ]
}

/// With `PALISADE_RECORD_FRAMES=<version>` this writes that release's recording; otherwise it
/// checks that every supported release has a complete recording.
#[test]
fn recordings_exist_or_are_made_on_request() {
    if let Ok(version) = std::env::var("PALISADE_RECORD_FRAMES") {
        let d = dir(&version);
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in agent_frames().into_iter().chain(controller_frames()) {
            std::fs::write(d.join(format!("{name}.bin")), bytes).unwrap();
        }
    }
    for version in SUPPORTED {
        for (name, _) in agent_frames().into_iter().chain(controller_frames()) {
            assert!(
                !recorded(version, name).is_empty(),
                "{version}/{name} is empty"
            );
        }
    }
}

fn recorded(version: &str, name: &str) -> Vec<u8> {
    let path = dir(version).join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("recording {} is missing: {e}", path.display()))
}

#[test]
fn a_previous_release_agents_session_still_works() {
    for version in SUPPORTED {
        let Ok(Some((Opening::Session(hello), _))) =
            frame::decode::<Opening>(&recorded(version, "01-hello"))
        else {
            panic!("{version}: the recorded hello no longer decodes as a session opening");
        };
        assert_eq!(hello.agent_version, *version);
        let now = Instant::now();
        let mut session = ControllerSession::accept(
            now,
            Welcome {
                device_id: DeviceId::from_random([1; 16]),
                server_time_ms: 0,
                heartbeat_secs: 10,
            },
        );
        for name in [
            "02-heartbeat",
            "03-receipt",
            "04-progress",
            "05-result",
            "06-observed",
        ] {
            let bytes = recorded(version, name);
            let (msg, used) = frame::decode::<AgentMessage>(&bytes)
                .unwrap_or_else(|e| panic!("{version}/{name} no longer decodes: {e}"))
                .expect("a whole frame");
            assert_eq!(used, bytes.len());
            session.handle_message(now, msg);
        }
        let events: Vec<ControllerEvent> = std::iter::from_fn(|| session.poll_event()).collect();
        assert!(
            matches!(events[0], ControllerEvent::Receipt(ActionId(7))),
            "{events:?}"
        );
        assert!(matches!(
            events[1],
            ControllerEvent::Progress(ActionId(7), _)
        ));
        assert!(
            matches!(&events[2], ControllerEvent::Result(r) if r.id == ActionId(7) && r.artifacts.len() == 1)
        );
        assert!(matches!(events[3], ControllerEvent::Observed(_)));
    }
}

#[test]
fn the_controller_still_speaks_what_a_previous_release_agent_reads() {
    for version in SUPPORTED {
        for (name, bytes) in controller_frames() {
            assert_eq!(
                bytes,
                recorded(version, name),
                "{name}: the controller's frame changed; agents of {version} would misread it"
            );
        }
    }
}
