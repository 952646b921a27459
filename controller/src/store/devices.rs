//! Enrolled devices: identity (certificate serial), inventory, last contact, lasting state.

use super::Cached;
use palisade_common::wire::{Inventory, ObservedState, VaultEntry};
use palisade_common::{ActionKind, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Result, StoreError, audit, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: DeviceId,
    pub hostname: String,
    pub device_group: String,
    /// Why it is in that group: `manual`, `rule N` (the first rule it matches) or `enrolment`
    /// (its token's group); see `store::groups`.
    pub group_source: String,
    pub agent_version: String,
    pub capabilities: Vec<ActionKind>,
    pub addresses: Vec<String>,
    pub os: String,
    pub kernel: String,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub status: String,
    /// Filled in by the caller from the live connection registry.
    pub online: bool,
    /// Approved actions waiting for this device.
    pub queued: i64,
    pub observed: serde_json::Value,
    /// The rule-set version the device's scanner last said it enforces.
    pub rules_version: Option<i64>,
}

/// Identity facts the transport needs on every connection.
pub struct DeviceIdentity {
    pub cert_serial: String,
    pub active: bool,
    pub device_group: String,
}

pub fn inventory_json(inv: &Inventory) -> serde_json::Value {
    serde_json::json!({
        "hostname": inv.hostname,
        "os": inv.os,
        "kernel": inv.kernel,
        "arch": inv.arch,
        "addresses": inv.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "cpus": inv.cpus,
        "memory_bytes": inv.memory_bytes,
        "boot_time_unix": inv.boot_time_unix,
        "gateways": inv.gateways.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    })
}

pub fn observed_json(o: &ObservedState) -> serde_json::Value {
    serde_json::json!({
        "desired_revision": o.desired_revision,
        "isolated": o.isolated,
        "contained": o.contained.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "restrict_execution": o.restrict_execution,
        "drift": o.drift,
        "net_digest": o.net_digest,
        "local_releases": o.local_releases,
        "realtime_protection": o.realtime_protection,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn insert(
    conn: &Connection,
    id: &DeviceId,
    group: &str,
    agent_version: &str,
    capabilities: &[ActionKind],
    inventory: &Inventory,
    cert_serial: &str,
    token_id: i64,
) -> Result<()> {
    conn.execute_cached(
        "INSERT INTO devices (id, hostname, device_group, enrolled_group, agent_version, capabilities, inventory, cert_serial, enrolled_at)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id.as_str(),
            inventory.hostname,
            group,
            agent_version,
            serde_json::to_string(capabilities)?,
            inventory_json(inventory).to_string(),
            cert_serial,
            now_ms()
        ],
    )?;
    audit::append(
        conn,
        "enrolment",
        "device_enrolled",
        None,
        Some(id),
        &serde_json::json!({"hostname": inventory.hostname, "device_group": group, "token_id": token_id, "cert_serial": cert_serial}),
    )?;
    Ok(())
}

pub fn identity(conn: &Connection, id: &DeviceId) -> Result<Option<DeviceIdentity>> {
    Ok(conn
        .query_row_cached(
            "SELECT cert_serial, status, device_group FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| {
                Ok(DeviceIdentity {
                    cert_serial: r.get(0)?,
                    active: r.get::<_, String>(1)? == "active",
                    device_group: r.get(2)?,
                })
            },
        )
        .optional()?)
}

pub fn is_revoked(conn: &Connection, serial: &str) -> Result<bool> {
    Ok(conn.query_row_cached(
        "SELECT EXISTS(SELECT 1 FROM revoked_certs WHERE serial = ?1)",
        [serial],
        |r| r.get(0),
    )?)
}

/// Records a break-glass code issued for a device and returns its serial.
pub fn issue_breakglass(
    conn: &Connection,
    id: &DeviceId,
    actor: &str,
    not_after: i64,
) -> Result<u32> {
    conn.execute_cached(
        "INSERT INTO breakglass_codes (device_id, issued_by, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
        params![id.as_str(), actor, now_ms(), not_after],
    )?;
    let serial = u32::try_from(conn.last_insert_rowid())
        .map_err(|_| StoreError::Conflict("break-glass serials exhausted".into()))?;
    audit::append(
        conn,
        actor,
        "breakglass_issued",
        None,
        Some(id),
        &serde_json::json!({"serial": serial, "not_after": not_after}),
    )?;
    Ok(serial)
}

/// Records a session's hello: version, capabilities, inventory, observed state, contact.
pub fn hello(
    conn: &Connection,
    id: &DeviceId,
    agent_version: &str,
    capabilities: &[ActionKind],
    inventory: &Inventory,
    observed: &ObservedState,
) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET hostname = ?2, agent_version = ?3, capabilities = ?4, inventory = ?5,
         observed = ?6, last_seen = ?7 WHERE id = ?1",
        params![
            id.as_str(),
            inventory.hostname,
            agent_version,
            serde_json::to_string(capabilities)?,
            inventory_json(inventory).to_string(),
            observed_json(observed).to_string(),
            now_ms()
        ],
    )?;
    Ok(())
}

