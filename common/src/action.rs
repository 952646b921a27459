//! The action model shared by agent, controller and operator tools: what can be asked of a
//! device, with which parameters, and the lifecycle every request walks through.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{ActionId, DeviceId};

/// What an action does. The string form (`request_sample`) is the one used by the API, the CLI
/// and the database.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Isolate,
    ReleaseIsolation,
    Contain,
    Uncontain,
    Quarantine,
    ReleaseQuarantine,
    Scan,
    RestrictExecution,
    ReleaseExecution,
    CollectPackage,
    RequestSample,
    Offboard,
}

impl ActionKind {
    pub const ALL: [ActionKind; 12] = [
        ActionKind::Isolate,
        ActionKind::ReleaseIsolation,
        ActionKind::Contain,
        ActionKind::Uncontain,
        ActionKind::Quarantine,
        ActionKind::ReleaseQuarantine,
        ActionKind::Scan,
        ActionKind::RestrictExecution,
        ActionKind::ReleaseExecution,
        ActionKind::CollectPackage,
        ActionKind::RequestSample,
        ActionKind::Offboard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Isolate => "isolate",
            ActionKind::ReleaseIsolation => "release_isolation",
            ActionKind::Contain => "contain",
            ActionKind::Uncontain => "uncontain",
            ActionKind::Quarantine => "quarantine",
            ActionKind::ReleaseQuarantine => "release_quarantine",
            ActionKind::Scan => "scan",
            ActionKind::RestrictExecution => "restrict_execution",
            ActionKind::ReleaseExecution => "release_execution",
            ActionKind::CollectPackage => "collect_package",
            ActionKind::RequestSample => "request_sample",
            ActionKind::Offboard => "offboard",
        }
    }

    /// Kinds the controller carries out itself when they are approved (they change the
    /// desired state of other devices), never delivered to an agent.
    pub fn runs_on_controller(self) -> bool {
        matches!(self, ActionKind::Contain | ActionKind::Uncontain)
    }

    /// The action that undoes a succeeded action of this kind, for the kinds with lasting state.
    pub fn undo(self) -> Option<ActionKind> {
        match self {
            ActionKind::Isolate => Some(ActionKind::ReleaseIsolation),
            ActionKind::Contain => Some(ActionKind::Uncontain),
            ActionKind::Quarantine => Some(ActionKind::ReleaseQuarantine),
            ActionKind::RestrictExecution => Some(ActionKind::ReleaseExecution),
            _ => None,
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionKind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.replace('-', "_");
        ActionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| ParseError::new("action kind", s, &names(&ActionKind::ALL)))
    }
}

