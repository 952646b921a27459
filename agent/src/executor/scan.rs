//! The scan action and the scanner's lasting state.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use palisade_common::ActionId;
use palisade_common::action::{ActionReport, ActionSpec, Outcome, Progress, ScanParams};
use serde_json::json;

use super::{Executor, ProgressFn, report};
use crate::host::{Host, ScanJob, ScanMode};
use crate::scan::{CleanCache, Engine, Exclusions, Scan};

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

    /// Asks a running scan to stop; false if none runs under that id.
    pub fn cancel(&self, id: ActionId) -> bool {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(&id).map(|c| c.store(true, Ordering::Relaxed)))
            .is_some()
    }
}

impl<H: Host> Executor<H> {
    /// Runs an antivirus scan with the rules enforced now, reporting progress every second.
    /// Detections do not fail the scan; a cancelled scan fails with what it did and
    /// `"cancelled": true`, which the controller records as cancelled.
    pub(super) fn scan(
        &self,
        spec: &ActionSpec,
        p: &ScanParams,
        progress: ProgressFn<'_>,
    ) -> ActionReport {
        let mode = match p.mode.as_str() {
            "quick" => ScanMode::Quick,
            "full" => ScanMode::Full,
            "custom" => ScanMode::Custom,
            other => {
                return report(
                    spec,
                    Outcome::Failed,
                    format!("unknown scan mode {other:?}"),
                    json!({}),
                );
            }
        };
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut r) = self.scanner.running.lock() {
            r.insert(spec.id, cancel.clone());
        }
        let job = ScanJob {
            mode,
            paths: p.paths.iter().map(PathBuf::from).collect(),
            threads: self.scanner.threads,
            max_file_size: self.scanner.max_file_size,
            cpu_percent: self.scanner.cpu_percent,
        };
        // The agent's own state (vault, rules, journal) is never scanned.
        let mut exclusions = p.exclusions.clone();
        if let Some(state) = self.spool.parent() {
            exclusions.push(state.to_string_lossy().into_owned());
        }
        let out = run_scan(
            &self.host,
            &self.scanner,
            &job,
            &exclusions,
            &cancel,
            Some(progress),
        );
        if let Ok(mut r) = self.scanner.running.lock() {
            r.remove(&spec.id);
        }
        let c = out.counts;
        let mb = c.bytes as f64 / 1e6;
        let cancelled = cancel.load(Ordering::Relaxed);
        let found = match out.detections.len() {
            0 => "nothing found".to_owned(),
            1 => format!(
                "1 detection: {} ({})",
                out.detections[0].path,
                out.detections[0].matches.join(", ")
            ),
            n => format!("{n} detections"),
        };
        let summary = format!(
            "{} scan{}: {} files ({mb:.1} MB, {} unchanged since a clean scan) in {:.1} s, rules v{}; {found}",
            p.mode,
            if cancelled { " cancelled" } else { "" },
            c.files,
            c.cached,
            out.duration.as_secs_f64(),
            out.rules_version,
        );
        // A root that does not exist or cannot be read was not scanned: never clean. A scan
        // none of whose roots could be scanned fails.
        let missing = &out.walked.missing;
        let none_scanned = !job.paths.is_empty() && missing.len() >= job.paths.len();
        let summary = match missing.len() {
            0 => summary,
            _ if none_scanned => format!(
                "{} scan failed: not scanned (missing or unreadable): {}",
                p.mode,
                missing.join(", ")
            ),
            _ => format!(
                "{summary}; not scanned (missing or unreadable): {}",
                missing.join(", ")
            ),
        };
        let outcome = if cancelled || none_scanned {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        let mut detail = out.detail();
        detail["mode"] = json!(p.mode);
        detail["cancelled"] = json!(cancelled);
        detail["not_scanned"] = json!(missing);
        report(spec, outcome, summary, detail)
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
