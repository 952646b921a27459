//! Actions that upload what they collect: a sample of one file, an investigation package.

use palisade_common::action::{ActionReport, ActionSpec, ArtifactRef, Outcome};
use serde_json::json;

use super::{Executor, Upload, report};
use crate::host::{Host, HostError};
use crate::package;

impl<H: Host> Executor<H> {
    pub(super) fn sample(&self, spec: &ActionSpec, path: &str) -> (ActionReport, Vec<Upload>) {
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
    pub(super) fn package(&self, spec: &ActionSpec) -> (ActionReport, Vec<Upload>) {
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
                    created_unix: crate::clock::now_secs(),
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
