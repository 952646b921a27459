//! The action queue: requests, approval, delivery hops, results, expiry — every transition
//! checked against the lifecycle and written to the audit log in the same transaction.

use super::Cached;
use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome, Progress};
use palisade_common::{ActionId, ActionKind, ActionParams, ActionSource, ActionStatus, DeviceId};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde::Serialize;

use super::auth::{Policy, policy_for};
use super::containment::Guard;
use super::{Result, StoreError, audit, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub id: ActionId,
    pub parent_id: Option<ActionId>,
    pub kind: ActionKind,
    pub params: ActionParams,
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
    Ok(ActionRecord {
        id: ActionId(r.get::<_, i64>(0)? as u64),
        parent_id: id(1)?,
        kind: kind.parse().map_err(|e| conv(2, e))?,
        params: serde_json::from_str(&params).map_err(|e| conv(3, e))?,
        device_id: device
            .map(|d| d.parse())
            .transpose()
            .map_err(|e| conv(4, e))?,
        hostname: r.get(5)?,
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
    create_as(conn, new, deadlines, None, None)
}

/// Creates an action of any kind: a contain or uncontain approved at once runs at once,
/// within `guard` (`create` refuses those kinds).
pub fn create_guarded(
    conn: &Connection,
    new: NewAction,
    deadlines: Deadlines,
    guard: &Guard,
) -> Result<ActionRecord> {
    create_as(conn, new, deadlines, None, Some(guard))
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
    create_as(conn, new, deadlines, Some(approve), None)
}

/// `guard` is for the kinds that run on the controller, and required for them.
fn create_as(
    conn: &Connection,
    new: NewAction,
    deadlines: Deadlines,
    automated: Option<bool>,
    guard: Option<&Guard>,
) -> Result<ActionRecord> {
    let runs_here = new.params.kind().runs_on_controller();
    if runs_here && guard.is_none() {
        return Err(StoreError::Invalid(format!(
            "{} runs on the controller: create it with create_guarded",
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
        if runs_here && let Some(guard) = guard {
            return super::containment::execute(conn, id, guard);
        }
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
            deadlines,
            None, // never contain: containment is not fleet-wide
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
    guard: &Guard,
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
    decide_records(
        conn,
        records,
        actor,
        approve,
        comment,
        deadlines,
        Some(guard),
    )
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
/// approver's request). `guard` bounds the kinds that run on the controller; none may be
/// approved without one.
fn decide_records(
    conn: &Connection,
    mut records: Vec<ActionRecord>,
    actor: &str,
    approve: bool,
    comment: &str,
    deadlines: Deadlines,
    guard: Option<&Guard>,
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
        if approve && r.kind.runs_on_controller() {
            let guard = guard.ok_or_else(|| {
                StoreError::Invalid(format!("{} runs on the controller: no guard given", r.kind))
            })?;
            *r = super::containment::execute(conn, r.id, guard)?;
        } else if r.is_fleet_parent() {
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

/// Approved, unfinished actions of a device, oldest first: what a (re)connecting agent gets.
/// A device's actions between approval and result.
pub(super) const OUTSTANDING: &str = "SELECT id, params FROM actions WHERE device_id = ?1
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
        Outcome::Failed => ActionStatus::Failed,
    };
    if !rec.status.can_move_to(status) {
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
        super::desired::apply_action(conn, device, &rec, &detail)?;
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

/// Which actions to list: the Action center's server-side filters, sort and page.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// `pending` (awaiting approval), `history` (everything else) or `all`.
    pub view: Option<String>,
    #[param(value_type = Option<String>)]
    pub kind: Option<ActionKind>,
    #[param(value_type = Option<String>)]
    pub status: Option<ActionStatus>,
    #[param(value_type = Option<String>)]
    pub source: Option<ActionSource>,
    /// Device id or hostname.
    pub device: Option<String>,
    pub device_group: Option<String>,
    pub requested_by: Option<String>,
    /// Only the children of this fleet-wide action.
    pub parent: Option<u64>,
    /// Unix milliseconds: only actions created at or after.
    pub since: Option<i64>,
    /// Unix milliseconds: only actions created before.
    pub until: Option<i64>,
    /// A time window ending now: `day`, `week`, `30d` or `6m` (183 days); with `since`, the
    /// later of the two applies.
    pub window: Option<String>,
    /// One of the sortable columns (see the error for the list); default `id`.
    pub sort: Option<String>,
    /// `asc` or `desc` (default).
    pub order: Option<String>,
    /// Page size, at most 10,000; default 100.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

/// The time windows the Action center offers, in milliseconds.
pub fn window_ms(window: &str) -> Result<i64> {
    const DAY: i64 = 86_400_000;
    Ok(match window {
        "day" => DAY,
        "week" => 7 * DAY,
        "30d" => 30 * DAY,
        "6m" => 183 * DAY,
        other => {
            return Err(StoreError::Invalid(format!(
                "window {other:?} is not day, week, 30d or 6m"
            )));
        }
    })
}

/// Sortable columns: the API name and the SQL expression.
pub const SORTABLE: [(&str, &str); 14] = [
    ("id", "a.id"),
    ("kind", "a.kind"),
    ("status", "a.status"),
    ("source", "a.source"),
    ("requested_by", "a.requested_by"),
    ("created_at", "a.created_at"),
    ("decided_by", "a.decided_by"),
    ("decided_at", "a.decided_at"),
    ("finished_at", "a.finished_at"),
    ("comment", "a.comment"),
    ("result_summary", "a.result_summary"),
    ("hostname", "d.hostname"),
    ("device", "d.hostname"),
    ("device_group", "d.device_group"),
];

/// Lists actions matching `filter`, restricted to `groups` when given, with the total count.
pub fn list(
    conn: &Connection,
    filter: &Filter,
    groups: Option<&[String]>,
) -> Result<(Vec<ActionRecord>, u64)> {
    let mut w = Where::default();
    use rusqlite::types::Value::{Integer, Text};
    match filter.view.as_deref() {
        None | Some("all") => {}
        Some("pending") => w.add("a.status = 'pending_approval'", vec![]),
        Some("history") => w.add("a.status <> 'pending_approval'", vec![]),
        Some(other) => {
            return Err(StoreError::Invalid(format!(
                "view {other:?} is not pending, history or all"
            )));
        }
    }
    if let Some(k) = filter.kind {
        w.add("a.kind = ?", vec![Text(k.as_str().into())]);
    }
    if let Some(s) = filter.status {
        w.add("a.status = ?", vec![Text(s.as_str().into())]);
    }
    if let Some(s) = filter.source {
        w.add("a.source = ?", vec![Text(s.as_str().into())]);
    }
    if let Some(d) = &filter.device {
        // Resolve the reference (id or hostname) first, so the filter is an indexed lookup on
        // actions.device_id rather than an OR across the join.
        let mut stmt =
            conn.prepare_cached("SELECT id FROM devices WHERE id = ?1 OR hostname = ?1")?;
        let ids: Vec<String> = stmt
            .query_map([d], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let marks = vec!["?"; ids.len().max(1)].join(",");
        let values = if ids.is_empty() {
            vec![Text(String::new())]
        } else {
            ids.into_iter().map(Text).collect()
        };
        w.add(&format!("a.device_id IN ({marks})"), values);
    }
    // Group conditions go through the devices of the group, so that the actions are found
    // by device (an index) rather than by joining every action to its device.
    if let Some(g) = &filter.device_group {
        w.add(
            "a.device_id IN (SELECT id FROM devices WHERE device_group = ?)",
            vec![Text(g.clone())],
        );
    }
    if let Some(r) = &filter.requested_by {
        w.add("a.requested_by = ?", vec![Text(r.clone())]);
    }
    if let Some(p) = filter.parent {
        w.add("a.parent_id = ?", vec![Integer(p as i64)]);
    }
    let since = match &filter.window {
        Some(window) => {
            let from = now_ms() - window_ms(window)?;
            Some(filter.since.map_or(from, |s| s.max(from)))
        }
        None => filter.since,
    };
    if let Some(since) = since {
        w.add("a.created_at >= ?", vec![Integer(since)]);
    }
    if let Some(until) = filter.until {
        w.add("a.created_at < ?", vec![Integer(until)]);
    }
    if let Some(groups) = groups {
        let marks = vec!["?"; groups.len()].join(",");
        w.add(
            &format!("a.device_id IN (SELECT id FROM devices WHERE device_group IN ({marks}))"),
            groups.iter().map(|g| Text(g.clone())).collect(),
        );
    }
    let sort = filter.sort.as_deref().unwrap_or("id");
    let Some(&(_, sort_col)) = SORTABLE.iter().find(|(name, _)| *name == sort) else {
        return Err(StoreError::Invalid(format!(
            "cannot sort by {sort:?}; sortable: {}",
            SORTABLE.map(|(name, _)| name).join(", ")
        )));
    };
    let order = match filter.order.as_deref() {
        None | Some("desc") => "DESC",
        Some("asc") => "ASC",
        Some(o) => {
            return Err(StoreError::Invalid(format!(
                "order {o:?} is not asc or desc"
            )));
        }
    };
    let where_ = w.sql();
    let args = w.args;
    // No clause names the devices table; only sorting by a device column joins it.
    let total: i64 = conn.query_row_cached(
        &format!("SELECT count(*) FROM actions a {where_}"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let limit = filter.limit.unwrap_or(100).min(10_000);
    let offset = filter.offset.unwrap_or(0);
    // First the page's ids (the sort carries only the key and the id), then their rows.
    let from = if sort_col.starts_with("d.") {
        "FROM actions a LEFT JOIN devices d ON d.id = a.device_id"
    } else {
        "FROM actions a"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT a.id {from} {where_} ORDER BY {sort_col} {order}, a.id {order} LIMIT {limit} OFFSET {offset}"
    ))?;
    let ids: Vec<i64> = stmt
        .query_map(params_from_iter(args.iter()), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    if !ids.is_empty() {
        let marks = vec!["?"; ids.len()].join(",");
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM actions a LEFT JOIN devices d ON d.id = a.device_id WHERE a.id IN ({marks})"
        ))?;
        let mut by_id: std::collections::HashMap<u64, ActionRecord> = stmt
            .query_map(params_from_iter(ids.iter()), from_row)?
            .map(|r| r.map(|rec| (rec.id.0, rec)))
            .collect::<Result<_, _>>()?;
        out.extend(ids.iter().filter_map(|id| by_id.remove(&(*id as u64))));
    }
    for rec in &mut out {
        rec.artifacts = artifacts(conn, rec.id)?;
        if rec.is_fleet_parent() {
            rec.children = Some(child_counts(conn, rec.id)?);
        }
    }
    Ok((out, total as u64))
}

/// A WHERE clause built from fragments whose `?`s are numbered as they are added.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    args: Vec<rusqlite::types::Value>,
}

impl Where {
    fn add(&mut self, fragment: &str, values: Vec<rusqlite::types::Value>) {
        let mut sql = String::new();
        for (i, part) in fragment.split('?').enumerate() {
            if i > 0 {
                sql.push_str(&format!("?{}", self.args.len() + i));
            }
            sql.push_str(part);
        }
        self.args.extend(values);
        self.clauses.push(sql);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, devices};
    use palisade_common::action::{QuarantineParams, RequestSampleParams};
    use palisade_common::wire::{Inventory, VaultEntry};

    const G: Guard = Guard {
        max: 64,
        own: Vec::new(),
    };
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
    fn sample_of(device: &DeviceId, group: &str) -> NewAction {
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
    fn the_sweep_ends_only_what_is_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let dev = enrolled(c, 7, ActionKind::RequestSample)?;
                let ask = |c: &Connection| create(c, sample_of(&dev, "default"), D);
                let waiting = ask(c)?.id;
                let [delivered, approved, done] = [ask(c)?.id, ask(c)?.id, ask(c)?.id];
                decide(c, &[delivered, approved, done], "bob", true, "go", D, &G)?;
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
                decide(c, &[held, lost], "bob", true, "go", D, &G)?;
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
                let decided = decide(c, &[parent], "bob", true, "go", D, &G)?;
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
                let rejected = decide(c, &[a[0].id], "bob", false, "no", D, &G)?;
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

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        for (i, host) in ["alpha", "beta"].iter().enumerate() {
            let id = DeviceId::from_random([i as u8 + 1; 16]);
            let inv = Inventory {
                hostname: (*host).into(),
                ..Default::default()
            };
            super::super::devices::insert(
                &c,
                &id,
                if i == 0 { "web" } else { "db" },
                "0.1.0",
                &[],
                &inv,
                "s",
                1,
            )
            .unwrap();
            for _ in 0..3 {
                create(
                    &c,
                    sample_of(&id, if i == 0 { "web" } else { "db" }),
                    Deadlines {
                        approval_ms: 1000,
                        delivery_ms: 1000,
                    },
                )
                .unwrap();
            }
        }
        c
    }

    #[test]
    fn list_filters_by_device_id_or_hostname_and_scopes_by_group() {
        let c = db();
        let by_host = list(
            &c,
            &Filter {
                device: Some("beta".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(by_host.1, 3);
        assert!(
            by_host
                .0
                .iter()
                .all(|a| a.hostname.as_deref() == Some("beta"))
        );
        let id = by_host.0[0].device_id.clone().unwrap().to_string();
        assert_eq!(
            list(
                &c,
                &Filter {
                    device: Some(id),
                    ..Default::default()
                },
                None
            )
            .unwrap()
            .1,
            3
        );
        assert_eq!(
            list(
                &c,
                &Filter {
                    device: Some("nobody".into()),
                    ..Default::default()
                },
                None
            )
            .unwrap()
            .1,
            0
        );
        let scoped = list(&c, &Filter::default(), Some(&["web".to_owned()])).unwrap();
        assert_eq!(scoped.1, 3);
        assert!(
            scoped
                .0
                .iter()
                .all(|a| a.device_group.as_deref() == Some("web"))
        );
        assert_eq!(list(&c, &Filter::default(), None).unwrap().1, 6);
        let err = list(
            &c,
            &Filter {
                sort: Some("comment; DROP TABLE actions".into()),
                ..Default::default()
            },
            None,
        );
        assert!(matches!(err, Err(StoreError::Invalid(_))));
    }

    #[test]
    fn list_filters_by_time_window_source_group_and_requester() {
        let c = db();
        // Six actions (ids 1-3 on alpha in web, 4-6 on beta in db): spread them over time,
        // sources and requesters.
        let day = 86_400_000;
        let now = now_ms();
        c.execute_batch(&format!(
            "UPDATE actions SET created_at = {old} WHERE id IN (1, 4);
             UPDATE actions SET created_at = {week} WHERE id = 2;
             UPDATE actions SET source = 'api_action' WHERE id IN (2, 5);
             UPDATE actions SET requested_by = 'bob' WHERE id IN (3, 5);",
            old = now - 40 * day,
            week = now - 3 * day,
        ))
        .unwrap();
        let ids = |f: Filter| -> Vec<u64> {
            let (list, total) = list(
                &c,
                &Filter {
                    sort: Some("id".into()),
                    order: Some("asc".into()),
                    ..f
                },
                None,
            )
            .unwrap();
            assert_eq!(total as usize, list.len());
            list.iter().map(|a| a.id.0).collect()
        };
        let window = |w: &str| Filter {
            window: Some(w.into()),
            ..Default::default()
        };
        assert_eq!(ids(window("day")), [3, 5, 6]);
        assert_eq!(ids(window("week")), [2, 3, 5, 6]);
        assert_eq!(ids(window("6m")), [1, 2, 3, 4, 5, 6]);
        // `since` narrows a window further, never widens it; `until` ends it.
        assert_eq!(
            ids(Filter {
                window: Some("30d".into()),
                since: Some(now - 40 * day - 1),
                ..Default::default()
            }),
            [2, 3, 5, 6]
        );
        assert_eq!(
            ids(Filter {
                until: Some(now - day),
                ..Default::default()
            }),
            [1, 2, 4]
        );
        assert!(matches!(
            list(&c, &window("year"), None),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            ids(Filter {
                source: Some(ActionSource::ApiAction),
                ..Default::default()
            }),
            [2, 5]
        );
        assert_eq!(
            ids(Filter {
                device_group: Some("db".into()),
                ..Default::default()
            }),
            [4, 5, 6]
        );
        assert_eq!(
            ids(Filter {
                requested_by: Some("bob".into()),
                ..Default::default()
            }),
            [3, 5]
        );
        // Filters combine.
        assert_eq!(
            ids(Filter {
                requested_by: Some("bob".into()),
                source: Some(ActionSource::ApiAction),
                device_group: Some("db".into()),
                window: Some("day".into()),
                ..Default::default()
            }),
            [5]
        );
        assert!(
            ids(Filter {
                device_group: Some("nowhere".into()),
                ..Default::default()
            })
            .is_empty()
        );
    }
}
