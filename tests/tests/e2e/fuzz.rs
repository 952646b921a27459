//! Fuzz targets, run on stable by `palisade_tests::fuzz` (see docs/fuzzing.md): the frame
//! decoder, the two session state machines, the ClamAV hash-list parser, both configuration
//! files and the API's JSON bodies. Under `cargo test` each runs a short smoke pass; set
//! `PALISADE_FUZZ_SECS` for a long run and `PALISADE_FUZZ_SEED` to replay one.
//!
//! Inputs that once broke something stay below as regression tests, with the input inline.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use palisade_common::action::{
    ActionParams, ActionReport, ActionSpec, ArtifactRef, Outcome, Progress, RequestSampleParams,
};
use palisade_common::codec;
use palisade_common::frame;
use palisade_common::session::{AgentEvent, AgentSession, ControllerEvent, ControllerSession};
use palisade_common::sigs::{self, HashAlgo, RulesBundle};
use palisade_common::wire::{
    AgentMessage, ControllerMessage, DesiredState, EnrollRequest, EnrollResponse, Hello, Inventory,
    ObservedState, Opening, RulesInfo, RulesReply, UploadReply, Welcome,
};
use palisade_common::{ActionId, ActionKind, DeviceId};
use palisade_tests::fuzz::{self, Check, Verdict};

/// The smoke budget per target under a plain `cargo test`.
const SMOKE: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// The frame decoder

fn frames_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../common/tests/frames")
}

/// Every frame recorded for the compatibility tests, plus frames of the message types they do
/// not cover.
fn frame_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for version in std::fs::read_dir(frames_dir()).expect("recorded frames") {
        for f in std::fs::read_dir(version.unwrap().path()).unwrap() {
            seeds.push(std::fs::read(f.unwrap().path()).unwrap());
        }
    }
    assert!(!seeds.is_empty(), "no recorded frames found");
    seeds.push(
        frame::encode(&ControllerMessage::Rules(RulesInfo {
            version: 3,
            size: 10,
            sha256: [7; 32],
        }))
        .unwrap(),
    );
    seeds.push(frame::encode(&UploadReply::Resume { offset: 4096 }).unwrap());
    seeds.push(
        frame::encode(&RulesReply::Bundle {
            version: 1,
            size: 5,
            sha256: [9; 32],
        })
        .unwrap(),
    );
    seeds.push(
        frame::encode(&Opening::Enroll(EnrollRequest {
            token: "t0k3n".into(),
            csr_der: vec![0x30, 0x82, 1, 2],
            agent_version: "0.1.0".into(),
            inventory: inventory(),
            capabilities: vec![ActionKind::Scan],
        }))
        .unwrap(),
    );
    seeds.push(frame::encode(&AgentMessage::Result(report(ActionId(9)))).unwrap());
    seeds
}

fn inventory() -> Inventory {
    Inventory {
        hostname: "h".into(),
        os: "Debian".into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
        cpus: 2,
        memory_bytes: 1 << 30,
        boot_time_unix: 1,
        gateways: vec![],
    }
}

fn report(id: ActionId) -> ActionReport {
    ActionReport {
        id,
        outcome: Outcome::Succeeded,
        summary: "done".into(),
        detail: "{}".into(),
        artifacts: vec![ArtifactRef {
            name: "sample".into(),
            size: 4,
            sha256: "ab".repeat(32),
        }],
    }
}

