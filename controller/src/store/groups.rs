//! Device groups: a device's group is an admin's manual assignment when it has one, else the
//! group of the first membership rule (in order) that it matches, else the group its enrolment
//! token named. It is worked out again when the device enrolls, says hello or reports its
//! inventory, and for every device when the rules change. `devices.device_group` holds the
//! result, so permissions, policies, allowlists and containment scopes follow a move at once;
//! a move bumps the device's desired revision (its allowlist and settings may differ) and is
//! audited, like every change of the rules or of an assignment.

use super::Cached;
use std::net::IpAddr;

use palisade_common::DeviceId;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError, audit, now_ms};

/// Most membership rules kept.
pub const MAX_RULES: usize = 1000;

/// A membership rule: a device matches when it matches every condition given (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// A hostname glob: `*` any run of characters, `?` one; case-insensitive.
    #[serde(default)]
    pub hostname: Option<String>,
    /// An address block (`10.1.0.0/16`, `fd00::/64`, or one address): a device matches when
    /// one of its reported addresses is in it.
    #[serde(default)]
    pub cidr: Option<String>,
    pub device_group: String,
}

/// A stored rule, as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRule {
    /// 1-based: rules are tried in this order.
    pub position: i64,
    #[serde(flatten)]
    pub rule: GroupRule,
    pub created_by: String,
    pub created_at: i64,
}

/// A device that changed group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub device: DeviceId,
    pub from: String,
    pub to: String,
    /// `manual`, `rule N` or `enrolment`.
    pub source: String,
}

/// A group name an admin may give: 1 to 64 characters, no control characters, not `*` (which
/// means "every group" in policies and settings).
pub fn check_group_name(name: &str) -> Result<()> {
    // A long name is not echoed back whole.
    palisade_common::limits::check_chars("device_group", name, 64).map_err(StoreError::Invalid)?;
    if name.is_empty()
        || name.chars().count() > 64
        || name == "*"
        || name.trim() != name
        || name.chars().any(char::is_control)
    {
        return Err(StoreError::Invalid(format!(
            "invalid device group {name:?}: 1 to 64 characters, no surrounding spaces, not *"
        )));
    }
    Ok(())
}

impl GroupRule {
    pub fn validate(&self) -> Result<(), String> {
        check_group_name(&self.device_group).map_err(|e| e.to_string())?;
        match (&self.hostname, &self.cidr) {
            (None, None) => return Err("give a hostname glob, a CIDR block, or both".into()),
            (Some(h), _) if h.is_empty() || h.len() > 253 => {
                return Err("a hostname glob is 1 to 253 characters".into());
            }
            _ => {}
        }
        if let Some(c) = &self.cidr {
            Cidr::parse(c)?;
        }
        Ok(())
    }

    pub fn matches(&self, hostname: &str, addresses: &[IpAddr]) -> bool {
        self.hostname.as_deref().is_none_or(|g| glob(g, hostname))
            && self.cidr.as_deref().is_none_or(|c| {
                Cidr::parse(c).is_ok_and(|c| addresses.iter().any(|a| c.contains(*a)))
            })
    }
}

/// The group a device belongs in, and why: its manual assignment, else the first rule it
/// matches, else its enrolment token's group.
pub fn decide(
    rules: &[GroupRule],
    manual: Option<&str>,
    enrolled: &str,
    hostname: &str,
    addresses: &[IpAddr],
) -> (String, String) {
    if let Some(m) = manual {
        return (m.to_owned(), "manual".into());
    }
    match rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches(hostname, addresses))
    {
        Some((i, r)) => (r.device_group.clone(), format!("rule {}", i + 1)),
        None => (enrolled.to_owned(), "enrolment".into()),
    }
}

/// `*` matches any run of characters, `?` any one; case-insensitive.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    net: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The membership rules, in order.
pub fn rules(conn: &Connection) -> Result<Vec<StoredRule>> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, hostname, cidr, device_group, created_by, created_at FROM group_rules
         ORDER BY position",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredRule {
            position: r.get(0)?,
            rule: GroupRule {
                hostname: r.get(1)?,
                cidr: r.get(2)?,
                device_group: r.get(3)?,
            },
            created_by: r.get(4)?,
            created_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replaces the membership rules and re-evaluates every active device; returns the moves.
