//! Action center page loads with a large history, through the real release controller over
//! HTTP with a browser session cookie: what the page asks for when a tab opens (the user's
//! preferences, then one server-side sorted, filtered page of actions), for several sorts and
//! filters, plus the static page itself and a CSV export.
//!
//! `cargo build --release --workspace --bins --benches && cargo bench --workspace --bench action_center`
//!
//! Environment: `PALISADE_BENCH_N` (actions, default 100,000), `PALISADE_BENCH_ROUNDS`
//! (page loads per query, default 50).

use std::time::Instant;

use palisade_tests::bench::knob;
use palisade_tests::{Controller, sqlite3};
use serde_json::json;

pub fn main() {
    let n = knob("PALISADE_BENCH_N", 100_000, 2_000);
    let rounds = knob("PALISADE_BENCH_ROUNDS", 50, 2);
    let ctl = Controller::start();

    // 500 devices in 10 groups, then n actions over six months, every kind, status, source
    // and 20 requesters; written by SQL (this measures reads, not inserts).
    let t = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let six_months = 183 * 86_400_000i64;
    sqlite3(
        &ctl.db(),
        &format!(
            "BEGIN;
             WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < 499)
             INSERT INTO devices (id, hostname, device_group, agent_version, capabilities, inventory, cert_serial, enrolled_at)
             SELECT printf('00000000-0000-4000-8000-%012d', i), printf('host-%04d', i), printf('group-%d', i % 10),
                    '0.1.0', '[]', '{{}}', printf('serial-%d', i), 0 FROM s;
             WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {last})
             INSERT INTO actions (kind, params, device_id, source, status, requested_by, comment, created_at, expires_at,
                                  decided_by, decided_at, finished_at, result_summary)
             SELECT k.kind, '{{\"kind\":\"offboard\"}}', printf('00000000-0000-4000-8000-%012d', i % 500),
                    src.source, st.status, printf('user%d', i % 20), printf('case %d: %s', i % 977, k.kind),
                    {start} + i * {step}, {start} + i * {step} + 604800000,
                    'approver', {start} + i * {step} + 60000, {start} + i * {step} + 120000, printf('done %d', i % 131)
             FROM s
             JOIN (SELECT 0 AS n, 'isolate' AS kind UNION ALL SELECT 1, 'quarantine' UNION ALL SELECT 2, 'scan'
                   UNION ALL SELECT 3, 'request_sample' UNION ALL SELECT 4, 'collect_package' UNION ALL SELECT 5, 'contain') k
               ON k.n = i % 6
             JOIN (SELECT 0 AS n, 'manual_device_action' AS source UNION ALL SELECT 1, 'automated_device_action'
                   UNION ALL SELECT 2, 'api_action') src ON src.n = (i / 6) % 3
             JOIN (SELECT 0 AS n, 'succeeded' AS status UNION ALL SELECT 1, 'failed' UNION ALL SELECT 2, 'rejected'
                   UNION ALL SELECT 3, 'pending_approval' UNION ALL SELECT 4, 'expired') st ON st.n = (i / 18) % 5;
             COMMIT;",
            last = n - 1,
            start = now - six_months,
            step = six_months / n as i64,
        ),
    );
    println!("loaded {n} actions in {:.1} s", t.elapsed().as_secs_f64());

    // Sessions as the browser has them: admin, and an approver of one group of ten.
    for (name, role, groups) in [
        ("ana", "admin", vec![]),
        ("gus", "approver", vec!["group-3"]),
    ] {
        let (status, v) = ctl.api(
            "POST",
            "/api/v1/users",
            Some(&ctl.admin_token),
            Some(json!({"name": name, "role": role, "device_groups": groups,
                        "password": "benchmark password"})),
        );
        assert_eq!(status, 201, "{v}");
    }
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = ctl.url();
    let cookie = |name: &str| -> String {
        let r = http
            .post(format!("{base}/api/v1/session"))
            .send_json(json!({"name": name, "password": "benchmark password"}))
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let (admin, scoped) = (cookie("ana"), cookie("gus"));
    let get = |cookie: &str, path: &str| -> usize {
        let mut r = http
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.body_mut().read_to_vec().unwrap().len()
    };

    let page = "&limit=50";
    let queries: Vec<(&str, bool, String)> = vec![
        (
            "history tab: 6 months, newest first",
            false,
            format!("view=history&window=6m&sort=id&order=desc{page}"),
        ),
        (
            "pending tab: oldest first",
            false,
            format!("view=pending&sort=created_at&order=asc{page}"),
        ),
        (
            "history sorted by comment",
            false,
            format!("view=history&window=6m&sort=comment&order=asc{page}"),
        ),
        (
            "history sorted by device",
            false,
            format!("view=history&window=6m&sort=device&order=asc{page}"),
        ),
        (
            "history sorted by device group",
            false,
            format!("view=history&window=6m&sort=device_group&order=desc{page}"),
        ),
        (
            "history sorted by result summary",
            false,
            format!("view=history&window=6m&sort=result_summary{page}"),
        ),
        (
            "last 30 days, sorted by requester",
            false,
            format!("view=history&window=30d&sort=requested_by&order=asc{page}"),
        ),
        (
            "kind + status filter",
            false,
            format!("view=history&window=6m&kind=scan&status=failed{page}"),
        ),
        (
            "source + requester filter",
            false,
            format!("view=history&window=6m&source=api_action&requested_by=user7{page}"),
        ),
        (
            "one device",
            false,
            format!("view=history&window=6m&device=host-0042{page}"),
        ),
        (
            "one device group",
            false,
            format!("view=history&window=6m&device_group=group-4{page}"),
        ),
        (
            "page 1000 (offset 49,950)",
            false,
            "view=history&sort=id&order=desc&limit=50&offset=49950".to_owned(),
        ),
        (
            "group-scoped approver, history",
            true,
            format!("view=history&window=6m{page}"),
        ),
        (
            "group-scoped approver, sorted by comment",
            true,
            format!("view=history&window=6m&sort=comment&order=asc{page}"),
        ),
    ];
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "tab open (prefs + one page of 50)", "p50 ms", "p95 ms", "max ms"
    );
    let mut worst_p95 = 0.0f64;
    for (name, is_scoped, q) in &queries {
        let c = if *is_scoped { &scoped } else { &admin };
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            get(c, "/api/v1/ui-prefs/history");
            get(c, &format!("/api/v1/actions?{q}"));
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        worst_p95 = worst_p95.max(p(0.95));
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1}",
            p(0.5),
            p(0.95),
            p(1.0)
        );
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        get(&admin, "/");
        get(&admin, "/ui/app.js");
        get(&admin, "/ui/app.css");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{:<44} {:>9.1} {:>9.1} {:>9.1}",
        "static page (html + js + css)",
        times[rounds / 2],
        times[(rounds - 1) * 95 / 100],
        times[rounds - 1]
    );
    let t = Instant::now();
    let bytes = get(
        &admin,
        "/api/v1/actions/export.csv?view=history&window=6m&kind=scan",
    );
    println!(
        "CSV export of one kind over 6 months: {bytes} bytes in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!("worst p95 of a tab open: {worst_p95:.1} ms (goal: 200 ms)");
}