/// Decodes `bytes` as a `T` frame; whatever decodes must encode again and decode to itself,
/// and its encoding must be stable (a second round gives the same bytes).
fn frame_round_trip<T>(bytes: &[u8]) -> Result<bool, String>
where
    T: codec::Encode + codec::Decode<()> + PartialEq + std::fmt::Debug,
{
    match frame::decode::<T>(bytes) {
        Ok(Some((msg, used))) => {
            if used > bytes.len() {
                return Err(format!("decoder claims {used} of {} bytes", bytes.len()));
            }
            let again =
                frame::encode(&msg).map_err(|e| format!("decoded {msg:?} does not encode: {e}"))?;
            let (back, n) = frame::decode::<T>(&again)
                .map_err(|e| format!("re-encoded {msg:?} does not decode: {e}"))?
                .ok_or("re-encoded frame is incomplete")?;
            if back != msg || n != again.len() {
                return Err(format!("round trip changed {msg:?} into {back:?}"));
            }
            if frame::encode(&back).map_err(|e| e.to_string())? != again {
                return Err(format!("encoding of {msg:?} is not stable"));
            }
            Ok(true)
        }
        Ok(None) => {
            // "Need more bytes" only while the length prefix promises more than there is.
            if bytes.len() >= frame::HEADER_LEN {
                let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                if bytes.len() >= frame::HEADER_LEN + len {
                    return Err(format!(
                        "a whole frame of {len} bytes was called incomplete"
                    ));
                }
            }
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

fn frame_target(bytes: &[u8]) -> Check {
    let mut any = false;
    any |= frame_round_trip::<Opening>(bytes)?;
    any |= frame_round_trip::<AgentMessage>(bytes)?;
    any |= frame_round_trip::<ControllerMessage>(bytes)?;
    any |= frame_round_trip::<UploadReply>(bytes)?;
    any |= frame_round_trip::<EnrollResponse>(bytes)?;
    any |= frame_round_trip::<RulesReply>(bytes)?;
    // The same bytes as a rules bundle (raw, not a frame).
    if let Ok(bundle) = codec::decode_bundle(bytes) {
        let again = codec::encode_bundle(&bundle).map_err(|e| e.to_string())?;
        if codec::decode_bundle(&again).map_err(|e| e.to_string())? != bundle {
            return Err("rules bundle round trip changed it".into());
        }
        any = true;
    }
    Ok(if any {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    })
}

#[test]
fn fuzz_frame_decoder() {
    let mut seeds = frame_seeds();
    let bundle = RulesBundle {
        version: 2,
        yara: vec![1, 2, 3],
        hashes: sigs::parse_hash_list("a.hdb", &hash_list_seeds()[0]).unwrap(),
        sources: vec!["a.hdb".into()],
    };
    seeds.push(codec::encode_bundle(&bundle).unwrap());
    let r = fuzz::run("frame", seeds, 4096, fuzz::budget(SMOKE), frame_target);
    assert!(r.accepted > 0, "no input decoded: the seeds are broken");
}

// ---------------------------------------------------------------------------------------------
// The session state machines

/// Reads a script of operations from fuzz bytes; past the end everything reads as 0.
struct Script<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn slice(&mut self, n: usize) -> &[u8] {
        let start = self.at.min(self.bytes.len());
        let end = (start + n).min(self.bytes.len());
        self.at = start + n;
        &self.bytes[start..end]
    }
}

fn spec(id: ActionId) -> ActionSpec {
    ActionSpec {
        id,
        params: ActionParams::RequestSample(RequestSampleParams {
            path: "/etc/hostname".into(),
        }),
    }
}

fn hello() -> Hello {
    Hello {
        agent_version: "0.1.0".into(),
        capabilities: vec![ActionKind::RequestSample],
        inventory: inventory(),
        observed: ObservedState::default(),
    }
}

/// The agent's side, as its driver and its journal would see it, checked after every step.
#[derive(Default)]
struct AgentModel {
    welcomed: bool,
    closed: bool,
    /// In the journal (at start, or persisted, or with a submitted result).
    known: HashSet<ActionId>,
    /// Announced by `Received`, not yet persisted.
    announced: HashSet<ActionId>,
    outbox: BTreeSet<ActionId>,
    probes: HashSet<u64>,
}

fn agent_session_target(bytes: &[u8]) -> Check {
    let mut s = Script { bytes, at: 0 };
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = AgentModel::default();
    // The journal at start: some known actions, some results still owed.
    let start = s.byte();
    for i in 0..4u64 {
        if start & (1 << i) != 0 {
            m.known.insert(ActionId(i));
        }
        if start & (1 << (i + 4)) != 0 {
            m.known.insert(ActionId(i));
            m.outbox.insert(ActionId(i));
        }
    }
    let mut a = AgentSession::new(
        now,
        hello(),
        m.known.iter().copied().collect::<Vec<_>>(),
        m.outbox.iter().map(|id| report(*id)).collect::<Vec<_>>(),
    );
    if a.take_hello().is_none() || a.take_hello().is_some() {
        return Err("the hello is taken exactly once".into());
    }
    let mut steps = 0;
    while !s.done() && steps < 256 {
        steps += 1;
        let op = s.byte();
        let arg = s.byte();
        let id = ActionId(u64::from(arg % 8));
        match op % 13 {
            0 => a.handle_message(
                now,
                ControllerMessage::Welcome(Welcome {
                    device_id: DeviceId::from_random([arg; 16]),
                    server_time_ms: 0,
                    heartbeat_secs: u32::from(arg),
                }),
            ),
            1 => a.handle_message(
                now,
                ControllerMessage::HeartbeatAck {
                    seq: u64::from(arg % 8),
                },
            ),
            2 => a.handle_message(now, ControllerMessage::Deliver(spec(id))),
            3 => a.handle_message(now, ControllerMessage::ResultAck { id }),
            4 => a.handle_message(now, ControllerMessage::Desired(DesiredState::default())),
            5 => a.handle_message(now, ControllerMessage::Cancel { id }),
            6 => {
                // any controller message the decoder lets through
                let raw = s.slice(usize::from(arg % 64)).to_vec();
                if let Ok(msg) = codec::decode::<ControllerMessage>(&raw) {
                    a.handle_message(now, msg);
                }
            }
            7 => {
                now += Duration::from_millis(u64::from(arg) * 250);
                a.handle_timeout(now);
            }
            8 => {
                a.receipt_persisted(id);
                if m.announced.remove(&id) {
                    m.known.insert(id);
                }
            }
            9 => {
                // The driver only submits results of journaled actions.
                if m.known.contains(&id) {
                    a.submit_result(report(id));
                    m.outbox.insert(id);
                }
            }
            10 => {
                if let Some(seq) = a.probe() {
                    if !m.probes.insert(seq) {
                        return Err(format!("probe number {seq} handed out twice"));
                    }
                } else if m.welcomed && !m.closed {
                    return Err("a ready session refused a probe".into());
                }
            }
            11 => {
                a.progress(
                    id,
                    Progress {
                        message: "p".into(),
                        permille: Some(u16::from(arg)),
                    },
                );
                a.observed(ObservedState::default());
                a.vault(vec![]);
                a.rules_enforced(u64::from(arg));
                let ready = m.welcomed && !m.closed;
                if a.events(vec![]).is_ok() != ready {
                    return Err("events() accepted while not ready, or refused while ready".into());
                }
            }
            _ => a.handle_message(
                now,
                ControllerMessage::Rules(RulesInfo {
                    version: u64::from(arg),
                    size: 1,
                    sha256: [arg; 32],
                }),
            ),
        }
        agent_drain(&mut a, &mut m)?;
    }
    Ok(if m.welcomed {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    })
}

fn agent_drain(a: &mut AgentSession, m: &mut AgentModel) -> Result<(), String> {
    let ready_before = m.welcomed && !m.closed;
    while let Some(ev) = a.poll_event() {
        if m.closed {
            return Err(format!("event {ev:?} after Closed"));
        }
        match ev {
            AgentEvent::Welcomed(_) => {
                if m.welcomed {
                    return Err("welcomed twice".into());
                }
                m.welcomed = true;
            }
            AgentEvent::Received(spec) => {
                if m.known.contains(&spec.id) || !m.announced.insert(spec.id) {
                    return Err(format!(
                        "action {} announced again: it would run twice",
                        spec.id.0
                    ));
                }
            }
            AgentEvent::ResultAcked(id) => {
                if !m.outbox.remove(&id) {
                    return Err(format!("ack of {} that was not in the outbox", id.0));
                }
            }
            AgentEvent::ProbeAnswered(seq) => {
                if !m.probes.remove(&seq) {
                    return Err(format!("probe {seq} answered that was not pending"));
                }
            }
            AgentEvent::Closed(_) => m.closed = true,
            AgentEvent::Desired(_) | AgentEvent::Rules(_) | AgentEvent::Cancel(_) => {
                if !m.welcomed {
                    return Err("controller command before the welcome".into());
                }
            }
        }
    }
    while let Some(msg) = a.poll_transmit() {
        if m.closed {
            return Err(format!("{msg:?} sent after Closed"));
        }
        if !m.welcomed && !ready_before {
            return Err(format!("{msg:?} sent before the welcome"));
        }
        match msg {
            AgentMessage::Receipt { id } if !m.known.contains(&id) => {
                return Err(format!("receipt of {} before it was journaled", id.0));
            }
            AgentMessage::Result(r) if !m.outbox.contains(&r.id) => {
                return Err(format!("result of {} that is not in the outbox", r.id.0));
            }
            _ => {}
        }
    }
    if a.is_closed() != m.closed {
        return Err("is_closed() disagrees with the Closed event".into());
    }
    if m.closed && a.poll_timeout().is_some() {
        return Err("a closed session still wants a timeout".into());
    }
    let outbox: BTreeSet<ActionId> = a.outbox().map(|r| r.id).collect();
    if outbox != m.outbox {
        return Err(format!("outbox {outbox:?}, expected {:?}", m.outbox));
    }
    Ok(())
}

fn controller_session_target(bytes: &[u8]) -> Check {
    let mut s = Script { bytes, at: 0 };
    let mut now = Instant::now();
    let mut c = ControllerSession::accept(
        now,
        Welcome {
            device_id: DeviceId::from_random([1; 16]),
            server_time_ms: 0,
            heartbeat_secs: u32::from(s.byte()),
        },
    );
    match c.poll_transmit() {
        Some(ControllerMessage::Welcome(_)) => {}
        other => return Err(format!("first message is {other:?}, not the welcome")),
    }
    let mut closed = false;
    let mut steps = 0;
    while !s.done() && steps < 256 {
        steps += 1;
        let op = s.byte();
        let arg = s.byte();
        let id = ActionId(u64::from(arg % 8));
        let mut heartbeat = None;
        match op % 10 {
            0 => {
                heartbeat = Some(u64::from(arg));
                c.handle_message(
                    now,
                    AgentMessage::Heartbeat {
                        seq: u64::from(arg),
                    },
                );
            }
            1 => c.handle_message(now, AgentMessage::Receipt { id }),
            2 => c.handle_message(now, AgentMessage::Result(report(id))),
            3 => {
                let raw = s.slice(usize::from(arg % 96)).to_vec();
                if let Ok(msg) = codec::decode::<AgentMessage>(&raw) {
                    if let AgentMessage::Heartbeat { seq } = msg {
                        heartbeat = Some(seq);
                    }
                    c.handle_message(now, msg);
                }
            }
            4 => {
                now += Duration::from_millis(u64::from(arg) * 250);
                c.handle_timeout(now);
            }
            5 => c.deliver(spec(id)),
            6 => c.result_committed(id),
            7 => c.desired(DesiredState::default()),
            8 => c.cancel(id),
            _ => c.close("driver".into()),
        }
        let mut acked = false;
        while let Some(ev) = c.poll_event() {
            if closed {
                return Err(format!("event {ev:?} after Closed"));
            }
            if let ControllerEvent::Closed(_) = ev {
                closed = true;
            }
        }
        while let Some(msg) = c.poll_transmit() {
            if closed {
                return Err(format!("{msg:?} sent after Closed"));
            }
            match msg {
                ControllerMessage::Welcome(_) => return Err("second welcome".into()),
                ControllerMessage::HeartbeatAck { seq } if Some(seq) == heartbeat => acked = true,
                _ => {}
            }
        }
        if heartbeat.is_some() && !closed && !acked {
            return Err("a heartbeat went unanswered on an open session".into());
        }
        if c.is_closed() != closed || (closed && c.poll_timeout().is_some()) {
            return Err("closed state and Closed event disagree".into());
        }
    }
    Ok(Verdict::Accepted)
}

/// Scripts: a welcome, deliveries, journaling, results and acks, heartbeats, silence.
fn session_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![
            0x00, 0, 10, 2, 1, 8, 1, 9, 1, 3, 1, 7, 4, 10, 0, 1, 1, 7, 200,
        ],
        vec![0x13, 2, 1, 0, 5, 3, 0, 2, 0, 0, 2, 9, 1, 3, 4],
        vec![
            0xff, 0, 1, 2, 3, 2, 3, 8, 3, 8, 3, 9, 3, 3, 3, 3, 3, 5, 3, 11, 3, 12, 9,
        ],
        vec![
            0x00, 6, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 255, 7, 255,
        ],
        vec![2, 0, 1, 1, 2, 5, 3, 2, 4, 1, 0, 9, 6, 3, 7, 40, 0, 7, 2, 6],
    ]
}

