//! Desired state: what each device should enforce (changed by lasting actions when their
//! result commits as succeeded) and the exec allowlist of each device group. Every change
//! bumps the device's `desired_revision`, so that an agent recognises a stale copy.

use super::Cached;
use palisade_common::wire::{DesiredState, ExecAllowlist, Isolation, ObservedState};
use palisade_common::{ActionKind, ActionParams, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError, audit, now_ms};

/// The device's own part of its desired state, stored as JSON in `devices.desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDesired {
    pub isolation: Option<Isolation>,
    pub restrict_execution: bool,
}

/// A device group's exec allowlist, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Allowlist {
    pub device_group: String,
    /// Lowercase hex.
    pub sha256: Vec<String>,
    pub paths: Vec<String>,
    pub updated_by: Option<String>,
    pub updated_at: Option<i64>,
}

impl Allowlist {
    fn wire(&self) -> Result<ExecAllowlist> {
        let sha256 = self
            .sha256
            .iter()
            .map(|h| parse_sha256(h))
            .collect::<Result<Vec<_>>>()?;
        Ok(ExecAllowlist {
            sha256,
            paths: self.paths.clone(),
        })
    }
}

fn parse_sha256(h: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out)
        .map_err(|_| StoreError::Invalid(format!("{h:?} is not a sha256 (64 hex digits)")))?;
    Ok(out)
}

/// The desired state as the API shows it.
pub fn to_json(d: &DesiredState) -> serde_json::Value {
    serde_json::json!({
        "revision": d.revision,
        "isolation": d.isolation,
        "contained": d.contained.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "restrict_execution": d.restrict_execution,
        "exec_allowlist": {
            "sha256": d.exec_allowlist.sha256.iter().map(hex::encode).collect::<Vec<_>>(),
            "paths": d.exec_allowlist.paths,
        },
        "realtime_protection": d.realtime_protection,
    })
}

/// Whether a succeeded action of this kind changes the device's desired state.
pub fn changed_by(kind: ActionKind) -> bool {
    matches!(
        kind,
        ActionKind::RestrictExecution
            | ActionKind::ReleaseExecution
            | ActionKind::Isolate
            | ActionKind::ReleaseIsolation
    )
}

/// The device's full desired state: its own part, its revision, its group's allowlist.
pub fn get(conn: &Connection, id: &DeviceId) -> Result<DesiredState> {
    let (json, revision, group): (String, i64, String) = conn
        .query_row_cached(
            "SELECT desired, desired_revision, device_group FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
    let own: DeviceDesired = serde_json::from_str(&json)?;
    Ok(DesiredState {
        revision: revision as u64,
        isolation: own.isolation,
        contained: super::containment::dropped_by(conn, id)?,
        contained_macs: super::containment::macs_dropped_by(conn, id)?,
        restrict_execution: own.restrict_execution,
        exec_allowlist: allowlist(conn, &group)?.wire()?,
        realtime_protection: realtime_for(conn, &group)?,
    })
}

/// Changes the device's own part of its desired state and bumps its revision; returns the
/// new full state.
pub fn update(
    conn: &Connection,
    id: &DeviceId,
    actor: &str,
    change: impl FnOnce(&mut DeviceDesired),
) -> Result<DesiredState> {
    let json: String = conn
        .query_row_cached(
            "SELECT desired FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
    let mut own: DeviceDesired = serde_json::from_str(&json)?;
    change(&mut own);
    conn.execute_cached(
        "UPDATE devices SET desired = ?2, desired_revision = desired_revision + 1 WHERE id = ?1",
        params![id.as_str(), serde_json::to_string(&own)?],
    )?;
    let d = get(conn, id)?;
    audit::append(
        conn,
        actor,
        "desired_changed",
        None,
        Some(id),
        &serde_json::json!({"revision": d.revision, "desired": own}),
    )?;
    Ok(d)
}

/// Applies a succeeded lasting action to its device's desired state. Returns the new state if
/// the kind changes it.
pub fn apply_action(
    conn: &Connection,
    id: &DeviceId,
    rec: &super::actions::ActionRecord,
    detail: &serde_json::Value,
) -> Result<Option<DesiredState>> {
    let change: Box<dyn FnOnce(&mut DeviceDesired)> = match &rec.params {
        ActionParams::RestrictExecution {} => Box::new(|d| d.restrict_execution = true),
        ActionParams::ReleaseExecution {} => Box::new(|d| d.restrict_execution = false),
        ActionParams::Isolate(p) => {
            // The agent started the time box; its end is in the result, on the agent's clock.
            let isolation = Isolation {
                action: rec.id,
                params: p.clone(),
                until_ms: detail["until_ms"].as_i64(),
            };
            Box::new(move |d| d.isolation = Some(isolation))
        }
        ActionParams::ReleaseIsolation {} => Box::new(|d| d.isolation = None),
        _ => return Ok(None),
    };
    update(conn, id, id.as_str(), change).map(Some)
}

/// Devices whose time-boxed isolation is over, with the isolating action.
pub fn isolations_due(conn: &Connection, now: i64) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, json_extract(desired, '$.isolation.action') FROM devices
         WHERE json_extract(desired, '$.isolation.until_ms') <= ?1",
    )?;
    let due = stmt
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(due)
}

