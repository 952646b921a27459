//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use palisade_common::action::{ActionReport, ActionSpec, Outcome};
use palisade_common::wire::{DesiredState, ObservedState};
use palisade_common::{ActionKind, ActionParams};
use serde_json::json;

use crate::host::{CollectLimits, ExecPolicy, ExecStatus, Host, Snapshot};
use crate::journal::Journal;

mod artifacts;
pub mod network;
mod scan;
mod vault;

pub use crate::scanner::{ProgressFn, ScanOutcome, Scanner, run_scan};
pub use network::{Network, ProbeRequest};
pub use vault::listing;

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

pub struct Executor<H> {
    host: Arc<H>,
    spool: PathBuf,
    pub max_sample: u64,
    /// Largest investigation package uploaded.
    pub max_package: u64,
    /// The budget of each collector of a package.
    pub collect: CollectLimits,
    pub(crate) journal: PathBuf,
    /// Serialises every change of the desired state and its application to the host.
    pub(crate) desired: Mutex<()>,
    /// Network enforcement (isolation, containment): see `network`.
    pub net: Network,
    pub scanner: Arc<Scanner>,
    /// Whether real-time protection is watching now (set by the runtime, reported in the
    /// observed state).
    pub realtime_active: AtomicBool,
}

impl<H: Host> Executor<H> {
    pub fn new(host: H, spool: PathBuf, max_sample: u64, journal: PathBuf) -> Executor<H> {
        Executor {
            host: Arc::new(host),
            spool,
            max_sample,
            max_package: 512 << 20,
            collect: CollectLimits::default(),
            journal,
            desired: Mutex::new(()),
            net: Network::default(),
            scanner: Arc::new(Scanner::default()),
            realtime_active: AtomicBool::new(false),
        }
    }

    /// Where the runtime answers link probes (see `network::ProbeRequest`).
    pub fn set_prober(&self, tx: tokio::sync::mpsc::UnboundedSender<ProbeRequest>) {
        *self.net.prober.lock().expect("prober lock") = Some(tx);
    }

    /// The controller address of the live connection (`None` while disconnected).
    pub fn set_live_controller(&self, addr: Option<std::net::SocketAddr>) {
        *self.net.live_controller.lock().expect("live lock") = addr;
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
            if journal.pending_of(&network::ISOLATION_KINDS)? {
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
        use crate::clock::now_ms;
        use network::plan;
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

    /// The host, for work that outlives one call (real-time protection's worker).
    pub fn shared_host(&self) -> Arc<H> {
        self.host.clone()
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
    use std::path::Path;

    use palisade_common::ActionId;
    use palisade_common::action::{QuarantineParams, ReleaseQuarantineParams, RequestSampleParams};

    use super::*;
    use crate::host::fake::FakeHost;
    use crate::vault::entry_id;

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
    fn a_scan_of_missing_roots_fails_and_a_partly_missing_one_names_them() {
        let scan = |id: u64, paths: &[&str]| ActionSpec {
            id: ActionId(id),
            params: ActionParams::Scan(palisade_common::action::ScanParams {
                mode: "custom".into(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
                exclusions: vec![],
            }),
        };
        let (_dir, ex) = executor(FakeHost::default().with_file("/srv/a", b"clean"));
        let (r, _) = ex.run(&scan(1, &["/nope"]), &|_| {});
        assert_eq!(r.outcome, Outcome::Failed, "{}", r.summary);
        assert!(r.summary.contains("not scanned"), "{}", r.summary);
        assert!(!r.summary.contains("nothing found"), "{}", r.summary);
        let (r, _) = ex.run(&scan(2, &["/srv", "/gone"]), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert!(
            r.summary
                .ends_with("not scanned (missing or unreadable): /gone"),
            "{}",
            r.summary
        );
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(detail["not_scanned"], serde_json::json!(["/gone"]));
        let (r, _) = ex.run(&scan(3, &["/srv"]), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert!(!r.summary.contains("not scanned"), "{}", r.summary);
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