#[test]
fn fuzz_agent_session() {
    fuzz::run(
        "agent session",
        session_seeds(),
        512,
        fuzz::budget(SMOKE),
        agent_session_target,
    );
}

#[test]
fn fuzz_controller_session() {
    fuzz::run(
        "controller session",
        session_seeds(),
        512,
        fuzz::budget(SMOKE),
        controller_session_target,
    );
}

// ---------------------------------------------------------------------------------------------
// The hash-list parser

fn hash_list_seeds() -> Vec<String> {
    vec![
        format!(
            "# a comment\n{}:68:Eicar-Test-Signature\n\n{}:*:Any.Size:73\n{}:12:Sha1.Sig\n",
            "44d88612fea8a8f36de82e1278abb02f",
            "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
            "3395856ce81f2b7382dee72602f798b642f14140"
        ),
        "44D88612FEA8A8F36DE82E1278ABB02F:68:Upper.Case:\r\n".into(),
        "bad line\n:::\nzz:1:x\n".into(),
    ]
}

fn hash_list_target(bytes: &[u8]) -> Check {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.lines().count();
    match sigs::parse_hash_list("fuzz.hsb", &text) {
        Ok(list) => {
            if list.len() > lines {
                return Err(format!("{} signatures from {lines} lines", list.len()));
            }
            for sig in &list {
                let want = match sig.algo {
                    HashAlgo::Md5 => 16,
                    HashAlgo::Sha1 => 20,
                    HashAlgo::Sha256 => 32,
                };
                if sig.digest.len() != want || sig.algo.digest_len() != want {
                    return Err(format!(
                        "{sig:?}: digest length does not match its algorithm"
                    ));
                }
                if sig.name.trim().is_empty() || sig.name != sig.name.trim() {
                    return Err(format!("{sig:?}: blank or untrimmed name"));
                }
            }
            Ok(Verdict::Accepted)
        }
        Err(errors) => {
            if errors.is_empty() {
                return Err("refused without saying why".into());
            }
            let mut last = 0;
            for e in &errors {
                if e.line == 0 || e.line > lines || e.line <= last {
                    return Err(format!(
                        "error on line {} of {lines} (after {last})",
                        e.line
                    ));
                }
                last = e.line;
                if !e.to_string().starts_with(&format!("fuzz.hsb:{}: ", e.line)) {
                    return Err(format!("error {e} does not name file and line"));
                }
            }
            Ok(Verdict::Rejected)
        }
    }
}