/// Ends, on the controller's side, time-boxed isolations whose time is up (the agent ends them
/// on its own clock, offline or not); returns the devices whose desired state changed.
pub fn expire_isolations(conn: &Connection, now: i64) -> Result<Vec<(DeviceId, DesiredState)>> {
    let due = isolations_due(conn, now)?;
    let mut out = Vec::new();
    for (id, action) in due {
        let id: DeviceId = id
            .parse()
            .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?;
        super::events::note(
            conn,
            &id,
            "isolation_time_box_ended",
            &format!("the time box of isolation action {action} ended"),
            &serde_json::json!({"action": action}),
            now,
        )?;
        out.push((
            id.clone(),
            update(conn, &id, "controller", |d| d.isolation = None)?,
        ));
    }
    Ok(out)
}

/// An isolation the agent ended on its own (time box, break-glass code) ends here too, and
/// the device's history says how. Returns the new desired state if it changed.
pub fn apply_local_releases(
    conn: &Connection,
    id: &DeviceId,
    observed: &ObservedState,
) -> Result<Option<DesiredState>> {
    let current = get(conn, id)?;
    let Some(iso) = &current.isolation else {
        return Ok(None);
    };
    let Some(release) = observed
        .local_releases
        .iter()
        .find(|r| r.action == iso.action)
    else {
        return Ok(None);
    };
    super::events::note(
        conn,
        id,
        "isolation_released_on_device",
        &format!(
            "isolation of action {} released on the device: {}",
            iso.action, release.reason
        ),
        &serde_json::json!({"action": iso.action, "reason": release.reason}),
        release.at_ms,
    )?;
    update(conn, id, id.as_str(), |d| d.isolation = None).map(Some)
}

