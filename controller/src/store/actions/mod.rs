//! The action queue: requests, approval, delivery hops, results, expiry — every transition
//! checked against the lifecycle and written to the audit log in the same transaction.

use super::Cached;
use palisade_common::action::{ActionSpec, ArtifactRef};
use palisade_common::{ActionId, ActionKind, ActionParams, ActionSource, ActionStatus, DeviceId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::auth::{Policy, policy_for};
use super::{Result, StoreError, audit, now_ms};

mod device;
mod query;

#[cfg(test)]
pub(super) use device::OUTSTANDING;
pub use device::{
    acknowledged, delivered, delivered_all, outstanding, owned_open, owned_status, progress,
    result, sweep,
};
pub use query::{Filter, SORTABLE, list, window_ms};

#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub id: ActionId,
    pub parent_id: Option<ActionId>,
    pub kind: ActionKind,
    pub params: ActionParams,
    /// What the action is aimed at, in words (`ActionParams::entity`): the Entity / Target
    /// column of the lists.
    pub entity: String,
    pub device_id: Option<DeviceId>,
    pub hostname: Option<String>,
    pub device_group: Option<String>,
    pub source: ActionSource,
    pub status: ActionStatus,
    pub requested_by: String,
    pub comment: String,
    pub external_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub decision_comment: Option<String>,
    pub deadline_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub acknowledged_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub cancelled_by: Option<String>,
    pub cancelled_at: Option<i64>,
    pub cancel_comment: Option<String>,
    pub progress: Option<String>,
    pub result_summary: Option<String>,
    pub result_detail: Option<serde_json::Value>,
    pub undo_of: Option<ActionId>,
    pub undone_by: Option<ActionId>,
    pub artifacts: Vec<ArtifactRef>,
    /// For a fleet-wide action (no device of its own): how its per-device children stand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<ChildCounts>,
}

/// The aggregate of a fleet-wide action's children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChildCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Not finished yet: awaiting approval, delivery or the device's result.
    pub pending: u64,
    /// Ended without running: rejected, cancelled, expired.
    pub not_run: u64,
}

impl ActionRecord {
    /// A fleet-wide parent: no device of its own, its children carry the devices. (An
    /// action the controller runs itself may have no device either.)
    pub fn is_fleet_parent(&self) -> bool {
        self.device_id.is_none() && !self.kind.runs_on_controller()
    }

    #[cfg(test)]
    pub fn for_test(id: u64, params: ActionParams) -> ActionRecord {
        ActionRecord {
            id: ActionId(id),
            parent_id: None,
            kind: params.kind(),
            entity: params.entity(),
            params,
            device_id: None,
            hostname: None,
            device_group: None,
            source: ActionSource::ManualDeviceAction,
            status: ActionStatus::Succeeded,
            requested_by: "test".into(),
            comment: String::new(),
            external_id: None,
            created_at: 0,
            expires_at: 0,
            decided_by: None,
            decided_at: None,
            decision_comment: None,
            deadline_at: None,
            delivered_at: None,
            acknowledged_at: None,
            started_at: None,
            finished_at: None,
            cancelled_by: None,
            cancelled_at: None,
            cancel_comment: None,
            progress: None,
            result_summary: None,
            result_detail: None,
            undo_of: None,
            undone_by: None,
            artifacts: vec![],
            children: None,
        }
    }

    pub fn spec(&self) -> ActionSpec {
        ActionSpec {
            id: self.id,
            params: self.params.clone(),
        }
    }
}

/// A request as the service has validated it.
pub struct NewAction {
    pub params: ActionParams,
    /// `None` only for a kind that runs on the controller with no device of its own (the
    /// containment of an unmanaged address).
    pub device: Option<DeviceId>,
    pub device_group: String,
    pub source: ActionSource,
    pub requested_by: String,
    pub comment: String,
    pub external_id: Option<String>,
    pub undo_of: Option<ActionId>,
    /// The fleet-wide action this one is a per-device child of. Children wait for their
    /// parent's approval whatever their own group's policy says.
    pub parent: Option<ActionId>,
}

/// A fleet-wide request, before its children.
pub struct NewFleetAction {
    pub params: ActionParams,
    pub source: ActionSource,
    pub requested_by: String,
    pub comment: String,
    pub external_id: Option<String>,
    /// (device, group) of every child.
    pub devices: Vec<(DeviceId, String)>,
}

/// Lifetimes from the controller's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub approval_ms: i64,
    pub delivery_ms: i64,
}