#[test]
fn fuzz_hash_list_parser() {
    let seeds = hash_list_seeds()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let r = fuzz::run(
        "hash list",
        seeds,
        1024,
        fuzz::budget(SMOKE),
        hash_list_target,
    );
    assert!(r.accepted > 0);
}

// ---------------------------------------------------------------------------------------------
// What operators type: isolation exceptions and break-glass codes

fn operator_text_target(bytes: &[u8]) -> Check {
    let text = String::from_utf8_lossy(bytes);
    let mut any = false;
    if let Ok(e) = palisade_common::net::Exception::parse(&text) {
        any = true;
        let again = e.to_string();
        let back = palisade_common::net::Exception::parse(&again)
            .map_err(|err| format!("{e:?} printed as {again:?} does not parse: {err}"))?;
        if back != e {
            return Err(format!("{text:?} → {e:?} → {again:?} → {back:?}"));
        }
    }
    if let Ok(code) = palisade_common::breakglass::Code::parse(&text) {
        any = true;
        let again = code.to_text();
        if palisade_common::breakglass::Code::parse(&again).as_ref() != Ok(&code) {
            return Err(format!("code {text:?} does not survive to_text {again:?}"));
        }
    }
    Ok(if any {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    })
}

#[test]
fn fuzz_operator_text() {
    let code = palisade_common::breakglass::Code {
        serial: 7,
        not_after: 1_800_000_000,
        signature: [0x42; palisade_common::breakglass::SIGNATURE_LEN],
    };
    let seeds = vec![
        b"198.51.100.0/24 tcp 443 out".to_vec(),
        b"2001:db8::/32 udp 53".to_vec(),
        b"192.0.2.7 icmp in".to_vec(),
        code.to_text().into_bytes(),
        code.to_text().to_lowercase().replace('-', " ").into_bytes(),
    ];
    let r = fuzz::run(
        "operator text",
        seeds,
        512,
        fuzz::budget(SMOKE),
        operator_text_target,
    );
    assert!(r.accepted > 0);
}

