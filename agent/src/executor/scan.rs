//! The scan action: a scan job from its parameters, run with the agent's scanner, reported.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use palisade_common::action::{ActionReport, ActionSpec, Outcome, ScanParams};
use serde_json::json;

use super::{Executor, ProgressFn, report};
use crate::host::{Host, ScanJob, ScanMode};
use crate::scanner::run_scan;

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
        let cancel = self.scanner.start(spec.id);
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
            &*self.host,
            &self.scanner,
            &job,
            &exclusions,
            &cancel,
            Some(progress),
        );
        self.scanner.finish(spec.id);
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
