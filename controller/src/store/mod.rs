//! The controller's durable state in one SQLite file (WAL, `synchronous=FULL`).
//!
//! One writer thread owns the only read-write connection and commits jobs in groups: each job
//! runs in its own savepoint inside a shared transaction, and its caller hears back only after
//! the transaction has committed. So a transition is durable before anyone is told about it,
//! and bursts of transitions share one fsync. Reads go to a few reader threads, each with a
//! read-only connection of its own, which take the reads waiting in turn.
//!
//! Architecture invariant: only this module (and its children) speaks SQL.

pub mod actions;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod containment;
pub mod desired;
pub mod devices;
pub mod events;
pub mod groups;
pub mod scan;
mod schema;
pub mod sessions;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

/// Most jobs committed in one transaction. A group takes every job waiting, so under a
/// backlog the groups grow, and a larger group shares its pages: the acknowledgements of a
/// fleet-wide action dirty the same few hundred index pages whether they commit in 40 groups
/// or in 3, and each commit writes its dirty pages to the WAL once. (20,000 acknowledgements
/// in groups of 512 wrote 4.1 WAL pages each, in groups of 2,048 1.4.) In a fleet-wide action,
/// backlogs of up to 7,000 now commit at once. The bound keeps a group's dirty pages (held in
/// memory until its commit) and its wait in reason.
const MAX_GROUP: usize = 8192;

/// Prepared statements kept per connection. Parsing SQL was most of what a small write cost
/// (a third of the writer's time during a fleet-wide action, and a quarter of the controller's
/// during a connect storm), so the store runs its statements through the cache, and the cache
/// holds them all.
const STATEMENT_CACHE: usize = 256;

