//! Files of interest: SUID/SGID executables on local filesystems, and what lies in the
//! temporary directories, with hashes.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use serde_json::json;

use super::{Ctx, Out};

/// Files larger than this are listed without a hash.
const MAX_HASHED: u64 = 64 << 20;
/// Entries listed per temporary directory tree.
const MAX_TEMP_ENTRIES: usize = 20_000;

/// Filesystems that hold no files of their own, or that are remote: never walked.
const SKIPPED_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "rpc_pipefs",
    "efivarfs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "sshfs",
    "fuse.sshfs",
    "9p",
    "ceph",
    "glusterfs",
    "selinuxfs",
];

/// Mount points of filesystems not to walk, from /proc/self/mounts.
fn skipped_mounts() -> HashSet<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let fs = *f.get(2)?;
            let mount = PathBuf::from(unescape_mount(f.get(1)?));
            SKIPPED_FS.contains(&fs).then_some(mount)
        })
        .collect()
}

/// /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn suid_sgid(ctx: &Ctx) -> anyhow::Result<Out> {
    let skip = skipped_mounts();
    let mut out = Out::default();
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/")];
    let mut visited = 0u64;
    while let Some(dir) = stack.pop() {
        if ctx.expired() {
            out.partly(format!(
                "time budget ran out after {visited} directories; {} not walked",
                stack.len() + 1
            ));
            break;
        }
        visited += 1;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if !skip.contains(&path) {
                    stack.push(path);
                }
            } else if meta.is_file() && meta.mode() & 0o6000 != 0 {
                found.push(json!({
                    "path": path,
                    "mode": format!("{:o}", meta.permissions().mode() & 0o7777),
                    "suid": meta.mode() & 0o4000 != 0,
                    "sgid": meta.mode() & 0o2000 != 0,
                    "uid": meta.uid(),
                    "gid": meta.gid(),
                    "size": meta.len(),
                    "mtime_unix": meta.mtime(),
                    "sha256": ctx.hash_file(&path, MAX_HASHED),
                }));
            }
        }
    }
    found.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    out.json(
        "suid_sgid.json",
        &json!({"directories_walked": visited, "skipped_mounts": skip, "files": found}),
    );
    Ok(out)
}

pub fn temp_files(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut listing = Vec::new();
    for root in ["/tmp", "/var/tmp", "/dev/shm"] {
        let mut entries = Vec::new();
        let mut stack = vec![PathBuf::from(root)];
        // The walk stops at the deadline too: a temporary directory holding a build tree
        // (hundreds of thousands of entries) must not carry the collector past its budget
        // and lose the listing it has.
        'walk: while let Some(dir) = stack.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut children: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
            children.sort();
            for path in children {
                if entries.len() >= MAX_TEMP_ENTRIES {
                    out.partly(format!("{root}: listing cut at {MAX_TEMP_ENTRIES} entries"));
                    break 'walk;
                }
                if ctx.expired() {
                    out.partly(format!(
                        "{root}: time budget ran out, listing cut at {} entries",
                        entries.len()
                    ));
                    break 'walk;
                }
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let kind = file_kind(&meta);
                let sha256 = meta
                    .is_file()
                    .then(|| ctx.hash_file(&path, MAX_HASHED))
                    .flatten();
                if meta.is_file() && meta.len() <= MAX_HASHED && sha256.is_none() && ctx.expired() {
                    out.partly("time budget ran out: some files not hashed".into());
                }
                entries.push(json!({
                    "path": path,
                    "type": kind,
                    "size": meta.len(),
                    "mode": format!("{:o}", meta.permissions().mode() & 0o7777),
                    "uid": meta.uid(),
                    "gid": meta.gid(),
                    "mtime_unix": meta.mtime(),
                    "symlink_to": meta.is_symlink().then(|| std::fs::read_link(&path).ok()).flatten(),
                    "sha256": sha256,
                }));
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        listing.push(json!({"root": root, "entries": entries}));
    }
    out.json("temp_files.json", &json!({"directories": listing}));
    Ok(out)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_deadline_the_temp_listing_stops_and_still_returns_its_file() {
        // /tmp holds at least this file, so the walk has an entry to stop at.
        let planted = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        let ctx = Ctx {
            deadline: std::time::Instant::now(),
            max_bytes: u64::MAX,
        };
        let out = temp_files(&ctx).unwrap();
        let listing = out
            .files
            .iter()
            .find(|f| f.name == "temp_files.json")
            .expect("the listing is returned");
        let v: serde_json::Value = serde_json::from_slice(&listing.bytes).unwrap();
        assert_eq!(v["directories"][0]["root"], "/tmp");
        assert_eq!(v["directories"][0]["entries"].as_array().unwrap().len(), 0);
        let why = out.partial.expect("marked partial");
        assert!(
            why.contains("/tmp: time budget ran out, listing cut at 0 entries"),
            "{why}"
        );
        drop(planted);
    }
}