// ---------------------------------------------------------------------------------------------
// Configuration files

fn packaged(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/etc")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("packaging/etc/{name}: {e}"))
}

fn config_seeds() -> Vec<Vec<u8>> {
    vec![
        packaged("controller.toml"),
        packaged("agent.toml"),
        b"data_dir = \"/d\"\nlisten = \"[::]:7443\"\napi = \"127.0.0.1:0\"\nheartbeat = \"2s\"\napproval_expiry = \"7d\"\nmax_artifact_size = 1\napi_tls = \"always\"\nserver_names = [\"a\", \"b\"]\n".to_vec(),
        b"state_dir = \"s\"\nmax_sample = 0\ncollector_timeout = \"0s\"\nexec_mark = []\nscan_cpu_percent = 101\nprotect = [\"rel\"]\nverify_isolation = \"1ms\"\n".to_vec(),
    ]
}

fn config_target(bytes: &[u8]) -> Check {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(Verdict::Rejected);
    };
    let mut any = false;
    if let Ok(c) = palisade_controller::config::FileConfig::parse(text) {
        any = true;
        let _ = c.resolve(Default::default());
    }
    if let Ok(c) = palisade_agent::config::FileConfig::parse(text) {
        any = true;
        let _ = c.protect(&Default::default());
        let _ = c.resolve_with_exec(Default::default());
    }
    Ok(if any {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    })
}

