//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::path::PathBuf;

use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome};
use palisade_common::{ActionKind, ActionParams};
use serde_json::json;

use crate::host::{Host, HostError, Snapshot};

/// The action kinds this agent carries out. The controller refuses the others for it.
pub const CAPABILITIES: [ActionKind; 2] = [ActionKind::RequestSample, ActionKind::Offboard];

/// An artifact that must reach the controller before the report may be sent.
#[derive(Debug, Clone)]
pub struct Upload {
    pub name: String,
    pub snapshot: Snapshot,
}

pub struct Executor<H> {
    host: H,
    spool: PathBuf,
    pub max_sample: u64,
}

impl<H: Host> Executor<H> {
    pub fn new(host: H, spool: PathBuf, max_sample: u64) -> Executor<H> {
        Executor {
            host,
            spool,
            max_sample,
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Carries out `spec` and returns its report and the uploads it needs.
    pub fn run(&self, spec: &ActionSpec) -> (ActionReport, Vec<Upload>) {
        match &spec.params {
            ActionParams::RequestSample(p) => self.sample(spec, &p.path),
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