/// The parameters of an action; the variant decides the kind.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionParams {
    Isolate(IsolateParams),
    ReleaseIsolation {},
    Contain(ContainParams),
    Uncontain(ContainParams),
    Quarantine(QuarantineParams),
    ReleaseQuarantine(ReleaseQuarantineParams),
    Scan(ScanParams),
    RestrictExecution {},
    ReleaseExecution {},
    CollectPackage {},
    RequestSample(RequestSampleParams),
    Offboard {},
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateParams {
    #[serde(default)]
    pub selective: bool,
    /// Allowed traffic besides the controller, for selective isolation.
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// Seconds after which the agent releases the isolation by itself.
    #[serde(default)]
    pub for_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainParams {
    #[serde(default)]
    pub device: Option<DeviceId>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub mac: Option<String>,
    /// Contain even an address several devices share or that is a peer's default gateway.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineParams {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub roots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuarantineParams {
    #[serde(default)]
    pub entry: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub restore_path: Option<String>,
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanParams {
    /// `quick`, `full` or `custom`.
    pub mode: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub exclusions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSampleParams {
    /// Absolute path of the file to upload.
    pub path: String,
}

impl ActionParams {
    pub fn kind(&self) -> ActionKind {
        match self {
            ActionParams::Isolate(_) => ActionKind::Isolate,
            ActionParams::ReleaseIsolation {} => ActionKind::ReleaseIsolation,
            ActionParams::Contain(_) => ActionKind::Contain,
            ActionParams::Uncontain(_) => ActionKind::Uncontain,
            ActionParams::Quarantine(_) => ActionKind::Quarantine,
            ActionParams::ReleaseQuarantine(_) => ActionKind::ReleaseQuarantine,
            ActionParams::Scan(_) => ActionKind::Scan,
            ActionParams::RestrictExecution {} => ActionKind::RestrictExecution,
            ActionParams::ReleaseExecution {} => ActionKind::ReleaseExecution,
            ActionParams::CollectPackage {} => ActionKind::CollectPackage,
            ActionParams::RequestSample(_) => ActionKind::RequestSample,
            ActionParams::Offboard {} => ActionKind::Offboard,
        }
    }

    /// Checks what can be checked without the device, so that a bad request is refused when it
    /// is made rather than failing on the device days later.
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{self, MAX_EXCEPTION_CHARS, MAX_EXCEPTIONS, MAX_PATHS};
        match self {
            ActionParams::RequestSample(p) => check_path("path", &p.path),
            ActionParams::Quarantine(p) => {
                if p.path.is_none() && p.sha256.is_none() {
                    return Err("name a path, or a sha256 with search roots".into());
                }
                if let Some(path) = &p.path {
                    check_path("path", path)?;
                }
                if let Some(sha) = &p.sha256 {
                    check_sha256(sha)?;
                    if p.path.is_none() && p.roots.is_empty() {
                        return Err("a quarantine by sha256 needs at least one search root".into());
                    }
                }
                limits::check_count("roots", p.roots.len(), MAX_PATHS)?;
                p.roots.iter().try_for_each(|r| check_path("roots", r))
            }
            ActionParams::ReleaseQuarantine(p) => {
                if p.entry.is_none() && p.sha256.is_none() {
                    return Err("name a vault entry or a sha256 to release".into());
                }
                if let Some(entry) = &p.entry {
                    check_entry_id(entry)?;
                }
                if let Some(sha) = &p.sha256 {
                    check_sha256(sha)?;
                }
                p.restore_path
                    .as_deref()
                    .map_or(Ok(()), |r| check_path("restore_path", r))
            }
            ActionParams::Scan(p) => {
                match p.mode.as_str() {
                    "quick" | "full" if !p.paths.is_empty() => {
                        return Err(format!(
                            "a {} scan covers its own paths; name paths with mode custom",
                            p.mode
                        ));
                    }
                    "quick" | "full" => {}
                    "custom" if !p.paths.is_empty() => {}
                    "custom" => return Err("a custom scan needs at least one path".into()),
                    other => {
                        limits::check_chars("mode", other, 16)?;
                        return Err(format!("scan mode {other:?} is not quick, full or custom"));
                    }
                }
                limits::check_count("paths", p.paths.len(), MAX_PATHS)?;
                limits::check_count("exclusions", p.exclusions.len(), MAX_PATHS)?;
                p.paths.iter().try_for_each(|r| check_path("paths", r))?;
                p.exclusions.iter().try_for_each(|e| check_exclusion(e))
            }
            ActionParams::Isolate(p) => {
                if !p.selective && !p.exceptions.is_empty() {
                    return Err("exceptions are for selective isolation (add --selective)".into());
                }
                if p.for_secs == Some(0) {
                    return Err("an isolation for 0 seconds would end at once".into());
                }
                if let Some(secs) = p.for_secs.filter(|s| *s > limits::MAX_ISOLATION_SECS) {
                    return Err(format!(
                        "an isolation for {secs} seconds is longer than the limit of {} seconds (90 days)",
                        limits::MAX_ISOLATION_SECS
                    ));
                }
                limits::check_count("exceptions", p.exceptions.len(), MAX_EXCEPTIONS)?;
                for e in &p.exceptions {
                    limits::check_chars("exceptions", e, MAX_EXCEPTION_CHARS)?;
                    crate::net::Exception::parse(e)?;
                }
                Ok(())
            }
            // The target may also come as the request's device; the controller checks it.
            ActionParams::Contain(p) | ActionParams::Uncontain(p) => match &p.mac {
                Some(mac) if !is_mac(mac) => {
                    limits::check_chars("mac", mac, 17)?;
                    Err(format!(
                        "mac {mac:?} is not six hex octets separated by colons"
                    ))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn is_mac(mac: &str) -> bool {
    let octets: Vec<&str> = mac.split(':').collect();
    octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An absolute path without `..` or NUL, at most [`crate::limits::MAX_PATH_BYTES`]: what a
/// device is asked to act on. `field` names it in the error.
fn check_path(field: &str, path: &str) -> Result<(), String> {
    crate::limits::check_path_len(field, path)?;
    if !path.starts_with('/') {
        return Err(format!("{field} {path:?} is not absolute"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{field} {path:?} contains '..'"));
    }
    if path.contains('\0') {
        return Err(format!("{field} contains a NUL byte"));
    }
    Ok(())
}

/// A scan exclusion: an absolute path (everything under it), or a glob (`*`, `?`, `[`)
/// matched against whole absolute paths. A relative path would never match anything.
fn check_exclusion(pattern: &str) -> Result<(), String> {
    crate::limits::check_path_len("exclusions", pattern)?;
    if pattern.contains(['*', '?', '[']) {
        if pattern.contains('\0') {
            return Err("exclusions: pattern contains a NUL byte".into());
        }
        return Ok(());
    }
    check_path("exclusions", pattern)
}

/// 64 lowercase hex digits.
pub fn check_sha256(sha: &str) -> Result<(), String> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("sha256 {sha:?} is not 64 lowercase hex digits"))
    }
}

/// Vault entry ids are 1 to 64 characters of `[0-9a-z-]`: they name files in the vault.
pub fn check_entry_id(id: &str) -> Result<(), String> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'-'))
    {
        Ok(())
    } else {
        Err(format!(
            "vault entry id {id:?} is not 1 to 64 characters of 0-9, a-z and -"
        ))
    }
}

/// Where a request came from, in the Action center's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionSource {
    ManualDeviceAction,
    AutomatedDeviceAction,
    ManualLiveResponseAction,
    LiveResponseActionViaApi,
    ApiAction,
}

impl ActionSource {
    pub const ALL: [ActionSource; 5] = [
        ActionSource::ManualDeviceAction,
        ActionSource::AutomatedDeviceAction,
        ActionSource::ManualLiveResponseAction,
        ActionSource::LiveResponseActionViaApi,
        ActionSource::ApiAction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionSource::ManualDeviceAction => "manual_device_action",
            ActionSource::AutomatedDeviceAction => "automated_device_action",
            ActionSource::ManualLiveResponseAction => "manual_live_response_action",
            ActionSource::LiveResponseActionViaApi => "live_response_action_via_api",
            ActionSource::ApiAction => "api_action",
        }
    }
}

impl fmt::Display for ActionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionSource {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.replace('-', "_");
        ActionSource::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| ParseError::new("action source", s, &names(&ActionSource::ALL)))
    }
}