const COLUMNS: &str = "a.id, a.parent_id, a.kind, a.params, a.device_id, d.hostname, d.device_group, a.source,
    a.status, a.requested_by, a.comment, a.external_id, a.created_at, a.expires_at, a.decided_by,
    a.decided_at, a.decision_comment, a.deadline_at, a.delivered_at, a.acknowledged_at, a.started_at,
    a.finished_at, a.cancelled_by, a.cancelled_at, a.cancel_comment, a.progress, a.result_summary,
    a.result_detail, a.undo_of, a.undone_by";

fn conv<E: std::error::Error + Send + Sync + 'static>(i: usize, e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    let id = |i: usize| -> rusqlite::Result<Option<ActionId>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| ActionId(v as u64)))
    };
    let kind: String = r.get(2)?;
    let params: String = r.get(3)?;
    let device: Option<String> = r.get(4)?;
    let source: String = r.get(7)?;
    let status: String = r.get(8)?;
    let detail: Option<String> = r.get(27)?;
    let params: ActionParams = serde_json::from_str(&params).map_err(|e| conv(3, e))?;
    let device_id: Option<DeviceId> = device
        .map(|d| d.parse())
        .transpose()
        .map_err(|e| conv(4, e))?;
    let hostname: Option<String> = r.get(5)?;
    // A containment of the action's own device names it by its hostname.
    let entity =
        params.entity_naming(|d| hostname.clone().filter(|_| device_id.as_ref() == Some(d)));
    Ok(ActionRecord {
        id: ActionId(r.get::<_, i64>(0)? as u64),
        parent_id: id(1)?,
        kind: kind.parse().map_err(|e| conv(2, e))?,
        params,
        entity,
        device_id,
        hostname,
        device_group: r.get(6)?,
        source: source.parse().map_err(|e| conv(7, e))?,
        status: status.parse().map_err(|e| conv(8, e))?,
        requested_by: r.get(9)?,
        comment: r.get(10)?,
        external_id: r.get(11)?,
        created_at: r.get(12)?,
        expires_at: r.get(13)?,
        decided_by: r.get(14)?,
        decided_at: r.get(15)?,
        decision_comment: r.get(16)?,
        deadline_at: r.get(17)?,
        delivered_at: r.get(18)?,
        acknowledged_at: r.get(19)?,
        started_at: r.get(20)?,
        finished_at: r.get(21)?,
        cancelled_by: r.get(22)?,
        cancelled_at: r.get(23)?,
        cancel_comment: r.get(24)?,
        progress: r.get(25)?,
        result_summary: r.get(26)?,
        result_detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        undo_of: id(28)?,
        undone_by: id(29)?,
        artifacts: vec![],
        children: None,
    })
}

pub fn get(conn: &Connection, id: ActionId) -> Result<ActionRecord> {
    let mut rec = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM actions a LEFT JOIN devices d ON d.id = a.device_id WHERE a.id = ?1"
        ))?
        .query_row([id.0 as i64], from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no action {id}")))?;
    rec.artifacts = artifacts(conn, id)?;
    if rec.is_fleet_parent() {
        rec.children = Some(child_counts(conn, id)?);
    }
    Ok(rec)
}

/// How the children of a fleet-wide action stand.
pub fn child_counts(conn: &Connection, parent: ActionId) -> Result<ChildCounts> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, count(*) FROM actions WHERE parent_id = ?1 GROUP BY status",
    )?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([parent.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut c = ChildCounts::default();
    for (status, n) in rows {
        let n = n as u64;
        c.total += n;
        match status.parse::<ActionStatus>() {
            Ok(ActionStatus::Succeeded | ActionStatus::Undone) => c.succeeded += n,
            Ok(ActionStatus::Failed | ActionStatus::TimedOut) => c.failed += n,
            Ok(s) if s.is_final() => c.not_run += n,
            _ => c.pending += n,
        }
    }
    Ok(c)
}

/// The children of a fleet-wide action, by id.
pub fn children(conn: &Connection, parent: ActionId) -> Result<Vec<ActionRecord>> {
    // One statement for all of them: a record read per child prepared a statement per child
    // (half the controller's time while a 3,000-device action was watched).
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM actions a LEFT JOIN devices d ON d.id = a.device_id
         WHERE a.parent_id = ?1 ORDER BY a.id"
    ))?;
    let mut out = stmt
        .query_map([parent.0 as i64], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for rec in &mut out {
        rec.artifacts = artifacts(conn, rec.id)?;
    }
    Ok(out)
}