#[test]
fn fuzz_config_files() {
    let r = fuzz::run(
        "config",
        config_seeds(),
        2048,
        fuzz::budget(SMOKE),
        config_target,
    );
    assert!(r.accepted > 0);
}

// ---------------------------------------------------------------------------------------------
// The API's JSON bodies

/// The routes that take a JSON body; an input's first byte picks one.
const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/actions"),
    ("POST", "/api/v1/actions/approve"),
    ("POST", "/api/v1/actions/reject"),
    ("POST", "/api/v1/actions/cancel"),
    ("POST", "/api/v1/actions/undo"),
    ("POST", "/api/v1/enroll-tokens"),
    ("POST", "/api/v1/users"),
    ("PUT", "/api/v1/policies"),
    ("PUT", "/api/v1/exec-allowlist"),
    ("PUT", "/api/v1/automation"),
    ("POST", "/api/v1/rules"),
    ("POST", "/api/v1/devices/{device}/break-glass"),
];

fn api_seeds(device: &str) -> Vec<Vec<u8>> {
    use serde_json::json;
    let bodies = [
        (
            0,
            json!({"devices": [device], "params": {"kind": "request_sample", "path": "/etc/hostname"}, "comment": "c"}),
        ),
        (
            0,
            json!({"devices": [device], "params": {"kind": "isolate", "selective": true, "exceptions": ["192.0.2.0/24:443/tcp"], "for_secs": 60}, "comment": "c", "external_id": "x-1"}),
        ),
        (
            0,
            json!({"devices": [], "params": {"kind": "quarantine", "sha256": "ab".repeat(32), "roots": ["/tmp"]}, "comment": "c", "fleet": true}),
        ),
        (
            0,
            json!({"devices": [device], "params": {"kind": "scan", "mode": "custom", "paths": ["/tmp"], "exclusions": ["*.iso"]}, "comment": "c", "source": "api_action"}),
        ),
        (
            0,
            json!({"devices": [device], "params": {"kind": "contain", "ip": "198.51.100.9"}, "comment": "c"}),
        ),
        (1, json!({"ids": [1, 2], "comment": "ok"})),
        (2, json!({"ids": [3], "comment": "no"})),
        (3, json!({"ids": [1], "comment": "stop"})),
        (4, json!({"ids": [1], "comment": "undo"})),
        (
            5,
            json!({"uses": 2, "expires_in": "1h", "device_group": "lab"}),
        ),
        (
            6,
            json!({"name": "fuzz", "role": "responder", "device_groups": ["lab"]}),
        ),
        (
            7,
            json!({"device_group": "lab", "kind": "isolate", "require_approval": false, "distinct_approver": true}),
        ),
        (
            8,
            json!({"device_group": "lab", "sha256": ["ab".repeat(32)], "paths": ["/usr/bin/true"]}),
        ),
        (9, json!({"device_group": "lab", "level": "semi"})),
        (
            10,
            json!({"files": [{"name": "a.hdb", "content": "44d88612fea8a8f36de82e1278abb02f:68:Eicar\n"}], "comment": "c"}),
        ),
        (11, json!({"valid_secs": 3600})),
    ];
    bodies
        .into_iter()
        .map(|(route, body)| {
            let mut input = vec![route];
            input.extend_from_slice(&serde_json::to_vec(&body).unwrap());
            input
        })
        .collect()
}