/// A group's allowlist (empty if none was set).
pub fn allowlist(conn: &Connection, group: &str) -> Result<Allowlist> {
    let row: Option<(String, String, String, i64)> = conn
        .query_row_cached(
            "SELECT sha256, paths, updated_by, updated_at FROM exec_allowlists WHERE device_group = ?1",
            [group],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(match row {
        Some((sha, paths, by, at)) => Allowlist {
            device_group: group.to_owned(),
            sha256: serde_json::from_str(&sha)?,
            paths: serde_json::from_str(&paths)?,
            updated_by: Some(by),
            updated_at: Some(at),
        },
        None => Allowlist {
            device_group: group.to_owned(),
            ..Default::default()
        },
    })
}

pub fn list_allowlists(conn: &Connection) -> Result<Vec<Allowlist>> {
    let mut stmt =
        conn.prepare_cached("SELECT device_group FROM exec_allowlists ORDER BY device_group")?;
    let groups: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    groups.iter().map(|g| allowlist(conn, g)).collect()
}

/// Replaces a group's allowlist and bumps the desired revision of every active device in
/// the group; returns those devices with their new desired state, to be pushed.
pub fn set_allowlist(
    conn: &Connection,
    actor: &str,
    group: &str,
    sha256: &[String],
    paths: &[String],
) -> Result<Vec<(DeviceId, DesiredState)>> {
    if group.is_empty() || group == "*" {
        return Err(StoreError::Invalid(
            "name one device group (allowlists are per group)".into(),
        ));
    }
    let mut hashes: Vec<String> = Vec::new();
    for h in sha256 {
        let h = h.trim().to_ascii_lowercase();
        parse_sha256(&h)?;
        if !hashes.contains(&h) {
            hashes.push(h);
        }
    }
    let mut clean_paths: Vec<String> = Vec::new();
    for p in paths {
        if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == ".." || c == ".") {
            return Err(StoreError::Invalid(format!(
                "allowlisted path {p:?} must be absolute, without . or .. components"
            )));
        }
        if !clean_paths.contains(p) {
            clean_paths.push(p.clone());
        }
    }
    conn.execute_cached(
        "INSERT INTO exec_allowlists (device_group, sha256, paths, updated_by, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_group) DO UPDATE SET sha256 = ?2, paths = ?3, updated_by = ?4, updated_at = ?5",
        params![
            group,
            serde_json::to_string(&hashes)?,
            serde_json::to_string(&clean_paths)?,
            actor,
            now_ms()
        ],
    )?;
    audit::append(
        conn,
        actor,
        "exec_allowlist_set",
        None,
        None,
        &serde_json::json!({"device_group": group, "sha256": hashes, "paths": clean_paths}),
    )?;
    conn.execute_cached(
        "UPDATE devices SET desired_revision = desired_revision + 1
         WHERE device_group = ?1 AND status = 'active'",
        [group],
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM devices WHERE device_group = ?1 AND status = 'active' ORDER BY id",
    )?;
    let ids: Vec<String> = stmt
        .query_map([group], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter()
        .map(|i| {
            let id: DeviceId = i
                .parse()
                .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?;
            let d = get(conn, &id)?;
            Ok((id, d))
        })
        .collect()
}

/// Whether real-time protection is on for a group: its own setting, else the `*` row, else
/// off (it watches directories on every device of the group: an admin turns it on).
pub fn realtime_for(conn: &Connection, group: &str) -> Result<bool> {
    let on: Option<bool> = conn
        .query_row_cached(
            "SELECT enabled FROM realtime WHERE device_group IN (?1, '*')
             ORDER BY device_group = '*' LIMIT 1",
            [group],
            |r| r.get(0),
        )
        .optional()?;
    Ok(on.unwrap_or(false))
}

/// A group's real-time protection setting, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RealtimeSetting {
    pub device_group: String,
    pub enabled: bool,
    pub updated_by: String,
    pub updated_at: i64,
}