/// A fleet-wide action ends when its last child does: succeeded if every child succeeded,
/// failed otherwise. Called after any child changes.
pub fn settle_parent(conn: &Connection, parent: ActionId) -> Result<()> {
    // Every child's result comes here: while one child is open, a look into the
    // (parent, status) index answers, not a count of all the children (N² rows for N).
    let open: Vec<&str> = ActionStatus::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| s.as_str())
        .collect();
    let any_open: bool = conn
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM actions WHERE parent_id = ?1 AND status IN ('{}'))",
            open.join("','")
        ))?
        .query_row([parent.0 as i64], |r| r.get(0))?;
    if any_open {
        return Ok(());
    }
    let rec = get(conn, parent)?;
    let Some(c) = rec.children.clone() else {
        return Ok(());
    };
    if c.pending > 0 || !rec.status.is_outstanding() {
        return Ok(());
    }
    let status = if c.succeeded == c.total {
        ActionStatus::Succeeded
    } else {
        ActionStatus::Failed
    };
    let summary = format!(
        "{} devices: {} succeeded, {} failed, {} not run",
        c.total, c.succeeded, c.failed, c.not_run
    );
    let now = now_ms();
    conn.execute_cached(
        "UPDATE actions SET status = ?2, finished_at = ?3, result_summary = ?4,
         started_at = COALESCE(started_at, ?3) WHERE id = ?1",
        params![parent.0 as i64, status.as_str(), now, summary],
    )?;
    audit::append(
        conn,
        "controller",
        status.as_str(),
        Some(parent),
        None,
        &serde_json::json!({"summary": summary}),
    )?;
    Ok(())
}

/// The actions requested to undo `id` (its `undone_by` is set only once one succeeds).
pub fn undo_requests(conn: &Connection, id: ActionId) -> Result<Vec<(ActionId, ActionStatus)>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, status FROM actions WHERE undo_of = ?1 ORDER BY id")?;
    let rows: Vec<(i64, String)> = stmt
        .query_map([id.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(i, s)| {
            let status = s.parse().map_err(|e| StoreError::Sql(format!("{e}")))?;
            Ok((ActionId(i as u64), status))
        })
        .collect()
}