#[test]
fn fuzz_api_json_bodies() {
    let ctl = palisade_tests::Controller::start();
    let device = ctl.enroll_agent().device_id();
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {}", ctl.admin_token);
    let target = |input: &[u8]| -> Check {
        let Some((&pick, body)) = input.split_first() else {
            return Ok(Verdict::Rejected);
        };
        let (method, path) = BODY_ROUTES[usize::from(pick) % BODY_ROUTES.len()];
        let url = format!("{}{}", ctl.url(), path.replace("{device}", &device));
        let req = match method {
            "POST" => http.post(&url),
            _ => http.put(&url),
        };
        let mut resp = req
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| format!("{method} {path}: no answer: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status >= 500 {
            return Err(format!("{method} {path} answered {status}: {text}"));
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            format!("{method} {path} answered {status} with a body that is not JSON ({e}): {text}")
        })?;
        if status >= 400 {
            let e = &v["error"];
            if e["status"] != status || !e["code"].is_string() || !e["message"].is_string() {
                return Err(format!(
                    "{method} {path}: {status} without the error shape: {text}"
                ));
            }
            return Ok(Verdict::Rejected);
        }
        Ok(Verdict::Accepted)
    };
    let r = fuzz::run(
        "api json",
        api_seeds(&device),
        4096,
        fuzz::budget(SMOKE),
        target,
    );
    assert!(r.accepted > 0, "no body was accepted: the seeds are broken");
    // Whatever was accepted, the history is intact.
    let (status, v) = ctl.api("GET", "/api/v1/audit/verify", Some(&ctl.admin_token), None);
    assert_eq!(status, 200, "{v}");
    assert!(
        v["first_broken"].is_null(),
        "audit chain broken after fuzzing: {v}"
    );
}
