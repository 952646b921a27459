//! The investigation package: what the collectors returned, put in one gzipped tar archive
//! with a manifest (JSON), a human summary and a `SHA256SUMS` that `sha256sum -c` checks in
//! the extracted directory. Built in the agent's spool, keyed by action id, so that a run
//! after a restart reuses the package it had built and its upload resumes where it stopped.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use palisade_common::ActionId;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::host::{CollectStatus, Collected, Snapshot};

/// The artifact's name, as the controller stores and serves it.
pub const ARTIFACT_NAME: &str = "package.tar.gz";
pub const FORMAT: &str = "palisade-investigation-package/1";

/// A built package: its file and what the action's report says about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Built {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub summary: String,
    pub detail: serde_json::Value,
}

impl Built {
    pub fn snapshot(&self) -> Option<Snapshot> {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut sha256).ok()?;
        Some(Snapshot {
            path: self.path.clone(),
            size: self.size,
            sha256,
        })
    }
}

/// Where the package of `action` and its description live in the spool.
pub fn spool_paths(spool: &Path, action: ActionId) -> (PathBuf, PathBuf) {
    (
        spool.join(format!("{}.package.tar.gz", action.0)),
        spool.join(format!("{}.package.json", action.0)),
    )
}

/// The package built by an earlier run of the same action, if it is complete and intact.
pub fn reuse(spool: &Path, action: ActionId) -> Option<Built> {
    let (archive, desc) = spool_paths(spool, action);
    let built: Built = serde_json::from_slice(&std::fs::read(desc).ok()?).ok()?;
    if built.path != archive {
        return None;
    }
    let (size, sha256) = hash_path(&archive).ok()?;
    (size == built.size && sha256 == built.sha256).then_some(built)
}

#[derive(Serialize)]
struct ManifestFile {
    path: String,
    size: u64,
    sha256: String,
}

#[derive(Serialize)]
struct ManifestCollector<'a> {
    name: &'a str,
    status: CollectStatus,
    error: Option<&'a str>,
    duration_ms: u64,
    files: Vec<ManifestFile>,
}

/// Who made the package, for the manifest.
pub struct Origin<'a> {
    pub action: ActionId,
    pub hostname: &'a str,
    pub agent_version: &'a str,
    pub created_unix: u64,
}