pub fn artifacts(conn: &Connection, id: ActionId) -> Result<Vec<ArtifactRef>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, size, sha256 FROM artifacts WHERE action_id = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([id.0 as i64], |r| {
        Ok(ArtifactRef {
            name: r.get(0)?,
            size: r.get::<_, i64>(1)? as u64,
            sha256: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn set_status(
    conn: &Connection,
    id: ActionId,
    status: ActionStatus,
    column: &str,
    at: i64,
) -> Result<()> {
    // `column` is one of our own constants, never input.
    conn.prepare_cached(&format!(
        "UPDATE actions SET status = ?2, {column} = ?3 WHERE id = ?1"
    ))?
    .execute(params![id.0 as i64, status.as_str(), at])?;
    Ok(())
}

/// Creates an action. With no approval required by policy it is approved at once, by
/// "policy", and the audit log says so.
pub fn create(conn: &Connection, new: NewAction, deadlines: Deadlines) -> Result<ActionRecord> {
    create_as(conn, new, deadlines, None, false)
}

/// Creates an action of any kind, those that run on the controller too (`create` refuses
/// them): whoever calls it runs one approved at once in the same job
/// (`containment::run_approved`).
pub fn create_any(conn: &Connection, new: NewAction, deadlines: Deadlines) -> Result<ActionRecord> {
    create_as(conn, new, deadlines, None, true)
}

/// Creates an action the controller raises itself (a detection's quarantine): the device
/// group's automation level, not the kind's policy, decides whether it is approved at once
/// (`Some(true)`, by "automation") or waits for an approver (`Some(false)`).
pub fn create_automated(
    conn: &Connection,
    new: NewAction,
    deadlines: Deadlines,
    approve: bool,
) -> Result<ActionRecord> {
    create_as(conn, new, deadlines, Some(approve), false)
}

/// `controller_kinds` admits the kinds that run on the controller.
fn create_as(
    conn: &Connection,
    new: NewAction,
    deadlines: Deadlines,
    automated: Option<bool>,
    controller_kinds: bool,
) -> Result<ActionRecord> {
    if new.params.kind().runs_on_controller() && !controller_kinds {
        return Err(StoreError::Invalid(format!(
            "{} runs on the controller: create it with create_any",
            new.params.kind()
        )));
    }
    let policy = policy_for(conn, &new.device_group, new.params.kind())?;
    let now = now_ms();
    conn.execute_cached(
        "INSERT INTO actions (kind, params, device_id, source, status, requested_by, comment, external_id,
         created_at, expires_at, undo_of, parent_id) VALUES (?1, ?2, ?3, ?4, 'pending_approval', ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            new.params.kind().as_str(),
            serde_json::to_string(&new.params)?,
            new.device.as_ref().map(|d| d.as_str()),
            new.source.as_str(),
            new.requested_by,
            new.comment,
            new.external_id,
            now,
            now + deadlines.approval_ms,
            new.undo_of.map(|a| a.0 as i64),
            new.parent.map(|a| a.0 as i64),
        ],
    )?;
    let id = ActionId(conn.last_insert_rowid() as u64);
    audit::append(
        conn,
        &new.requested_by,
        "requested",
        Some(id),
        new.device.as_ref(),
        &serde_json::json!({"kind": new.params.kind(), "params": new.params, "source": new.source,
            "comment": new.comment, "external_id": new.external_id, "undo_of": new.undo_of,
            "parent": new.parent}),
    )?;
    let approve = automated.unwrap_or(!policy.require_approval) && new.parent.is_none();
    if approve {
        let (by, why) = match automated {
            Some(_) => (
                "automation",
                "approved by the device group's full automation level",
            ),
            None => ("policy", "approval not required by policy"),
        };
        conn.execute_cached(
            "UPDATE actions SET status = 'approved', decided_by = ?4, decided_at = ?2,
             decision_comment = ?5, deadline_at = ?3 WHERE id = ?1",
            params![id.0 as i64, now, now + deadlines.delivery_ms, by, why],
        )?;
        audit::append(
            conn,
            by,
            "approved",
            Some(id),
            new.device.as_ref(),
            &serde_json::json!({"comment": why}),
        )?;
    }
    get(conn, id)
}

/// Ends an action the controller itself carried out (contain, uncontain), with the undo
/// bookkeeping a device's result would get.
pub fn finish_on_controller(
    conn: &Connection,
    rec: &ActionRecord,
    status: ActionStatus,
    summary: &str,
    detail: &serde_json::Value,
) -> Result<ActionRecord> {
    let now = now_ms();
    conn.execute_cached(
        "UPDATE actions SET status = ?2, started_at = ?3, finished_at = ?3, result_summary = ?4,
         result_detail = ?5 WHERE id = ?1",
        params![
            rec.id.0 as i64,
            status.as_str(),
            now,
            summary,
            detail.to_string()
        ],
    )?;
    audit::append(
        conn,
        "controller",
        status.as_str(),
        Some(rec.id),
        rec.device_id.as_ref(),
        &serde_json::json!({"summary": summary}),
    )?;
    if status == ActionStatus::Succeeded {
        mark_undone(conn, rec, "controller")?;
    }
    get(conn, rec.id)
}

/// A succeeded undo marks the action it undoes.
fn mark_undone(conn: &Connection, rec: &ActionRecord, actor: &str) -> Result<()> {
    let Some(original) = rec.undo_of else {
        return Ok(());
    };
    let orig = get(conn, original)?;
    if orig.status.can_move_to(ActionStatus::Undone) {
        conn.execute_cached(
            "UPDATE actions SET status = 'undone', undone_by = ?2 WHERE id = ?1",
            params![original.0 as i64, rec.id.0 as i64],
        )?;
        audit::append(
            conn,
            actor,
            "undone",
            Some(original),
            orig.device_id.as_ref(),
            &serde_json::json!({"undone_by": rec.id}),
        )?;
    }
    Ok(())
}

/// Creates a fleet-wide action: a parent without a device, which never goes to an agent, and
/// one child per device. The parent needs approval unless no child's group policy asks for
/// it; deciding the parent decides its pending children. Returns the parent, then the
/// children.
pub fn create_fleet(
    conn: &Connection,
    new: NewFleetAction,
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    if new.devices.is_empty() {
        return Err(StoreError::Invalid(
            "a fleet-wide action needs at least one device".into(),
        ));
    }
    let kind = new.params.kind();
    let mut require_approval = false;
    for (_, group) in &new.devices {
        require_approval |= policy_for(conn, group, kind)?.require_approval;
    }
    let now = now_ms();
    conn.execute_cached(
        "INSERT INTO actions (kind, params, device_id, source, status, requested_by, comment, external_id,
         created_at, expires_at) VALUES (?1, ?2, NULL, ?3, 'pending_approval', ?4, ?5, ?6, ?7, ?8)",
        params![
            kind.as_str(),
            serde_json::to_string(&new.params)?,
            new.source.as_str(),
            new.requested_by,
            new.comment,
            new.external_id,
            now,
            now + deadlines.approval_ms,
        ],
    )?;
    let parent = ActionId(conn.last_insert_rowid() as u64);
    audit::append(
        conn,
        &new.requested_by,
        "requested",
        Some(parent),
        None,
        &serde_json::json!({"kind": kind, "params": new.params, "source": new.source,
            "comment": new.comment, "external_id": new.external_id, "fleet": true,
            "devices": new.devices.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>()}),
    )?;
    let mut children = Vec::with_capacity(new.devices.len());
    for (device, group) in new.devices {
        let child = create(
            conn,
            NewAction {
                params: new.params.clone(),
                device: Some(device),
                device_group: group,
                source: new.source,
                requested_by: new.requested_by.clone(),
                comment: new.comment.clone(),
                external_id: new.external_id.clone(),
                undo_of: None,
                parent: Some(parent),
            },
            deadlines,
        )?;
        children.push(child);
    }
    // The children as `create` returned them: nothing changed them since.
    let records = std::iter::once(get(conn, parent)?)
        .chain(children)
        .collect();
    if !require_approval {
        return decide_records(
            conn,
            records,
            "policy",
            true,
            "approval not required by policy",
            deadlines, // never contain: containment is not fleet-wide
        );
    }
    Ok(records)
}

/// Approves or rejects a set of pending actions, all or none: they must all exist, be pending,
/// be of one kind, and — where policy asks for four eyes — not be the decider's own requests.
pub fn decide(
    conn: &Connection,
    ids: &[ActionId],
    actor: &str,
    approve: bool,
    comment: &str,
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    if ids.is_empty() {
        return Err(StoreError::Invalid("no action ids given".into()));
    }
    let records = with_children(conn, ids)?;
    let kind = records[0].kind;
    if let Some(other) = records.iter().find(|r| r.kind != kind) {
        return Err(StoreError::Conflict(format!(
            "actions of different kinds cannot be {} together: {} is {}, {} is {}",
            if approve { "approved" } else { "rejected" },
            records[0].id,
            kind,
            other.id,
            other.kind
        )));
    }
    for r in &records {
        if r.status != ActionStatus::PendingApproval {
            return Err(StoreError::Conflict(format!(
                "action {} is {}, not pending approval",
                r.id, r.status
            )));
        }
        if r.is_fleet_parent() {
            continue; // a fleet-wide parent: its children carry the groups
        }
        let group = r.device_group.as_deref().unwrap_or("default");
        let policy: Policy = policy_for(conn, group, r.kind)?;
        if approve && policy.distinct_approver && r.requested_by == actor {
            return Err(StoreError::Conflict(format!(
                "action {} was requested by {actor}; policy requires another person to approve it",
                r.id
            )));
        }
    }
    decide_records(conn, records, actor, approve, comment, deadlines)
}

/// The actions named, and for a fleet-wide parent its children still pending approval.
fn with_children(conn: &Connection, ids: &[ActionId]) -> Result<Vec<ActionRecord>> {
    let mut records = Vec::new();
    for &id in ids {
        let r = get(conn, id)?;
        let parent = r.is_fleet_parent();
        records.push(r);
        if parent {
            // One statement for them all, and no artifacts to read: an action pending
            // approval was never delivered, so nothing was uploaded for it.
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM actions a LEFT JOIN devices d ON d.id = a.device_id
                 WHERE a.parent_id = ?1 AND a.status = 'pending_approval' ORDER BY a.id"
            ))?;
            for c in stmt.query_map([id.0 as i64], from_row)? {
                let c = c?;
                if !ids.contains(&c.id) {
                    records.push(c);
                }
            }
        }
    }
    Ok(records)
}

