//! Durable action transitions per second in the controller store (WAL, `synchronous=FULL`,
//! one writer thread with group commit), side by side:
//!
//! * group commit: many concurrent callers, each walking its actions through the lifecycle
//!   with one `Store::write` per transition, so that the writer can put many of them in one
//!   transaction (one fsync);
//! * baseline: the same transitions from one caller, strictly one after another, so that every
//!   transition is its own transaction and waits for its own fsync.
//!
//! Each action takes six committed transitions, each through the store's real transition
//! function (and its audit row): create (pending approval) → approve → delivered →
//! acknowledged → in progress → succeeded.
//!
//! `cargo bench --workspace --bench store_transitions`
//!
//! Environment: `PALISADE_BENCH_ACTIONS` (default 3400, i.e. 20,400 transitions per mode),
//! `PALISADE_BENCH_TASKS` (concurrent callers for group commit, default 64).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use palisade_common::action::{ActionReport, Outcome, Progress, RequestSampleParams};
use palisade_common::wire::Inventory;
use palisade_common::{ActionId, ActionKind, ActionParams, ActionSource, ActionStatus, DeviceId};
use palisade_controller::store::actions::{self, Deadlines, NewAction};
use palisade_controller::store::{Result as StoreResult, Store, audit, devices};

use common::knob;

/// Committed state changes per action: create, approve, delivered, acknowledged, started, result.
const TRANSITIONS_PER_ACTION: usize = 6;

const DEADLINES: Deadlines = Deadlines {
    approval_ms: 7 * 24 * 3600 * 1000,
    delivery_ms: 14 * 24 * 3600 * 1000,
};

/// `target/` of this build: the bench runs as `target/<profile>/deps/<exe>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target/<profile>/deps/<bench>")
}

/// A fresh store with one enrolled device.
fn fresh_store(dir: &Path, name: &str) -> (Store, DeviceId) {
    let store = Store::open(&dir.join(name)).expect("open store");
    let device: DeviceId = "bench-device".parse().expect("device id");
    let d = device.clone();
    store
        .write_blocking(move |c| {
            let inventory = Inventory {
                hostname: "bench-host".into(),
                os: "linux".into(),
                ..Default::default()
            };
            devices::insert(
                c,
                &d,
                "default",
                "bench",
                &[ActionKind::RequestSample],
                &inventory,
                "01",
                0,
            )
        })
        .expect("insert device");
    (store, device)
}

/// One `Store::write`, timed from submission to the caller hearing of the commit. (The job is
/// submitted when the future is first polled, which is right away.)
async fn timed<T>(lat: &mut Vec<Duration>, write: impl Future<Output = StoreResult<T>>) -> T {
    let start = Instant::now();
    let out = write.await.expect("transition committed");
    lat.push(start.elapsed());
    out
}

/// Walks one new action through its six transitions, one committed write each.
async fn lifecycle(store: &Store, device: &DeviceId, n: usize, lat: &mut Vec<Duration>) {
    let new = NewAction {
        params: ActionParams::RequestSample(RequestSampleParams {
            path: format!("/var/tmp/sample-{n}"),
        }),
        device: Some(device.clone()),
        device_group: "default".into(),
        source: ActionSource::ManualDeviceAction,
        requested_by: "bench-requester".into(),
        comment: "bench".into(),
        external_id: None,
        undo_of: None,
        parent: None,
    };
    let rec = timed(
        lat,
        store.write(move |c| actions::create(c, new, DEADLINES)),
    )
    .await;
    assert_eq!(
        rec.status,
        ActionStatus::PendingApproval,
        "policy approved action {}",
        rec.id
    );
    let id: ActionId = rec.id;

    let recs = timed(
        lat,
        store.write(move |c| actions::decide(c, &[id], "bench-approver", true, "ok", DEADLINES)),
    )
    .await;
    assert_eq!(recs[0].status, ActionStatus::Approved);

    let d = device.clone();
    let sent = timed(lat, store.write(move |c| actions::delivered(c, &d, id))).await;
    assert!(sent, "action {id} not deliverable");

    let d = device.clone();
    timed(lat, store.write(move |c| actions::acknowledged(c, &d, id))).await;

    let d = device.clone();
    let p = Progress {
        message: "reading".into(),
        permille: Some(0),
    };
    timed(lat, store.write(move |c| actions::progress(c, &d, id, &p))).await;

    let d = device.clone();
    let report = ActionReport {
        id,
        outcome: Outcome::Succeeded,
        summary: "sample uploaded".into(),
        detail: r#"{"size":4096}"#.into(),
        artifacts: vec![],
    };
    let (rec, changed) = timed(
        lat,
        store.write(move |c| actions::result(c, &d, &report, &[])),
    )
    .await;
    assert!(
        changed && rec.status == ActionStatus::Succeeded,
        "action {id} ended {}",
        rec.status
    );
}