/// `execute` and `query_row` through the connection's statement cache: what the store's modules
/// call instead of rusqlite's, which prepare the statement anew each time.
pub trait Cached {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (wrong status, four eyes, mixed kinds …).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store is shut down")]
    Closed,
    /// The job panicked: it was rolled back alone, and the writer goes on.
    #[error("a store job failed: {0}")]
    Panicked(String),
    /// The disk holding the database is full: nothing was written.
    #[error("the data directory is full: {0}")]
    Full(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return StoreError::Full(e.to_string());
        }
        StoreError::Sql(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Sql(format!("stored JSON is invalid: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// A job runs on the writer's connection, or on `None` when no transaction could be begun.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Completion) + Send>;
/// A read runs on a reader's connection, or is told why the reader has none.
type ReadJob = Box<dyn FnOnce(Result<&Connection, StoreError>) + Send>;

/// Reader threads, each with its read-only connection: at most this many reads run at once.
const READERS: usize = 8;

#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    /// Reads go to the reader threads, which take them in turn. Before, each read waited for
    /// one of 8 slots, then for a blocking-pool thread, then for an async worker to hear back:
    /// in a fleet-wide sample on a busy machine, the one-row check each upload makes waited
    /// 7 s on average, 8 at a time, while each took microseconds. A reader now runs the reads
    /// waiting one after another without a hand-off between them.
    reads: mpsc::Sender<ReadJob>,
    /// Whether the writer thread still runs: `GET /api/v1/status` reports it, because every
    /// write fails once it has ended while reads still answer.
    writer: Arc<WriterHealth>,
    /// The public half of the audit key, which verifies the chain's checkpoints.
    audit_public: Arc<[u8]>,
}

/// The writer thread's health, shared with the store's handles.
#[derive(Default)]
struct WriterHealth {
    stopped: AtomicBool,
    /// Asks the writer to end after its current group (tests of the health report only).
    halt: AtomicBool,
}

/// Marks the writer stopped however its thread ends, by returning or by a panic.
struct StoppedOnDrop(Arc<WriterHealth>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        tracing::error!("the store's writer thread has ended: every write now fails");
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path` and starts the writer
    /// and the readers.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        // Owner-only before SQLite opens it, so that its -wal and -shm files are too.
        crate::fsutil::create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each job runs in a savepoint, and a savepoint keeps the pages it changes in a
        // statement journal: in memory, not in a temporary file written page by page (a
        // seventh of the writer's time during a fleet-wide action).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrations().to_latest(&mut conn)?;
        // A group of jobs is one transaction, and a group of hundreds overflowed SQLite's
        // 2 MiB cache: SQLite then moved dirty pages to the WAL before the commit and read them
        // back for the next job that touched them. Now a transaction keeps its dirty pages in
        // memory until it commits, and the cache shrinks back to 2 MiB after. A fleet-wide
        // action to 8,000 agents took 17 s before and 10–11 s after (docs/benchmarks.md).
        // The memory a transaction holds grows with it; the largest are a fleet-wide action's
        // creation and approval (a row, its index entries and an audit record per device).
        // Set after the migrations, whose rebuilt indexes may be larger. (Off, not a page
        // count: SQLite also reads `cache_spill=N` as a boolean, N's low byte.)
        conn.pragma_update(None, "cache_spill", false)?;
        crate::fsutil::restrict(path)?;
        // The audit key lives beside the database, not in it (store/audit.rs). A database from
        // before checkpoints gets its first one now, covering its chain as it stands.
        let audit_key = audit::AuditKey::load_or_create(&path.with_file_name("audit.key"))?;
        let audit_public: Arc<[u8]> = audit_key.public().into();
        if let Some(cp) = audit::checkpoint(&conn, &audit_key)? {
            tracing::info!(
                seq = cp.seq,
                head = %cp.head_hash,
                at = cp.at,
                signature = %cp.signature,
                "audit chain signed at open"
            );
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(WriterHealth::default());
        let guard = StoppedOnDrop(health.clone());
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let _guard = guard;
                writer(conn, rx, &_guard.0, &audit_key)
            })?;
        let (reads, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..READERS {
            let (path, queue) = (path.to_owned(), queue.clone());
            thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn(move || reader(&path, &queue))?;
        }
        Ok(Store {
            jobs: tx,
            reads,
            writer: health,
            audit_public,
        })
    }

    /// The public half of the audit key (see [`audit::verify`]).
    pub fn audit_public(&self) -> Arc<[u8]> {
        self.audit_public.clone()
    }

    /// Whether the writer thread still runs (else every write answers [`StoreError::Closed`]).
    pub fn writer_running(&self) -> bool {
        !self.writer.stopped.load(Ordering::SeqCst)
    }

    /// Ends the writer thread after its current group, as a fatal bug would: for tests of
    /// what reports its health.
    #[doc(hidden)]
    pub fn halt_writer(&self) {
        self.writer.halt.store(true, Ordering::SeqCst);
        // Wakes the writer if it waits for a job.
        let _ = self.jobs.send(Box::new(|_| (false, Box::new(|_| {}))));
    }

    /// Runs `f` on the writer and returns once its changes are committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, tx)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for code outside the async runtime (benchmarks, tools).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, tx)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    fn submit<T, F>(&self, f: F, reply: tokio::sync::oneshot::Sender<Result<T>>) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                // A panic fails this job alone: its savepoint is rolled back (it is not `ok`),
                // its caller hears why, and the writer goes on with the others.
                Some(conn) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                    .unwrap_or_else(|panic| Err(StoreError::Panicked(panic_message(&*panic)))),
                None => Err(StoreError::Closed),
            };
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(e) => Err(e.clone()),
                    None => result,
                });
            });
            (ok, done)
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on a reader's read-only connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit_read(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::read`] for code outside the async runtime (benchmarks, tools).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_read(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn submit_read<T, F>(&self, f: F, reply: impl FnOnce(Result<T>) + Send + 'static) -> Result<()>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.reads
            .send(Box::new(move |conn| reply(conn.and_then(f))))
            .map_err(|_| StoreError::Closed)
    }
}

/// A reader thread: opens its connection on its first read, then runs reads until the store is
/// dropped. A read that panics loses its answer (its caller hears `Closed`), not the thread.
fn reader(path: &Path, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
    let mut conn: Option<Connection> = None;
    loop {
        // The lock is held only while waiting: the next reader takes the next read.
        let job = match queue.lock() {
            Ok(q) => match q.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        if conn.is_none() {
            match open_reader(path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    job(Err(e.into()));
                    continue;
                }
            }
        }
        let c = conn.as_ref().expect("opened above");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(c))));
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The Action center reads pages out of large histories: a page cache of 4 MiB per reader,
    // twice SQLite's default. The file is not mapped: each reader's mapping counted the same
    // pages again in the controller's RSS (165 MB of it with 20,000 idle agents, a 20 MB
    // database), and a 1 GB history could have shown as 2 GB. Without it, the slowest query
    // over 1,000,000 actions took 88–130 ms instead of 68–71 ms (docs/benchmarks.md).
    c.pragma_update(None, "cache_size", -4096)?;
    Ok(c)
}

/// What a panic said, for the error its job's caller gets.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

fn writer(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    health: &WriterHealth,
    audit_key: &audit::AuditKey,
) {
    while let Ok(first) = jobs.recv() {
        if health.halt.load(Ordering::SeqCst) {
            return;
        }
        let batch: Vec<Job> = std::iter::once(first)
            .chain(jobs.try_iter().take(MAX_GROUP - 1))
            .collect();
        let mut done = Vec::with_capacity(batch.len());
        let begun = conn.execute_cached("BEGIN IMMEDIATE", []);
        if let Err(e) = begun {
            let err = StoreError::from(e);
            // Nothing runs outside a transaction: each job fails with the reason.
            for job in batch {
                let (_, complete) = job(None);
                complete(Some(&err));
            }
            continue;
        }
        // A job whose savepoint cannot be made, released or rolled back leaves the shared
        // transaction in an unknown state: then the whole group is rolled back and fails.
        let mut poisoned: Option<StoreError> = None;
        for job in batch {
            if poisoned.is_some() {
                let (_, complete) = job(None);
                done.push(complete);
                continue;
            }
            if let Err(e) = conn.execute_cached("SAVEPOINT job", []) {
                poisoned = Some(e.into());
                let (_, complete) = job(None);
                done.push(complete);
                continue;
            }
            // `submit` catches a panic of the job's own code; this catches one of the wrapper,
            // whose caller then hears `Closed` (the reply went with the panic), and the
            // savepoint is rolled back like a failed job's.
            let (ok, complete): (bool, Completion) =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&conn)))) {
                    Ok(done) => done,
                    Err(_) => (false, Box::new(|_| {})),
                };
            let ended = if ok {
                conn.execute_cached("RELEASE job", [])
            } else {
                conn.execute_cached("ROLLBACK TO job", [])
                    .and_then(|_| conn.execute_cached("RELEASE job", []))
            };
            if let Err(e) = ended {
                poisoned = Some(e.into());
            }
            done.push(complete);
        }
        // The group's audit records are signed in its own transaction: a reader never sees
        // records without the checkpoint that covers them.
        let committed = match poisoned {
            Some(e) => Err(e),
            None => match audit::checkpoint(&conn, audit_key) {
                Ok(Some(cp)) => {
                    // Logged whole, so that journald or syslog keeps a copy of every
                    // checkpoint outside the data directory (docs/operations.md, Audit).
                    tracing::info!(
                        seq = cp.seq,
                        head = %cp.head_hash,
                        at = cp.at,
                        signature = %cp.signature,
                        "audit checkpoint"
                    );
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
            .and_then(|()| conn.execute_cached("COMMIT", []).map_err(StoreError::from)),
        };
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for complete in done {
            complete(committed.as_ref().err());
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.sqlite")).unwrap();
        (dir, s)
    }

    #[test]
    fn the_writer_keeps_a_transactions_dirty_pages_until_it_commits() {
        let (_dir, s) = store();
        let spill: i64 = s
            .write_blocking(|c| Ok(c.query_row("PRAGMA cache_spill", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(spill, 0, "the writer spills dirty pages before commit");
    }

    #[test]
    fn a_failing_job_rolls_back_alone_and_the_others_commit() {
        let (_dir, s) = store();
        let (tx, rx) = std::sync::mpsc::channel();
        // Submit from many threads at once so the writer groups them.
        std::thread::scope(|scope| {
            for i in 0..40 {
                let s = s.clone();
                let tx = tx.clone();
                scope.spawn(move || {
                    let r = s.write_blocking(move |c| {
                        c.execute(
                            "INSERT INTO users (name, role, created_by, created_at) VALUES (?1, 'viewer', 't', 0)",
                            [format!("u{i}")],
                        )?;
                        if i % 10 == 0 {
                            return Err(StoreError::Invalid("refused".into()));
                        }
                        Ok(i)
                    });
                    tx.send(r.is_ok()).unwrap();
                });
            }
        });
        drop(tx);
        let ok = rx.iter().filter(|ok| *ok).count();
        assert_eq!(ok, 36);
        let n: i64 = s
            .read_blocking(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(
            n, 36,
            "a failed job's insert survived, or a good one was lost"
        );
    }

    #[test]
    fn a_job_that_panics_fails_alone_and_the_writer_goes_on() {
        let (_dir, s) = store();
        let insert = |c: &Connection, name: &str| -> Result<()> {
            c.execute(
                "INSERT INTO users (name, role, created_by, created_at) VALUES (?1, 'viewer', 't', 0)",
                [name],
            )?;
            Ok(())
        };
        let r: Result<()> = s.write_blocking(move |c| {
            insert(c, "half")?;
            let big = i64::MAX;
            let _ = big.checked_add(std::hint::black_box(1)).expect("overflow");
            Ok(())
        });
        match r {
            Err(StoreError::Panicked(m)) => assert!(m.contains("overflow"), "{m}"),
            other => panic!("the panicking job's caller heard {other:?}"),
        }
        assert!(s.writer_running());
        s.write_blocking(move |c| insert(c, "after")).unwrap();
        let names: Vec<String> = s
            .read_blocking(|c| {
                let mut stmt = c.prepare("SELECT name FROM users ORDER BY name")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap();
        assert_eq!(names, ["after"], "the panicking job's insert was kept");
    }

    #[test]
    fn a_writer_that_ended_is_reported_and_every_write_fails() {
        let (_dir, s) = store();
        assert!(s.writer_running());
        s.halt_writer();
        for _ in 0..200 {
            if !s.writer_running() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!s.writer_running(), "the writer's end went unnoticed");
        let r = s.write_blocking(|_| Ok(()));
        assert!(matches!(r, Err(StoreError::Closed)), "{r:?}");
    }

    #[test]
    fn a_read_that_panics_loses_its_answer_not_its_reader() {
        let (_dir, s) = store();
        // More panics than readers: had each taken its thread along, no reader would be left
        // and the read after would fail.
        for _ in 0..READERS * 2 {
            let r: Result<()> = s.read_blocking(|_| panic!("a bug in a read"));
            assert!(matches!(r, Err(StoreError::Closed)), "{r:?}");
        }
        let n: i64 = s
            .read_blocking(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn what_a_device_has_open_is_found_through_its_index() {
        let (_dir, s) = store();
        // The device list's open count, a reconnect's outstanding actions and a scan's
        // duplicate check: each a search of (device_id, status), never a scan.
        let plans: Vec<String> = s
            .read_blocking(|c| {
                let mut plans = Vec::new();
                for sql in [
                    format!("{} WHERE d.id = ?1", devices::SELECT),
                    actions::OUTSTANDING.to_owned(),
                    scan::OPEN_QUARANTINE.to_owned(),
                ] {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let binds = vec!["d"; stmt.parameter_count()];
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(binds), |r| r.get::<_, String>(3))?;
                    plans.push(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; "));
                }
                Ok(plans)
            })
            .unwrap();
        for plan in plans {
            assert!(
                plan.contains("actions_by_device_status (device_id=? AND status=?)"),
                "{plan}"
            );
        }
    }

    #[test]
    fn a_write_is_visible_to_readers_once_it_returns() {
        let (_dir, s) = store();
        for i in 0..20 {
            s.write_blocking(move |c| {
                c.execute(
                    "INSERT INTO users (name, role, created_by, created_at) VALUES (?1, 'viewer', 't', 0)",
                    [format!("v{i}")],
                )?;
                Ok(())
            })
            .unwrap();
            let n: i64 = s
                .read_blocking(|c| Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(n, i + 1);
        }
    }

    fn append_one(s: &Store, event: &'static str) {
        s.write_blocking(move |c| {
            audit::append(c, "alice", event, None, None, &serde_json::json!({}))
        })
        .unwrap();
    }

    fn verified(s: &Store) -> audit::Verification {
        let public = s.audit_public();
        s.read_blocking(move |c| audit::verify(c, &public)).unwrap()
    }

    #[test]
    fn the_writer_signs_every_commit_with_a_key_kept_beside_the_database() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.sqlite")).unwrap();
        let mode = std::fs::metadata(dir.path().join("audit.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        for _ in 0..3 {
            append_one(&s, "requested");
            let v = verified(&s);
            assert!(v.first_broken.is_none(), "{:?}", v.first_broken);
            assert_eq!(v.checkpoint.expect("signed").seq, v.records as i64);
        }
        // Opened again, the same key verifies the same chain.
        let public = s.audit_public();
        drop(s);
        let s = Store::open(&dir.path().join("t.sqlite")).unwrap();
        assert_eq!(s.audit_public(), public);
        let v = verified(&s);
        assert_eq!((v.records, v.first_broken.is_none()), (3, true));
    }

    #[test]
    fn an_unkeyed_chain_from_before_checkpoints_is_signed_at_the_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        {
            // Written the way a controller before the audit key did: no checkpoints.
            let mut c = Connection::open(&path).unwrap();
            schema::migrations().to_latest(&mut c).unwrap();
            for i in 0..4 {
                audit::append(
                    &c,
                    "alice",
                    "requested",
                    None,
                    None,
                    &serde_json::json!({"i": i}),
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let v = verified(&s);
        assert!(v.first_broken.is_none(), "{:?}", v.first_broken);
        assert_eq!(
            v.checkpoint.expect("the carried-over chain is signed").seq,
            4
        );
        append_one(&s, "approved");
        assert_eq!(verified(&s).checkpoint.expect("signed").seq, 5);
    }

    #[test]
    fn a_lost_audit_key_is_a_broken_chain_not_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.sqlite")).unwrap();
        append_one(&s, "requested");
        drop(s);
        std::fs::remove_file(dir.path().join("audit.key")).unwrap();
        let s = Store::open(&dir.path().join("t.sqlite")).unwrap();
        let broken = verified(&s).first_broken.expect("the old checkpoints fail");
        assert!(
            broken.reason.contains("not signed with the audit key"),
            "{}",
            broken.reason
        );
    }
}