/// Moves checked, pending actions (a parent's children included) to approved or rejected,
/// and returns them as they are now stored. They are updated in place rather than read again,
/// since approving a fleet-wide action decides a record per device (20,000 reads, within the
/// approver's request). The kinds that run on the controller are left approved: the caller
/// runs them in the same job (`containment::run_approved`).
fn decide_records(
    conn: &Connection,
    mut records: Vec<ActionRecord>,
    actor: &str,
    approve: bool,
    comment: &str,
    deadlines: Deadlines,
) -> Result<Vec<ActionRecord>> {
    let now = now_ms();
    let (status, event) = if approve {
        (ActionStatus::Approved, "approved")
    } else {
        (ActionStatus::Rejected, "rejected")
    };
    // A parent never goes to a device: it ends with its children, not by a deadline.
    let deadline =
        |r: &ActionRecord| (approve && !r.is_fleet_parent()).then_some(now + deadlines.delivery_ms);
    for r in &mut records {
        conn.execute_cached(
            "UPDATE actions SET status = ?2, decided_by = ?3, decided_at = ?4, decision_comment = ?5,
             deadline_at = ?6 WHERE id = ?1",
            params![r.id.0 as i64, status.as_str(), actor, now, comment, deadline(r)],
        )?;
        audit::append(
            conn,
            actor,
            event,
            Some(r.id),
            r.device_id.as_ref(),
            &serde_json::json!({"comment": comment}),
        )?;
        r.status = status;
        r.decided_by = Some(actor.to_owned());
        r.decided_at = Some(now);
        r.decision_comment = Some(comment.to_owned());
        r.deadline_at = deadline(r);
    }
    for r in &mut records {
        if r.is_fleet_parent() {
            r.children = Some(child_counts(conn, r.id)?);
        }
    }
    Ok(records)
}

