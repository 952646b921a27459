//! Messages exchanged between agent and controller. Every QUIC stream starts with one
//! [`Opening`] frame that says what the stream is for:
//!
//! * `Enroll`: the only thing a connection without a client certificate may do;
//! * `Session`: the long-lived control stream, agent → controller [`AgentMessage`]s and
//!   controller → agent [`ControllerMessage`]s;
//! * `Upload`: one artifact's bytes (see [`UploadBegin`]).
//!
//! Field and variant order is the wire format: append, never reorder (docs/protocol.md).

use std::net::IpAddr;
use std::time::Duration;

use bincode::{Decode, Encode};

use crate::action::{ActionKind, ActionReport, ActionSpec, IsolateParams, Progress};
use crate::ids::{ActionId, DeviceId};

/// ALPN protocol id of the agent↔controller QUIC connection.
pub const ALPN: &[u8] = b"palisade/1";
/// The name the controller's certificate carries and the agent verifies, whatever address it
/// dials: trust comes from the pinned CA, not from DNS.
pub const CONTROLLER_SERVER_NAME: &str = "palisade-controller";

/// How long an agent waits for its QUIC handshake with the controller. The controller abandons
/// a handshake that takes longer: its agent has given up on it, and it would hold a handshake
/// place until its idle time-out.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// QUIC application close codes; the reason text says more.
pub mod close_code {
    pub const NORMAL: u32 = 0;
    /// The connection's certificate is revoked, superseded or unknown.
    pub const REFUSED: u32 = 1;
    pub const PROTOCOL: u32 = 2;
    /// The device was offboarded; its certificate is revoked.
    pub const OFFBOARDED: u32 = 3;
    /// A newer connection of the same device took over.
    pub const REPLACED: u32 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Opening {
    Enroll(EnrollRequest),
    Session(Hello),
    Upload(UploadBegin),
    /// Fetch the current rules bundle (see [`RulesRequest`]).
    Rules(RulesRequest),
}

/// Opens a rules stream: the agent asks for the rule set the controller announced. The
/// controller answers with one [`RulesReply`] frame, then (for `Bundle`) `size` raw bytes and
/// FIN. The bytes are a `codec::encode_bundle` of a `sigs::RulesBundle`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RulesRequest {
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RulesReply {
    Bundle {
        version: u64,
        size: u64,
        sha256: [u8; 32],
    },
    Refused {
        reason: String,
    },
}

/// The rule set a device should enforce (sent after `Welcome` and on every upload, only to
/// agents that declared the `scan` capability).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RulesInfo {
    pub version: u64,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 certificate signing request (DER) for the agent's own key.
    pub csr_der: Vec<u8>,
    pub agent_version: String,
    pub inventory: Inventory,
    pub capabilities: Vec<ActionKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum EnrollResponse {
    Enrolled {
        device_id: DeviceId,
        /// The agent's certificate (DER), naming `device_id`.
        certificate_der: Vec<u8>,
        /// The controller's CA certificate (DER).
        ca_der: Vec<u8>,
        /// The controller's Ed25519 public key that signs break-glass release codes.
        breakglass_key: Vec<u8>,
    },
    Refused {
        reason: String,
    },
}

/// First message of a session: who the agent is now. The device id is *not* in it: the
/// controller takes it from the connection's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub agent_version: String,
    pub capabilities: Vec<ActionKind>,
    pub inventory: Inventory,
    pub observed: ObservedState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub addresses: Vec<IpAddr>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub boot_time_unix: u64,
    /// Default gateways (IPv4 and IPv6).
    pub gateways: Vec<IpAddr>,
}

/// What the controller wants to be true on the device. Lasting actions change it; the agent
/// reconciles it at start, on every (re)connect and after tamper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct DesiredState {
    /// Increases with every change, so that a stale copy can be recognised.
    pub revision: u64,
    pub isolation: Option<Isolation>,
    /// Peers this device must not talk to: the addresses of every contained target.
    pub contained: Vec<IpAddr>,
    pub restrict_execution: bool,
    /// What may run besides the trusted system binaries while execution is restricted (the
    /// allowlist of the device's group).
    pub exec_allowlist: ExecAllowlist,
    /// MAC addresses (lowercase, colon-separated) of contained targets: frames from them are
    /// dropped on the local segment, whatever IP address they use.
    pub contained_macs: Vec<String>,
    /// Real-time protection: scan files in the watched directories as their writers finish
    /// (the device group's setting).
    pub realtime_protection: bool,
}

/// An isolation in force: the action that asked for it (so that a local release of it —
/// time box, break-glass code — is recognised when the controller's older copy arrives), its
/// parameters, and when the agent ends it by itself.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize, serde::Deserialize)]
pub struct Isolation {
    pub action: ActionId,
    pub params: IsolateParams,
    /// Unix milliseconds, agent clock: the end of a time-boxed isolation.
    pub until_ms: Option<i64>,
}

/// An isolation the agent ended without the controller: reported in every `ObservedState`
/// until the controller's desired state no longer holds that isolation.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize, serde::Deserialize)]
pub struct LocalRelease {
    pub action: ActionId,
    /// `time box expired`, or `break-glass code N`.
    pub reason: String,
    pub at_ms: i64,
}