/// Where an action is in its lifecycle. States only move forward (see [`ActionStatus::can_move_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    PendingApproval,
    Approved,
    Delivered,
    Acknowledged,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
    Expired,
    TimedOut,
    Undone,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 12] = [
        ActionStatus::PendingApproval,
        ActionStatus::Approved,
        ActionStatus::Delivered,
        ActionStatus::Acknowledged,
        ActionStatus::InProgress,
        ActionStatus::Succeeded,
        ActionStatus::Failed,
        ActionStatus::Rejected,
        ActionStatus::Cancelled,
        ActionStatus::Expired,
        ActionStatus::TimedOut,
        ActionStatus::Undone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::PendingApproval => "pending_approval",
            ActionStatus::Approved => "approved",
            ActionStatus::Delivered => "delivered",
            ActionStatus::Acknowledged => "acknowledged",
            ActionStatus::InProgress => "in_progress",
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Cancelled => "cancelled",
            ActionStatus::Expired => "expired",
            ActionStatus::TimedOut => "timed_out",
            ActionStatus::Undone => "undone",
        }
    }

    /// Position on the main path; side exits share the rank of the end of the path.
    fn rank(self) -> u8 {
        match self {
            ActionStatus::PendingApproval => 0,
            ActionStatus::Approved => 1,
            ActionStatus::Delivered => 2,
            ActionStatus::Acknowledged => 3,
            ActionStatus::InProgress => 4,
            ActionStatus::Succeeded
            | ActionStatus::Failed
            | ActionStatus::Rejected
            | ActionStatus::Cancelled
            | ActionStatus::Expired
            | ActionStatus::TimedOut => 5,
            ActionStatus::Undone => 6,
        }
    }

    /// No further transition is possible, except `Succeeded → Undone`.
    pub fn is_final(self) -> bool {
        self.rank() >= 5
    }

    /// Approved and not yet finished: the device owes a result.
    pub fn is_outstanding(self) -> bool {
        matches!(
            self,
            ActionStatus::Approved
                | ActionStatus::Delivered
                | ActionStatus::Acknowledged
                | ActionStatus::InProgress
        )
    }

    /// Whether the lifecycle allows moving from `self` to `to`. A repeated or late message
    /// asks for a move that is not allowed, and the caller keeps the current state.
    /// Whether a device may end an action in this state as `Cancelled`: a running scan that
    /// the operator stopped on the device (the operator's own cancel goes by `can_move_to`).
    pub fn can_be_stopped(self) -> bool {
        matches!(
            self,
            ActionStatus::Delivered | ActionStatus::Acknowledged | ActionStatus::InProgress
        )
    }

    pub fn can_move_to(self, to: ActionStatus) -> bool {
        use ActionStatus::*;
        match to {
            Rejected | Expired => self == PendingApproval,
            Cancelled => matches!(self, PendingApproval | Approved),
            TimedOut => self.is_outstanding(),
            Undone => self == Succeeded,
            Approved => self == PendingApproval,
            Delivered | Acknowledged | InProgress | Succeeded | Failed => {
                self.is_outstanding() && self.rank() < to.rank()
            }
            PendingApproval => false,
        }
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.replace('-', "_");
        ActionStatus::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| ParseError::new("action status", s, &names(&ActionStatus::ALL)))
    }
}

