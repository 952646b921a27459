//! What a device's hops do to its actions: delivery, receipt, progress, the result, and the
//! sweep of those past their deadline.

use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome, Progress};
use palisade_common::{ActionId, ActionStatus, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{ActionRecord, conv, get, mark_undone, set_status, settle_parent};
use crate::store::{Cached, Result, StoreError, audit, now_ms};

/// Approved, unfinished actions of a device, oldest first: what a (re)connecting agent gets.
/// A device's actions between approval and result.
pub(in crate::store) const OUTSTANDING: &str = "SELECT id, params FROM actions WHERE device_id = ?1
     AND status IN ('approved', 'delivered', 'acknowledged', 'in_progress')";

pub fn outstanding(conn: &Connection, device: &DeviceId) -> Result<Vec<ActionSpec>> {
    // Sorted here, not by the query: `ORDER BY id` had SQLite walk the device's whole history
    // in id order (`actions_by_device`) to skip a sort of a few rows, at every reconnect.
    let mut stmt = conn.prepare_cached(OUTSTANDING)?;
    let rows = stmt.query_map([device.as_str()], |r| {
        let params: String = r.get(1)?;
        Ok(ActionSpec {
            id: ActionId(r.get::<_, i64>(0)? as u64),
            params: serde_json::from_str(&params).map_err(|e| conv(1, e))?,
        })
    })?;
    let mut specs: Vec<ActionSpec> = rows.collect::<Result<_, _>>()?;
    specs.sort_by_key(|s| s.id.0);
    Ok(specs)
}

/// Fetches an action that a device speaks about and checks that it is that device's.
fn owned(conn: &Connection, device: &DeviceId, id: ActionId) -> Result<ActionRecord> {
    let rec = get(conn, id)?;
    if rec.device_id.as_ref() != Some(device) {
        return Err(StoreError::Conflict(format!(
            "device {device} reported on action {id}, which is not its own"
        )));
    }
    Ok(rec)
}

/// The status of an action a device speaks about, checked to be that device's: what a hop
/// needs, without reading the whole record (a hop per device per action, at fleet scale).
pub fn owned_status(conn: &Connection, device: &DeviceId, id: ActionId) -> Result<ActionStatus> {
    let row: Option<(Option<String>, String)> = conn
        .prepare_cached("SELECT device_id, status FROM actions WHERE id = ?1")?
        .query_row([id.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (owner, status) = row.ok_or_else(|| StoreError::NotFound(format!("no action {id}")))?;
    if owner.as_deref() != Some(device.as_str()) {
        return Err(StoreError::Conflict(format!(
            "device {device} reported on action {id}, which is not its own"
        )));
    }
    status
        .parse()
        .map_err(|e| StoreError::Sql(format!("action {id} has status {status:?}: {e}")))
}

/// Refuses unless the action is `device`'s and still open (an upload for it may be stored).
pub fn owned_open(conn: &Connection, device: &DeviceId, id: ActionId) -> Result<()> {
    let status = owned_status(conn, device, id)?;
    if !status.is_outstanding() {
        return Err(StoreError::Conflict(format!("action {id} is {status}")));
    }
    Ok(())
}

/// Records that an action was handed to the device's connection. Repeated deliveries of an
/// action already delivered change nothing.
pub fn delivered(conn: &Connection, device: &DeviceId, id: ActionId) -> Result<bool> {
    let status = owned_status(conn, device, id)?;
    if !status.can_move_to(ActionStatus::Delivered) {
        return Ok(status.is_outstanding());
    }
    set_status(conn, id, ActionStatus::Delivered, "delivered_at", now_ms())?;
    audit::append(
        conn,
        device.as_str(),
        "delivered",
        Some(id),
        Some(device),
        &serde_json::json!({}),
    )?;
    Ok(true)
}

/// [`delivered`] for many actions in one job: an approval's, to every device with a live
/// connection. A fleet-wide approval is then one write instead of one per device. Returns the
/// actions to send.
pub fn delivered_all(conn: &Connection, actions: &[(DeviceId, ActionId)]) -> Result<Vec<ActionId>> {
    let mut send = Vec::with_capacity(actions.len());
    for (device, id) in actions {
        if delivered(conn, device, *id)? {
            send.push(*id);
        }
    }
    Ok(send)
}

pub fn acknowledged(conn: &Connection, device: &DeviceId, id: ActionId) -> Result<()> {
    if owned_status(conn, device, id)?.can_move_to(ActionStatus::Acknowledged) {
        set_status(
            conn,
            id,
            ActionStatus::Acknowledged,
            "acknowledged_at",
            now_ms(),
        )?;
        audit::append(
            conn,
            device.as_str(),
            "acknowledged",
            Some(id),
            Some(device),
            &serde_json::json!({}),
        )?;
    }
    Ok(())
}

pub fn progress(conn: &Connection, device: &DeviceId, id: ActionId, p: &Progress) -> Result<()> {
    let status = owned_status(conn, device, id)?;
    let text = serde_json::to_string(p)?;
    if status.can_move_to(ActionStatus::InProgress) {
        conn.execute_cached(
            "UPDATE actions SET status = 'in_progress', started_at = ?2, progress = ?3 WHERE id = ?1",
            params![id.0 as i64, now_ms(), text],
        )?;
        audit::append(
            conn,
            device.as_str(),
            "started",
            Some(id),
            Some(device),
            &serde_json::json!({"progress": p}),
        )?;
    } else if status == ActionStatus::InProgress {
        conn.execute_cached(
            "UPDATE actions SET progress = ?2 WHERE id = ?1",
            params![id.0 as i64, text],
        )?;
    }
    Ok(())
}

/// Records a device's result. Returns the record and whether this call changed it (a repeated
/// result, or one for an action that timed out meanwhile, changes nothing).
///
/// `held` are the artifacts of the report that the artifact store holds (with the sizes it
/// holds them at): the result names them on the action, in its own transaction, so that an
/// upload is one write less per device.
pub fn result(
    conn: &Connection,
    device: &DeviceId,
    report: &ActionReport,
    held: &[ArtifactRef],
) -> Result<(ActionRecord, bool)> {
    let mut rec = owned(conn, device, report.id)?;
    let same = |a: &ArtifactRef, b: &ArtifactRef| a.name == b.name && a.sha256 == b.sha256;
    // A success that names an artifact the controller does not hold (same name and hash) is
    // not a success: the operator would find nothing to download.
    let missing: Vec<&str> = report
        .artifacts
        .iter()
        .filter(|a| !rec.artifacts.iter().chain(held).any(|s| same(s, a)))
        .map(|a| a.name.as_str())
        .collect();
    let mut summary = report.summary.clone();
    let status = match report.outcome {
        Outcome::Succeeded if missing.is_empty() => ActionStatus::Succeeded,
        Outcome::Succeeded => {
            summary = format!(
                "{summary}; artifact {} was not received",
                missing.join(", ")
            );
            ActionStatus::Failed
        }
        // A scan stopped on the operator's request reports failed with `"cancelled": true`.
        Outcome::Failed if stopped_scan(&rec, &report.detail) => ActionStatus::Cancelled,
        Outcome::Failed => ActionStatus::Failed,
    };
    let moves = match status {
        ActionStatus::Cancelled => rec.status.can_be_stopped(),
        _ => rec.status.can_move_to(status),
    };
    if !moves {
        return Ok((rec, false));
    }
    for a in held
        .iter()
        .filter(|a| report.artifacts.iter().any(|r| same(r, a)))
    {
        if !rec.artifacts.iter().any(|s| same(s, a)) {
            // The row of its name is replaced, as `add_artifact` does.
            add_artifact(conn, report.id, a)?;
            rec.artifacts.retain(|s| s.name != a.name);
            rec.artifacts.push(a.clone());
        }
    }
    rec.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    let detail: serde_json::Value = serde_json::from_str(&report.detail)
        .unwrap_or_else(|_| serde_json::json!({"text": report.detail}));
    let now = now_ms();
    conn.execute_cached(
        "UPDATE actions SET status = ?2, finished_at = ?3, result_summary = ?4, result_detail = ?5,
         started_at = COALESCE(started_at, ?3) WHERE id = ?1",
        params![
            report.id.0 as i64,
            status.as_str(),
            now,
            summary,
            detail.to_string()
        ],
    )?;
    audit::append(
        conn,
        device.as_str(),
        status.as_str(),
        Some(report.id),
        Some(device),
        &serde_json::json!({"summary": summary, "artifacts": report.artifacts}),
    )?;
    if status == ActionStatus::Succeeded {
        // A lasting action changes the desired state in the same transaction as its result.
        crate::store::desired::apply_action(conn, device, &rec, &detail)?;
        mark_undone(conn, &rec, device.as_str())?;
    }
    if let Some(parent) = rec.parent_id {
        settle_parent(conn, parent)?;
    }
    // What the UPDATE above changed, without reading the record again (a result per device
    // per action, at fleet scale).
    rec.status = status;
    rec.finished_at = Some(now);
    rec.started_at = rec.started_at.or(Some(now));
    rec.result_summary = Some(summary);
    rec.result_detail = Some(detail);
    Ok((rec, true))
}

/// Whether a failed result is that of a scan the operator stopped on its device.
fn stopped_scan(rec: &ActionRecord, detail: &str) -> bool {
    rec.kind == palisade_common::ActionKind::Scan
        && serde_json::from_str::<serde_json::Value>(detail)
            .is_ok_and(|d| d["cancelled"] == serde_json::json!(true))
}

fn add_artifact(conn: &Connection, id: ActionId, a: &ArtifactRef) -> Result<()> {
    conn.execute_cached(
        "INSERT INTO artifacts (action_id, name, sha256, size, stored_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (action_id, name) DO UPDATE SET sha256 = ?3, size = ?4, stored_at = ?5",
        params![id.0 as i64, a.name, a.sha256, a.size as i64, now_ms()],
    )?;
    Ok(())
}

/// Moves overdue actions to their side exits: pending past approval expiry → `Expired`,
/// approved but unfinished past the delivery deadline → `TimedOut`.
pub fn sweep(conn: &Connection, now: i64) -> Result<Vec<ActionRecord>> {
    // Each half reads one of the V11 partial indexes, which hold only the actions it can find
    // (named: without statistics the planner would rather walk the status index).
    let mut due: Vec<(i64, String)> = Vec::new();
    for query in [
        "SELECT id, status FROM actions INDEXED BY actions_awaiting_approval
         WHERE status = 'pending_approval' AND expires_at <= ?1 ORDER BY id LIMIT 1000",
        "SELECT id, status FROM actions INDEXED BY actions_awaiting_device
         WHERE status IN ('approved', 'delivered', 'acknowledged', 'in_progress') AND deadline_at <= ?1
         ORDER BY id LIMIT 1000",
    ] {
        let mut stmt = conn.prepare_cached(query)?;
        let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        due.extend(rows.collect::<Result<Vec<_>, _>>()?);
    }
    let mut changed = Vec::new();
    for (id, status) in due {
        let id = ActionId(id as u64);
        let (to, reason) = if status == "pending_approval" {
            (ActionStatus::Expired, "approval not given in time")
        } else {
            (ActionStatus::TimedOut, "not finished on the device in time")
        };
        set_status(conn, id, to, "finished_at", now)?;
        let rec = get(conn, id)?;
        audit::append(
            conn,
            "controller",
            to.as_str(),
            Some(id),
            rec.device_id.as_ref(),
            &serde_json::json!({"reason": reason}),
        )?;
        if let Some(parent) = rec.parent_id {
            settle_parent(conn, parent)?;
        }
        changed.push(rec);
    }
    Ok(changed)
}
