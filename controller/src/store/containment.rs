//! Containment: targets (a managed device, followed as its addresses change, or an unmanaged
//! address) that every other device in scope drops in both directions. The scope is the
//! requester's device groups (every group for an unscoped requester), so a containment never
//! reaches devices its requester may not act on. A contain or uncontain action
//! runs here, on the controller, the moment it is approved: it changes the containment set and
//! bumps the desired revision of every active device in the same transaction; the service then
//! sends the new desired state to the online ones, and the others get it when they connect.

use super::Cached;
use std::net::IpAddr;

use palisade_common::action::ContainParams;
use palisade_common::{ActionId, ActionKind, ActionParams, ActionStatus, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::actions::{self, ActionRecord};
use super::{Result, StoreError, audit, now_ms};

/// The safety bounds of containment, from the controller's configuration and its live
/// addresses. The service checks them when one is requested; `execute` checks them again
/// when it runs (contain actions approved together, or while others waited, count too), and
/// `follow` never follows a device onto the controller's own address.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Most targets in force at once (`max_contained`).
    pub max: u64,
    /// The controller's own addresses as agents see them: never contained.
    pub own: Vec<IpAddr>,
}

/// A target in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Containment {
    pub id: i64,
    pub action_id: ActionId,
    pub device_id: Option<DeviceId>,
    pub ip: Option<IpAddr>,
    pub mac: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// Device groups whose devices drop it; empty: every group.
    pub scope: Vec<String>,
    pub created_at: i64,
}

impl Containment {
    fn covers(&self, group: &str) -> bool {
        self.scope.is_empty() || self.scope.iter().any(|g| g == group)
    }
}

/// Every containment in force, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<Containment>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, action_id, device_id, ip, mac, addresses, created_at, scope FROM containments
         WHERE ended_at IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, action, device, ip, mac, addresses, created_at, scope) = row?;
        out.push(Containment {
            id,
            action_id: ActionId(action as u64),
            device_id: device
                .map(|d| d.parse())
                .transpose()
                .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?,
            ip: ip
                .map(|i| i.parse())
                .transpose()
                .map_err(|e: std::net::AddrParseError| StoreError::Sql(e.to_string()))?,
            mac,
            addresses: serde_json::from_str(&addresses)?,
            scope: serde_json::from_str(&scope)?,
            created_at,
        });
    }
    Ok(out)
}