/// Builds the package of `collected` into the spool (written aside, synced, then renamed),
/// records its description next to it, and returns it.
pub fn build(spool: &Path, origin: &Origin, collected: &[Collected]) -> std::io::Result<Built> {
    let (archive, desc) = spool_paths(spool, origin.action);
    let root = format!("collect-{}", origin.action.0);
    let mut names = BTreeSet::new();
    let mut entries: Vec<(String, &[u8])> = Vec::new();
    let mut manifest_collectors = Vec::new();
    for c in collected {
        let mut files = Vec::new();
        for f in &c.files {
            let name = unique(
                &mut names,
                &format!("{}/{}", c.collector, safe_name(&f.name)),
            );
            files.push(ManifestFile {
                path: name.clone(),
                size: f.bytes.len() as u64,
                sha256: sha256_hex(&f.bytes),
            });
            entries.push((name, &f.bytes));
        }
        manifest_collectors.push(ManifestCollector {
            name: &c.collector,
            status: c.status,
            error: c.error.as_deref(),
            duration_ms: c.duration_ms,
            files,
        });
    }
    let counts = counts(collected);
    let created = time::OffsetDateTime::from_unix_timestamp(origin.created_unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let manifest = serde_json::to_vec_pretty(&json!({
        "format": FORMAT,
        "action_id": origin.action.0,
        "hostname": origin.hostname,
        "agent_version": origin.agent_version,
        "created_at": created,
        "counts": counts,
        "collectors": manifest_collectors,
    }))
    .map_err(std::io::Error::other)?;
    let summary = summary_text(origin, &created, collected);
    let mut all: Vec<(String, &[u8])> = vec![
        ("manifest.json".into(), &manifest),
        ("summary.txt".into(), summary.as_bytes()),
    ];
    all.extend(entries);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sums = String::new();
    for (name, bytes) in &all {
        sums.push_str(&format!("{}  {name}\n", sha256_hex(bytes)));
    }
    all.push(("SHA256SUMS".into(), sums.as_bytes()));

    let tmp = spool.join(format!("{}.package.tmp", origin.action.0));
    {
        let file = File::create(&tmp)?;
        let gz = flate2::GzBuilder::new()
            .mtime(origin.created_unix as u32)
            .write(BufWriter::new(file), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        let mut dirs = BTreeSet::new();
        for (name, bytes) in &all {
            // Directory entries first, so that extracting gives sane modes.
            let path = Path::new(name);
            for dir in path
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if dir.as_os_str().is_empty() || !dirs.insert(dir.to_owned()) {
                    continue;
                }
                let mut h = header(origin, 0, tar::EntryType::Directory, 0o755);
                tar.append_data(&mut h, Path::new(&root).join(dir), std::io::empty())?;
            }
            let mut h = header(origin, bytes.len() as u64, tar::EntryType::Regular, 0o644);
            tar.append_data(&mut h, Path::new(&root).join(path), *bytes)?;
        }
        let gz = tar.into_inner()?;
        let file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &archive)?;
    let (size, sha256) = hash_path(&archive)?;
    let built = Built {
        path: archive,
        size,
        sha256: sha256.clone(),
        summary: format!(
            "investigation package: {} collectors ({}), {size} bytes, sha256 {sha256}",
            collected.len(),
            counts_text(&counts),
        ),
        detail: json!({
            "package": {"name": ARTIFACT_NAME, "size": size, "sha256": sha256},
            "counts": counts,
            "collectors": collected.iter().map(|c| json!({
                "name": c.collector,
                "status": c.status,
                "error": c.error,
                "duration_ms": c.duration_ms,
                "files": c.files.len(),
                "bytes": c.files.iter().map(|f| f.bytes.len() as u64).sum::<u64>(),
            })).collect::<Vec<_>>(),
        }),
    };
    let mut d = File::create(&desc)?;
    d.write_all(&serde_json::to_vec(&built).map_err(std::io::Error::other)?)?;
    d.sync_all()?;
    Ok(built)
}

fn header(origin: &Origin, size: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(origin.created_unix);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn counts(collected: &[Collected]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for c in collected {
        let key = serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let n = m.get(&key).and_then(|v| v.as_u64()).unwrap_or(0);
        m.insert(key, json!(n + 1));
    }
    m
}

fn counts_text(counts: &serde_json::Map<String, serde_json::Value>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary_text(origin: &Origin, created: &str, collected: &[Collected]) -> String {
    let mut s = format!(
        "Palisade investigation package\n\naction:   {}\nhost:     {}\nagent:    {}\ncreated:  {created}\n\n",
        origin.action, origin.hostname, origin.agent_version
    );
    s.push_str(&format!(
        "{:<16} {:<12} {:>9} {:>6} {:>12}  error\n",
        "collector", "status", "ms", "files", "bytes"
    ));
    for c in collected {
        let status = serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<16} {:<12} {:>9} {:>6} {:>12}  {}\n",
            c.collector,
            status,
            c.duration_ms,
            c.files.len(),
            c.files.iter().map(|f| f.bytes.len()).sum::<usize>(),
            c.error.as_deref().unwrap_or("").replace('\n', " "),
        ));
    }
    s.push_str("\nCheck the files with: sha256sum -c SHA256SUMS\n");
    s
}

/// A name safe in a tar archive and in a `SHA256SUMS` line: relative, no `..`, and only
/// characters that need no escaping.
pub fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+@/:,=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let parts: Vec<&str> = cleaned
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect();
    if parts.is_empty() {
        "unnamed".into()
    } else {
        parts.join("/")
    }
}

