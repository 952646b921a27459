//! The scanner's lasting state (the engine of the rule set enforced now, the clean-file cache,
//! the running scans and their limits) and one scan over the host's walker. Shared by the scan
//! action (`executor`), real-time protection and `palisade-agent scan`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use palisade_common::ActionId;
use palisade_common::action::Progress;
use serde_json::json;

use crate::host::{Host, ScanJob};
use crate::scan::{CleanCache, Engine, Exclusions, Scan};

/// Hears a scan's progress while it runs.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

/// The scanner's lasting state: the engine of the rule set enforced now, the clean-file
/// cache shared by every scan, the running scans (to cancel them) and the limits.
pub struct Scanner {
    engine: RwLock<Arc<Engine>>,
    pub cache: CleanCache,
    running: Mutex<HashMap<ActionId, Arc<AtomicBool>>>,
    pub threads: usize,
    pub max_file_size: u64,
    pub file_timeout: Duration,
    /// Share of each worker's time spent working (100: no limit).
    pub cpu_percent: u8,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            engine: RwLock::new(Arc::new(Engine::builtin())),
            cache: CleanCache::new(4_000_000),
            running: Mutex::new(HashMap::new()),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_file_size: 128 << 20,
            file_timeout: Duration::from_secs(30),
            cpu_percent: 100,
        }
    }
}

impl Scanner {
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|_| Arc::new(Engine::builtin()))
    }

    /// The rule-set version enforced now (0: built-in EICAR detection only).
    pub fn version(&self) -> u64 {
        self.engine().version
    }

    pub fn set_engine(&self, engine: Engine) {
        if let Ok(mut e) = self.engine.write() {
            *e = Arc::new(engine);
        }
    }

    /// Registers a scan that starts under `id`; its cancel flag.
    pub fn start(&self, id: ActionId) -> Arc<AtomicBool> {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut r) = self.running.lock() {
            r.insert(id, cancel.clone());
        }
        cancel
    }

    /// The scan under `id` ended.
    pub fn finish(&self, id: ActionId) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
    }

    /// Asks a running scan to stop; false if none runs under that id.
    pub fn cancel(&self, id: ActionId) -> bool {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(&id).map(|c| c.store(true, Ordering::Relaxed)))
            .is_some()
    }
}

/// What one scan did.
pub struct ScanOutcome {
    pub counts: crate::scan::Counts,
    pub detections: Vec<crate::scan::Detection>,
    pub walked: crate::host::Walked,
    pub problems: Vec<String>,
    pub duration: Duration,
    pub rules_version: u64,
    pub yara_rules: usize,
    pub hash_entries: usize,
}

impl ScanOutcome {
    /// The result detail: what the controller stores and remediates from.
    pub fn detail(&self) -> serde_json::Value {
        let mut roots = self.walked.roots.clone();
        let more_roots = roots.len().saturating_sub(100);
        roots.truncate(100);
        let mut errors = self.walked.errors.clone();
        errors.extend(self.problems.iter().cloned());
        json!({
            "rules_version": self.rules_version,
            "yara_rules": self.yara_rules,
            "hash_entries": self.hash_entries,
            "counts": self.counts,
            "directories": self.walked.directories,
            "duration_ms": self.duration.as_millis() as u64,
            "roots": roots,
            "more_roots": more_roots,
            "errors": errors,
            "detections": self.detections,
        })
    }
}

/// One scan of `job` with the scanner's current engine and cache; `progress` (if any) hears
/// the counts every second. Used by the scan action and by `palisade-agent scan`.
pub fn run_scan<H: Host>(
    host: &H,
    scanner: &Scanner,
    job: &ScanJob,
    exclusions: &[String],
    cancel: &AtomicBool,
    progress: Option<ProgressFn<'_>>,
) -> ScanOutcome {
    let engine = scanner.engine();
    let mut scan = Scan::new(&engine, &scanner.cache, Exclusions::new(exclusions), cancel);
    scan.file_timeout = scanner.file_timeout;
    let start = Instant::now();
    let finished = AtomicBool::new(false);
    let walked = std::thread::scope(|s| {
        if let Some(progress) = progress {
            let (scan, finished) = (&scan, &finished);
            s.spawn(move || {
                let mut last = Instant::now();
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= Duration::from_secs(1) {
                        last = Instant::now();
                        let c = scan.tally.counts();
                        progress(Progress {
                            message: format!(
                                "scanning: {} files, {:.1} MB, {} detections so far",
                                c.files,
                                c.bytes as f64 / 1e6,
                                c.detections
                            ),
                            permille: None,
                        });
                    }
                }
            });
        }
        let walked = host.scan(job, &scan);
        finished.store(true, Ordering::Relaxed);
        walked
    });
    let mut detections = scan.take_detections();
    detections.dedup_by(|a, b| a.path == b.path);
    ScanOutcome {
        counts: scan.tally.counts(),
        detections,
        walked,
        problems: scan.problems.lock().map(|p| p.clone()).unwrap_or_default(),
        duration: start.elapsed(),
        rules_version: engine.version,
        yara_rules: engine.yara_rules(),
        hash_entries: engine.hash_entries(),
    }
}