pub fn list_realtime(conn: &Connection) -> Result<Vec<RealtimeSetting>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_group, enabled, updated_by, updated_at FROM realtime ORDER BY device_group",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RealtimeSetting {
            device_group: r.get(0)?,
            enabled: r.get(1)?,
            updated_by: r.get(2)?,
            updated_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Turns real-time protection on or off for a group (`*`: every group without its own
/// setting) and bumps the desired revision of every active device it may change; returns
/// those devices with their new desired state, to be pushed.
pub fn set_realtime(
    conn: &Connection,
    actor: &str,
    group: &str,
    enabled: bool,
) -> Result<Vec<(DeviceId, palisade_common::wire::DesiredState)>> {
    if group.is_empty() || group.len() > 64 {
        return Err(StoreError::Invalid(
            "a device group name is 1 to 64 characters (or * for the default)".into(),
        ));
    }
    conn.execute_cached(
        "INSERT INTO realtime (device_group, enabled, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_group) DO UPDATE SET enabled = ?2, updated_by = ?3, updated_at = ?4",
        params![group, enabled, actor, now_ms()],
    )?;
    audit::append(
        conn,
        actor,
        "realtime_set",
        None,
        None,
        &serde_json::json!({"device_group": group, "enabled": enabled}),
    )?;
    let ids: Vec<String> = if group == "*" {
        let mut stmt =
            conn.prepare_cached("SELECT id FROM devices WHERE status = 'active' ORDER BY id")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM devices WHERE device_group = ?1 AND status = 'active' ORDER BY id",
        )?;
        stmt.query_map([group], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::new();
    for i in ids {
        let id: DeviceId = i
            .parse()
            .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?;
        conn.execute_cached(
            "UPDATE devices SET desired_revision = desired_revision + 1 WHERE id = ?1",
            [id.as_str()],
        )?;
        let d = get(conn, &id)?;
        out.push((id, d));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::wire::Inventory;

    fn store_with(devices: &[(&str, &str)]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("t.sqlite")).unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        for (id, group) in devices {
            super::super::devices::insert(
                &c,
                &id.parse().unwrap(),
                group,
                "1",
                &[],
                &Inventory::default(),
                &format!("serial-{id}"),
                0,
            )
            .unwrap();
        }
        (dir, c)
    }

    #[test]
    fn lasting_actions_change_the_desired_state_and_bump_the_revision() {
        let (_d, c) = store_with(&[("dev-a", "default")]);
        let id: DeviceId = "dev-a".parse().unwrap();
        assert_eq!(get(&c, &id).unwrap(), DesiredState::default());
        let act = |params: ActionParams| super::super::actions::ActionRecord::for_test(9, params);
        let none = serde_json::json!({});
        let d = apply_action(&c, &id, &act(ActionParams::RestrictExecution {}), &none)
            .unwrap()
            .unwrap();
        assert!(d.restrict_execution);
        assert_eq!(d.revision, 1);
        let sample = ActionParams::RequestSample(palisade_common::action::RequestSampleParams {
            path: "/x".into(),
        });
        assert_eq!(apply_action(&c, &id, &act(sample), &none).unwrap(), None);
        let d = apply_action(&c, &id, &act(ActionParams::ReleaseExecution {}), &none)
            .unwrap()
            .unwrap();
        assert!(!d.restrict_execution);
        assert_eq!(d.revision, 2);
        assert_eq!(get(&c, &id).unwrap(), d);
    }

    #[test]
    fn an_allowlist_change_reaches_its_group_only() {
        let (_d, c) = store_with(&[("dev-a", "web"), ("dev-b", "web"), ("dev-c", "db")]);
        let changed = set_allowlist(
            &c,
            "admin",
            "web",
            &["AB".repeat(32), "ab".repeat(32)],
            &["/opt/x".into()],
        )
        .unwrap();
        let ids: Vec<String> = changed.iter().map(|(i, _)| i.to_string()).collect();
        assert_eq!(ids, ["dev-a", "dev-b"]);
        let (_, d) = &changed[0];
        assert_eq!(d.revision, 1);
        assert_eq!(d.exec_allowlist.sha256, vec![[0xab; 32]], "deduplicated");
        assert_eq!(d.exec_allowlist.paths, ["/opt/x"]);
        let other = get(&c, &"dev-c".parse().unwrap()).unwrap();
        assert_eq!(other.revision, 0);
        assert!(other.exec_allowlist.sha256.is_empty());
        assert!(set_allowlist(&c, "admin", "web", &["xyz".into()], &[]).is_err());
        assert!(set_allowlist(&c, "admin", "web", &[], &["/a/../b".into()]).is_err());
        assert!(set_allowlist(&c, "admin", "*", &[], &[]).is_err());
    }

    #[test]
    fn an_isolation_ends_with_its_time_box_or_when_the_device_reports_it_ended() {
        let (_d, c) = store_with(&[("dev-a", "default"), ("dev-b", "default")]);
        let (a, b): (DeviceId, DeviceId) = ("dev-a".parse().unwrap(), "dev-b".parse().unwrap());
        let isolate = |until: Option<i64>| {
            let rec = super::super::actions::ActionRecord::for_test(
                7,
                ActionParams::Isolate(palisade_common::action::IsolateParams {
                    selective: false,
                    exceptions: vec![],
                    for_secs: until.map(|_| 60),
                }),
            );
            (rec, serde_json::json!({"until_ms": until}))
        };
        let (rec, detail) = isolate(Some(1_000));
        let d = apply_action(&c, &a, &rec, &detail).unwrap().unwrap();
        assert_eq!(d.isolation.as_ref().unwrap().until_ms, Some(1_000));
        let (rec, detail) = isolate(None);
        apply_action(&c, &b, &rec, &detail).unwrap();
        assert!(expire_isolations(&c, 999).unwrap().is_empty(), "not yet");
        let ended = expire_isolations(&c, 1_000).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0, a);
        assert_eq!(ended[0].1.isolation, None);
        assert!(get(&c, &b).unwrap().isolation.is_some(), "no time box");
        let history = super::super::events::list(&c, &a, 10).unwrap();
        assert_eq!(history[0].kind, "isolation_time_box_ended");

        // b's agent ended it with a break-glass code and says so: it ends here, once.
        let observed = ObservedState {
            local_releases: vec![palisade_common::wire::LocalRelease {
                action: palisade_common::ActionId(7),
                reason: "break-glass code 3".into(),
                at_ms: 5,
            }],
            ..Default::default()
        };
        let d = apply_local_releases(&c, &b, &observed).unwrap().unwrap();
        assert_eq!(d.isolation, None);
        assert_eq!(apply_local_releases(&c, &b, &observed).unwrap(), None);
        let history = super::super::events::list(&c, &b, 10).unwrap();
        assert!(history[0].summary.contains("break-glass code 3"));
    }
}
