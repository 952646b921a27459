//! Runs actions on the host and reports what it found enforced. Blocking: the runtime calls
//! it on a blocking thread.

use std::path::{Path, PathBuf};

use palisade_common::action::{
    ActionReport, ActionSpec, ArtifactRef, Outcome, QuarantineParams, ReleaseQuarantineParams,
};
use palisade_common::wire::VaultEntry;
use palisade_common::{ActionId, ActionKind, ActionParams};
use serde_json::json;

use crate::host::{Host, HostError, Quarantined, Snapshot};
use crate::vault::{EntryMeta, entry_id};

/// The action kinds this agent carries out. The controller refuses the others for it.
pub const CAPABILITIES: [ActionKind; 4] = [
    ActionKind::RequestSample,
    ActionKind::Offboard,
    ActionKind::Quarantine,
    ActionKind::ReleaseQuarantine,
];

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

    fn spec(id: u64, params: ActionParams) -> ActionSpec {
        ActionSpec {
            id: ActionId(id),
            params,
        }
    }

    #[test]
    fn quarantine_by_hash_takes_every_match_and_a_rerun_reports_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::default()
            .with_file("/opt/a/evil", b"evil")
            .with_file("/opt/b/evil2", b"evil")
            .with_file("/opt/b/good", b"good");
        let ex = Executor::new(host, dir.path().into(), 1 << 20);
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"evil"));
        let q = spec(
            9,
            ActionParams::Quarantine(QuarantineParams {
                path: None,
                sha256: Some(sha.clone()),
                roots: vec!["/opt".into()],
            }),
        );
        let (r, _) = ex.run(&q);
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
        let (again, _) = ex.run(&q);
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
        let (r, _) = ex.run(&rel);
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
        );
        let (r, _) = ex.run(&spec(
            3,
            ActionParams::Quarantine(QuarantineParams {
                path: Some("/bin/evil".into()),
                sha256: None,
                roots: vec![],
            }),
        ));
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
        let (r, _) = ex.run(&rel(4));
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert_eq!(
            ex.host().files.lock().unwrap()[Path::new("/bin/evil")],
            b"MZ"
        );
        // Re-run after a restart: the tombstone answers.
        let (again, _) = ex.run(&rel(4));
        assert_eq!(again.outcome, Outcome::Succeeded, "{}", again.summary);
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
