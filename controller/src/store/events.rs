//! What agents report on their own (denied executions …): the device's history of
//! "automated device action" events, each also written to the audit log.

use super::Cached;
use palisade_common::wire::DeviceEvent;
use palisade_common::{ActionSource, DeviceId};
use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Result, audit, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub device_id: String,
    pub source: String,
    pub kind: String,
    pub summary: String,
    pub detail: serde_json::Value,
    pub count: u64,
    pub first_at: i64,
    pub last_at: i64,
    pub received_at: i64,
}

fn describe(e: &DeviceEvent) -> (&'static str, String, serde_json::Value, u64, i64, i64) {
    match e {
        DeviceEvent::ExecDenied(d) => {
            let sha = d.sha256.map(hex::encode);
            (
                "exec_denied",
                format!(
                    "execution of {} denied{} (user {}, pid {}, parent {})",
                    d.path,
                    if d.count > 1 {
                        format!(" {} times", d.count)
                    } else {
                        String::new()
                    },
                    d.user,
                    d.pid,
                    d.ppid
                ),
                serde_json::json!({"path": d.path, "sha256": sha, "pid": d.pid, "ppid": d.ppid,
                    "uid": d.uid, "user": d.user}),
                u64::from(d.count),
                d.first_at_ms,
                d.last_at_ms,
            )
        }
        DeviceEvent::Suppressed {
            count,
            first_at_ms,
            last_at_ms,
        } => (
            "events_suppressed",
            format!("{count} more denials not reported one by one (rate limit)"),
            serde_json::json!({}),
            *count,
            *first_at_ms,
            *last_at_ms,
        ),
        DeviceEvent::NetTamper { found, at_ms } => (
            "net_tamper",
            format!("{found}; the agent put it back"),
            serde_json::json!({"found": found}),
            1,
            *at_ms,
            *at_ms,
        ),
    }
}

/// Records one event the controller concludes about a device (not sent by its agent as an
/// event), e.g. an isolation released on the device.
pub fn note(
    conn: &Connection,
    device: &DeviceId,
    kind: &str,
    summary: &str,
    detail: &serde_json::Value,
    at: i64,
) -> Result<()> {
    let source = ActionSource::AutomatedDeviceAction.as_str();
    conn.execute_cached(
        "INSERT INTO device_events (device_id, source, kind, summary, detail, count, first_at, last_at, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6, ?7)",
        params![device.as_str(), source, kind, summary, detail.to_string(), at, now_ms()],
    )?;
    let mut audited = detail.clone();
    audited["summary"] = summary.into();
    audit::append(conn, device.as_str(), kind, None, Some(device), &audited)?;
    Ok(())
}

/// Stores a batch of a device's events and audits each.
pub fn record(conn: &Connection, device: &DeviceId, events: &[DeviceEvent]) -> Result<()> {
    let now = now_ms();
    let source = ActionSource::AutomatedDeviceAction.as_str();
    for e in events {
        let (kind, summary, detail, count, first, last) = describe(e);
        conn.execute_cached(
            "INSERT INTO device_events (device_id, source, kind, summary, detail, count, first_at, last_at, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![device.as_str(), source, kind, summary, detail.to_string(), count as i64, first, last, now],
        )?;
        let mut audited = detail.clone();
        audited["summary"] = summary.into();
        audited["count"] = count.into();
        audited["source"] = source.into();
        audit::append(conn, device.as_str(), kind, None, Some(device), &audited)?;
    }
    Ok(())
}

/// A device's events, newest first.
pub fn list(conn: &Connection, device: &DeviceId, limit: u32) -> Result<Vec<EventRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, device_id, source, kind, summary, detail, count, first_at, last_at, received_at
         FROM device_events WHERE device_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![device.as_str(), limit], |r| {
        let detail: String = r.get(5)?;
        Ok(EventRecord {
            id: r.get(0)?,
            device_id: r.get(1)?,
            source: r.get(2)?,
            kind: r.get(3)?,
            summary: r.get(4)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            count: r.get::<_, i64>(6)? as u64,
            first_at: r.get(7)?,
            last_at: r.get(8)?,
            received_at: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