pub fn touch(conn: &Connection, id: &DeviceId) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
        params![id.as_str(), now_ms()],
    )?;
    Ok(())
}

pub fn set_observed(conn: &Connection, id: &DeviceId, observed: &ObservedState) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET observed = ?2, last_seen = ?3 WHERE id = ?1",
        params![id.as_str(), observed_json(observed).to_string(), now_ms()],
    )?;
    Ok(())
}

pub fn vault_json(entries: &[VaultEntry]) -> serde_json::Value {
    serde_json::Value::Array(
        entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id,
                    "path": e.path,
                    "sha256": e.sha256,
                    "size": e.size,
                    "quarantined_at": e.quarantined_at,
                    "action": e.action,
                })
            })
            .collect(),
    )
}

/// Replaces the device's vault listing with what its agent reported.
pub fn set_vault(conn: &Connection, id: &DeviceId, entries: &[VaultEntry]) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET vault = ?2, vault_reported_at = ?3 WHERE id = ?1",
        params![id.as_str(), vault_json(entries).to_string(), now_ms()],
    )?;
    Ok(())
}

/// The device's vault as last reported: entries and when.
pub fn vault(conn: &Connection, id: &DeviceId) -> Result<(serde_json::Value, Option<i64>)> {
    let (text, at): (String, Option<i64>) = conn
        .query_row_cached(
            "SELECT vault, vault_reported_at FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
    Ok((serde_json::from_str(&text)?, at))
}

/// Active devices whose reported vault holds a file with this sha256.
pub fn holding(conn: &Connection, sha256: &str) -> Result<Vec<DeviceId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id FROM devices d, json_each(d.vault) e
         WHERE d.status = 'active' AND json_extract(e.value, '$.sha256') = ?1
         GROUP BY d.id ORDER BY d.id",
    )?;
    let ids: Vec<String> = stmt
        .query_map([sha256], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.into_iter()
        .map(|i| {
            i.parse()
                .map_err(|e| StoreError::Invalid(format!("device id {i}: {e}")))
        })
        .collect()
}

pub fn set_inventory(conn: &Connection, id: &DeviceId, inventory: &Inventory) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET hostname = ?2, inventory = ?3, last_seen = ?4 WHERE id = ?1",
        params![
            id.as_str(),
            inventory.hostname,
            inventory_json(inventory).to_string(),
            now_ms()
        ],
    )?;
    Ok(())
}

/// Ends a device: marks it offboarded and revokes its certificate, so that it can never
/// connect with it again.
pub fn offboard(conn: &Connection, id: &DeviceId, actor: &str, reason: &str) -> Result<()> {
    let Some(ident) = identity(conn, id)? else {
        return Err(StoreError::NotFound(format!("no device {id}")));
    };
    conn.execute_cached(
        "UPDATE devices SET status = 'offboarded', offboarded_at = ?2 WHERE id = ?1",
        params![id.as_str(), now_ms()],
    )?;
    conn.execute_cached(
        "INSERT OR IGNORE INTO revoked_certs (serial, device_id, revoked_at, reason) VALUES (?1, ?2, ?3, ?4)",
        params![ident.cert_serial, id.as_str(), now_ms(), reason],
    )?;
    audit::append(
        conn,
        actor,
        "device_offboarded",
        None,
        Some(id),
        &serde_json::json!({"cert_serial": ident.cert_serial, "reason": reason}),
    )?;
    Ok(())
}

pub(super) const SELECT: &str = "SELECT d.id, d.hostname, d.device_group, d.agent_version, d.capabilities, d.inventory,
    d.enrolled_at, d.last_seen, d.status, d.observed,
    (SELECT count(*) FROM actions a WHERE a.device_id = d.id AND a.status IN ('approved','delivered','acknowledged','in_progress')),
    d.rules_version, d.group_source
    FROM devices d";

