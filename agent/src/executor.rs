//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use palisade_common::action::{
    ActionReport, ActionSpec, ArtifactRef, Outcome, Progress, QuarantineParams,
    ReleaseQuarantineParams, ScanParams,
};
use palisade_common::wire::{DesiredState, ObservedState, VaultEntry};
use palisade_common::{ActionId, ActionKind, ActionParams};
use serde_json::json;

use crate::host::{
    CollectLimits, ExecPolicy, ExecStatus, Host, HostError, Quarantined, ScanJob, ScanMode,
    Snapshot,
};
use crate::isolation::ProbeRequest;
use crate::journal::Journal;
use crate::package;
use crate::scan::{CleanCache, Engine, Exclusions, Scan};
use crate::vault::{EntryMeta, entry_id};

/// The action kinds this agent carries out. The controller refuses the others for it.
pub const CAPABILITIES: [ActionKind; 10] = [
    ActionKind::Isolate,
    ActionKind::ReleaseIsolation,
    ActionKind::Scan,
    ActionKind::RequestSample,
    ActionKind::CollectPackage,
    ActionKind::Offboard,
    ActionKind::RestrictExecution,
    ActionKind::ReleaseExecution,
    ActionKind::Quarantine,
    ActionKind::ReleaseQuarantine,
];

/// The exec policy a desired state asks for.
pub fn exec_policy(d: &DesiredState) -> ExecPolicy {
    ExecPolicy {
        restrict: d.restrict_execution,
        allow_sha256: d.exec_allowlist.sha256.clone(),
        allow_paths: d.exec_allowlist.paths.clone(),
    }
}

/// What is enforced, compared with what is desired.
pub fn observed(
    d: &DesiredState,
    exec: &ExecStatus,
    net: &NetObserved,
    error: Option<String>,
) -> ObservedState {
    let drift = match error {
        Some(e) => Some(e),
        None if net.drift.is_some() => net.drift.clone(),
        None if d.restrict_execution && !exec.restricted => Some(if exec.marked.is_empty() {
            "execution should be restricted but no mount is marked".into()
        } else {
            "execution should be restricted but the exec listener is not answering".into()
        }),
        None if !d.restrict_execution && exec.restricted => {
            Some("execution is restricted but should not be".into())
        }
        None => None,
    };
    ObservedState {
        desired_revision: d.revision,
        restrict_execution: exec.restricted,
        drift,
        isolated: net.isolated,
        contained: net.contained.clone(),
        net_digest: net.digest.clone(),
        local_releases: net.local_releases.clone(),
        realtime_protection: false,
    }
}

/// What one round of [`Executor::watch`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// An isolation's time box ran out: it is released.
    pub expired: bool,
    /// Our table was removed or altered, and is put back: what was found.
    pub tampered: Option<String>,
    /// Why the exec restriction differs from the desired state.
    pub exec_drift: Option<String>,
}

/// The network part of what is enforced.
#[derive(Debug, Clone, Default)]
pub struct NetObserved {
    pub isolated: bool,
    pub contained: Vec<std::net::IpAddr>,
    pub digest: Option<String>,
    pub local_releases: Vec<palisade_common::wire::LocalRelease>,
    pub drift: Option<String>,
}

/// An artifact that must reach the controller before the report may be sent.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    pub snapshot: Snapshot,
    /// Spool files to delete, with the snapshot, once the result is journaled.
    pub cleanup: Vec<PathBuf>,
}

/// Reports an action's progress while it runs (sent on, not journaled).
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

    /// Asks a running scan to stop; false if none runs under that id.
    pub fn cancel(&self, id: ActionId) -> bool {
        self.running
            .lock()
            .ok()
            .and_then(|r| r.get(&id).map(|c| c.store(true, Ordering::Relaxed)))
            .is_some()
    }
}

pub struct Executor<H> {
    host: H,
    spool: PathBuf,
    pub max_sample: u64,
    /// Largest investigation package uploaded.
    pub max_package: u64,
    /// The budget of each collector of a package.
    pub collect: CollectLimits,
    pub(crate) journal: PathBuf,
    /// Serialises every change of the desired state and its application to the host.
    pub(crate) desired: Mutex<()>,
    /// `HOST:PORT` of the controller, as enrolled: resolved and pinned before isolating.
    pub controller: Option<String>,
    /// The address of the live connection to the controller, set by the runtime.
    pub(crate) live_controller: Mutex<Option<std::net::SocketAddr>>,
    /// How the executor asks the runtime to verify the live link.
    pub(crate) prober: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ProbeRequest>>>,
    /// How long an isolation may take to prove the controller is still reachable.
    pub verify_within: std::time::Duration,
    /// When the tamper check last read our table back.
    pub(crate) last_net_check: Mutex<Option<std::time::Instant>>,
    pub scanner: Scanner,
    /// Whether real-time protection is watching now (set by the runtime, reported in the
    /// observed state).
    pub realtime_active: AtomicBool,
}