fn unique(names: &mut BTreeSet<String>, name: &str) -> String {
    let mut candidate = name.to_owned();
    let mut n = 1;
    while !names.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{name}.{n}");
    }
    candidate
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

fn hash_path(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((size, hex::encode(ctx.finish())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CollectedFile;

    fn collected() -> Vec<Collected> {
        vec![
            Collected {
                collector: "system".into(),
                status: CollectStatus::Ok,
                error: None,
                duration_ms: 5,
                files: vec![CollectedFile {
                    name: "system.json".into(),
                    bytes: b"{}".to_vec(),
                }],
            },
            Collected {
                collector: "autoruns".into(),
                status: CollectStatus::Failed,
                error: Some("boom".into()),
                duration_ms: 1,
                files: vec![
                    CollectedFile {
                        name: "raw/etc/cron.d/../evil name\n".into(),
                        bytes: b"x".to_vec(),
                    },
                    CollectedFile {
                        name: "raw/etc/cron.d/../evil name\r".into(),
                        bytes: b"y".to_vec(),
                    },
                ],
            },
        ]
    }

    fn origin() -> Origin<'static> {
        Origin {
            action: ActionId(42),
            hostname: "h",
            agent_version: "0.1.0",
            created_unix: 1_700_000_000,
        }
    }

    fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
        let gz = flate2::read::GzDecoder::new(File::open(path).unwrap());
        let mut ar = tar::Archive::new(gz);
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.header().entry_type().is_dir())
            .map(|mut e| {
                let name = e.path().unwrap().display().to_string();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn the_archive_holds_manifest_summary_sums_and_every_file_under_safe_names() {
        let dir = tempfile::tempdir().unwrap();
        let built = build(dir.path(), &origin(), &collected()).unwrap();
        let files = entries(&built.path);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "collect-42/autoruns/raw/etc/cron.d/evil_name_",
                "collect-42/autoruns/raw/etc/cron.d/evil_name_.2",
                "collect-42/manifest.json",
                "collect-42/summary.txt",
                "collect-42/system/system.json",
                "collect-42/SHA256SUMS",
            ]
        );
        // SHA256SUMS names every other file with its hash.
        let sums = String::from_utf8(files.last().unwrap().1.clone()).unwrap();
        for (name, bytes) in &files[..files.len() - 1] {
            let rel = name.strip_prefix("collect-42/").unwrap();
            assert!(
                sums.contains(&format!("{}  {rel}\n", sha256_hex(bytes))),
                "{rel} in {sums}"
            );
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(manifest["collectors"][1]["status"], "failed");
        assert_eq!(manifest["collectors"][1]["error"], "boom");
        assert_eq!(manifest["counts"]["ok"], 1);
        assert!(built.summary.contains("2 collectors"), "{}", built.summary);
        assert_eq!(built.detail["package"]["sha256"], built.sha256);
    }

    #[test]
    fn a_built_package_is_reused_and_a_damaged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(reuse(dir.path(), ActionId(42)).is_none());
        let built = build(dir.path(), &origin(), &collected()).unwrap();
        assert_eq!(reuse(dir.path(), ActionId(42)), Some(built.clone()));
        // The same collection builds the same bytes.
        let again = build(dir.path(), &origin(), &collected()).unwrap();
        assert_eq!(again.sha256, built.sha256);
        std::fs::write(&built.path, b"torn").unwrap();
        assert!(reuse(dir.path(), ActionId(42)).is_none());
    }

    #[test]
    fn names_cannot_escape_the_package() {
        assert_eq!(safe_name("../../etc/passwd"), "etc/passwd");
        assert_eq!(safe_name("/abs//x"), "abs/x");
        assert_eq!(safe_name("a b\\c"), "a_b_c");
        assert_eq!(safe_name(".."), "unnamed");
    }
}
