//! The scanner's durable state: uploaded rule sets (the compiled bundle agents fetch), the
//! version each device enforces, each device group's automation level, and the remediation
//! of a scan's detections (automated quarantine actions), committed with the scan's result.

use super::Cached;
use std::fmt;
use std::str::FromStr;

use palisade_common::action::QuarantineParams;
use palisade_common::{ActionParams, ActionSource, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::actions::{self, ActionRecord, Deadlines, NewAction};
use super::{Result, StoreError, audit, now_ms};

/// A stored rule set, without its bundle.
#[derive(Debug, Clone, Serialize)]
pub struct RuleSet {
    pub version: u64,
    pub created_by: String,
    pub created_at: i64,
    pub comment: String,
    pub files: serde_json::Value,
    pub yara_rules: u64,
    pub hash_entries: u64,
    pub size: u64,
    pub sha256: String,
}

/// What a new rule set holds, before it has a version.
pub struct NewRuleSet {
    pub created_by: String,
    pub comment: String,
    pub files: serde_json::Value,
    pub yara_rules: u64,
    pub hash_entries: u64,
}

const COLUMNS: &str =
    "version, created_by, created_at, comment, files, yara_rules, hash_entries, size, sha256";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleSet> {
    let files: String = r.get(4)?;
    Ok(RuleSet {
        version: r.get::<_, i64>(0)? as u64,
        created_by: r.get(1)?,
        created_at: r.get(2)?,
        comment: r.get(3)?,
        files: serde_json::from_str(&files).unwrap_or(serde_json::Value::Null),
        yara_rules: r.get::<_, i64>(5)? as u64,
        hash_entries: r.get::<_, i64>(6)? as u64,
        size: r.get::<_, i64>(7)? as u64,
        sha256: r.get(8)?,
    })
}

/// Stores a new rule set under the next version. `bundle` turns the version into the bytes
/// agents fetch (and their SHA-256, lowercase hex).
pub fn insert(
    conn: &Connection,
    new: NewRuleSet,
    bundle: impl FnOnce(u64) -> std::result::Result<(Vec<u8>, String), String>,
) -> Result<RuleSet> {
    let version: i64 = conn.query_row_cached(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM rule_sets",
        [],
        |r| r.get(0),
    )?;
    let (bytes, sha256) = bundle(version as u64).map_err(StoreError::Invalid)?;
    conn.execute_cached(
        "INSERT INTO rule_sets (version, created_by, created_at, comment, files, yara_rules, hash_entries, size, sha256, bundle)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            version,
            new.created_by,
            now_ms(),
            new.comment,
            new.files.to_string(),
            new.yara_rules as i64,
            new.hash_entries as i64,
            bytes.len() as i64,
            sha256,
            bytes
        ],
    )?;
    audit::append(
        conn,
        &new.created_by,
        "rules_uploaded",
        None,
        None,
        &serde_json::json!({"version": version, "files": new.files, "yara_rules": new.yara_rules,
            "hash_entries": new.hash_entries, "sha256": sha256, "comment": new.comment}),
    )?;
    get(conn, version as u64)?.ok_or_else(|| StoreError::Sql("rule set vanished".into()))
}

pub fn get(conn: &Connection, version: u64) -> Result<Option<RuleSet>> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {COLUMNS} FROM rule_sets WHERE version = ?1"),
            [version as i64],
            from_row,
        )
        .optional()?)
}

/// The newest rule set: the one every device should enforce.
pub fn current(conn: &Connection) -> Result<Option<RuleSet>> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {COLUMNS} FROM rule_sets ORDER BY version DESC LIMIT 1"),
            [],
            from_row,
        )
        .optional()?)
}

/// Every rule set, newest first.
pub fn list(conn: &Connection) -> Result<Vec<RuleSet>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM rule_sets ORDER BY version DESC"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The bundle of a version, as agents fetch it.
pub fn bundle(conn: &Connection, version: u64) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row_cached(
            "SELECT bundle FROM rule_sets WHERE version = ?1",
            [version as i64],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records the rule-set version a device's scanner enforces.
pub fn set_enforced(conn: &Connection, device: &DeviceId, version: u64) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET rules_version = ?2 WHERE id = ?1",
        params![device.as_str(), version as i64],
    )?;
    Ok(())
}

/// What happens to a detection, per device group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutomationLevel {
    /// A quarantine action, approved at once.
    Full,
    /// A quarantine action, pending approval.
    Semi,
    /// Recorded as a detection only.
    None,
}

