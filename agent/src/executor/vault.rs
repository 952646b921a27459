//! Stop and quarantine, release from quarantine, and the vault as the controller lists it.

use std::path::{Path, PathBuf};

use palisade_common::ActionId;
use palisade_common::action::{
    ActionReport, ActionSpec, Outcome, QuarantineParams, ReleaseQuarantineParams,
};
use palisade_common::wire::VaultEntry;
use serde_json::json;

use super::{Executor, report};
use crate::host::{Host, HostError, Quarantined};
use crate::vault::{EntryMeta, entry_id};

impl<H: Host> Executor<H> {
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
    pub(super) fn quarantine(&self, spec: &ActionSpec, p: &QuarantineParams) -> ActionReport {
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
    pub(super) fn release(&self, spec: &ActionSpec, p: &ReleaseQuarantineParams) -> ActionReport {
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