/// The targets device `me` must drop: every one in whose scope it is, but itself.
fn applying_to(conn: &Connection, me: &DeviceId) -> Result<Vec<Containment>> {
    let group: String = conn
        .query_row_cached(
            "SELECT device_group FROM devices WHERE id = ?1",
            [me.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {me}")))?;
    Ok(list(conn)?
        .into_iter()
        .filter(|c| c.device_id.as_ref() != Some(me) && c.covers(&group))
        .collect())
}

/// The addresses device `me` must drop.
pub fn dropped_by(conn: &Connection, me: &DeviceId) -> Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = applying_to(conn, me)?
        .into_iter()
        .flat_map(|c| c.addresses)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The MAC addresses device `me` must drop (unmanaged targets given with one).
pub fn macs_dropped_by(conn: &Connection, me: &DeviceId) -> Result<Vec<String>> {
    let mut out: Vec<String> = applying_to(conn, me)?
        .into_iter()
        .filter_map(|c| c.mac.map(|m| m.to_ascii_lowercase()))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The containment in force for the target these parameters name, if any.
pub fn find(conn: &Connection, p: &ContainParams) -> Result<Option<Containment>> {
    Ok(list(conn)?.into_iter().find(|c| match (&p.device, p.ip) {
        (Some(d), _) => c.device_id.as_ref() == Some(d),
        (None, Some(ip)) => c.device_id.is_none() && c.ip == Some(ip),
        (None, None) => c.device_id.is_none() && c.mac.is_some() && c.mac == p.mac,
    }))
}

/// A device's addresses worth blocking: all but loopback.
pub fn device_addresses(conn: &Connection, id: &DeviceId) -> Result<Vec<IpAddr>> {
    let inv: String = conn
        .query_row_cached(
            "SELECT inventory FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
    let v: serde_json::Value = serde_json::from_str(&inv)?;
    Ok(ips(&v["addresses"]))
}

fn ips(v: &serde_json::Value) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .filter(|a: &IpAddr| !a.is_loopback() && !a.is_unspecified())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Who else uses these addresses: (device, hostname, "address" | "gateway", address).
pub fn shared(
    conn: &Connection,
    addrs: &[IpAddr],
    except: Option<&DeviceId>,
) -> Result<Vec<(String, String, &'static str, IpAddr)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, hostname, inventory FROM devices WHERE status = 'active' ORDER BY id",
    )?;
    let rows: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, host, inv) in rows {
        if except.is_some_and(|e| e.as_str() == id) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&inv)?;
        for (what, list) in [
            ("address", ips(&v["addresses"])),
            ("gateway", ips(&v["gateways"])),
        ] {
            for a in list.into_iter().filter(|a| addrs.contains(a)) {
                out.push((id.clone(), host.clone(), what, a));
            }
        }
    }
    Ok(out)
}

/// Bumps the desired revision of every active device: the containment set is part of each
/// one's desired state.
fn bump_all(conn: &Connection) -> Result<()> {
    conn.execute_cached(
        "UPDATE devices SET desired_revision = desired_revision + 1 WHERE status = 'active'",
        [],
    )?;
    Ok(())
}

/// Runs an approved contain or uncontain: changes the set and finishes the action as
/// succeeded (or failed, saying why), in the caller's transaction. A contain that would now
/// exceed `guard.max` or block the controller's own address fails, changing nothing.
/// Runs the approved actions of `records` that run on the controller (contain, uncontain),
/// within `guard`, and returns every record as it now stands. The service calls it in the job
/// that approved them (`actions::decide`, `actions::create_any`), so approval and enforcement
/// commit together.
pub fn run_approved(
    conn: &Connection,
    mut records: Vec<ActionRecord>,
    guard: &Guard,
) -> Result<Vec<ActionRecord>> {
    for r in &mut records {
        if r.status == ActionStatus::Approved && r.kind.runs_on_controller() {
            *r = execute(conn, r.id, guard)?;
        }
    }
    Ok(records)
}

fn execute(conn: &Connection, id: ActionId, guard: &Guard) -> Result<ActionRecord> {
    let rec = actions::get(conn, id)?;
    let (ActionParams::Contain(p) | ActionParams::Uncontain(p)) = &rec.params else {
        return Err(StoreError::Invalid(format!(
            "action {id} is {}, not contain",
            rec.kind
        )));
    };
    let existing = find(conn, p)?;
    let now = now_ms();
    let (ok, summary, detail) = match (rec.kind, existing) {
        (ActionKind::Contain, Some(c)) => (
            true,
            format!("already contained by action {}", c.action_id),
            serde_json::json!({"containment": c.id, "addresses": c.addresses}),
        ),
        (ActionKind::Contain, None) => {
            let addresses = match &p.device {
                Some(d) => device_addresses(conn, d)?,
                None => p.ip.into_iter().collect(),
            };
            let in_force = list(conn)?.len() as u64;
            if in_force >= guard.max {
                return finish_refused(
                    conn,
                    &rec,
                    format!(
                        "not contained: {in_force} targets are contained already, the most allowed (max_contained = {})",
                        guard.max
                    ),
                );
            }
            if let Some(a) = addresses.iter().find(|a| guard.own.contains(a)) {
                return finish_refused(
                    conn,
                    &rec,
                    format!(
                        "not contained: {a} is the controller's own address; containing it would cut every agent off"
                    ),
                );
            }
            // The requester's groups, as they stand when it is approved.
            let scope: Vec<String> = conn
                .query_row_cached(
                    "SELECT device_groups FROM users WHERE name = ?1",
                    [&rec.requested_by],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .map(|g| serde_json::from_str(&g))
                .transpose()?
                .unwrap_or_default();
            conn.execute_cached(
                "INSERT INTO containments (action_id, device_id, ip, mac, addresses, scope, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id.0 as i64,
                    p.device.as_ref().map(|d| d.as_str()),
                    p.ip.map(|i| i.to_string()),
                    p.mac,
                    serde_json::to_string(&addresses)?,
                    serde_json::to_string(&scope)?,
                    now
                ],
            )?;
            bump_all(conn)?;
            let mut stmt = conn.prepare_cached(
                "SELECT device_group FROM devices WHERE status = 'active' AND id IS NOT ?1",
            )?;
            let groups: Vec<String> = stmt
                .query_map([p.device.as_ref().map(|d| d.as_str())], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let peers = groups
                .iter()
                .filter(|g| scope.is_empty() || scope.contains(g))
                .count();
            (
                true,
                format!(
                    "contained {}: {peers} peer device(s) drop it in both directions (online ones now, the others when they connect)",
                    addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                serde_json::json!({"addresses": addresses, "peers": peers, "scope": scope}),
            )
        }
        (_, Some(c)) => {
            conn.execute_cached(
                "UPDATE containments SET ended_by = ?2, ended_at = ?3 WHERE id = ?1",
                params![c.id, id.0 as i64, now],
            )?;
            bump_all(conn)?;
            (
                true,
                format!("uncontained (containment of action {})", c.action_id),
                serde_json::json!({"containment": c.id, "addresses": c.addresses}),
            )
        }
        (_, None) => (
            false,
            "not contained: nothing to undo".into(),
            serde_json::json!({}),
        ),
    };
    let status = if ok {
        ActionStatus::Succeeded
    } else {
        ActionStatus::Failed
    };
    actions::finish_on_controller(conn, &rec, status, &summary, &detail)
}

fn finish_refused(conn: &Connection, rec: &ActionRecord, why: String) -> Result<ActionRecord> {
    actions::finish_on_controller(
        conn,
        rec,
        ActionStatus::Failed,
        &why,
        &serde_json::json!({"reason": why}),
    )
}

/// Follows a contained device's addresses: when its inventory reports others, every peer's set
/// changes. An address of the controller's own is never followed (the audit log says so).
/// Returns whether anything changed.
pub fn follow(conn: &Connection, device: &DeviceId, guard: &Guard) -> Result<bool> {
    let Some(c) = list(conn)?
        .into_iter()
        .find(|c| c.device_id.as_ref() == Some(device))
    else {
        return Ok(false);
    };
    let (now, refused): (Vec<IpAddr>, Vec<IpAddr>) = device_addresses(conn, device)?
        .into_iter()
        .partition(|a| !guard.own.contains(a));
    if now == c.addresses {
        return Ok(false);
    }
    conn.execute_cached(
        "UPDATE containments SET addresses = ?2 WHERE id = ?1",
        params![c.id, serde_json::to_string(&now)?],
    )?;
    bump_all(conn)?;
    let mut detail = serde_json::json!({"from": c.addresses, "to": now});
    if !refused.is_empty() {
        detail["not_followed"] = serde_json::json!(refused);
        detail["reason"] = "the controller's own address is never contained".into();
    }
    audit::append(
        conn,
        "controller",
        "containment_followed",
        Some(c.action_id),
        Some(device),
        &detail,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::actions::{Deadlines, NewAction};
    use palisade_common::ActionSource;
    use palisade_common::wire::Inventory;

    const D: Deadlines = Deadlines {
        approval_ms: 60_000,
        delivery_ms: 60_000,
    };

    fn store(devices: &[(&str, &[&str])]) -> (tempfile::TempDir, Connection) {
        store_in(
            &devices
                .iter()
                .map(|(d, a)| (*d, "default", *a))
                .collect::<Vec<_>>(),
        )
    }

    fn store_in(devices: &[(&str, &str, &[&str])]) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("t.sqlite")).unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        for (id, group, addrs) in devices {
            let inv = Inventory {
                addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                ..Default::default()
            };
            super::super::devices::insert(
                &c,
                &id.parse().unwrap(),
                group,
                "1",
                &[],
                &inv,
                &format!("serial-{id}"),
                0,
            )
            .unwrap();
        }
        (dir, c)
    }

    /// Creates a containment action and approves it (the default policy asks for approval).
    fn run(c: &Connection, params: ActionParams, device: Option<&str>) -> ActionRecord {
        run_as(c, "alice", params, device)
    }

    fn run_as(
        c: &Connection,
        who: &str,
        params: ActionParams,
        device: Option<&str>,
    ) -> ActionRecord {
        let rec = request(c, who, params, device);
        if rec.status == ActionStatus::PendingApproval {
            decide_guarded(c, &[rec.id], "bob", true, "ok", D, &guard())
                .unwrap()
                .remove(0)
        } else {
            rec
        }
    }

    /// Creates an action and runs it if approved at once, as the service does in one job.
    fn create_guarded(
        c: &Connection,
        new: NewAction,
        d: Deadlines,
        guard: &Guard,
    ) -> Result<ActionRecord> {
        let rec = actions::create_any(c, new, d)?;
        Ok(run_approved(c, vec![rec], guard)?.remove(0))
    }

    /// Decides actions and runs the approved ones, as the service does in one job.
    fn decide_guarded(
        c: &Connection,
        ids: &[ActionId],
        actor: &str,
        approve: bool,
        comment: &str,
        d: Deadlines,
        guard: &Guard,
    ) -> Result<Vec<ActionRecord>> {
        let records = actions::decide(c, ids, actor, approve, comment, d)?;
        run_approved(c, records, guard)
    }

    /// The controller's own address in these tests.
    const OWN: &str = "198.51.100.1";

    fn guard() -> Guard {
        Guard {
            max: 64,
            own: vec![OWN.parse().unwrap()],
        }
    }

    /// Creates a containment action, pending approval under the default policy.
    fn request(
        c: &Connection,
        who: &str,
        params: ActionParams,
        device: Option<&str>,
    ) -> ActionRecord {
        create_guarded(
            c,
            NewAction {
                params,
                device: device.map(|d| d.parse().unwrap()),
                device_group: "default".into(),
                source: ActionSource::ManualDeviceAction,
                requested_by: who.into(),
                comment: "c".into(),
                external_id: None,
                undo_of: None,
                parent: None,
            },
            D,
            &guard(),
        )
        .unwrap()
    }

    fn target(device: Option<&str>, ip: Option<&str>) -> ContainParams {
        ContainParams {
            device: device.map(|d| d.parse().unwrap()),
            ip: ip.map(|i| i.parse().unwrap()),
            mac: None,
            force: false,
        }
    }

    fn revision(c: &Connection, id: &str) -> u64 {
        super::super::desired::get(c, &id.parse().unwrap())
            .unwrap()
            .revision
    }

    #[test]
    fn approval_runs_the_containment_every_other_device_drops_the_target_and_follows_it() {
        let (_d, c) = store(&[
            ("dev-a", &["198.51.100.10", "2001:db8::a"]),
            ("dev-b", &["198.51.100.11"]),
        ]);
        let rec = run(
            &c,
            ActionParams::Contain(target(Some("dev-a"), None)),
            Some("dev-a"),
        );
        assert_eq!(rec.status, ActionStatus::Succeeded, "{rec:?}");
        assert!(rec.result_summary.unwrap().contains("1 peer device"));
        let b: DeviceId = "dev-b".parse().unwrap();
        let a: DeviceId = "dev-a".parse().unwrap();
        let want: Vec<IpAddr> = vec![
            "198.51.100.10".parse().unwrap(),
            "2001:db8::a".parse().unwrap(),
        ];
        assert_eq!(dropped_by(&c, &b).unwrap(), want);
        assert!(dropped_by(&c, &a).unwrap().is_empty(), "not itself");
        assert_eq!((revision(&c, "dev-a"), revision(&c, "dev-b")), (1, 1));

        // Its agent reports a new address: peers follow, an unchanged inventory changes nothing.
        assert!(!follow(&c, &a, &guard()).unwrap());
        let moved = Inventory {
            addresses: vec!["198.51.100.20".parse().unwrap()],
            ..Default::default()
        };
        super::super::devices::set_inventory(&c, &a, &moved).unwrap();
        assert!(follow(&c, &a, &guard()).unwrap());
        assert_eq!(
            dropped_by(&c, &b).unwrap(),
            vec!["198.51.100.20".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(revision(&c, "dev-b"), 2);

        // Uncontain as the undo: the set empties and the contain is marked undone.
        let undo = create_guarded(
            &c,
            NewAction {
                params: ActionParams::Uncontain(target(Some("dev-a"), None)),
                device: Some(a.clone()),
                device_group: "default".into(),
                source: ActionSource::ManualDeviceAction,
                requested_by: "alice".into(),
                comment: "u".into(),
                external_id: None,
                undo_of: Some(rec.id),
                parent: None,
            },
            D,
            &guard(),
        )
        .unwrap();
        let undone = decide_guarded(&c, &[undo.id], "bob", true, "ok", D, &guard()).unwrap();
        assert_eq!(undone[0].status, ActionStatus::Succeeded);
        assert!(dropped_by(&c, &b).unwrap().is_empty());
        assert_eq!(
            actions::get(&c, rec.id).unwrap().status,
            ActionStatus::Undone
        );
    }

    #[test]
    fn an_unmanaged_address_is_dropped_by_everyone_and_uncontaining_nothing_fails() {
        let (_d, c) = store(&[("dev-a", &["198.51.100.10"])]);
        let rec = run(
            &c,
            ActionParams::Contain(target(None, Some("192.0.2.66"))),
            None,
        );
        assert_eq!(rec.status, ActionStatus::Succeeded);
        assert_eq!(
            dropped_by(&c, &"dev-a".parse().unwrap()).unwrap(),
            vec!["192.0.2.66".parse::<IpAddr>().unwrap()]
        );
        assert!(
            find(&c, &target(None, Some("192.0.2.66")))
                .unwrap()
                .is_some()
        );
        let none = run(
            &c,
            ActionParams::Uncontain(target(None, Some("192.0.2.77"))),
            None,
        );
        assert_eq!(none.status, ActionStatus::Failed);
        assert!(none.result_summary.unwrap().contains("nothing to undo"));
    }

    #[test]
    fn a_scoped_requester_contains_only_within_their_groups() {
        let (_d, c) = store_in(&[
            ("dev-w", "web", &["198.51.100.10"]),
            ("dev-d", "db", &["198.51.100.11"]),
        ]);
        super::super::auth::add_user(
            &c,
            "admin",
            "carol",
            crate::auth::Role::Responder,
            &["web".to_owned()],
        )
        .unwrap();
        let rec = run_as(
            &c,
            "carol",
            ActionParams::Contain(target(None, Some("192.0.2.66"))),
            None,
        );
        assert_eq!(rec.status, ActionStatus::Succeeded);
        assert!(rec.result_summary.unwrap().contains("1 peer device"));
        assert_eq!(dropped_by(&c, &"dev-w".parse().unwrap()).unwrap().len(), 1);
        assert!(
            dropped_by(&c, &"dev-d".parse().unwrap())
                .unwrap()
                .is_empty(),
            "outside carol's groups"
        );
    }

    #[test]
    fn the_cap_counts_containments_approved_together() {
        let (_d, c) = store(&[("dev-a", &["198.51.100.10"])]);
        let ask = |ip: &str| {
            request(
                &c,
                "alice",
                ActionParams::Contain(target(None, Some(ip))),
                None,
            )
        };
        let (one, two) = (ask("192.0.2.66"), ask("192.0.2.67"));
        assert_eq!(two.status, ActionStatus::PendingApproval);
        let tight = Guard { max: 1, ..guard() };
        let done = decide_guarded(&c, &[one.id, two.id], "bob", true, "ok", D, &tight).unwrap();
        assert_eq!(done[0].status, ActionStatus::Succeeded, "{:?}", done[0]);
        assert_eq!(done[1].status, ActionStatus::Failed);
        let why = done[1].result_summary.clone().unwrap();
        assert!(why.contains("max_contained = 1"), "{why}");
        assert_eq!(list(&c).unwrap().len(), 1, "the second changed nothing");
        assert_eq!(
            dropped_by(&c, &"dev-a".parse().unwrap()).unwrap(),
            vec!["192.0.2.66".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn the_controllers_own_address_is_refused_at_approval_and_never_followed() {
        let (_d, c) = store(&[("dev-a", &["198.51.100.10"]), ("dev-b", &["198.51.100.11"])]);
        // The address became the controller's between request and approval.
        let rec = run(&c, ActionParams::Contain(target(None, Some(OWN))), None);
        assert_eq!(rec.status, ActionStatus::Failed);
        let why = rec.result_summary.unwrap();
        assert!(why.contains("controller's own address"), "{why}");
        assert!(list(&c).unwrap().is_empty());
        let before = revision(&c, "dev-b");

        // A contained device that moves onto the controller's address is not followed there.
        let a: DeviceId = "dev-a".parse().unwrap();
        let rec = run(
            &c,
            ActionParams::Contain(target(Some("dev-a"), None)),
            Some("dev-a"),
        );
        assert_eq!(rec.status, ActionStatus::Succeeded);
        assert_eq!(
            revision(&c, "dev-b"),
            before + 1,
            "only the real one bumped"
        );
        let moved = Inventory {
            addresses: vec!["198.51.100.20".parse().unwrap(), OWN.parse().unwrap()],
            ..Default::default()
        };
        super::super::devices::set_inventory(&c, &a, &moved).unwrap();
        assert!(follow(&c, &a, &guard()).unwrap());
        assert_eq!(
            dropped_by(&c, &"dev-b".parse().unwrap()).unwrap(),
            vec!["198.51.100.20".parse::<IpAddr>().unwrap()]
        );
    }
}