impl AutomationLevel {
    /// The level of a group nobody configured.
    pub const DEFAULT: AutomationLevel = AutomationLevel::Semi;

    pub fn as_str(self) -> &'static str {
        match self {
            AutomationLevel::Full => "full",
            AutomationLevel::Semi => "semi",
            AutomationLevel::None => "none",
        }
    }
}

impl fmt::Display for AutomationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AutomationLevel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(AutomationLevel::Full),
            "semi" => Ok(AutomationLevel::Semi),
            "none" => Ok(AutomationLevel::None),
            other => Err(format!(
                "automation level {other:?} is not full, semi or none"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Automation {
    pub device_group: String,
    pub level: AutomationLevel,
    pub updated_by: Option<String>,
    pub updated_at: Option<i64>,
}

/// A group's level: its own, else the `*` default row, else [`AutomationLevel::DEFAULT`].
pub fn automation_for(conn: &Connection, group: &str) -> Result<AutomationLevel> {
    let level: Option<String> = conn
        .query_row_cached(
            "SELECT level FROM automation WHERE device_group IN (?1, '*')
             ORDER BY device_group = '*' LIMIT 1",
            [group],
            |r| r.get(0),
        )
        .optional()?;
    Ok(level
        .and_then(|l| l.parse().ok())
        .unwrap_or(AutomationLevel::DEFAULT))
}

pub fn set_automation(
    conn: &Connection,
    actor: &str,
    group: &str,
    level: AutomationLevel,
) -> Result<()> {
    if group.is_empty() || group.len() > 64 {
        return Err(StoreError::Invalid(
            "a device group name is 1 to 64 characters (or * for the default)".into(),
        ));
    }
    conn.execute_cached(
        "INSERT INTO automation (device_group, level, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_group) DO UPDATE SET level = ?2, updated_by = ?3, updated_at = ?4",
        params![group, level.as_str(), actor, now_ms()],
    )?;
    audit::append(
        conn,
        actor,
        "automation_set",
        None,
        None,
        &serde_json::json!({"device_group": group, "level": level}),
    )?;
    Ok(())
}

pub fn list_automation(conn: &Connection) -> Result<Vec<Automation>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_group, level, updated_by, updated_at FROM automation ORDER BY device_group",
    )?;
    let rows = stmt.query_map([], |r| {
        let level: String = r.get(1)?;
        Ok(Automation {
            device_group: r.get(0)?,
            level: level.parse().unwrap_or(AutomationLevel::DEFAULT),
            updated_by: r.get(2)?,
            updated_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// One detection as the agent reports it in a scan's result detail.
#[derive(Debug, Clone, Deserialize)]
pub struct Detection {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub matches: Vec<String>,
}

/// Turns the detections of a scan's stored result into what the device group's automation
/// level asks for (see [`remediate_detections`]). Runs in the transaction that records the
/// result. Returns the actions created.
pub fn remediate(
    conn: &Connection,
    scan: &ActionRecord,
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    let (Some(device), Some(group)) = (&scan.device_id, &scan.device_group) else {
        return Ok(vec![]);
    };
    let detections: Vec<Detection> = scan
        .result_detail
        .as_ref()
        .and_then(|d| d.get("detections"))
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default();
    remediate_detections(
        conn,
        device,
        group,
        Origin::Scan(scan.id),
        detections,
        deadlines,
    )
}

/// Most detections of one real-time report acted on; the rest are only counted in the log.
pub const MAX_REALTIME_DETECTIONS: usize = 1000;

/// Turns what a device's real-time protection found into what its group's automation level
/// asks for, exactly as a scan's detections. Returns the actions created.
pub fn remediate_realtime(
    conn: &Connection,
    device: &DeviceId,
    found: &[palisade_common::wire::Detection],
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    let group: Option<String> = conn
        .query_row_cached(
            "SELECT device_group FROM devices WHERE id = ?1 AND status = 'active'",
            [device.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(group) = group else {
        return Ok(vec![]);
    };
    let detections = found
        .iter()
        .take(MAX_REALTIME_DETECTIONS)
        .map(|d| Detection {
            path: d.path.clone(),
            sha256: d.sha256.clone(),
            size: d.size,
            matches: d.matches.clone(),
        })
        .collect();
    remediate_detections(
        conn,
        device,
        &group,
        Origin::Realtime,
        detections,
        deadlines,
    )
}

/// Where detections come from.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A scan action's result.
    Scan(palisade_common::ActionId),
    /// The device's real-time protection.
    Realtime,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Scan(id) => write!(f, "scan {id}"),
            Origin::Realtime => f.write_str("real-time protection"),
        }
    }
}

/// A quarantine still open on a device for a path: a detection's duplicate.
pub(super) const OPEN_QUARANTINE: &str =
    "SELECT id FROM actions WHERE device_id = ?1 AND kind = 'quarantine'
     AND status IN ('pending_approval','approved','delivered','acknowledged','in_progress')
     AND json_extract(params, '$.path') = ?2 LIMIT 1";
/// Every detection is recorded in the device's history (source automated device action);
/// with `full` or `semi` each also gets a *stop and quarantine* action (source automated
/// device action), approved at once or pending, unless an open quarantine of the same path
/// on the same device exists. Detections a quarantine could not act on (not an absolute
/// path, not a SHA-256) are recorded only.
pub fn remediate_detections(
    conn: &Connection,
    device: &DeviceId,
    group: &str,
    origin: Origin,
    detections: Vec<Detection>,
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    if detections.is_empty() {
        return Ok(vec![]);
    }
    let level = automation_for(conn, group)?;
    let now = now_ms();
    let scan_id = match origin {
        Origin::Scan(id) => Some(id),
        Origin::Realtime => None,
    };
    let mut created = Vec::new();
    for det in detections {
        if palisade_common::action::check_sha256(&det.sha256).is_err() || !det.path.starts_with('/')
        {
            continue; // not something a quarantine could act on; the result still shows it
        }
        let names = det.matches.join(", ");
        let summary = format!("{} detected in {} ({} bytes)", names, det.path, det.size);
        let summary = match origin {
            Origin::Scan(_) => summary,
            Origin::Realtime => format!("real-time protection: {summary}"),
        };
        let params = ActionParams::Quarantine(QuarantineParams {
            path: Some(det.path.clone()),
            sha256: Some(det.sha256.clone()),
            roots: vec![],
        });
        let open: Option<i64> = if level == AutomationLevel::None || params.validate().is_err() {
            None
        } else {
            conn.query_row_cached(OPEN_QUARANTINE, params![device.as_str(), det.path], |r| {
                r.get(0)
            })
            .optional()?
        };
        let action = match (level, open) {
            (AutomationLevel::None, _) => None,
            (_, Some(id)) => Some(("duplicate", id as u64)),
            (_, None) if params.validate().is_err() => None,
            (level, None) => {
                let comment = match origin {
                    Origin::Scan(id) => format!("scan {id}: {summary}"),
                    Origin::Realtime => summary.clone(),
                };
                let rec = actions::create_automated(
                    conn,
                    NewAction {
                        params,
                        device: Some(device.clone()),
                        device_group: group.to_owned(),
                        source: ActionSource::AutomatedDeviceAction,
                        requested_by: "scanner".into(),
                        comment,
                        external_id: None,
                        undo_of: None,
                        parent: None,
                    },
                    deadlines,
                    level == AutomationLevel::Full,
                )?;
                let id = rec.id.0;
                created.push(rec);
                Some(("created", id))
            }
        };
        let detail = serde_json::json!({
            "scan": scan_id, "origin": origin.to_string(),
            "path": det.path, "sha256": det.sha256, "size": det.size,
            "matches": det.matches, "automation": level,
            "quarantine": action.map(|(how, id)| serde_json::json!({"action": id, "how": how})),
        });
        conn.execute_cached(
            "INSERT INTO device_events (device_id, source, kind, summary, detail, count, first_at, last_at, received_at)
             VALUES (?1, ?2, 'detection', ?3, ?4, 1, ?5, ?5, ?5)",
            params![
                device.as_str(),
                ActionSource::AutomatedDeviceAction.as_str(),
                summary,
                detail.to_string(),
                now
            ],
        )?;
        audit::append(conn, "scanner", "detection", scan_id, Some(device), &detail)?;
    }
    Ok(created)
}

/// Audits an operator's request to stop running scans (the agents report the end).
pub fn stop_requested(
    conn: &Connection,
    records: &[ActionRecord],
    actor: &str,
    comment: &str,
) -> Result<()> {
    for r in records {
        audit::append(
            conn,
            actor,
            "stop_requested",
            Some(r.id),
            r.device_id.as_ref(),
            &serde_json::json!({"comment": comment}),
        )?;
    }
    Ok(())
}