pub fn set_rules(conn: &Connection, actor: &str, list: &[GroupRule]) -> Result<Vec<Moved>> {
    if list.len() > MAX_RULES {
        return Err(StoreError::Invalid(format!(
            "{} rules: at most {MAX_RULES}",
            list.len()
        )));
    }
    for (i, r) in list.iter().enumerate() {
        r.validate()
            .map_err(|e| StoreError::Invalid(format!("rule {}: {e}", i + 1)))?;
    }
    conn.execute_cached("DELETE FROM group_rules", [])?;
    let now = now_ms();
    for (i, r) in list.iter().enumerate() {
        conn.execute_cached(
            "INSERT INTO group_rules (position, hostname, cidr, device_group, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![i as i64 + 1, r.hostname, r.cidr, r.device_group, actor, now],
        )?;
    }
    audit::append(
        conn,
        actor,
        "group_rules_set",
        None,
        None,
        &serde_json::json!({"rules": list}),
    )?;
    let ids: Vec<String> = conn
        .prepare_cached("SELECT id FROM devices WHERE status = 'active' ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = Vec::new();
    for id in ids {
        let id: DeviceId = id
            .parse()
            .map_err(|e: palisade_common::ids::IdError| StoreError::Sql(e.to_string()))?;
        moved.extend(evaluate_with(conn, &id, actor, list)?);
    }
    Ok(moved)
}

/// Assigns a device to a group by hand (`None`: back to the rules and its enrolment group).
pub fn assign(
    conn: &Connection,
    actor: &str,
    id: &DeviceId,
    group: Option<&str>,
) -> Result<Option<Moved>> {
    if let Some(g) = group {
        check_group_name(g)?;
    }
    let n = conn.execute_cached(
        "UPDATE devices SET manual_group = ?2 WHERE id = ?1",
        params![id.as_str(), group],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no device {id}")));
    }
    audit::append(
        conn,
        actor,
        "device_group_assigned",
        None,
        Some(id),
        &serde_json::json!({"device_group": group}),
    )?;
    evaluate(conn, id, actor)
}

/// Works out the device's group again (after it enrolled or reported its inventory).
pub fn evaluate(conn: &Connection, id: &DeviceId, actor: &str) -> Result<Option<Moved>> {
    let list: Vec<GroupRule> = rules(conn)?.into_iter().map(|r| r.rule).collect();
    evaluate_with(conn, id, actor, &list)
}

fn evaluate_with(
    conn: &Connection,
    id: &DeviceId,
    actor: &str,
    list: &[GroupRule],
) -> Result<Option<Moved>> {
    type Row = (
        String,
        Option<String>,
        Option<String>,
        String,
        String,
        String,
    );
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT device_group, enrolled_group, manual_group, group_source, hostname, inventory
             FROM devices WHERE id = ?1",
        )?
        .query_row([id.as_str()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((current, enrolled, manual, source, hostname, inventory)) = row else {
        return Err(StoreError::NotFound(format!("no device {id}")));
    };
    // A device from before groups were managed (or written by hand) is in its enrolment group.
    let enrolled_known = enrolled.is_some();
    let enrolled = enrolled.unwrap_or_else(|| current.clone());
    let inv: serde_json::Value = serde_json::from_str(&inventory)?;
    let addresses: Vec<IpAddr> = inv["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    let (group, why) = decide(list, manual.as_deref(), &enrolled, &hostname, &addresses);
    if group == current && why == source && enrolled_known {
        return Ok(None);
    }
    let bump = i64::from(group != current);
    conn.execute_cached(
        "UPDATE devices SET device_group = ?2, group_source = ?3, enrolled_group = ?4,
         desired_revision = desired_revision + ?5 WHERE id = ?1",
        params![id.as_str(), group, why, enrolled, bump],
    )?;
    if group == current {
        return Ok(None);
    }
    audit::append(
        conn,
        actor,
        "device_group_changed",
        None,
        Some(id),
        &serde_json::json!({"from": current, "to": group, "source": why}),
    )?;
    Ok(Some(Moved {
        device: id.clone(),
        from: current,
        to: group,
        source: why,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::devices;
    use palisade_common::wire::Inventory;

    fn rule(hostname: Option<&str>, cidr: Option<&str>, group: &str) -> GroupRule {
        GroupRule {
            hostname: hostname.map(str::to_owned),
            cidr: cidr.map(str::to_owned),
            device_group: group.into(),
        }
    }

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        c
    }

    fn enroll(c: &Connection, n: u8, host: &str, addr: &str, group: &str) -> DeviceId {
        let id = DeviceId::from_random([n; 16]);
        let inv = Inventory {
            hostname: host.into(),
            addresses: vec![addr.parse().unwrap()],
            ..Default::default()
        };
        devices::insert(c, &id, group, "1", &[], &inv, "s", 1).unwrap();
        evaluate(c, &id, "controller").unwrap();
        id
    }

    fn group_of(c: &Connection, id: &DeviceId) -> (String, String) {
        let d = devices::get(c, id).unwrap();
        (d.device_group, d.group_source)
    }

    #[test]
    fn globs_and_cidr_blocks_match_what_an_admin_means() {
        assert!(glob("web-*", "WEB-12.example"));
        assert!(glob("db-?", "db-1"));
        assert!(!glob("db-?", "db-12"));
        assert!(glob("*", ""));
        assert!(glob("*.lab.*", "a.lab.example"));
        assert!(!glob("web", "web-1"));
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/64")
                .unwrap()
                .contains("fd00::2".parse().unwrap())
        );
        assert!(
            Cidr::parse("192.0.2.7")
                .unwrap()
                .contains("192.0.2.7".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("web").is_err());
        assert!(rule(None, None, "x").validate().is_err());
        assert!(rule(Some("*"), None, "*").validate().is_err());
    }

    #[test]
    fn rules_apply_in_order_at_enrolment_and_a_manual_assignment_wins() {
        let c = db();
        set_rules(
            &c,
            "root",
            &[
                rule(Some("web-*"), Some("10.1.0.0/16"), "web-lab"),
                rule(Some("web-*"), None, "web"),
                rule(None, Some("10.9.0.0/16"), "db"),
            ],
        )
        .unwrap();
        let lab = enroll(&c, 1, "web-1", "10.1.0.5", "default");
        let web = enroll(&c, 2, "WEB-2", "10.2.0.5", "default");
        let db = enroll(&c, 3, "pg-1", "10.9.0.5", "default");
        let other = enroll(&c, 4, "mail", "10.3.0.5", "mailers");
        assert_eq!(group_of(&c, &lab), ("web-lab".into(), "rule 1".into()));
        assert_eq!(group_of(&c, &web), ("web".into(), "rule 2".into()));
        assert_eq!(group_of(&c, &db), ("db".into(), "rule 3".into()));
        assert_eq!(group_of(&c, &other), ("mailers".into(), "enrolment".into()));

        // A manual assignment wins over every rule; cleared, the rules decide again.
        let moved = assign(&c, "root", &web, Some("quarantine-lab"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (moved.from.as_str(), moved.to.as_str()),
            ("web", "quarantine-lab")
        );
        assert_eq!(
            group_of(&c, &web),
            ("quarantine-lab".into(), "manual".into())
        );
        let inv = Inventory {
            hostname: "web-2".into(),
            addresses: vec!["10.1.0.6".parse().unwrap()],
            ..Default::default()
        };
        devices::set_inventory(&c, &web, &inv).unwrap();
        assert_eq!(evaluate(&c, &web, "controller").unwrap(), None);
        assert_eq!(group_of(&c, &web).0, "quarantine-lab");
        assign(&c, "root", &web, None).unwrap();
        assert_eq!(group_of(&c, &web), ("web-lab".into(), "rule 1".into()));

        // New inventory moves a device by the rules.
        let inv = Inventory {
            hostname: "pg-1".into(),
            addresses: vec!["10.3.0.7".parse().unwrap()],
            ..Default::default()
        };
        devices::set_inventory(&c, &db, &inv).unwrap();
        let moved = evaluate(&c, &db, "controller").unwrap().unwrap();
        assert_eq!(
            (moved.to.as_str(), moved.source.as_str()),
            ("default", "enrolment")
        );

        // Changing the rules re-evaluates every device; no rule: back to the token's group.
        let moved = set_rules(&c, "root", &[]).unwrap();
        let mut to: Vec<(String, String)> = moved
            .iter()
            .map(|m| (m.from.clone(), m.to.clone()))
            .collect();
        to.sort();
        assert_eq!(
            to,
            [
                ("web-lab".to_owned(), "default".to_owned()),
                ("web-lab".into(), "default".into())
            ]
        );
        assert_eq!(group_of(&c, &lab), ("default".into(), "enrolment".into()));

        // Every change is audited; a move bumps the device's desired revision.
        let events: Vec<String> = c
            .prepare("SELECT event FROM audit ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for e in [
            "group_rules_set",
            "device_group_assigned",
            "device_group_changed",
        ] {
            assert!(events.iter().any(|x| x == e), "{e} not audited: {events:?}");
        }
        assert!(crate::store::desired::get(&c, &web).unwrap().revision >= 3);
        assert!(matches!(
            assign(&c, "root", &web, Some("*")),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn a_device_written_before_groups_were_managed_keeps_its_group_when_no_rule_matches() {
        let c = db();
        let id = enroll(&c, 1, "web-1", "10.1.0.5", "web");
        c.execute("UPDATE devices SET enrolled_group = NULL", [])
            .unwrap();
        set_rules(&c, "root", &[rule(Some("db-*"), None, "db")]).unwrap();
        assert_eq!(group_of(&c, &id), ("web".into(), "enrolment".into()));
    }

    #[test]
    fn scoped_listing_follows_a_moved_device_at_once() {
        use crate::store::actions;
        let c = db();
        let id = enroll(&c, 1, "web-1", "10.1.0.5", "web");
        actions::create(
            &c,
            actions::NewAction {
                params: palisade_common::ActionParams::RequestSample(
                    palisade_common::action::RequestSampleParams { path: "/x".into() },
                ),
                device: Some(id.clone()),
                device_group: "web".into(),
                source: palisade_common::ActionSource::ManualDeviceAction,
                requested_by: "alice".into(),
                comment: "c".into(),
                external_id: None,
                undo_of: None,
                parent: None,
            },
            actions::Deadlines {
                approval_ms: 60_000,
                delivery_ms: 60_000,
            },
        )
        .unwrap();
        let seen = |g: &str| {
            actions::list(&c, &actions::Filter::default(), Some(&[g.to_owned()]))
                .unwrap()
                .1
        };
        assert_eq!((seen("web"), seen("db")), (1, 0));
        assign(&c, "root", &id, Some("db")).unwrap();
        assert_eq!((seen("web"), seen("db")), (0, 1));
    }
}
