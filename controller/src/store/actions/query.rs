//! Listing actions: the Action center's filters, sort and page, on the indexes.

use palisade_common::{ActionKind, ActionSource, ActionStatus};
use rusqlite::{Connection, params_from_iter};

use super::{ActionRecord, COLUMNS, artifacts, child_counts, from_row};
use crate::store::{Cached, Result, StoreError, now_ms};

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
    use palisade_common::DeviceId;
    use palisade_common::wire::Inventory;

    use super::*;
    use crate::store::actions::tests::sample_of;
    use crate::store::actions::{Deadlines, create};

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        for (i, host) in ["alpha", "beta"].iter().enumerate() {
            let id = DeviceId::from_random([i as u8 + 1; 16]);
            let inv = Inventory {
                hostname: (*host).into(),
                ..Default::default()
            };
            crate::store::devices::insert(
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