/// Cancels actions not yet delivered. `any_requester` is false for callers who may cancel only
/// their own requests.
pub fn cancel(
    conn: &Connection,
    ids: &[ActionId],
    actor: &str,
    comment: &str,
    any_requester: bool,
) -> Result<Vec<ActionRecord>> {
    if ids.is_empty() {
        return Err(StoreError::Invalid("no action ids given".into()));
    }
    let mut records = ids
        .iter()
        .map(|&id| get(conn, id))
        .collect::<Result<Vec<_>>>()?;
    // A fleet-wide parent takes its children not yet delivered with it.
    for &id in ids {
        if records.iter().any(|r| r.id == id && r.is_fleet_parent()) {
            for c in children(conn, id)? {
                if c.status.can_move_to(ActionStatus::Cancelled) && !ids.contains(&c.id) {
                    records.push(c);
                }
            }
        }
    }
    for r in &records {
        if !r.status.can_move_to(ActionStatus::Cancelled) {
            return Err(StoreError::Conflict(format!(
                "action {} is {}; only actions not yet delivered can be cancelled",
                r.id, r.status
            )));
        }
        if !any_requester && r.requested_by != actor {
            return Err(StoreError::Conflict(format!(
                "action {} was requested by {}; cancelling others' actions needs the approve permission",
                r.id, r.requested_by
            )));
        }
    }
    let now = now_ms();
    for r in &records {
        conn.execute_cached(
            "UPDATE actions SET status = 'cancelled', cancelled_by = ?2, cancelled_at = ?3, cancel_comment = ?4
             WHERE id = ?1",
            params![r.id.0 as i64, actor, now, comment],
        )?;
        audit::append(
            conn,
            actor,
            "cancelled",
            Some(r.id),
            r.device_id.as_ref(),
            &serde_json::json!({"comment": comment}),
        )?;
    }
    records.iter().map(|r| get(conn, r.id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, devices};
    use palisade_common::action::{ActionReport, Outcome, QuarantineParams, RequestSampleParams};
    use palisade_common::wire::{Inventory, VaultEntry};

    const D: Deadlines = Deadlines {
        approval_ms: 60_000,
        delivery_ms: 60_000,
    };

    fn report(id: ActionId, outcome: Outcome) -> ActionReport {
        ActionReport {
            id,
            outcome,
            summary: "done".into(),
            detail: "{}".into(),
            artifacts: vec![],
        }
    }

    /// Alice's fleet-wide quarantine of `path` (or, without one, of a hash under /opt) on
    /// `devices`, all in the default group.
    fn fleet_quarantine(path: Option<&str>, devices: &[DeviceId]) -> NewFleetAction {
        NewFleetAction {
            params: ActionParams::Quarantine(QuarantineParams {
                path: path.map(Into::into),
                sha256: path.is_none().then(|| "ab".repeat(32)),
                roots: if path.is_none() {
                    vec!["/opt".into()]
                } else {
                    vec![]
                },
            }),
            source: ActionSource::ManualDeviceAction,
            requested_by: "alice".into(),
            comment: "outbreak".into(),
            external_id: None,
            devices: devices
                .iter()
                .map(|d| (d.clone(), "default".into()))
                .collect(),
        }
    }

    /// Alice's sample request of /x from `device` of `group`.
    pub(super) fn sample_of(device: &DeviceId, group: &str) -> NewAction {
        NewAction {
            params: ActionParams::RequestSample(RequestSampleParams { path: "/x".into() }),
            device: Some(device.clone()),
            device_group: group.into(),
            source: ActionSource::ManualDeviceAction,
            requested_by: "alice".into(),
            comment: "c".into(),
            external_id: None,
            undo_of: None,
            parent: None,
        }
    }

    /// A device of group "default" that can run `kind`.
    fn enrolled(c: &Connection, seed: u8, kind: ActionKind) -> Result<DeviceId> {
        let d = DeviceId::from_random([seed; 16]);
        devices::insert(
            c,
            &d,
            "default",
            "1",
            &[kind],
            &Inventory::default(),
            "s",
            1,
        )?;
        Ok(d)
    }

    #[test]
    fn a_scan_stopped_on_its_device_ends_cancelled_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let dev = enrolled(c, 9, ActionKind::Scan)?;
                let scan = |c: &Connection| {
                    create(
                        c,
                        NewAction {
                            params: ActionParams::Scan(palisade_common::action::ScanParams {
                                mode: "quick".into(),
                                paths: vec![],
                                exclusions: vec![],
                            }),
                            ..sample_of(&dev, "default")
                        },
                        D,
                    )
                };
                let [stopped, broken] = [scan(c)?.id, scan(c)?.id];
                decide(c, &[stopped, broken], "bob", true, "go", D)?;
                assert!(self::delivered(c, &dev, stopped)?);
                assert!(self::delivered(c, &dev, broken)?);
                let cancelled = ActionReport {
                    detail: r#"{"cancelled": true}"#.into(),
                    ..report(stopped, Outcome::Failed)
                };
                let (rec, changed) = result(c, &dev, &cancelled, &[])?;
                assert!(changed);
                assert_eq!(rec.status, ActionStatus::Cancelled);
                assert_eq!(get(c, stopped)?.status, ActionStatus::Cancelled);
                let failed = ActionReport {
                    detail: r#"{"cancelled": false}"#.into(),
                    ..report(broken, Outcome::Failed)
                };
                assert_eq!(
                    result(c, &dev, &failed, &[])?.0.status,
                    ActionStatus::Failed
                );
                // A repeated result changes nothing.
                assert!(!result(c, &dev, &cancelled, &[])?.1);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn the_sweep_ends_only_what_is_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let dev = enrolled(c, 7, ActionKind::RequestSample)?;
                let ask = |c: &Connection| create(c, sample_of(&dev, "default"), D);
                let waiting = ask(c)?.id;
                let [delivered, approved, done] = [ask(c)?.id, ask(c)?.id, ask(c)?.id];
                decide(c, &[delivered, approved, done], "bob", true, "go", D)?;
                assert!(self::delivered(c, &dev, delivered)?);
                result(c, &dev, &report(done, Outcome::Succeeded), &[])?;
                let now = now_ms();
                assert!(sweep(c, now + 30_000)?.is_empty(), "nothing is due yet");
                let mut swept: Vec<(ActionId, ActionStatus)> = sweep(c, now + 61_000)?
                    .into_iter()
                    .map(|r| (r.id, r.status))
                    .collect();
                swept.sort_by_key(|(id, _)| id.0);
                assert_eq!(
                    swept,
                    vec![
                        (waiting, ActionStatus::Expired),
                        (delivered, ActionStatus::TimedOut),
                        (approved, ActionStatus::TimedOut),
                    ]
                );
                assert_eq!(get(c, done)?.status, ActionStatus::Succeeded);
                assert!(sweep(c, now + 120_000)?.is_empty(), "each ends once");
                Ok(())
            })
            .unwrap();
    }

    /// What a call returned is what a fresh read of each record finds.
    fn assert_as_stored(c: &Connection, records: &[ActionRecord]) {
        for r in records {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::to_value(get(c, r.id).unwrap()).unwrap(),
                "action {} as returned and as stored",
                r.id
            );
        }
    }

    #[test]
    fn a_success_names_the_artifacts_the_store_holds_and_fails_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let dev = enrolled(c, 7, ActionKind::RequestSample)?;
                let sample = |c: &Connection| create(c, sample_of(&dev, "default"), D);
                let [held, lost] = [sample(c)?.id, sample(c)?.id];
                decide(c, &[held, lost], "bob", true, "go", D)?;
                let uploaded = ArtifactRef {
                    name: "sample".into(),
                    size: 9,
                    sha256: "cd".repeat(32),
                };
                let claim = |id| ActionReport {
                    artifacts: vec![ArtifactRef {
                        size: 1 << 40,
                        ..uploaded.clone()
                    }],
                    ..report(id, Outcome::Succeeded)
                };
                // The store's size, not the one the device claims.
                let (rec, _) = result(c, &dev, &claim(held), std::slice::from_ref(&uploaded))?;
                assert_eq!(rec.status, ActionStatus::Succeeded);
                assert_eq!(rec.artifacts, vec![uploaded.clone()]);
                assert_as_stored(c, &[rec]);
                // Held, but under another name: not what the report named.
                let renamed = ArtifactRef {
                    name: "other".into(),
                    ..uploaded.clone()
                };
                let (rec, _) = result(c, &dev, &claim(lost), &[renamed])?;
                assert_eq!(rec.status, ActionStatus::Failed);
                assert!(
                    rec.result_summary
                        .as_deref()
                        .unwrap()
                        .ends_with("artifact sample was not received"),
                    "{:?}",
                    rec.result_summary
                );
                assert!(rec.artifacts.is_empty());
                assert_as_stored(c, &[rec]);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn approving_a_fleet_parent_approves_its_children_and_it_ends_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let devs: Vec<DeviceId> =
                    (1..=2u8).map(|n| DeviceId::from_random([n; 16])).collect();
                for (i, d) in devs.iter().enumerate() {
                    let inv = Inventory {
                        hostname: format!("h{i}"),
                        ..Default::default()
                    };
                    devices::insert(
                        c,
                        d,
                        "default",
                        "1",
                        &[ActionKind::Quarantine],
                        &inv,
                        "s",
                        1,
                    )?;
                }
                let created = create_fleet(c, fleet_quarantine(None, &devs), D)?;
                let (parent, kids) = (created[0].id, [created[1].id, created[2].id]);
                assert!(created[0].device_id.is_none());
                assert_eq!(created[0].status, ActionStatus::PendingApproval);
                assert_eq!(created[0].children.as_ref().unwrap().pending, 2);
                assert!(
                    created[1..].iter().all(|c| c.parent_id == Some(parent)
                        && c.status == ActionStatus::PendingApproval)
                );
                // Children wait for their parent: nothing is delivered yet.
                assert!(outstanding(c, &devs[0])?.is_empty());

                assert_as_stored(c, &created);
                let decided = decide(c, &[parent], "bob", true, "go", D)?;
                assert_eq!(decided.len(), 3);
                assert_as_stored(c, &decided);
                assert!(decided.iter().all(|r| r.status == ActionStatus::Approved));
                assert_eq!(
                    get(c, parent)?.deadline_at,
                    None,
                    "a parent never times out"
                );
                assert_eq!(outstanding(c, &devs[0])?.len(), 1);
                assert_eq!(outstanding(c, &devs[0])?[0].id, kids[0]);

                let (done, changed) =
                    result(c, &devs[0], &report(kids[0], Outcome::Succeeded), &[])?;
                assert!(changed);
                assert_as_stored(c, &[done]);
                let p = get(c, parent)?;
                assert_eq!(p.status, ActionStatus::Approved);
                let counts = p.children.unwrap();
                assert_eq!((counts.succeeded, counts.pending), (1, 1));

                let (failed, _) = result(c, &devs[1], &report(kids[1], Outcome::Failed), &[])?;
                assert_as_stored(c, &[failed]);
                let p = get(c, parent)?;
                assert_eq!(p.status, ActionStatus::Failed);
                assert_eq!(
                    p.result_summary.as_deref(),
                    Some("2 devices: 1 succeeded, 1 failed, 0 not run")
                );
                // A late sweep changes nothing.
                assert!(sweep(c, i64::MAX)?.is_empty());

                // The devices' vault listings decide who holds a hash.
                let entry = |sha: &str| VaultEntry {
                    id: "q1-abc".into(),
                    path: "/opt/x".into(),
                    sha256: sha.into(),
                    size: 1,
                    quarantined_at: 1,
                    action: kids[0],
                };
                devices::set_vault(c, &devs[0], &[entry(&"ab".repeat(32))])?;
                devices::set_vault(c, &devs[1], &[entry(&"cd".repeat(32))])?;
                assert_eq!(
                    devices::holding(c, &"ab".repeat(32))?,
                    vec![devs[0].clone()]
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_fleet_action_that_policy_does_not_hold_is_approved_with_its_children_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let devs = [
                    enrolled(c, 3, ActionKind::Quarantine)?,
                    enrolled(c, 4, ActionKind::Quarantine)?,
                ];
                let policy = super::super::auth::Policy {
                    require_approval: false,
                    distinct_approver: false,
                };
                super::super::auth::set_policy(c, "admin", "default", None, policy)?;
                let created = create_fleet(c, fleet_quarantine(Some("/tmp/x"), &devs), D)?;
                assert_eq!(created.len(), 3);
                assert!(created.iter().all(|r| r.status == ActionStatus::Approved
                    && r.decided_by.as_deref() == Some("policy")));
                assert_eq!(created[0].children.as_ref().unwrap().pending, 2);
                assert_as_stored(c, &created);
                assert_eq!(outstanding(c, &devs[1])?.len(), 1);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn rejecting_or_cancelling_a_parent_takes_its_pending_children_along() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let d = enrolled(c, 7, ActionKind::Quarantine)?;
                let new = || fleet_quarantine(Some("/tmp/x"), std::slice::from_ref(&d));
                let a = create_fleet(c, new(), D)?;
                let rejected = decide(c, &[a[0].id], "bob", false, "no", D)?;
                assert!(rejected.iter().all(|r| r.status == ActionStatus::Rejected));
                assert_eq!(rejected.len(), 2);
                assert_as_stored(c, &rejected);
                let b = create_fleet(c, new(), D)?;
                let cancelled = cancel(c, &[b[0].id], "alice", "oops", false)?;
                assert_eq!(cancelled.len(), 2);
                assert!(
                    cancelled
                        .iter()
                        .all(|r| r.status == ActionStatus::Cancelled)
                );
                Ok(())
            })
            .unwrap();
    }
}
