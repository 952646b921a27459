//! The wire codec from the outside: round trips of every message type through the real frame
//! encoder and decoder, golden byte vectors that pin the format (docs/protocol.md), and the
//! refusals that keep a hostile or broken peer from making us panic or allocate.
//!
//! A change to a golden vector is a change to the wire format: it must be deliberate, come with
//! a wire version decision, and be reflected in docs/protocol.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bincode::error::DecodeError;
use palisade_common::action::{
    ActionKind, ActionParams, ActionReport, ActionSpec, ArtifactRef, ContainParams, IsolateParams,
    Outcome, Progress, RequestSampleParams, ScanParams,
};
use palisade_common::codec::CodecError;
use palisade_common::frame::{self, FrameError, HEADER_LEN, MAX_FRAME_LEN, WIRE_VERSION};
use palisade_common::ids::{ActionId, DeviceId};
use palisade_common::wire::{
    AgentMessage, ControllerMessage, DesiredState, Detection, DeviceEvent, EnrollRequest,
    EnrollResponse, ExecAllowlist, ExecDenial, Hello, Inventory, Isolation, LocalRelease,
    ObservedState, Opening, RulesInfo, RulesReply, RulesRequest, UploadBegin, UploadReply,
    VaultEntry, Welcome,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Encodes `msg` as a frame, decodes it back and checks that the whole frame was used.
fn round_trip<T>(msg: &T) -> (Vec<u8>, T)
where
    T: bincode::Encode + bincode::Decode<()> + std::fmt::Debug,
{
    let bytes = frame::encode(msg).expect("encodes");
    let (back, used) = frame::decode::<T>(&bytes)
        .expect("decodes")
        .expect("a complete frame");
    assert_eq!(
        used,
        bytes.len(),
        "decoder used {used} of {} bytes",
        bytes.len()
    );
    (bytes, back)
}

/// Checks the frame header that every encoded frame must carry.
fn assert_header(bytes: &[u8]) {
    let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
    assert_eq!(
        len,
        bytes.len() - HEADER_LEN,
        "length prefix counts version + payload"
    );
    assert_eq!(bytes[HEADER_LEN], WIRE_VERSION);
    assert!(len as u32 <= MAX_FRAME_LEN);
}

/// A frame around `payload` with a correct length prefix and the current version byte.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(WIRE_VERSION);
    out.extend_from_slice(payload);
    out
}

