//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Result;
use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome};
use palisade_common::wire::{DesiredState, ObservedState};
use palisade_common::{ActionKind, ActionParams};
use serde_json::json;

use crate::host::{CollectLimits, ExecPolicy, ExecStatus, Host, HostError, Snapshot};
use crate::journal::Journal;
use crate::package;

/// The action kinds this agent carries out. The controller refuses the others for it.
pub const CAPABILITIES: [ActionKind; 5] = [
    ActionKind::RequestSample,
    ActionKind::CollectPackage,
    ActionKind::Offboard,
    ActionKind::RestrictExecution,
    ActionKind::ReleaseExecution,
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
pub fn observed(d: &DesiredState, exec: &ExecStatus, error: Option<String>) -> ObservedState {
    let drift = match error {
        Some(e) => Some(e),
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
        ..Default::default()
    }
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
    host: H,
    spool: PathBuf,
    pub max_sample: u64,
    /// Largest investigation package uploaded.
    pub max_package: u64,
    /// The budget of each collector of a package.
    pub collect: CollectLimits,
    journal: PathBuf,
    /// Serialises every change of the desired state and its application to the host.
    desired: Mutex<()>,
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
        }
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
            if journal.exec_action_pending()? {
                d.restrict_execution = desired.restrict_execution;
            }
            journal.set_desired(&d)?;
            desired = d;
        }
        let error = self
            .host
            .set_exec_policy(&exec_policy(&desired))
            .err()
            .map(|e| format!("cannot enforce the exec policy: {e}"));
        Ok(observed(&desired, &self.host.exec_status(), error))
    }

    /// What is enforced now, against the journaled desired state; changes nothing.
    pub fn observed(&self, journal: &Journal) -> Result<ObservedState> {
        let desired = journal.desired()?.unwrap_or_default();
        Ok(observed(&desired, &self.host.exec_status(), None))
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Carries out `spec` and returns its report and the uploads it needs.
    pub fn run(&self, spec: &ActionSpec) -> (ActionReport, Vec<Upload>) {
        match &spec.params {
            ActionParams::RequestSample(p) => self.sample(spec, &p.path),
            ActionParams::CollectPackage {} => self.package(spec),
            ActionParams::RestrictExecution {} => (self.restriction(spec, true), vec![]),
            ActionParams::ReleaseExecution {} => (self.restriction(spec, false), vec![]),
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
        let (r, uploads) = ex.run(&sample(5, "/bin/evil"));
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
        let (again, _) = ex.run(&sample(5, "/bin/evil"));
        assert_eq!(again, r);
    }

    #[test]
    fn a_refused_sample_fails_with_the_reason() {
        let (_dir, ex) = executor(FakeHost::default());
        let (r, uploads) = ex.run(&sample(6, "/nope"));
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("/nope does not exist"), "{}", r.summary);
        assert!(uploads.is_empty());
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
        let (r, uploads) = ex.run(&spec);
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
        let (again, _) = ex.run(&spec);
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
        let (r, uploads) = ex.run(&spec);
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
        let spec = ActionSpec {
            id: ActionId(1),
            params: ActionParams::Isolate(palisade_common::action::IsolateParams {
                selective: false,
                exceptions: vec![],
                for_secs: None,
            }),
        };
        let (r, _) = ex.run(&spec);
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(!CAPABILITIES.contains(&ActionKind::Isolate));
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
        let (r, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}));
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert!(r.summary.contains("1 hash(es)"), "{}", r.summary);
        assert!(ex.host().exec.lock().unwrap().restrict);
        let d = journal.desired().unwrap().unwrap();
        assert!(d.restrict_execution, "the restriction is journaled");
        assert_eq!(d.revision, 4, "the agent never invents a revision");
        // Running it again (after a restart) is harmless.
        let (again, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}));
        assert_eq!(again.outcome, Outcome::Succeeded);

        let (r, _) = ex.run(&spec(2, ActionParams::ReleaseExecution {}));
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert!(!ex.host().exec.lock().unwrap().restrict);
        assert!(!journal.desired().unwrap().unwrap().restrict_execution);
    }

    #[test]
    fn a_restriction_that_cannot_be_enforced_fails_and_changes_nothing() {
        let host = FakeHost::default();
        *host.exec_fails.lock().unwrap() = Some("no fanotify here".into());
        let (dir, ex) = executor(host);
        let (r, _) = ex.run(&spec(1, ActionParams::RestrictExecution {}));
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
        let (r, _) = ex.run(&restrict);
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
