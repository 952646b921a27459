//! History query latency with a large store: fills a controller database with N actions
//! (default 1,000,000) spread over devices, kinds, statuses, sources and six months, then
//! times the Action center's queries through the real `store::actions::list`.
//!
//! `PALISADE_HISTORY_N=1000000 cargo bench --workspace --bench history_query`

use std::time::Instant;

mod common;

use palisade_common::{ActionKind, ActionSource, ActionStatus};
use palisade_controller::store::Store;
use palisade_controller::store::actions::{self, Filter};

use common::knob;

fn main() {
    let n = knob("PALISADE_HISTORY_N", 1_000_000, 5_000) as u64;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("controller.sqlite");
    let store = Store::open(&path).unwrap();
    drop(store);

    // Bulk load with plain SQL: this measures queries, not inserts.
    let t = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for d in 0..1000 {
            tx.execute(
                "INSERT INTO devices (id, hostname, device_group, agent_version, capabilities, inventory, cert_serial, enrolled_at)
                 VALUES (?1, ?2, ?3, '0.1.0', '[]', '{}', ?1, 0)",
                rusqlite::params![format!("dev-{d:04}"), format!("host-{d:04}"), format!("group-{}", d % 10)],
            )
            .unwrap();
        }
        let now = 1_764_000_000_000i64;
        let six_months = 183 * 86_400_000i64;
        let kinds = ActionKind::ALL;
        let statuses = [
            ActionStatus::Succeeded,
            ActionStatus::Failed,
            ActionStatus::Rejected,
            ActionStatus::PendingApproval,
            ActionStatus::Expired,
        ];
        let sources = ActionSource::ALL;
        let mut stmt = tx
            .prepare(
                "INSERT INTO actions (kind, params, device_id, source, status, requested_by, comment, created_at, expires_at, decided_by, decided_at, finished_at, result_summary)
                 VALUES (?1, '{\"kind\":\"offboard\"}', ?2, ?3, ?4, ?5, 'bench', ?6, ?6, 'approver', ?6, ?6, 'done')",
            )
            .unwrap();
        for i in 0..n {
            stmt.execute(rusqlite::params![
                kinds[(i % 12) as usize].as_str(),
                format!("dev-{:04}", i % 1000),
                sources[(i % 5) as usize].as_str(),
                statuses[(i % 5) as usize].as_str(),
                format!("user{}", i % 20),
                now - six_months + (i as i64 * six_months / n as i64),
            ])
            .unwrap();
        }
        drop(stmt);
        tx.commit().unwrap();
    }
    println!("loaded {n} actions in {:.1} s", t.elapsed().as_secs_f64());

    let store = Store::open(&path).unwrap();
    let week_ago = 1_764_000_000_000i64 - 7 * 86_400_000;
    let queries: Vec<(&str, Filter)> = vec![
        (
            "history, newest first, page of 50",
            Filter {
                view: Some("history".into()),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "pending, page of 50",
            Filter {
                view: Some("pending".into()),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "one device, page of 50",
            Filter {
                device: Some("host-0042".into()),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "kind + status, page of 50",
            Filter {
                kind: Some(ActionKind::Scan),
                status: Some(ActionStatus::Failed),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "last week, sorted by requester",
            Filter {
                since: Some(week_ago),
                sort: Some("requested_by".into()),
                order: Some("asc".into()),
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "group-scoped, all statuses (1 of 10 groups)",
            Filter {
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "page 1000 of 50",
            Filter {
                view: Some("history".into()),
                limit: Some(50),
                offset: Some(50_000),
                ..Default::default()
            },
        ),
    ];
    println!(
        "{:<45} {:>10} {:>10} {:>10}",
        "query", "p50 ms", "p95 ms", "total"
    );
    for (i, (name, filter)) in queries.into_iter().enumerate() {
        let groups = (i == 5).then(|| vec!["group-3".to_owned()]);
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..20 {
            let (f, g) = (filter.clone(), groups.clone());
            let t = Instant::now();
            let (rows, count) = store
                .read_blocking(move |c| actions::list(c, &f, g.as_deref()))
                .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            total = count;
            assert!(rows.len() <= 50);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<45} {:>10.1} {:>10.1} {:>10}",
            times[10], times[18], total
        );
    }
}