struct Run {
    transitions: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.transitions as f64 / self.elapsed.as_secs_f64()
    }
}

/// `tasks` concurrent callers share `n_actions` actions.
async fn run(store: Store, device: DeviceId, n_actions: usize, tasks: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (store, device, next) = (store.clone(), device.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n_actions / tasks * TRANSITIONS_PER_ACTION + 16);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= n_actions {
                    break;
                }
                lifecycle(&store, &device, n, &mut lat).await;
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.expect("bench task"));
    }
    let elapsed = start.elapsed();
    let transitions = latencies.len();
    assert_eq!(transitions, n_actions * TRANSITIONS_PER_ACTION);
    check(&store, n_actions);
    Run {
        transitions,
        elapsed,
        latencies,
    }
}

/// Every action succeeded, every transition left its audit row (1 for the enrolment + 6 per
/// action) and the audit chain is intact. Through the store's own functions: only the store
/// speaks SQL.
fn check(store: &Store, n_actions: usize) {
    let public = store.audit_public();
    let (succeeded, audit) = store
        .read_blocking(move |c| {
            let filter = actions::Filter {
                status: Some(ActionStatus::Succeeded),
                limit: Some(1),
                ..Default::default()
            };
            Ok((
                actions::list(c, &filter, None)?.1,
                audit::verify(c, &public)?,
            ))
        })
        .expect("read back");
    assert_eq!(succeeded as usize, n_actions, "succeeded actions");
    assert_eq!(
        audit.records as usize,
        1 + n_actions * TRANSITIONS_PER_ACTION,
        "audit rows"
    );
    assert!(
        audit.first_broken.is_none(),
        "audit chain broken: {:?}",
        audit.first_broken
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let n_actions = knob("PALISADE_BENCH_ACTIONS", 3400, 100).max(1);
    let tasks = knob("PALISADE_BENCH_TASKS", 64, 8).max(1);
    let base = target_dir().join("bench-tmp");
    std::fs::create_dir_all(&base).expect("create target/bench-tmp");
    let dir = tempfile::tempdir_in(&base).expect("temp dir under target/");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "store_transitions: {n_actions} actions x {TRANSITIONS_PER_ACTION} transitions = {} per mode; database in {}",
        n_actions * TRANSITIONS_PER_ACTION,
        dir.path().display()
    );

    // Warm-up on its own database: page cache, allocator, runtime threads.
    let (s, d) = fresh_store(dir.path(), "warmup.sqlite");
    rt.block_on(run(s, d, 200.min(n_actions), tasks));

    let (s, d) = fresh_store(dir.path(), "group.sqlite");
    let mut group = rt.block_on(run(s, d, n_actions, tasks));
    let (s, d) = fresh_store(dir.path(), "serial.sqlite");
    let mut serial = rt.block_on(run(s, d, n_actions, 1));
    group.latencies.sort_unstable();
    serial.latencies.sort_unstable();

    println!();
    println!(
        "{:<42} {:>12} {:>10} {:>12} {:>12} {:>12}",
        "mode", "transitions", "secs", "per second", "p50 ms", "p99 ms"
    );
    for (name, r) in [
        (format!("group commit ({tasks} concurrent callers)"), &group),
        (
            "one transaction per transition (1 caller)".to_owned(),
            &serial,
        ),
    ] {
        println!(
            "{:<42} {:>12} {:>10.2} {:>12.0} {:>12} {:>12}",
            name,
            r.transitions,
            r.elapsed.as_secs_f64(),
            r.per_sec(),
            ms(percentile(&r.latencies, 50.0)),
            ms(percentile(&r.latencies, 99.0)),
        );
    }
    println!();
    println!(
        "group commit commit latency: p50 {} ms, p99 {} ms, max {} ms",
        ms(percentile(&group.latencies, 50.0)),
        ms(percentile(&group.latencies, 99.0)),
        ms(*group.latencies.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "ratio group / one-per-transaction: {:.1}x",
        group.per_sec() / serial.per_sec()
    );
}