/// An approved action as the agent receives it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ActionSpec {
    pub id: ActionId,
    pub params: ActionParams,
}

/// How an action ended on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// A file the agent uploaded for an action (a sample, a package).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The agent's account of a finished action: the state it checked, not a command's exit code.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ActionReport {
    pub id: ActionId,
    pub outcome: Outcome,
    /// One line for tables.
    pub summary: String,
    /// Structured detail as JSON text (kind-specific).
    pub detail: String,
    pub artifacts: Vec<ArtifactRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Progress {
    pub message: String,
    /// Per mille done, when the action can tell.
    pub permille: Option<u16>,
}

/// A refused parse of one of the enums above, listing what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}; expected one of: {expected}")]
pub struct ParseError {
    what: &'static str,
    got: String,
    expected: String,
}

impl ParseError {
    fn new(what: &'static str, got: &str, expected: &str) -> ParseError {
        ParseError {
            what,
            got: got.chars().take(80).collect(),
            expected: expected.to_owned(),
        }
    }
}

fn names<T: fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActionStatus::*;

    #[test]
    fn lifecycle_only_moves_forward() {
        let path = [
            PendingApproval,
            Approved,
            Delivered,
            Acknowledged,
            InProgress,
            Succeeded,
        ];
        for pair in path.windows(2) {
            assert!(
                pair[0].can_move_to(pair[1]),
                "{:?} -> {:?}",
                pair[0],
                pair[1]
            );
            assert!(
                !pair[1].can_move_to(pair[0]),
                "{:?} -> {:?}",
                pair[1],
                pair[0]
            );
        }
        // A receipt that arrives after the result leaves the result in place.
        assert!(!Succeeded.can_move_to(Acknowledged));
        assert!(!Failed.can_move_to(Succeeded));
        // Skipping hops is allowed: a result may arrive without a separate receipt.
        assert!(Delivered.can_move_to(Succeeded));
        assert!(Approved.can_move_to(InProgress));
    }

    #[test]
    fn side_exits_are_guarded() {
        assert!(PendingApproval.can_move_to(Rejected));
        assert!(!Approved.can_move_to(Rejected));
        assert!(PendingApproval.can_move_to(Expired));
        assert!(Approved.can_move_to(Cancelled));
        assert!(!Delivered.can_move_to(Cancelled));
        assert!(Delivered.can_move_to(TimedOut));
        assert!(!PendingApproval.can_move_to(TimedOut));
        assert!(Succeeded.can_move_to(Undone));
        assert!(!Failed.can_move_to(Undone));
        for s in ActionStatus::ALL {
            assert!(!s.can_move_to(PendingApproval));
        }
    }

    #[test]
    fn names_round_trip() {
        for k in ActionKind::ALL {
            assert_eq!(k.as_str().parse::<ActionKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for s in ActionStatus::ALL {
            assert_eq!(s.as_str().parse::<ActionStatus>().unwrap(), s);
        }
        for s in ActionSource::ALL {
            assert_eq!(s.as_str().parse::<ActionSource>().unwrap(), s);
        }
        assert_eq!(
            "request-sample".parse::<ActionKind>().unwrap(),
            ActionKind::RequestSample
        );
        let err = "explode".parse::<ActionKind>().unwrap_err().to_string();
        assert!(err.contains("unknown action kind \"explode\""), "{err}");
    }

    #[test]
    fn params_json_names_the_kind() {
        let p: ActionParams =
            serde_json::from_str(r#"{"kind":"request_sample","path":"/etc/hosts"}"#).unwrap();
        assert_eq!(p.kind(), ActionKind::RequestSample);
        let p: ActionParams = serde_json::from_str(r#"{"kind":"offboard"}"#).unwrap();
        assert_eq!(p, ActionParams::Offboard {});
        assert!(serde_json::from_str::<ActionParams>(r#"{"kind":"offboard","x":1}"#).is_err());
    }

    #[test]
    fn scan_and_isolation_params_are_bounded_and_make_sense() {
        let scan = |mode: &str, paths: &[&str], exclusions: &[&str]| {
            ActionParams::Scan(ScanParams {
                mode: mode.into(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
                exclusions: exclusions.iter().map(|s| s.to_string()).collect(),
            })
            .validate()
        };
        assert!(scan("custom", &["/srv"], &["/srv/cache", "*.iso"]).is_ok());
        assert!(scan("quick", &[], &[]).is_ok());
        let e = scan("quick", &["/tmp"], &[]).unwrap_err();
        assert!(e.contains("name paths with mode custom"), "{e}");
        let e = scan("custom", &["tmp"], &[]).unwrap_err();
        assert_eq!(e, "paths \"tmp\" is not absolute");
        let e = scan("custom", &["/srv"], &["cache"]).unwrap_err();
        assert_eq!(e, "exclusions \"cache\" is not absolute");
        let long = format!("/{}", "a".repeat(100_000));
        let e = scan("custom", &[&long], &[]).unwrap_err();
        assert_eq!(e, "paths is 100001 bytes long; the limit is 4096");
        let many = vec!["/a"; 65];
        let e = scan("custom", &many, &[]).unwrap_err();
        assert_eq!(e, "paths has 65 entries; the limit is 64");
        let sample = ActionParams::RequestSample(RequestSampleParams { path: long });
        assert_eq!(
            sample.validate().unwrap_err(),
            "path is 100001 bytes long; the limit is 4096"
        );
        let iso = |for_secs| {
            ActionParams::Isolate(IsolateParams {
                selective: false,
                exceptions: vec![],
                for_secs,
            })
            .validate()
        };
        assert!(iso(Some(crate::limits::MAX_ISOLATION_SECS)).is_ok());
        let e = iso(Some(99 * 365 * 86_400)).unwrap_err();
        assert!(
            e.contains("longer than the limit of 7776000 seconds"),
            "{e}"
        );
    }

    #[test]
    fn sample_paths_are_checked_at_request_time() {
        let p = |s: &str| ActionParams::RequestSample(RequestSampleParams { path: s.into() });
        assert!(p("/etc/hosts").validate().is_ok());
        assert!(p("etc/hosts").validate().is_err());
        assert!(p("/etc/../root/x").validate().is_err());
    }

    #[test]
    fn quarantine_and_release_params_are_checked_at_request_time() {
        let sha = "ab".repeat(32);
        let q = |path: Option<&str>, sha256: Option<&str>, roots: &[&str]| {
            ActionParams::Quarantine(QuarantineParams {
                path: path.map(Into::into),
                sha256: sha256.map(Into::into),
                roots: roots.iter().map(|r| r.to_string()).collect(),
            })
            .validate()
        };
        assert!(q(Some("/tmp/x"), None, &[]).is_ok());
        assert!(q(None, Some(&sha), &["/opt"]).is_ok());
        assert!(
            q(None, Some(&sha), &[])
                .unwrap_err()
                .contains("search root")
        );
        assert!(q(None, None, &[]).is_err());
        assert!(q(None, Some("ABC"), &["/"]).unwrap_err().contains("hex"));
        assert!(q(Some("rel/x"), None, &[]).is_err());
        let r = |entry: Option<&str>, restore: Option<&str>| {
            ActionParams::ReleaseQuarantine(ReleaseQuarantineParams {
                entry: entry.map(Into::into),
                sha256: None,
                restore_path: restore.map(Into::into),
                overwrite: false,
            })
            .validate()
        };
        assert!(r(Some("0123abcd"), None).is_ok());
        assert!(r(Some("../../etc"), None).is_err());
        assert!(r(None, None).is_err());
        assert!(r(Some("e1"), Some("x/y")).is_err());
    }

    #[test]
    fn an_isolations_time_box_is_bounded() {
        let iso = |for_secs| {
            ActionParams::Isolate(IsolateParams {
                selective: false,
                exceptions: vec![],
                for_secs,
            })
            .validate()
        };
        assert!(iso(None).is_ok());
        assert!(iso(Some(crate::limits::MAX_ISOLATION_SECS)).is_ok());
        let e = iso(Some(crate::limits::MAX_ISOLATION_SECS + 1)).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        assert!(iso(Some(u64::MAX)).is_err());
    }
}