fn row_to_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Device, String, String, String)> {
    let id: String = r.get(0)?;
    Ok((
        Device {
            id: id.parse().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            hostname: r.get(1)?,
            device_group: r.get(2)?,
            group_source: r.get(12)?,
            agent_version: r.get(3)?,
            capabilities: vec![],
            addresses: vec![],
            os: String::new(),
            kernel: String::new(),
            enrolled_at: r.get(6)?,
            last_seen: r.get(7)?,
            status: r.get(8)?,
            online: false,
            queued: r.get(10)?,
            observed: serde_json::Value::Null,
            rules_version: r.get(11)?,
        },
        r.get(4)?,
        r.get(5)?,
        r.get(9)?,
    ))
}

fn finish(row: (Device, String, String, String)) -> Result<Device> {
    let (mut d, caps, inv, observed) = row;
    d.capabilities = serde_json::from_str(&caps)?;
    let inv: serde_json::Value = serde_json::from_str(&inv)?;
    d.os = inv["os"].as_str().unwrap_or_default().to_owned();
    d.kernel = inv["kernel"].as_str().unwrap_or_default().to_owned();
    d.addresses = inv["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    d.observed = serde_json::from_str(&observed)?;
    Ok(d)
}

pub fn list(conn: &Connection) -> Result<Vec<Device>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY d.hostname, d.id"))?;
    let rows = stmt.query_map([], row_to_device)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(finish(row?)?);
    }
    Ok(out)
}

pub fn get(conn: &Connection, id: &DeviceId) -> Result<Device> {
    let row = conn
        .query_row_cached(
            &format!("{SELECT} WHERE d.id = ?1"),
            [id.as_str()],
            row_to_device,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
    finish(row)
}

/// Resolves an operator's device reference: an id, or a hostname that names exactly one
/// device.
/// What a reference to no device gets; also what a caller gets for a device outside its
/// groups, so that a refusal does not tell it the device exists.
pub fn not_found(reference: &str) -> StoreError {
    StoreError::NotFound(format!("no device with id or hostname {reference:?}"))
}

/// The device a reference (a device id, or the hostname of one active device) names, among
/// the groups of `scope` (`None`: every group). A device outside them is not found, with the
/// same text as one that does not exist, and does not count towards an ambiguous hostname.
pub fn resolve(conn: &Connection, reference: &str, scope: Option<&[String]>) -> Result<Device> {
    let visible = |d: &Device| scope.is_none_or(|groups| groups.contains(&d.device_group));
    if let Ok(id) = reference.parse::<DeviceId>()
        && let Ok(d) = get(conn, &id)
    {
        return if visible(&d) {
            Ok(d)
        } else {
            Err(not_found(reference))
        };
    }
    let mut stmt =
        conn.prepare_cached("SELECT id FROM devices WHERE hostname = ?1 AND status = 'active'")?;
    let ids: Vec<String> = stmt
        .query_map([reference], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::new();
    for id in ids {
        let id = id
            .parse()
            .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?;
        let d = get(conn, &id)?;
        if visible(&d) {
            found.push(d);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(reference)),
        n => Err(StoreError::Invalid(format!(
            "hostname {reference:?} names {n} devices; use a device id"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_resolves_only_among_the_callers_groups() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        let inv = Inventory {
            hostname: "db1".into(),
            ..Default::default()
        };
        let (web, db) = (
            DeviceId::from_random([1; 16]),
            DeviceId::from_random([2; 16]),
        );
        insert(&c, &web, "web", "0.1.0", &[], &inv, "s", 1).unwrap();
        insert(&c, &db, "db", "0.1.0", &[], &inv, "s", 1).unwrap();
        let scope = |groups: &[&str]| groups.iter().map(|g| g.to_string()).collect::<Vec<_>>();

        // Unscoped, the shared hostname is ambiguous; scoped, it names the one device seen.
        let err = resolve(&c, "db1", None).unwrap_err().to_string();
        assert!(err.contains("names 2 devices"), "{err}");
        let d = resolve(&c, "db1", Some(&scope(&["db"]))).unwrap();
        assert_eq!(d.id, db);
        // A device of another group is not found, by id as by hostname, with the text of a
        // device that does not exist: no id, no group, no count.
        for reference in [web.as_str(), "db1"] {
            let err = resolve(&c, reference, Some(&scope(&["lab"]))).unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err}");
            assert_eq!(err.to_string(), not_found(reference).to_string());
        }
        assert_eq!(resolve(&c, web.as_str(), None).unwrap().id, web);
    }
}
