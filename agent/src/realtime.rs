//! Real-time protection: files in the watched directories are scanned once their writer is
//! done, with the scanner of scan actions (its engine, size cap, time limit and clean-file
//! cache), and what it finds goes to the controller like a scan's detections.
//!
//! Bounded by construction: the host's watcher hands events to a [`Feed`] (a bounded channel
//! that never blocks the watcher: when it is full, the event's root is flagged for a rescan);
//! one worker thread coalesces them per path in a [`Coalescer`] (at most [`MAX_PENDING`]
//! paths; beyond that, or when the kernel's queue overflowed, the root is rescanned instead)
//! and scans what is due, one scan at a time. A rescan walks the root with the normal
//! scanner, which the clean-file cache makes cheap: files are never silently dropped.
//!
//! The coalescing is pure (time comes in as `Instant` arguments); the worker drives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_common::wire::Detection;

use crate::host::feed::{Feed, FeedRx, root_of};
use crate::host::{Host, ScanJob, ScanMode, WatchEvent, Watching};
use crate::scanner::{Scanner, run_scan};

/// Where real-time protection watches unless configured otherwise: temp dirs, shared
/// memory, home directories.
pub const DEFAULT_PATHS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/home", "/root"];
/// Most paths waiting for their debounce; beyond, their root is rescanned instead.
pub const MAX_PENDING: usize = 4096;
/// Events in flight from the watcher to the worker; beyond, their root is rescanned instead.
pub const FEED_CAPACITY: usize = 1024;
/// A path is scanned once no event came for it for this long (its writer is done).
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Most files scanned in one batch (one scan job).
const BATCH: usize = 256;
/// Batches of detections waiting for the runtime.
pub const DETECTIONS_CAPACITY: usize = 64;

/// What is due now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Files (or directories moved in) whose writer is done.
    pub paths: Vec<PathBuf>,
    /// Roots to walk again because events were lost.
    pub rescans: Vec<PathBuf>,
}

/// Coalesces events per path until they go quiet; bounded to `cap` paths.
pub struct Coalescer {
    roots: Vec<PathBuf>,
    cap: usize,
    debounce: Duration,
    /// Path → when its last event came.
    pending: HashMap<PathBuf, Instant>,
    /// Root → when its last overflow came (a rescan is debounced too, so that a burst ends
    /// in one walk, not one per overflow).
    rescans: HashMap<PathBuf, Instant>,
    /// Overflows seen (for the log and tests).
    pub overflows: u64,
}