impl<H: Host> Executor<H> {
    pub fn new(host: H, spool: PathBuf, max_sample: u64, journal: PathBuf) -> Executor<H> {
        Executor {
            host,
            spool,
            max_sample,
            max_package: 512 << 20,
            collect: CollectLimits::default(),
            journal,
            desired: Mutex::new(()),
            controller: None,
            live_controller: Mutex::new(None),
            prober: Mutex::new(None),
            verify_within: std::time::Duration::from_secs(5),
            last_net_check: Mutex::new(None),
            scanner: Scanner::default(),
            realtime_active: AtomicBool::new(false),
        }
    }

    /// Where the runtime answers link probes (see `isolation::ProbeRequest`).
    pub fn set_prober(&self, tx: tokio::sync::mpsc::UnboundedSender<ProbeRequest>) {
        *self.prober.lock().expect("prober lock") = Some(tx);
    }

    /// The controller address of the live connection (`None` while disconnected).
    pub fn set_live_controller(&self, addr: Option<std::net::SocketAddr>) {
        *self.live_controller.lock().expect("live lock") = addr;
    }

    /// Reconciles the host to the journaled desired state, after replacing it with
    /// `incoming` (from the controller) if given. While a restrict/release action's result is
    /// not yet acknowledged, the local restriction wins over the controller's copy, which
    /// predates it.
    pub fn reconcile(
        &self,
        journal: &Journal,
        incoming: Option<DesiredState>,
    ) -> Result<ObservedState> {
        let _serial = self.desired.lock().expect("desired lock");
        let mut desired = journal.desired()?.unwrap_or_default();
        if let Some(mut d) = incoming {
            if journal.pending_of(&[ActionKind::RestrictExecution, ActionKind::ReleaseExecution])? {
                d.restrict_execution = desired.restrict_execution;
            }
            if journal.pending_of(&crate::isolation::ISOLATION_KINDS)? {
                d.isolation = desired.isolation.clone();
            }
            // The controller has heard of an isolation ended here once its copy no longer
            // holds that isolation.
            let mut local = journal.net()?;
            let before = local.local_releases.len();
            local
                .local_releases
                .retain(|r| d.isolation.as_ref().is_some_and(|i| i.action == r.action));
            if local.local_releases.len() != before {
                journal.set_net(&local)?;
            }
            journal.set_desired(&d)?;
            desired = d;
        }
        let mut errors = Vec::new();
        if let Err(e) = self.host.set_exec_policy(&exec_policy(&desired)) {
            errors.push(format!("cannot enforce the exec policy: {e}"));
        }
        if let Err(e) = self.enforce_net(journal, &desired) {
            errors.push(format!("cannot enforce the network rules: {e:#}"));
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        let mut o = observed(
            &desired,
            &self.host.exec_status(),
            &self.net_observed(journal, &desired)?,
            error,
        );
        o.realtime_protection = self.realtime_active.load(Ordering::Relaxed);
        Ok(o)
    }

    /// What is enforced now, against the journaled desired state; changes nothing.
    pub fn observed(&self, journal: &Journal) -> Result<ObservedState> {
        let desired = journal.desired()?.unwrap_or_default();
        let mut o = observed(
            &desired,
            &self.host.exec_status(),
            &self.net_observed(journal, &desired)?,
            None,
        );
        o.realtime_protection = self.realtime_active.load(Ordering::Relaxed);
        Ok(o)
    }

    /// One round of the watch (every second, on a thread of its own), on one read of the
    /// journal: ends an isolation whose time box ran out, or else puts back our nftables
    /// table if someone removed or changed it; and says why the exec restriction differs from
    /// the desired state, if it does (the caller repairs that, see `reconcile`).
    pub fn watch(&self, journal: &Journal) -> Result<Watched> {
        let _serial = self.desired.lock().expect("desired lock");
        let (desired, local) = journal.state()?;
        let exec_drift = observed(
            &desired,
            &self.host.exec_status(),
            &NetObserved::default(),
            None,
        )
        .drift;
        let expired = self.expire(journal, &desired, &local)?;
        let tampered = if expired {
            None
        } else {
            self.check_net(journal, &desired, &local)?
        };
        Ok(Watched {
            expired,
            tampered,
            exec_drift,
        })
    }

    /// The network part of the observed state: what the plan asks, against the table the
    /// kernel holds.
    fn net_observed(&self, journal: &Journal, d: &DesiredState) -> Result<NetObserved> {
        use crate::isolation::{now_ms, plan};
        let local = journal.net()?;
        let p = plan(d, &local, now_ms());
        let wanted =
            p.isolation.is_some() || !p.contained.is_empty() || !p.contained_macs.is_empty();
        if !wanted && local.digest.is_none() {
            return Ok(NetObserved {
                local_releases: local.local_releases,
                ..Default::default()
            });
        }
        let (digest, drift) = match self.host.net_status() {
            Ok(s) => {
                let drift = match (&s.digest, wanted) {
                    (None, true) => Some(
                        "network rules should be enforced but our nftables table is missing"
                            .to_owned(),
                    ),
                    (Some(have), true) if local.digest.as_ref() != Some(have) => {
                        Some("our nftables table differs from what was applied".to_owned())
                    }
                    _ => None,
                };
                (s.digest, drift)
            }
            Err(e) if wanted => (None, Some(format!("cannot read the network rules: {e}"))),
            Err(_) => (None, None),
        };
        let enforced = wanted && digest.is_some() && drift.is_none();
        Ok(NetObserved {
            isolated: enforced && p.isolation.is_some(),
            contained: if enforced { p.contained } else { vec![] },
            digest,
            local_releases: local.local_releases,
            drift,
        })
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Carries out `spec` and returns its report and the uploads it needs.
    pub fn run(&self, spec: &ActionSpec, progress: ProgressFn<'_>) -> (ActionReport, Vec<Upload>) {
        match &spec.params {
            ActionParams::Scan(p) => (self.scan(spec, p, progress), vec![]),
            ActionParams::RequestSample(p) => self.sample(spec, &p.path),
            ActionParams::CollectPackage {} => self.package(spec),
            ActionParams::Isolate(p) => (self.isolate(spec, p), vec![]),
            ActionParams::ReleaseIsolation {} => (self.release_isolation(spec), vec![]),
            ActionParams::RestrictExecution {} => (self.restriction(spec, true), vec![]),
            ActionParams::ReleaseExecution {} => (self.restriction(spec, false), vec![]),
            ActionParams::Quarantine(p) => (self.quarantine(spec, p), vec![]),
            ActionParams::ReleaseQuarantine(p) => (self.release(spec, p), vec![]),
            ActionParams::Offboard {} => (
                report(
                    spec,
                    Outcome::Succeeded,
                    "offboarding: the agent erases its identity and journal and stops".into(),
                    json!({}),
                ),
                vec![],
            ),
            other => (
                report(
                    spec,
                    Outcome::Failed,
                    format!("{} is not implemented by this agent", other.kind()),
                    json!({}),
                ),
                vec![],
            ),
        }
    }

    /// Runs an antivirus scan with the rules enforced now, reporting progress every second.
    /// Detections do not fail the scan; a cancelled scan fails with what it did.
    fn scan(&self, spec: &ActionSpec, p: &ScanParams, progress: ProgressFn<'_>) -> ActionReport {
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
        let outcome = if cancelled {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        let mut detail = out.detail();
        detail["mode"] = json!(p.mode);
        detail["cancelled"] = json!(cancelled);
        report(spec, outcome, summary, detail)
    }

    /// The vault's entries as the controller lists them.
    pub fn vault_listing(&self) -> Vec<VaultEntry> {
        match self.host.vault_entries() {
            Ok(entries) => entries.iter().map(listing).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the vault");
                vec![]
            }
        }
    }

    /// Stop and quarantine: one file by path, or every file with a hash under the roots.
    fn quarantine(&self, spec: &ActionSpec, p: &QuarantineParams) -> ActionReport {
        let action = spec.id.0;
        let paths: Vec<PathBuf> = match (&p.path, &p.sha256) {
            (Some(path), _) => vec![PathBuf::from(path)],
            (None, Some(sha)) => {
                let roots: Vec<PathBuf> = p.roots.iter().map(PathBuf::from).collect();
                match self.host.find_by_hash(&roots, sha) {
                    Ok(found) => found,
                    Err(e) => {
                        return report(
                            spec,
                            Outcome::Failed,
                            format!("search failed: {e}"),
                            json!({"sha256": sha, "error": e.to_string()}),
                        );
                    }
                }
            }
            (None, None) => {
                return report(
                    spec,
                    Outcome::Failed,
                    "name a path, or a sha256 with search roots".into(),
                    json!({}),
                );
            }
        };
        let mut done: Vec<Quarantined> = Vec::new();
        let mut errors: Vec<(String, HostError)> = Vec::new();
        for path in &paths {
            let id = entry_id(action, &path.to_string_lossy());
            match self
                .host
                .quarantine_file(path, p.sha256.as_deref(), &id, action)
            {
                Ok(q) => done.push(q),
                Err(e) => errors.push((path.to_string_lossy().into_owned(), e)),
            }
        }
        // A run interrupted by a restart already moved some files: the search no longer finds
        // them, the vault has them.
        if let Ok(entries) = self.host.vault_entries() {
            for e in entries {
                if e.action == action && !done.iter().any(|q| q.entry.id == e.id) {
                    done.push(Quarantined {
                        entry: e,
                        killed: vec![],
                        already: true,
                    });
                }
            }
        }
        let files: Vec<serde_json::Value> = done
            .iter()
            .map(|q| {
                json!({"path": q.entry.path, "vault_entry": q.entry.id, "sha256": q.entry.sha256,
                    "size": q.entry.size, "gone_from_path": true, "killed": q.killed})
            })
            .collect();
        let killed: Vec<_> = done.iter().flat_map(|q| q.killed.clone()).collect();
        let errs: Vec<serde_json::Value> = errors
            .iter()
            .map(|(path, e)| json!({"path": path, "error": e.to_string()}))
            .collect();
        let single = (done.len() == 1).then(|| &done[0].entry);
        let detail = json!({
            "path": p.path.clone().or_else(|| single.map(|e| e.path.clone())),
            "sha256": single.map(|e| e.sha256.clone()).or_else(|| p.sha256.clone()),
            "vault_entry": single.map(|e| e.id.clone()),
            "files": files,
            "killed": killed,
            "errors": errs,
            "vault_entries": self.vault_listing().len(),
        });
        let kills = if killed.is_empty() {
            String::new()
        } else {
            format!(
                "; killed {}",
                killed
                    .iter()
                    .map(|k| format!("pid {} ({})", k.pid, k.cmdline))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (outcome, summary) = match (done.len(), errors.len()) {
            (_, n) if n > 0 && done.is_empty() && paths.len() == 1 => (
                Outcome::Failed,
                format!("quarantine refused: {}", errors[0].1),
            ),
            (_, n) if n > 0 => (
                Outcome::Failed,
                format!(
                    "quarantined {} file(s), {n} failed: {}{kills}",
                    done.len(),
                    errors
                        .iter()
                        .map(|(_, e)| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            (0, _) => (
                Outcome::Succeeded,
                format!(
                    "no file with sha256 {} under {}",
                    p.sha256.as_deref().unwrap_or("?"),
                    p.roots.join(", ")
                ),
            ),
            (1, _) => {
                let e = &done[0].entry;
                (
                    Outcome::Succeeded,
                    format!(
                        "quarantined {}: gone from its path, vault entry {}, sha256 {}{kills}",
                        e.path, e.id, e.sha256
                    ),
                )
            }
            (n, _) => (
                Outcome::Succeeded,
                format!("quarantined {n} files, all gone from their paths{kills}"),
            ),
        };
        report(spec, outcome, summary, detail)
    }

    /// Release from quarantine: one entry, or every entry with a hash.
    fn release(&self, spec: &ActionSpec, p: &ReleaseQuarantineParams) -> ActionReport {
        let action = spec.id.0;
        let mut ids: Vec<String> = match (&p.entry, &p.sha256) {
            (Some(e), _) => vec![e.clone()],
            (None, Some(sha)) => self
                .host
                .vault_entries()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| &e.sha256 == sha)
                .map(|e| e.id)
                .collect(),
            (None, None) => vec![],
        };
        if let (None, Some(sha)) = (&p.entry, &p.sha256) {
            // Released by an earlier run of this action, interrupted by a restart.
            for r in self.host.vault_released().unwrap_or_default() {
                if r.action == action && &r.sha256 == sha && !ids.contains(&r.id) {
                    ids.push(r.id);
                }
            }
        }
        if ids.is_empty() {
            return report(
                spec,
                Outcome::Failed,
                format!(
                    "no vault entry with sha256 {} on this device",
                    p.sha256.as_deref().unwrap_or("?")
                ),
                json!({"sha256": p.sha256}),
            );
        }
        if ids.len() > 1 && p.restore_path.is_some() {
            return report(
                spec,
                Outcome::Failed,
                format!(
                    "{} vault entries have that sha256; a restore path fits only one",
                    ids.len()
                ),
                json!({"sha256": p.sha256, "entries": ids}),
            );
        }
        let dest = p.restore_path.as_deref().map(Path::new);
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for id in &ids {
            match self.host.release(id, dest, p.overwrite, action) {
                Ok(r) => released.push(r),
                Err(e) => errors.push(json!({"vault_entry": id, "error": e.to_string()})),
            }
        }
        let single = (released.len() == 1).then(|| &released[0]);
        let detail = json!({
            "vault_entry": single.map(|r| r.id.clone()).or_else(|| p.entry.clone()),
            "sha256": single.map(|r| r.sha256.clone()).or_else(|| p.sha256.clone()),
            "restored_to": single.map(|r| r.restored_to.clone()),
            "released": released.iter().map(|r| json!({"vault_entry": r.id, "restored_to": r.restored_to,
                "sha256": r.sha256, "size": r.size})).collect::<Vec<_>>(),
            "errors": errors,
        });
        if !errors.is_empty() {
            let first = errors[0]["error"].as_str().unwrap_or("").to_owned();
            let summary = if ids.len() == 1 {
                format!("release refused: {first}")
            } else {
                format!(
                    "released {} of {} entries: {first}",
                    released.len(),
                    ids.len()
                )
            };
            return report(spec, Outcome::Failed, summary, detail);
        }
        let summary = match single {
            Some(r) => format!(
                "released vault entry {} to {} (sha256 {} verified)",
                r.id, r.restored_to, r.sha256
            ),
            None => format!("released {} vault entries", released.len()),
        };
        report(spec, Outcome::Succeeded, summary, detail)
    }

    /// Restricts or releases execution now and journals it as desired, so that it holds
    /// across restarts even before the controller confirms; reports what it then checked.
    fn restriction(&self, spec: &ActionSpec, on: bool) -> ActionReport {
        let fail = |why: String| report(spec, Outcome::Failed, why, json!({}));
        let _serial = self.desired.lock().expect("desired lock");
        let journal = match Journal::open(&self.journal) {
            Ok(j) => j,
            Err(e) => return fail(format!("cannot open the journal: {e:#}")),
        };
        let before = match journal.desired() {
            Ok(d) => d.unwrap_or_default(),
            Err(e) => return fail(format!("cannot read the desired state: {e:#}")),
        };
        let mut next = before.clone();
        next.restrict_execution = on;
        let applied = self.host.set_exec_policy(&exec_policy(&next));
        let status = self.host.exec_status();
        let what = if on { "restrict" } else { "release" };
        match applied {
            Ok(_) if status.restricted == on => {}
            result => {
                // Put back what was there before: a failed action changes nothing.
                let _ = self.host.set_exec_policy(&exec_policy(&before));
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(s) if on && s.marked.is_empty() => "no mount is marked".into(),
                    Ok(s) if on => format!(
                        "the exec listener is not answering ({} mounts marked)",
                        s.marked.len()
                    ),
                    Ok(s) => format!("{} mounts are still marked", s.marked.len()),
                };
                return report(
                    spec,
                    Outcome::Failed,
                    format!("cannot {what} execution: {why}"),
                    json!({"exec": status}),
                );
            }
        }
        if let Err(e) = journal.set_desired(&next) {
            let _ = self.host.set_exec_policy(&exec_policy(&before));
            return fail(format!("cannot journal the restriction: {e:#}"));
        }
        let summary = if on {
            format!(
                "execution restricted: {} mount(s) marked ({}), exec listener answering, allowlist {} hash(es) / {} path(s)",
                status.marked.len(),
                status.marked.join(", "),
                status.allowlist_sha256,
                status.allowlist_paths
            )
        } else {
            "execution released: no mount marked, no listener".into()
        };
        report(spec, Outcome::Succeeded, summary, json!({"exec": status}))
    }

    fn sample(&self, spec: &ActionSpec, path: &str) -> (ActionReport, Vec<Upload>) {
        let dest = self.spool.join(format!("{}.sample", spec.id));
        // A previous attempt, interrupted by a restart, may have left its copy.
        let _ = std::fs::remove_file(&dest);
        match self
            .host
            .snapshot_file(path.as_ref(), self.max_sample, &dest)
        {
            Ok(snap) => {
                let sha = hex::encode(snap.sha256);
                let mut r = report(
                    spec,
                    Outcome::Succeeded,
                    format!("sample of {path}: {} bytes, sha256 {sha}", snap.size),
                    json!({"path": path, "size": snap.size, "sha256": sha}),
                );
                r.artifacts.push(ArtifactRef {
                    name: "sample".into(),
                    size: snap.size,
                    sha256: sha,
                });
                (
                    r,
                    vec![Upload {
                        name: "sample".into(),
                        snapshot: snap,
                        cleanup: vec![],
                    }],
                )
            }
            Err(e) => {
                let what = match &e {
                    HostError::Refused(_) => "refused",
                    HostError::Io { .. } => "failed",
                };
                (
                    report(
                        spec,
                        Outcome::Failed,
                        format!("sample {what}: {e}"),
                        json!({"path": path, "error": e.to_string()}),
                    ),
                    vec![],
                )
            }
        }
    }

    /// Collects an investigation package, or takes the one an interrupted earlier run of the
    /// same action built, so that its upload resumes instead of starting over with new bytes.
    fn package(&self, spec: &ActionSpec) -> (ActionReport, Vec<Upload>) {
        let fail = |why: String| {
            (
                report(spec, Outcome::Failed, why.clone(), json!({"error": why})),
                vec![],
            )
        };
        let built = match package::reuse(&self.spool, spec.id) {
            Some(built) => {
                tracing::info!(action = %spec.id, size = built.size, "reusing the package built before the restart");
                built
            }
            None => {
                let started = std::time::Instant::now();
                let collected = self.host.collect_package(&self.collect);
                let inventory = self.host.inventory();
                let origin = package::Origin {
                    action: spec.id,
                    hostname: &inventory.hostname,
                    agent_version: env!("CARGO_PKG_VERSION"),
                    created_unix: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                };
                match package::build(&self.spool, &origin, &collected) {
                    Ok(b) => {
                        tracing::info!(action = %spec.id, size = b.size, elapsed_ms = started.elapsed().as_millis() as u64, "package built");
                        b
                    }
                    Err(e) => return fail(format!("cannot build the package: {e}")),
                }
            }
        };
        let (archive, desc) = package::spool_paths(&self.spool, spec.id);
        if built.size > self.max_package {
            let _ = std::fs::remove_file(&archive);
            let _ = std::fs::remove_file(&desc);
            return fail(format!(
                "package of {} bytes exceeds the agent's limit of {} (--max-package)",
                built.size, self.max_package
            ));
        }
        let Some(snapshot) = built.snapshot() else {
            return fail("the package description is damaged".into());
        };
        let mut r = report(
            spec,
            Outcome::Succeeded,
            built.summary.clone(),
            built.detail.clone(),
        );
        r.artifacts.push(ArtifactRef {
            name: package::ARTIFACT_NAME.into(),
            size: built.size,
            sha256: built.sha256.clone(),
        });
        (
            r,
            vec![Upload {
                name: package::ARTIFACT_NAME.into(),
                snapshot,
                cleanup: vec![desc],
            }],
        )
    }
}

/// A vault entry as the controller lists it.
pub fn listing(e: &EntryMeta) -> VaultEntry {
    VaultEntry {
        id: e.id.clone(),
        path: e.path.clone(),
        sha256: e.sha256.clone(),
        size: e.size,
        quarantined_at: e.quarantined_at,
        action: ActionId(e.action),
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

pub fn report(
    spec: &ActionSpec,
    outcome: Outcome,
    summary: String,
    detail: serde_json::Value,
) -> ActionReport {
    ActionReport {
        id: spec.id,
        outcome,
        summary,
        detail: detail.to_string(),
        artifacts: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use palisade_common::ActionId;
    use palisade_common::action::RequestSampleParams;

    fn sample(id: u64, path: &str) -> ActionSpec {
        ActionSpec {
            id: ActionId(id),
            params: ActionParams::RequestSample(RequestSampleParams { path: path.into() }),
        }
    }

    #[test]
    fn a_sample_becomes_an_upload_and_a_report_naming_its_hash() {
        let (_dir, ex) = executor(FakeHost::default().with_file("/bin/evil", b"MZ evil"));
        let (r, uploads) = ex.run(&sample(5, "/bin/evil"), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(uploads.len(), 1);
        assert_eq!(
            r.artifacts[0].sha256,
            hex::encode(uploads[0].snapshot.sha256)
        );
        assert_eq!(
            std::fs::read(&uploads[0].snapshot.path).unwrap(),
            b"MZ evil"
        );
        // Running it again (after a restart) replaces the old copy instead of failing.
        let (again, _) = ex.run(&sample(5, "/bin/evil"), &|_| {});
        assert_eq!(again, r);
    }

    #[test]
    fn a_refused_sample_fails_with_the_reason() {
        let (_dir, ex) = executor(FakeHost::default());
        let (r, uploads) = ex.run(&sample(6, "/nope"), &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("/nope does not exist"), "{}", r.summary);
        assert!(uploads.is_empty());
    }

    #[test]
    fn quarantine_by_hash_takes_every_match_and_a_rerun_reports_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::default()
            .with_file("/opt/a/evil", b"evil")
            .with_file("/opt/b/evil2", b"evil")
            .with_file("/opt/b/good", b"good");
        let ex = Executor::new(
            host,
            dir.path().into(),
            1 << 20,
            dir.path().join("journal.sqlite"),
        );
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"evil"));
        let q = spec(
            9,
            ActionParams::Quarantine(QuarantineParams {
                path: None,
                sha256: Some(sha.clone()),
                roots: vec!["/opt".into()],
            }),
        );
        let (r, _) = ex.run(&q, &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(detail["files"].as_array().unwrap().len(), 2);
        assert!(
            ex.host()
                .files
                .lock()
                .unwrap()
                .contains_key(Path::new("/opt/b/good"))
        );
        // After a restart the search finds nothing, the vault still has both.
        let (again, _) = ex.run(&q, &|_| {});
        let d2: serde_json::Value = serde_json::from_str(&again.detail).unwrap();
        assert_eq!(d2["files"].as_array().unwrap().len(), 2, "{d2}");
        assert_eq!(ex.vault_listing().len(), 2);

        let rel = spec(
            10,
            ActionParams::ReleaseQuarantine(ReleaseQuarantineParams {
                entry: None,
                sha256: Some(sha),
                restore_path: Some("/tmp/x".into()),
                overwrite: false,
            }),
        );
        let (r, _) = ex.run(&rel, &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("fits only one"), "{}", r.summary);
    }

    #[test]
    fn a_quarantine_reports_the_entry_the_undo_needs() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(
            FakeHost::default().with_file("/bin/evil", b"MZ"),
            dir.path().into(),
            1 << 20,
            dir.path().join("journal.sqlite"),
        );
        let (r, _) = ex.run(
            &spec(
                3,
                ActionParams::Quarantine(QuarantineParams {
                    path: Some("/bin/evil".into()),
                    sha256: None,
                    roots: vec![],
                }),
            ),
            &|_| {},
        );
        let d: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(d["vault_entry"], entry_id(3, "/bin/evil"));
        assert_eq!(d["path"], "/bin/evil");
        let entry = d["vault_entry"].as_str().unwrap().to_owned();
        let rel = |id| {
            spec(
                id,
                ActionParams::ReleaseQuarantine(ReleaseQuarantineParams {
                    entry: Some(entry.clone()),
                    sha256: None,
                    restore_path: None,
                    overwrite: false,
                }),
            )
        };
        let (r, _) = ex.run(&rel(4), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert_eq!(
            ex.host().files.lock().unwrap()[Path::new("/bin/evil")],
            b"MZ"
        );
        // Re-run after a restart: the tombstone answers.
        let (again, _) = ex.run(&rel(4), &|_| {});
        assert_eq!(again.outcome, Outcome::Succeeded, "{}", again.summary);
    }

    #[test]
    fn a_package_is_built_once_and_reused_by_a_rerun_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(
            FakeHost::default(),
            dir.path().into(),
            1 << 20,
            dir.path().join("journal.sqlite"),
        );
        let spec = ActionSpec {
            id: ActionId(9),
            params: ActionParams::CollectPackage {},
        };
        let (r, uploads) = ex.run(&spec, &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert_eq!(uploads.len(), 1);
        assert_eq!(r.artifacts[0].name, "package.tar.gz");
        assert_eq!(
            r.artifacts[0].sha256,
            hex::encode(uploads[0].snapshot.sha256)
        );
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(detail["counts"]["failed"], 1);
        assert_eq!(detail["collectors"][1]["error"], "nft is not installed");
        // The re-run after a restart takes the spooled package: same bytes, no new collection.
        let (again, _) = ex.run(&spec, &|_| {});
        assert_eq!(again, r);
        let calls = ex.host().calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| *c == "collect_package").count(), 1);
    }

    #[test]
    fn a_package_over_the_agents_limit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut ex = Executor::new(
            FakeHost::default(),
            dir.path().into(),
            1 << 20,
            dir.path().join("journal.sqlite"),
        );
        ex.max_package = 10;
        let spec = ActionSpec {
            id: ActionId(3),
            params: ActionParams::CollectPackage {},
        };
        let (r, uploads) = ex.run(&spec, &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(
            r.summary.contains("exceeds the agent's limit of 10"),
            "{}",
            r.summary
        );
        assert!(uploads.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool left behind"
        );
    }

    #[test]
    fn kinds_outside_the_capabilities_fail_rather_than_pretend() {
        let (_dir, ex) = executor(FakeHost::default());
        // Contain runs on the controller; an agent handed one says it does not do it.
        let spec = ActionSpec {
            id: ActionId(1),
            params: ActionParams::Contain(palisade_common::action::ContainParams {
                device: None,
                ip: Some("192.0.2.1".parse().unwrap()),
                mac: None,
                force: false,
            }),
        };
        let (r, _) = ex.run(&spec, &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("not implemented"), "{}", r.summary);
        assert!(!CAPABILITIES.contains(&ActionKind::Contain));
    }

    fn executor(host: FakeHost) -> (tempfile::TempDir, Executor<FakeHost>) {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.sqlite");
        let ex = Executor::new(host, dir.path().into(), 1 << 20, journal);
        (dir, ex)
    }

    fn spec(id: u64, params: ActionParams) -> ActionSpec {
        ActionSpec {
            id: ActionId(id),
            params,
        }
    }

    #[test]
    fn restrict_enforces_journals_and_release_undoes() {
        let (dir, ex) = executor(FakeHost::default());
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        let allow = DesiredState {
            revision: 4,
            exec_allowlist: palisade_common::wire::ExecAllowlist {
                sha256: vec![[3; 32]],
                paths: vec![],
            },
            ..Default::default()
        };
        journal.set_desired(&allow).unwrap();
        let (r, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert!(r.summary.contains("1 hash(es)"), "{}", r.summary);
        assert!(ex.host().exec.lock().unwrap().restrict);
        let d = journal.desired().unwrap().unwrap();
        assert!(d.restrict_execution, "the restriction is journaled");
        assert_eq!(d.revision, 4, "the agent never invents a revision");
        // Running it again (after a restart) is harmless.
        let (again, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}), &|_| {});
        assert_eq!(again.outcome, Outcome::Succeeded);

        let (r, _) = ex.run(&spec(2, ActionParams::ReleaseExecution {}), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert!(!ex.host().exec.lock().unwrap().restrict);
        assert!(!journal.desired().unwrap().unwrap().restrict_execution);
    }

    #[test]
    fn the_watch_finds_a_restriction_that_stopped_and_reconcile_puts_it_back() {
        let (dir, ex) = executor(FakeHost::default());
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        assert_eq!(
            ex.watch(&journal).unwrap(),
            Watched::default(),
            "nothing wanted"
        );
        let (r, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert_eq!(ex.watch(&journal).unwrap(), Watched::default(), "as wanted");
        ex.host().exec.lock().unwrap().restrict = false; // the listener died
        let drift = ex.watch(&journal).unwrap().exec_drift;
        assert!(
            drift
                .as_deref()
                .is_some_and(|d| d.contains("should be restricted")),
            "{drift:?}"
        );
        assert_eq!(ex.reconcile(&journal, None).unwrap().drift, None);
        assert!(ex.host().exec.lock().unwrap().restrict);
        assert_eq!(ex.watch(&journal).unwrap(), Watched::default());
    }

    #[test]
    fn a_restriction_that_cannot_be_enforced_fails_and_changes_nothing() {
        let host = FakeHost::default();
        *host.exec_fails.lock().unwrap() = Some("no fanotify here".into());
        let (dir, ex) = executor(host);
        let (r, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}), &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("no fanotify here"), "{}", r.summary);
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        assert!(journal.desired().unwrap().is_none());
    }

    #[test]
    fn the_controllers_stale_copy_does_not_undo_an_unacknowledged_restriction() {
        let (dir, ex) = executor(FakeHost::default());
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        let restrict = spec(1, ActionParams::RestrictExecution {});
        journal.record(&restrict).unwrap();
        let (r, _) = ex.run(&restrict, &|_| {});
        // Before the controller committed the result, it still sends its old state.
        let stale = DesiredState {
            revision: 1,
            ..Default::default()
        };
        let o = ex.reconcile(&journal, Some(stale.clone())).unwrap();
        assert!(o.restrict_execution && o.drift.is_none(), "{o:?}");
        let mut journal = journal;
        journal.finish(&r).unwrap();
        journal.acknowledged(ActionId(1)).unwrap();
        // Once acknowledged, the controller's state is the truth again.
        let o = ex.reconcile(&journal, Some(stale)).unwrap();
        assert!(!o.restrict_execution && o.drift.is_none(), "{o:?}");
        assert!(!ex.host().exec.lock().unwrap().restrict);
    }

    #[test]
    fn drift_is_reported_when_the_host_cannot_enforce() {
        let host = FakeHost::default();
        *host.exec_fails.lock().unwrap() = Some("marks refused".into());
        let (dir, ex) = executor(host);
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        let want = DesiredState {
            revision: 2,
            restrict_execution: true,
            ..Default::default()
        };
        let o = ex.reconcile(&journal, Some(want)).unwrap();
        assert_eq!(o.desired_revision, 2);
        assert!(!o.restrict_execution);
        assert!(o.drift.unwrap().contains("marks refused"));
    }
}