/// Executables allowed while execution is restricted, beyond the trusted system paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ExecAllowlist {
    /// SHA-256 digests of allowed files.
    pub sha256: Vec<[u8; 32]>,
    /// Absolute paths of allowed files (exact match).
    pub paths: Vec<String>,
}

/// Something the agent observed on its own, reported for the device's history (an
/// "automated device action" event), not an answer to an action.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DeviceEvent {
    /// Executions denied by the code-execution restriction, aggregated: `count` denials of
    /// the same file for the same user between `first_at_ms` and `last_at_ms`; `pid` and
    /// `ppid` are those of the last one.
    ExecDenied(ExecDenial),
    /// Denials not reported one by one because the agent's report rate limit was reached.
    Suppressed {
        count: u64,
        first_at_ms: i64,
        last_at_ms: i64,
    },
    /// Our nftables table was removed or altered by someone else and was put back.
    NetTamper { found: String, at_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ExecDenial {
    pub path: String,
    /// SHA-256 of the file, when it could be read.
    pub sha256: Option<[u8; 32]>,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: String,
    pub count: u32,
    pub first_at_ms: i64,
    pub last_at_ms: i64,
}

/// What the agent found enforced, for the desired revision it last applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ObservedState {
    pub desired_revision: u64,
    pub isolated: bool,
    pub contained: Vec<IpAddr>,
    pub restrict_execution: bool,
    /// Why observed differs from desired, if it does.
    pub drift: Option<String>,
    /// SHA-256 (hex) of our nftables table as the kernel lists it; `None` when there is none.
    pub net_digest: Option<String>,
    /// Isolations ended on the device without the controller.
    pub local_releases: Vec<LocalRelease>,
    /// Whether real-time protection is watching now.
    pub realtime_protection: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AgentMessage {
    Heartbeat {
        seq: u64,
    },
    /// The action is in the agent's journal: it will not be lost nor run twice.
    Receipt {
        id: ActionId,
    },
    Progress {
        id: ActionId,
        progress: Progress,
    },
    Result(ActionReport),
    Observed(ObservedState),
    Inventory(Inventory),
    /// Things the agent observed on its own (denied executions …), aggregated and rate
    /// limited. Not durable: lost if the agent dies before sending them.
    Events(Vec<DeviceEvent>),
    /// Everything in the agent's quarantine vault now: sent after every (re)connect and after
    /// every quarantine or release.
    Vault(Vec<VaultEntry>),
    /// The rule-set version the agent's scanner enforces now (0: none, built-in EICAR only).
    /// Sent after every `Welcome` and whenever it loads a new set.
    RulesEnforced {
        version: u64,
    },
    /// Files real-time protection found (not durable: lost if the agent dies before sending
    /// them; the files stay where they are).
    Detected(Vec<Detection>),
}

/// A file real-time protection found, as a scan's result detail describes one.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Detection {
    pub path: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// `builtin:…`, `yara:RULE`, `hash:NAME`.
    pub matches: Vec<String>,
    /// Unix milliseconds, agent clock.
    pub at_ms: i64,
}

/// One file held in an agent's quarantine vault.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VaultEntry {
    pub id: String,
    /// Where the file was taken from.
    pub path: String,
    /// Lowercase hex of the original bytes.
    pub sha256: String,
    pub size: u64,
    /// Unix milliseconds.
    pub quarantined_at: i64,
    /// The quarantine action that put it there.
    pub action: ActionId,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Welcome {
    pub device_id: DeviceId,
    /// Controller time, unix milliseconds, for the agent's logs.
    pub server_time_ms: i64,
    pub heartbeat_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ControllerMessage {
    Welcome(Welcome),
    HeartbeatAck {
        seq: u64,
    },
    Deliver(ActionSpec),
    /// The result is committed on the controller; the agent may forget it.
    ResultAck {
        id: ActionId,
    },
    Desired(DesiredState),
    /// The current rule set: fetch it on a rules stream unless already enforced.
    Rules(RulesInfo),
    /// Stop a running action (today: a scan) as soon as possible; it reports what it did.
    Cancel {
        id: ActionId,
    },
}

/// The largest upload sent whole: the agent sends its bytes right after [`UploadBegin`],
/// without waiting for `Resume`, and the controller answers `Resume { offset: 0 }` and keeps it
/// in its database. Nothing this small is worth resuming.
pub const WHOLE_UPLOAD_MAX: u64 = 16 * 1024;

/// Opens an upload stream. The controller answers with [`UploadReply::Resume`], the agent sends
/// the raw bytes from that offset to the end and finishes the stream, and the controller
/// answers again with `Stored` or `Refused` once it has checked the hash. An upload of up to
/// [`WHOLE_UPLOAD_MAX`] bytes sends them before the `Resume`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UploadBegin {
    pub action: ActionId,
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum UploadReply {
    /// Send from this offset: what the controller already holds of this upload.
    Resume {
        offset: u64,
    },
    /// Checked and durable in the controller's artifact store. The action's result names it
    /// (`ActionReport::artifacts`); the controller attaches it to the action then.
    Stored,
    Refused {
        reason: String,
    },
}