impl Coalescer {
    pub fn new(roots: Vec<PathBuf>, cap: usize, debounce: Duration) -> Coalescer {
        Coalescer {
            roots,
            cap,
            debounce,
            pending: HashMap::new(),
            rescans: HashMap::new(),
            overflows: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn root(&self, path: &Path) -> PathBuf {
        root_of(&self.roots, path).unwrap_or(path).to_owned()
    }

    pub fn event(&mut self, event: WatchEvent, now: Instant) {
        match event {
            WatchEvent::Written(path) => self.written(path, now),
            WatchEvent::Overflow(root) => self.overflow(root, now),
        }
    }

    /// An event for `path`: it is scanned `debounce` after its last event.
    pub fn written(&mut self, path: PathBuf, now: Instant) {
        let root = self.root(&path);
        if let Some(t) = self.rescans.get_mut(&root) {
            *t = now; // the rescan covers it; wait until the burst is over
            return;
        }
        if let Some(t) = self.pending.get_mut(&path) {
            *t = now;
            return;
        }
        if self.pending.len() >= self.cap {
            self.overflow(root, now);
            return;
        }
        self.pending.insert(path, now);
    }

    /// Events under `root` were (or would have been) lost: walk it again instead, which also
    /// covers every path pending under it.
    pub fn overflow(&mut self, root: PathBuf, now: Instant) {
        self.overflows += 1;
        self.pending.retain(|p, _| !p.starts_with(&root));
        self.rescans.insert(root, now);
    }

    /// What went quiet for `debounce`: at most `max` paths (oldest first) and every due
    /// rescan.
    pub fn due(&mut self, now: Instant, max: usize) -> Due {
        let quiet = |t: &Instant| now.saturating_duration_since(*t) >= self.debounce;
        let mut rescans: Vec<PathBuf> = self
            .rescans
            .iter()
            .filter(|(_, t)| quiet(t))
            .map(|(r, _)| r.clone())
            .collect();
        rescans.sort();
        for r in &rescans {
            self.rescans.remove(r);
        }
        let mut ready: Vec<(Instant, PathBuf)> = self
            .pending
            .iter()
            .filter(|(_, t)| quiet(t))
            .map(|(p, t)| (*t, p.clone()))
            .collect();
        ready.sort();
        ready.truncate(max);
        let paths: Vec<PathBuf> = ready.into_iter().map(|(_, p)| p).collect();
        for p in &paths {
            self.pending.remove(p);
        }
        Due { paths, rescans }
    }

    /// When the next path or rescan becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .chain(self.rescans.values())
            .min()
            .map(|t| *t + self.debounce)
    }
}

/// Real-time protection while it runs: the watcher's guard and the worker thread.
pub struct Realtime {
    stop: Arc<AtomicBool>,
    _watching: Box<dyn Watching>,
    /// Roots that could not be watched (missing …).
    pub skipped: Vec<String>,
}

impl Drop for Realtime {
    fn drop(&mut self) {
        // The worker sees it within its next wait (and a running scan stops early); it is not
        // joined: it may be handing over detections.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts watching `roots` and a worker that scans what they report, leaving out
/// `exclusions` (the agent's own state). Detections go to `out`, in batches.
pub fn start<H: Host>(
    host: Arc<H>,
    scanner: Arc<Scanner>,
    roots: Vec<PathBuf>,
    exclusions: Vec<String>,
    out: tokio::sync::mpsc::Sender<Vec<Detection>>,
) -> anyhow::Result<Realtime> {
    let (feed, rx) = Feed::new(roots.clone(), FEED_CAPACITY);
    let (watching, skipped) = host.watch(&roots, feed)?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = stop.clone();
    std::thread::Builder::new()
        .name("realtime".into())
        .spawn(move || worker(&*host, &scanner, roots, exclusions, rx, out, worker_stop))?;
    Ok(Realtime {
        stop,
        _watching: watching,
        skipped,
    })
}

fn worker<H: Host>(
    host: &H,
    scanner: &Scanner,
    roots: Vec<PathBuf>,
    exclusions: Vec<String>,
    rx: FeedRx,
    out: tokio::sync::mpsc::Sender<Vec<Detection>>,
    stop: Arc<AtomicBool>,
) {
    let mut c = Coalescer::new(roots, MAX_PENDING, DEBOUNCE);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = c
            .next_due()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(200));
        match rx.recv(wait) {
            Ok(e) => {
                let now = Instant::now();
                c.event(e, now);
                // Take what else is queued, bounded so that due work is not starved.
                for _ in 0..FEED_CAPACITY {
                    match rx.try_recv() {
                        Some(e) => c.event(e, now),
                        None => break,
                    }
                }
            }
            Err(true) => return, // the watcher is gone
            Err(false) => {}
        }
        let now = Instant::now();
        for root in rx.take_overflowed() {
            c.overflow(root, now);
        }
        let due = c.due(now, BATCH);
        let mut found = Vec::new();
        for rescan in &due.rescans {
            tracing::info!(root = %rescan.display(), overflows = c.overflows, "real-time protection: events lost; rescanning the directory");
            found.extend(scan(
                host,
                scanner,
                vec![rescan.clone()],
                &exclusions,
                &stop,
            ));
        }
        if !due.paths.is_empty() {
            found.extend(scan(host, scanner, due.paths, &exclusions, &stop));
        }
        if found.is_empty() {
            continue;
        }
        for d in &found {
            tracing::warn!(path = %palisade_common::text::escape_control(&d.path), matches = ?d.matches, "real-time protection: detection");
        }
        // Hand over without blocking forever: the runtime takes them while connected.
        let mut batch = found;
        loop {
            match out.try_send(batch) {
                Ok(()) => break,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Full(b)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    batch = b;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// One scan with the agent's scanner, one thread.
fn scan<H: Host>(
    host: &H,
    s: &Scanner,
    paths: Vec<PathBuf>,
    exclusions: &[String],
    stop: &AtomicBool,
) -> Vec<Detection> {
    let job = ScanJob {
        mode: ScanMode::Custom,
        paths,
        threads: 1,
        max_file_size: s.max_file_size,
        cpu_percent: s.cpu_percent,
    };
    let outcome = run_scan(host, s, &job, exclusions, stop, None);
    let at_ms = crate::clock::now_ms();
    outcome
        .detections
        .into_iter()
        .map(|d| Detection {
            path: d.path,
            sha256: d.sha256,
            size: d.size,
            matches: d.matches,
            at_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn events_for_one_path_coalesce_until_it_goes_quiet() {
        let now = t0();
        let ms = |n| now + Duration::from_millis(n);
        let mut c = Coalescer::new(vec!["/tmp".into()], 10, Duration::from_millis(300));
        c.written("/tmp/a".into(), now);
        c.written("/tmp/a".into(), ms(200));
        c.written("/tmp/b".into(), ms(100));
        assert_eq!(c.pending(), 2);
        assert_eq!(c.due(ms(399), 10), Due::default(), "b is not quiet yet");
        assert_eq!(
            c.due(ms(400), 10).paths,
            vec![PathBuf::from("/tmp/b")],
            "b went quiet; a was written again at 200"
        );
        assert_eq!(c.next_due(), Some(ms(500)));
        assert_eq!(c.due(ms(500), 10).paths, vec![PathBuf::from("/tmp/a")]);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn a_full_queue_rescans_the_root_instead_of_dropping_files() {
        let now = t0();
        let ms = |n| now + Duration::from_millis(n);
        let roots = vec![PathBuf::from("/tmp"), PathBuf::from("/home")];
        let mut c = Coalescer::new(roots, 3, Duration::from_millis(300));
        c.written("/home/ann/x".into(), now);
        for i in 0..2 {
            c.written(format!("/tmp/f{i}").into(), now);
        }
        assert_eq!(c.pending(), 3);
        // The fourth path overflows: /tmp is walked again, its pending paths are covered.
        c.written("/tmp/f2".into(), ms(10));
        assert_eq!(c.pending(), 1, "only /home's path is still pending");
        assert_eq!(c.overflows, 1);
        // More writes under /tmp while the burst lasts only push the rescan back.
        for i in 3..5000 {
            c.written(format!("/tmp/f{i}").into(), ms(100));
        }
        assert_eq!(c.pending(), 1, "bounded");
        let due = c.due(ms(300), 10);
        assert_eq!(due.paths, vec![PathBuf::from("/home/ann/x")]);
        assert!(due.rescans.is_empty(), "the burst is not over");
        let due = c.due(ms(400), 10);
        assert_eq!(due.rescans, vec![PathBuf::from("/tmp")]);
        // After the rescan, new events are single paths again.
        c.written("/tmp/late".into(), ms(500));
        assert_eq!(c.due(ms(800), 10).paths, vec![PathBuf::from("/tmp/late")]);
    }

    #[test]
    fn a_kernel_overflow_rescans_and_batches_are_bounded() {
        let now = t0();
        let mut c = Coalescer::new(vec!["/tmp".into()], 100, Duration::ZERO);
        for i in 0..50 {
            c.written(format!("/tmp/f{i:02}").into(), now);
        }
        let due = c.due(now, 20);
        assert_eq!(due.paths.len(), 20);
        assert_eq!(c.pending(), 30);
        c.event(WatchEvent::Overflow("/tmp".into()), now);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.due(now, 20).rescans, vec![PathBuf::from("/tmp")]);
    }

    #[test]
    fn a_full_feed_flags_the_root_and_never_blocks() {
        let roots = vec![PathBuf::from("/tmp"), PathBuf::from("/tmp/deep")];
        let (feed, rx) = Feed::new(roots, 2);
        for i in 0..10 {
            feed.written(format!("/tmp/deep/f{i}").into());
        }
        feed.written("/tmp/x".into());
        assert_eq!(
            rx.take_overflowed().into_iter().collect::<Vec<_>>(),
            vec![PathBuf::from("/tmp"), PathBuf::from("/tmp/deep")],
            "each path's own (longest) root"
        );
        assert_eq!(
            rx.try_recv(),
            Some(WatchEvent::Written("/tmp/deep/f0".into()))
        );
        assert_eq!(
            rx.try_recv(),
            Some(WatchEvent::Written("/tmp/deep/f1".into()))
        );
        assert_eq!(rx.try_recv(), None);
        feed.lost(None);
        assert_eq!(rx.take_overflowed().len(), 2, "every root");
    }
}
