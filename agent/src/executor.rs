//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::path::PathBuf;

use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome};
use palisade_common::{ActionKind, ActionParams};
use serde_json::json;

use crate::host::{CollectLimits, Host, HostError, Snapshot};
use crate::package;

/// The action kinds this agent carries out. The controller refuses the others for it.
pub const CAPABILITIES: [ActionKind; 3] = [
    ActionKind::RequestSample,
    ActionKind::CollectPackage,
    ActionKind::Offboard,
];

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
}

impl<H: Host> Executor<H> {
    pub fn new(host: H, spool: PathBuf, max_sample: u64) -> Executor<H> {
        Executor {
            host,
            spool,
            max_sample,
            max_package: 512 << 20,
            collect: CollectLimits::default(),
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Carries out `spec` and returns its report and the uploads it needs.
    pub fn run(&self, spec: &ActionSpec) -> (ActionReport, Vec<Upload>) {
        match &spec.params {
            ActionParams::RequestSample(p) => self.sample(spec, &p.path),
            ActionParams::CollectPackage {} => self.package(spec),
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
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(
            FakeHost::default().with_file("/bin/evil", b"MZ evil"),
            dir.path().into(),
            1 << 20,
        );
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
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(FakeHost::default(), dir.path().into(), 1 << 20);
        let (r, uploads) = ex.run(&sample(6, "/nope"));
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("/nope does not exist"), "{}", r.summary);
        assert!(uploads.is_empty());
    }

    #[test]
    fn a_package_is_built_once_and_reused_by_a_rerun_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(FakeHost::default(), dir.path().into(), 1 << 20);
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
        let mut ex = Executor::new(FakeHost::default(), dir.path().into(), 1 << 20);
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
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(FakeHost::default(), dir.path().into(), 1 << 20);
        let spec = ActionSpec {
            id: ActionId(1),
            params: ActionParams::RestrictExecution {},
        };
        let (r, _) = ex.run(&spec);
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(!CAPABILITIES.contains(&ActionKind::RestrictExecution));
    }
}