/// bincode's varint form of a u64 that needs the full eight bytes (tag 253, little-endian).
fn varint_u64_full(n: u64) -> Vec<u8> {
    let mut out = vec![253];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

fn decode_err<T: bincode::Decode<()> + std::fmt::Debug>(bytes: &[u8]) -> FrameError {
    match frame::decode::<T>(bytes) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn text() -> impl Strategy<Value = String> {
    "(?s).{0,40}"
}

fn short_vec<T: std::fmt::Debug>(
    element: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<T>> {
    vec(element, 0..=4)
}

fn action_id() -> impl Strategy<Value = ActionId> {
    any::<u64>().prop_map(ActionId)
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9-]{1,64}".prop_map(|s| s.parse().expect("matches the device id syntax"))
}

fn action_kind() -> impl Strategy<Value = ActionKind> {
    prop::sample::select(ActionKind::ALL.to_vec())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn inventory() -> impl Strategy<Value = Inventory> {
    (
        (text(), text(), text(), text()),
        short_vec(ip()),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        short_vec(ip()),
    )
        .prop_map(
            |(
                (hostname, os, kernel, arch),
                addresses,
                cpus,
                memory_bytes,
                boot_time_unix,
                gateways,
            )| {
                Inventory {
                    hostname,
                    os,
                    kernel,
                    arch,
                    addresses,
                    cpus,
                    memory_bytes,
                    boot_time_unix,
                    gateways,
                }
            },
        )
}

fn observed() -> impl Strategy<Value = ObservedState> {
    (
        any::<u64>(),
        any::<bool>(),
        short_vec(ip()),
        any::<bool>(),
        prop::option::of(text()),
        prop::option::of(text()),
        short_vec(
            (any::<u64>(), text(), any::<i64>()).prop_map(|(a, reason, at_ms)| LocalRelease {
                action: ActionId(a),
                reason,
                at_ms,
            }),
        ),
    )
        .prop_map(
            |(
                desired_revision,
                isolated,
                contained,
                restrict_execution,
                drift,
                net_digest,
                local_releases,
            )| ObservedState {
                desired_revision,
                isolated,
                contained,
                restrict_execution,
                drift,
                net_digest,
                local_releases,
                realtime_protection: restrict_execution,
            },
        )
}

fn isolate_params() -> impl Strategy<Value = IsolateParams> {
    (
        any::<bool>(),
        short_vec(text()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(selective, exceptions, for_secs)| IsolateParams {
            selective,
            exceptions,
            for_secs,
        })
}

fn desired() -> impl Strategy<Value = DesiredState> {
    (
        any::<u64>(),
        prop::option::of(
            (
                any::<u64>(),
                isolate_params(),
                prop::option::of(any::<i64>()),
            )
                .prop_map(|(a, params, until_ms)| Isolation {
                    action: ActionId(a),
                    params,
                    until_ms,
                }),
        ),
        short_vec(ip()),
        any::<bool>(),
        short_vec(any::<[u8; 32]>()),
        short_vec(text()),
        short_vec(text()),
    )
        .prop_map(
            |(
                revision,
                isolation,
                contained,
                restrict_execution,
                sha256,
                paths,
                contained_macs,
            )| {
                DesiredState {
                    revision,
                    isolation,
                    contained,
                    restrict_execution,
                    exec_allowlist: ExecAllowlist { sha256, paths },
                    contained_macs,
                    realtime_protection: restrict_execution,
                }
            },
        )
}

fn action_params() -> impl Strategy<Value = ActionParams> {
    prop_oneof![
        text().prop_map(|path| ActionParams::RequestSample(RequestSampleParams { path })),
        Just(ActionParams::Offboard {}),
        Just(ActionParams::ReleaseIsolation {}),
        isolate_params().prop_map(ActionParams::Isolate),
        (text(), short_vec(text()), short_vec(text())).prop_map(|(mode, paths, exclusions)| {
            ActionParams::Scan(ScanParams {
                mode,
                paths,
                exclusions,
            })
        }),
        (
            prop::option::of(device_id()),
            prop::option::of(ip()),
            prop::option::of(text()),
            any::<bool>(),
        )
            .prop_map(
                |(device, ip, mac, force)| ActionParams::Contain(ContainParams {
                    device,
                    ip,
                    mac,
                    force,
                })
            ),
    ]
}

fn action_spec() -> impl Strategy<Value = ActionSpec> {
    (action_id(), action_params()).prop_map(|(id, params)| ActionSpec { id, params })
}

fn progress() -> impl Strategy<Value = Progress> {
    (text(), prop::option::of(any::<u16>()))
        .prop_map(|(message, permille)| Progress { message, permille })
}

fn artifact() -> impl Strategy<Value = ArtifactRef> {
    (text(), any::<u64>(), "[0-9a-f]{64}").prop_map(|(name, size, sha256)| ArtifactRef {
        name,
        size,
        sha256,
    })
}

fn report() -> impl Strategy<Value = ActionReport> {
    (
        action_id(),
        prop_oneof![Just(Outcome::Succeeded), Just(Outcome::Failed)],
        text(),
        text(),
        short_vec(artifact()),
    )
        .prop_map(|(id, outcome, summary, detail, artifacts)| ActionReport {
            id,
            outcome,
            summary,
            detail,
            artifacts,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (text(), short_vec(action_kind()), inventory(), observed()).prop_map(
        |(agent_version, capabilities, inventory, observed)| Hello {
            agent_version,
            capabilities,
            inventory,
            observed,
        },
    )
}

fn opening() -> impl Strategy<Value = Opening> {
    prop_oneof![
        (
            text(),
            vec(any::<u8>(), 0..64),
            text(),
            inventory(),
            short_vec(action_kind()),
        )
            .prop_map(|(token, csr_der, agent_version, inventory, capabilities)| {
                Opening::Enroll(EnrollRequest {
                    token,
                    csr_der,
                    agent_version,
                    inventory,
                    capabilities,
                })
            }),
        hello().prop_map(Opening::Session),
        (action_id(), text(), any::<u64>(), any::<[u8; 32]>()).prop_map(
            |(action, name, size, sha256)| Opening::Upload(UploadBegin {
                action,
                name,
                size,
                sha256,
            })
        ),
        any::<u64>().prop_map(|version| Opening::Rules(RulesRequest { version })),
    ]
}

fn enroll_response() -> impl Strategy<Value = EnrollResponse> {
    prop_oneof![
        (
            device_id(),
            vec(any::<u8>(), 0..64),
            vec(any::<u8>(), 0..64),
            vec(any::<u8>(), 0..32)
        )
            .prop_map(|(device_id, certificate_der, ca_der, breakglass_key)| {
                EnrollResponse::Enrolled {
                    device_id,
                    certificate_der,
                    ca_der,
                    breakglass_key,
                }
            }),
        text().prop_map(|reason| EnrollResponse::Refused { reason }),
    ]
}

fn device_event() -> impl Strategy<Value = DeviceEvent> {
    prop_oneof![
        (
            text(),
            prop::option::of(any::<[u8; 32]>()),
            any::<(u32, u32, u32)>(),
            text(),
            any::<u32>(),
            any::<(i64, i64)>(),
        )
            .prop_map(
                |(path, sha256, (pid, ppid, uid), user, count, (first_at_ms, last_at_ms))| {
                    DeviceEvent::ExecDenied(ExecDenial {
                        path,
                        sha256,
                        pid,
                        ppid,
                        uid,
                        user,
                        count,
                        first_at_ms,
                        last_at_ms,
                    })
                }
            ),
        any::<(u64, i64, i64)>().prop_map(|(count, first_at_ms, last_at_ms)| {
            DeviceEvent::Suppressed {
                count,
                first_at_ms,
                last_at_ms,
            }
        }),
    ]
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        any::<u64>().prop_map(|seq| AgentMessage::Heartbeat { seq }),
        action_id().prop_map(|id| AgentMessage::Receipt { id }),
        (action_id(), progress())
            .prop_map(|(id, progress)| AgentMessage::Progress { id, progress }),
        report().prop_map(AgentMessage::Result),
        observed().prop_map(AgentMessage::Observed),
        inventory().prop_map(AgentMessage::Inventory),
        short_vec(device_event()).prop_map(AgentMessage::Events),
        short_vec(vault_entry()).prop_map(AgentMessage::Vault),
        any::<u64>().prop_map(|version| AgentMessage::RulesEnforced { version }),
        short_vec(detection()).prop_map(AgentMessage::Detected),
    ]
}

fn detection() -> impl Strategy<Value = Detection> {
    (
        (text(), text()),
        any::<u64>(),
        short_vec(text()),
        any::<i64>(),
    )
        .prop_map(|((path, sha256), size, matches, at_ms)| Detection {
            path,
            sha256,
            size,
            matches,
            at_ms,
        })
}

fn vault_entry() -> impl Strategy<Value = VaultEntry> {
    (
        (text(), text(), text()),
        any::<u64>(),
        any::<i64>(),
        action_id(),
    )
        .prop_map(
            |((id, path, sha256), size, quarantined_at, action)| VaultEntry {
                id,
                path,
                sha256,
                size,
                quarantined_at,
                action,
            },
        )
}

fn controller_message() -> impl Strategy<Value = ControllerMessage> {
    prop_oneof![
        (device_id(), any::<i64>(), any::<u32>()).prop_map(
            |(device_id, server_time_ms, heartbeat_secs)| ControllerMessage::Welcome(Welcome {
                device_id,
                server_time_ms,
                heartbeat_secs,
            })
        ),
        any::<u64>().prop_map(|seq| ControllerMessage::HeartbeatAck { seq }),
        action_spec().prop_map(ControllerMessage::Deliver),
        action_id().prop_map(|id| ControllerMessage::ResultAck { id }),
        desired().prop_map(ControllerMessage::Desired),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(version, size, sha256)| {
            ControllerMessage::Rules(RulesInfo {
                version,
                size,
                sha256,
            })
        }),
        action_id().prop_map(|id| ControllerMessage::Cancel { id }),
    ]
}

fn upload_reply() -> impl Strategy<Value = UploadReply> {
    prop_oneof![
        any::<u64>().prop_map(|offset| UploadReply::Resume { offset }),
        Just(UploadReply::Stored),
        text().prop_map(|reason| UploadReply::Refused { reason }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Property tests

/// Every strict prefix of `bytes` (a complete frame) asks for more bytes.
fn assert_prefixes_need_more<T: bincode::Decode<()> + std::fmt::Debug>(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        match frame::decode::<T>(&bytes[..cut]) {
            Ok(None) => {}
            other => panic!("prefix of {cut}/{} bytes gave {other:?}", bytes.len()),
        }
    }
}

proptest! {
    #[test]
    fn opening_round_trips(msg in opening()) {
        let (bytes, back) = round_trip(&msg);
        assert_header(&bytes);
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn enroll_response_round_trips(msg in enroll_response()) {
        let (bytes, back) = round_trip(&msg);
        assert_header(&bytes);
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn agent_message_round_trips(msg in agent_message()) {
        let (bytes, back) = round_trip(&msg);
        assert_header(&bytes);
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn controller_message_round_trips(msg in controller_message()) {
        let (bytes, back) = round_trip(&msg);
        assert_header(&bytes);
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn upload_reply_round_trips(msg in upload_reply()) {
        let (bytes, back) = round_trip(&msg);
        assert_header(&bytes);
        prop_assert_eq!(back, msg);
    }

    /// Frames on a stream follow each other directly: the decoder takes exactly the first one
    /// and reports its size, so the caller can continue with the rest.
    #[test]
    fn back_to_back_frames_decode_one_at_a_time(
        first in agent_message(),
        second in agent_message(),
    ) {
        let a = frame::encode(&first).unwrap();
        let b = frame::encode(&second).unwrap();
        let stream = [a.as_slice(), b.as_slice()].concat();
        let (got, used) = frame::decode::<AgentMessage>(&stream).unwrap().unwrap();
        prop_assert_eq!(used, a.len());
        prop_assert_eq!(got, first);
        let (got, used) = frame::decode::<AgentMessage>(&stream[used..]).unwrap().unwrap();
        prop_assert_eq!(used, b.len());
        prop_assert_eq!(got, second);
    }

    /// A stream read in pieces of any size, never more than the reassembler asks for, gives
    /// back each frame whole and in order, and ends at a frame boundary.
    #[test]
    fn reassembled_frames_come_back_whole(
        msgs in vec(agent_message(), 1..6),
        cuts in vec(1usize..64, 1..64),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame::encode(m).unwrap()).collect();
        let mut r = frame::Reassembler::default();
        let (mut at, mut got) = (0, Vec::new());
        for cut in cuts.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let n = (*cut).min(r.wanted().unwrap()).min(stream.len() - at);
            prop_assert!(n > 0);
            if let Some(m) = r.push::<AgentMessage>(&stream[at..at + n]).unwrap() {
                got.push(m);
                prop_assert!(r.at_boundary());
            }
            at += n;
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn strict_prefixes_need_more_bytes(
        o in opening(),
        a in agent_message(),
        c in controller_message(),
        u in upload_reply(),
    ) {
        assert_prefixes_need_more::<Opening>(&frame::encode(&o).unwrap());
        assert_prefixes_need_more::<AgentMessage>(&frame::encode(&a).unwrap());
        assert_prefixes_need_more::<ControllerMessage>(&frame::encode(&c).unwrap());
        assert_prefixes_need_more::<UploadReply>(&frame::encode(&u).unwrap());
    }

    /// Whatever arrives, decoding returns (it may refuse) and never claims more than it has.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..=2048)) {
        fn check<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<(), TestCaseError> {
            if let Ok(Some((_, used))) = frame::decode::<T>(bytes) {
                let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
                prop_assert_eq!(used, HEADER_LEN + len);
                prop_assert!(used <= bytes.len());
            }
            let _ = frame::decode_body::<T>(bytes);
            Ok(())
        }
        check::<Opening>(&bytes)?;
        check::<EnrollResponse>(&bytes)?;
        check::<AgentMessage>(&bytes)?;
        check::<ControllerMessage>(&bytes)?;
        check::<UploadReply>(&bytes)?;
    }

    /// Random length prefixes are nearly always too large, so also feed arbitrary payloads
    /// behind a well-formed header to reach the payload decoder itself. A complete frame is
    /// never "need more bytes".
    #[test]
    fn arbitrary_payloads_never_panic(payload in vec(any::<u8>(), 0..=2048)) {
        fn check<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<(), TestCaseError> {
            match frame::decode::<T>(bytes) {
                Ok(Some((_, used))) => prop_assert_eq!(used, bytes.len()),
                Ok(None) => prop_assert!(false, "a complete frame asked for more bytes"),
                Err(FrameError::Codec(_)) => {}
                Err(other) => prop_assert!(false, "refused for the wrong reason: {other}"),
            }
            Ok(())
        }
        let bytes = framed(&payload);
        check::<Opening>(&bytes)?;
        check::<EnrollResponse>(&bytes)?;
        check::<AgentMessage>(&bytes)?;
        check::<ControllerMessage>(&bytes)?;
        check::<UploadReply>(&bytes)?;
    }

    /// Mutating one byte of a valid frame never panics, and a frame that still decodes
    /// re-encodes to a frame that decodes to the same value.
    #[test]
    fn corrupted_frames_never_panic(
        msg in opening(),
        at in any::<prop::sample::Index>(),
        with in any::<u8>(),
    ) {
        let mut bytes = frame::encode(&msg).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = with;
        if let Ok(Some((decoded, _))) = frame::decode::<Opening>(&bytes) {
            let (_, again) = round_trip(&decoded);
            prop_assert_eq!(again, decoded);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Golden vectors: the exact bytes of representative frames. Do not regenerate casually.

fn golden_hello() -> Opening {
    Opening::Session(Hello {
        agent_version: "0.1.0".into(),
        capabilities: vec![
            ActionKind::Isolate,
            ActionKind::Scan,
            ActionKind::RequestSample,
        ],
        inventory: Inventory {
            hostname: "web-01".into(),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            addresses: vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
            ],
            cpus: 4,
            memory_bytes: 8 << 30,
            boot_time_unix: 1_700_000_000,
            gateways: vec![],
        },
        observed: ObservedState {
            desired_revision: 3,
            isolated: false,
            contained: vec![],
            restrict_execution: false,
            drift: None,
            net_digest: None,
            local_releases: vec![],
            realtime_protection: true,
        },
    })
}
const GOLDEN_HELLO: &str = concat!(
    "0000006c",                                 // length 108
    "01",                                       // wire version
    "01",                                       // Opening::Session
    "05302e312e30",                             // agent_version "0.1.0"
    "0300060a",                                 // capabilities [Isolate, Scan, RequestSample]
    "067765622d3031",                           // hostname
    "1344656269616e20474e552f4c696e7578203132", // os
    "0e362e312e302d31382d616d643634",           // kernel
    "067838365f3634",                           // arch
    "02",                                       // two addresses
    "00c000020a",                               // V4 192.0.2.10
    "0120010db8000000000000000000000010",       // V6 2001:db8::10
    "04",                                       // cpus
    "fd0000000002000000",                       // memory_bytes 8 GiB (u64 varint)
    "fc00f15365",                               // boot_time_unix 1_700_000_000 (u32 varint)
    "00",                                       // no gateways
    // observed: revision 3, not isolated, none contained, no restriction, no drift, no
    // table digest, no local releases, real-time protection on (appended)
    "0300000000000001",
);

fn golden_result() -> AgentMessage {
    AgentMessage::Result(ActionReport {
        id: ActionId(42),
        outcome: Outcome::Succeeded,
        summary: "uploaded /etc/hosts".into(),
        detail: r#"{"bytes":20}"#.into(),
        artifacts: vec![ArtifactRef {
            name: "hosts".into(),
            size: 20,
            // sha256 of "127.0.0.1 localhost\n"
            sha256: "081ef9d5367595d16e30b4b4549d9f43537320508b4ce0788963e10e4f808857".into(),
        }],
    })
}
const GOLDEN_RESULT: &str = concat!(
    "0000006e",                                 // length 110
    "01",                                       // wire version
    "03",                                       // AgentMessage::Result
    "2a",                                       // id 42
    "00",                                       // Outcome::Succeeded
    "1375706c6f61646564202f6574632f686f737473", // summary
    "0c7b226279746573223a32307d",               // detail
    "01",                                       // one artifact
    "05686f737473",                             // name "hosts"
    "14",                                       // size 20
    "40",                                       // sha256: 64 hex characters
    "3038316566396435333637353935643136653330623462343534396439663433",
    "3533373332303530386234636530373838393633653130653466383038383537",
);

fn golden_deliver() -> ControllerMessage {
    ControllerMessage::Deliver(ActionSpec {
        id: ActionId(42),
        params: ActionParams::RequestSample(RequestSampleParams {
            path: "/etc/hosts".into(),
        }),
    })
}
const GOLDEN_DELIVER: &str = "0000000f01022a0a0a2f6574632f686f737473";

fn golden_desired() -> ControllerMessage {
    ControllerMessage::Desired(DesiredState {
        revision: 3,
        isolation: None,
        contained: vec![],
        restrict_execution: true,
        exec_allowlist: ExecAllowlist {
            sha256: vec![[0xab; 32]],
            paths: vec!["/opt/x".into()],
        },
        contained_macs: vec!["02:00:5e:10:00:01".into()],
        realtime_protection: true,
    })
}
/// tag 4, revision 3, no isolation, no peers, restricted, one sha256 (32 raw bytes), one path,
/// one contained MAC, real-time protection on.
const GOLDEN_DESIRED: &str = concat!(
    "0000004301",
    "0403000001",
    "01abababababababababababababababababababababababababababababababab",
    "01062f6f70742f78",
    "0111", // one MAC of 17 bytes
    "30323a30303a35653a31303a30303a3031",
    "01", // realtime_protection
);

fn golden_result_ack() -> ControllerMessage {
    ControllerMessage::ResultAck { id: ActionId(42) }
}
const GOLDEN_RESULT_ACK: &str = "0000000301032a";

fn golden_heartbeat() -> AgentMessage {
    AgentMessage::Heartbeat { seq: 7 }
}
const GOLDEN_HEARTBEAT: &str = "00000003010007";

/// tag 7 (after `Events`, tag 6), one entry: id "q1", path "/x", sha256 "ab", size 3,
/// quarantined_at 5 (zigzag 0x0a), action 9.
fn golden_vault() -> AgentMessage {
    AgentMessage::Vault(vec![VaultEntry {
        id: "q1".into(),
        path: "/x".into(),
        sha256: "ab".into(),
        size: 3,
        quarantined_at: 5,
        action: ActionId(9),
    }])
}
const GOLDEN_VAULT: &str = "0000000f010701027131022f78026162030a09";

fn golden_resume() -> UploadReply {
    UploadReply::Resume { offset: 1024 }
}
const GOLDEN_RESUME: &str = "000000050100fb0004";

fn assert_golden<T>(value: &T, golden: &str)
where
    T: bincode::Encode + bincode::Decode<()> + std::fmt::Debug + PartialEq,
{
    let encoded = frame::encode(value).unwrap();
    assert_eq!(
        hex::encode(&encoded),
        golden,
        "the encoding of {value:?} changed: this is a wire format change"
    );
    let bytes = hex::decode(golden).unwrap();
    let (decoded, used) = frame::decode::<T>(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(&decoded, value);
}

#[test]
fn golden_session_hello() {
    assert_golden(&golden_hello(), GOLDEN_HELLO);
}

#[test]
fn golden_agent_result() {
    assert_golden(&golden_result(), GOLDEN_RESULT);
}

#[test]
fn golden_controller_deliver() {
    assert_golden(&golden_deliver(), GOLDEN_DELIVER);
}

#[test]
fn golden_controller_desired() {
    assert_golden(&golden_desired(), GOLDEN_DESIRED);
}

#[test]
fn golden_controller_result_ack() {
    assert_golden(&golden_result_ack(), GOLDEN_RESULT_ACK);
}

#[test]
fn golden_agent_heartbeat() {
    assert_golden(&golden_heartbeat(), GOLDEN_HEARTBEAT);
}

/// Issue 5: the rules announcement (tag 5), cancel (tag 6), the enforced version (tag 8), the
/// rules stream's opening (tag 3) and reply.
const GOLDEN_RULES_INFO: &str = concat!(
    "0000002601",
    "0502fb2c01", // Rules, version 2, size 300
    "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
);
const GOLDEN_RULES_BUNDLE: &str = concat!(
    "0000002601",
    "0002fb2c01", // Bundle, version 2, size 300
    "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
);

#[test]
fn golden_rules_messages() {
    assert_golden(
        &ControllerMessage::Rules(RulesInfo {
            version: 2,
            size: 300,
            sha256: [0xcd; 32],
        }),
        GOLDEN_RULES_INFO,
    );
    assert_golden(
        &RulesReply::Bundle {
            version: 2,
            size: 300,
            sha256: [0xcd; 32],
        },
        GOLDEN_RULES_BUNDLE,
    );
    assert_golden(
        &ControllerMessage::Cancel { id: ActionId(42) },
        "0000000301062a",
    );
    assert_golden(
        &AgentMessage::RulesEnforced { version: 3 },
        "00000003010803",
    );
    assert_golden(
        &Opening::Rules(RulesRequest { version: 2 }),
        "00000003010302",
    );
}

/// Real-time protection: `Detected` (tag 9), one detection: path "/x", sha256 "ab", size 3,
/// one match "m", at_ms 5 (zigzag 0x0a).
#[test]
fn golden_agent_detected() {
    assert_golden(
        &AgentMessage::Detected(vec![Detection {
            path: "/x".into(),
            sha256: "ab".into(),
            size: 3,
            matches: vec!["m".into()],
            at_ms: 5,
        }]),
        concat!("0000000e01", "0901022f7802616203", "01016d0a"),
    );
}

#[test]
fn golden_agent_vault() {
    assert_golden(&golden_vault(), GOLDEN_VAULT);
}

#[test]
fn golden_upload_resume() {
    assert_golden(&golden_resume(), GOLDEN_RESUME);
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn oversized_length_prefix_is_refused_before_the_body_arrives() {
    for len in [MAX_FRAME_LEN + 1, MAX_FRAME_LEN * 2, u32::MAX] {
        let header = len.to_be_bytes();
        assert!(
            matches!(frame::body_len(header), Err(FrameError::TooLarge(n)) if n == u64::from(len)),
            "body_len accepted {len}"
        );
        // Only the four header bytes are there: the decoder must refuse, not wait for more.
        assert!(
            matches!(decode_err::<AgentMessage>(&header), FrameError::TooLarge(n) if n == u64::from(len)),
            "decode waited for a {len}-byte body"
        );
        // A stream read in pieces is refused at the same point, and asks for no body.
        let mut r = frame::Reassembler::default();
        assert_eq!(r.wanted().unwrap(), HEADER_LEN);
        assert!(matches!(
            r.push::<AgentMessage>(&header),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(r.wanted(), Err(FrameError::TooLarge(_))));
    }
    // The limit itself is allowed, and then the decoder waits for the body.
    assert_eq!(
        frame::body_len(MAX_FRAME_LEN.to_be_bytes()).unwrap(),
        MAX_FRAME_LEN as usize
    );
    assert!(
        frame::decode::<AgentMessage>(&MAX_FRAME_LEN.to_be_bytes())
            .unwrap()
            .is_none()
    );
}

#[test]
fn oversized_messages_are_not_encoded() {
    let msg = UploadReply::Refused {
        reason: "x".repeat(MAX_FRAME_LEN as usize),
    };
    assert!(
        matches!(frame::encode(&msg), Err(FrameError::TooLarge(n)) if n > u64::from(MAX_FRAME_LEN))
    );
}

#[test]
fn zero_length_is_refused() {
    assert!(matches!(frame::body_len([0; 4]), Err(FrameError::Empty)));
    assert!(matches!(
        decode_err::<AgentMessage>(&[0, 0, 0, 0]),
        FrameError::Empty
    ));
    assert!(matches!(
        frame::decode_body::<AgentMessage>(&[]),
        Err(FrameError::Empty)
    ));
}

#[test]
fn wrong_version_is_refused() {
    let good = frame::encode(&golden_heartbeat()).unwrap();
    assert!(frame::decode::<AgentMessage>(&good).unwrap().is_some());
    for version in [0, WIRE_VERSION + 1, 0xff] {
        let mut bad = good.clone();
        bad[HEADER_LEN] = version;
        assert!(
            matches!(decode_err::<AgentMessage>(&bad), FrameError::Version(v) if v == version),
            "version {version} accepted"
        );
    }
}

#[test]
fn trailing_garbage_inside_a_frame_is_refused() {
    let good = frame::encode(&golden_deliver()).unwrap();
    for extra in [&[0u8][..], &[0, 0, 0], b"garbage"] {
        let payload = [&good[HEADER_LEN + 1..], extra].concat();
        let bad = framed(&payload);
        match decode_err::<ControllerMessage>(&bad) {
            FrameError::Codec(CodecError::Trailing(n)) => assert_eq!(n, extra.len()),
            other => panic!("expected trailing bytes, got {other:?}"),
        }
    }
}

/// Decodes a frame that must be refused.
type Decoder = fn(&[u8]) -> FrameError;

#[test]
fn huge_length_claims_are_refused_without_allocating() {
    let claims = [
        1u64 << 60,
        1 << 40,
        8 * u64::from(MAX_FRAME_LEN) + 1,
        u64::MAX,
    ];
    for claim in claims {
        // `Opening::Enroll` whose token (a byte string) claims `claim` bytes.
        let token = [&[0u8][..], &varint_u64_full(claim)].concat();
        // `AgentMessage::Result` whose artifact list claims `claim` elements.
        let artifacts = [&[3u8, 42, 0, 0, 0][..], &varint_u64_full(claim)].concat();
        // `Opening::Session` whose capability list claims `claim` elements.
        let capabilities = [&[1u8, 0][..], &varint_u64_full(claim)].concat();
        // `ControllerMessage::Desired` whose contained address list claims `claim` elements.
        let contained = [&[4u8, 1, 0][..], &varint_u64_full(claim)].concat();

        let cases: [(&str, Vec<u8>, Decoder); 4] = [
            ("token", token, decode_err::<Opening>),
            ("artifacts", artifacts, decode_err::<AgentMessage>),
            ("capabilities", capabilities, decode_err::<Opening>),
            ("contained", contained, decode_err::<ControllerMessage>),
        ];
        for (what, payload, decode) in cases {
            let started = Instant::now();
            let err = decode(&framed(&payload));
            assert!(
                matches!(
                    err,
                    FrameError::Codec(CodecError::Decode(DecodeError::LimitExceeded))
                ),
                "{what} claiming {claim}: {err:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{what} claiming {claim} was slow"
            );
        }
    }
}

#[test]
fn truncated_frames_need_more_bytes() {
    assert!(frame::decode::<AgentMessage>(&[]).unwrap().is_none());
    assert!(frame::decode::<AgentMessage>(&[0, 0, 0]).unwrap().is_none());
    let frames = [
        hex::decode(GOLDEN_HELLO).unwrap(),
        hex::decode(GOLDEN_RESULT).unwrap(),
        hex::decode(GOLDEN_DELIVER).unwrap(),
        hex::decode(GOLDEN_RESULT_ACK).unwrap(),
        hex::decode(GOLDEN_HEARTBEAT).unwrap(),
        hex::decode(GOLDEN_RESUME).unwrap(),
    ];
    assert_prefixes_need_more::<Opening>(&frames[0]);
    assert_prefixes_need_more::<AgentMessage>(&frames[1]);
    assert_prefixes_need_more::<ControllerMessage>(&frames[2]);
    assert_prefixes_need_more::<ControllerMessage>(&frames[3]);
    assert_prefixes_need_more::<AgentMessage>(&frames[4]);
    assert_prefixes_need_more::<UploadReply>(&frames[5]);
}

#[test]
fn a_frame_cut_short_inside_its_declared_length_is_malformed() {
    // The length prefix says the body ends earlier than the message does: the decoder sees a
    // complete frame whose payload is truncated, which is an error, not "need more".
    let good = frame::encode(&golden_deliver()).unwrap();
    let bad = framed(&good[HEADER_LEN + 1..good.len() - 1]);
    assert!(matches!(
        decode_err::<ControllerMessage>(&bad),
        FrameError::Codec(CodecError::Decode(DecodeError::UnexpectedEnd { .. }))
    ));
}

#[test]
fn unknown_variants_and_invalid_values_are_refused() {
    // Variant 10 of AgentMessage does not exist (Heartbeat..Detected are 0..=9).
    assert!(matches!(
        decode_err::<AgentMessage>(&framed(&[10, 0])),
        FrameError::Codec(CodecError::Decode(DecodeError::UnexpectedVariant {
            found: 10,
            ..
        }))
    ));
    // An Option tag other than 0 or 1: Progress { id: 1, progress { message: "", permille: tag 2 } }.
    assert!(matches!(
        decode_err::<AgentMessage>(&framed(&[2, 1, 0, 2])),
        FrameError::Codec(CodecError::Decode(_))
    ));
    // A bool other than 0 or 1: Observed { desired_revision: 0, isolated: 2, .. }.
    assert!(matches!(
        decode_err::<AgentMessage>(&framed(&[4, 0, 2, 0, 0, 0])),
        FrameError::Codec(CodecError::Decode(DecodeError::InvalidBooleanValue(2)))
    ));
    // A string that is not UTF-8: UploadReply::Refused { reason: [0xff] }.
    assert!(matches!(
        decode_err::<UploadReply>(&framed(&[2, 1, 0xff])),
        FrameError::Codec(CodecError::Decode(DecodeError::Utf8 { .. }))
    ));
    // A Welcome naming a device id the certificate syntax does not allow ("A").
    let mut welcome = vec![0u8, 1, b'A'];
    welcome.extend([0, 10]); // server_time_ms 0, heartbeat_secs 10
    assert!(matches!(
        decode_err::<ControllerMessage>(&framed(&welcome)),
        FrameError::Codec(CodecError::Decode(DecodeError::Other("invalid device id")))
    ));
    // The same frame with a valid id decodes, so the refusal above is about the id.
    welcome[2] = b'a';
    let (msg, _) = frame::decode::<ControllerMessage>(&framed(&welcome))
        .unwrap()
        .unwrap();
    assert_eq!(
        msg,
        ControllerMessage::Welcome(Welcome {
            device_id: "a".parse().unwrap(),
            server_time_ms: 0,
            heartbeat_secs: 10,
        })
    );
}

/// The decoder's memory budget counts decoded sizes, not wire bytes: a frame just under the
/// wire limit made of the densest items must still decode.
#[test]
fn every_frame_that_fits_on_the_wire_decodes() {
    let reason = "r".repeat(MAX_FRAME_LEN as usize - 16);
    let big = UploadReply::Refused { reason };
    let bytes = frame::encode(&big).unwrap();
    let (back, _) = frame::decode::<UploadReply>(&bytes).unwrap().unwrap();
    assert_eq!(back, big);

    let hello = Hello {
        agent_version: String::new(),
        capabilities: vec![ActionKind::Offboard; MAX_FRAME_LEN as usize - 64],
        inventory: Inventory::default(),
        observed: ObservedState::default(),
    };
    let bytes = frame::encode(&Opening::Session(hello.clone())).unwrap();
    let (back, _) = frame::decode::<Opening>(&bytes).unwrap().unwrap();
    assert_eq!(back, Opening::Session(hello));
}
