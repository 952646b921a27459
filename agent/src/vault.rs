//! The quarantine vault's logic without IO: the file format (an encoded copy that cannot run
//! and that no scanner mistakes for the original), the metadata kept with it, and the recovery
//! planner that decides, from what a crash left on disk, how to finish or roll back.
//!
//! One entry `E` is a handful of files in `<state-dir>/vault/` (0700):
//!
//! * `E.tmp`  — the encoded copy being written; never counts;
//! * `E.meta` — [`EntryMeta`] (JSON), written and synced before the copy is committed;
//! * `E.bin`  — the committed copy: **the entry exists iff `E.bin` exists**; the original is
//!   unlinked only after this rename is durable;
//! * `E.release` — a [`ReleaseIntent`] written before a restore starts;
//! * `E.done` — a [`Released`] tombstone, written once the restored file is durable and before
//!   `E.bin` goes, so a repeated release reports the same result.
//!
//! The applier is `host::linux::vault`.

use serde::{Deserialize, Serialize};

/// First bytes of every encoded copy: not an executable format, not the original's magic.
pub const MAGIC: &[u8; 16] = b"PALISADE-VAULT1\n";

/// A fixed key stream XORed over the bytes: reversible, keeps the copy from being executable
/// or matched by content scanners. Not secrecy: the vault directory's mode is.
const KEY: [u8; 64] = *b"palisade quarantine vault: this is an inert copy, do not execute";

/// Encodes (or decodes: the transform is its own inverse) `buf`, whose first byte is at
/// `offset` in the payload (after [`MAGIC`]).
pub fn transform(buf: &mut [u8], offset: u64) {
    // Byte `pos` is XORed with KEY[pos % 64] ^ (pos / 64) * 0x9d: a 64-byte block at a time,
    // so that the inner loop vectorises.
    let mut pos = offset;
    let mut rest = buf;
    while !rest.is_empty() {
        let start = (pos % 64) as usize;
        let n = (64 - start).min(rest.len());
        let salt = ((pos / 64) as u8).wrapping_mul(0x9d);
        let (block, tail) = rest.split_at_mut(n);
        for (b, k) in block.iter_mut().zip(&KEY[start..start + n]) {
            *b ^= k ^ salt;
        }
        pos += n as u64;
        rest = tail;
    }
}

/// The vault entry id for a file quarantined by an action: the same action and path always
/// give the same id, so an action re-run after a restart finds its own entry.
pub fn entry_id(action: u64, path: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{action}\0{path}").as_bytes(),
    );
    format!("q{action}-{}", &hex::encode(d.as_ref())[..12])
}

/// What the vault keeps about a quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub id: String,
    pub action: u64,
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_sec: i64,
    pub atime_nsec: i64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub ctime_sec: i64,
    /// Name → hex value, every namespace the agent could read.
    pub xattrs: Vec<(String, String)>,
    /// The original's identity, so that recovery unlinks only that file.
    pub dev: u64,
    pub ino: u64,
    pub quarantined_at: i64,
}

/// A restore in progress: where to, through which temporary name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseIntent {
    pub action: u64,
    pub dest: String,
    pub temp: String,
    pub overwrite: bool,
}

/// A finished release (the tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub id: String,
    pub action: u64,
    pub restored_to: String,
    pub sha256: String,
    pub size: u64,
    pub released_at: i64,
}

/// Which of an entry's files exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryFiles {
    pub tmp: bool,
    pub meta: bool,
    pub bin: bool,
    pub release: bool,
    pub done: bool,
}

/// What is at an entry's original path, compared with the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Original {
    /// The very file that was copied (same device, inode, size and sha256: a later file can
    /// reuse the inode number).
    Same,
    /// Nothing, or some other file.
    NotIt,
}

/// What is at a release's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A regular file with the entry's sha256.
    Restored,
    NotRestored,
}

/// One step of recovery, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    RemoveTmp,
    RemoveMeta,
    /// The committed copy is durable; the original is still there: finish the move.
    UnlinkOriginal,
    RemoveRestoreTemp,
    RemoveRelease,
    /// The restored file is durable at its destination: write the tombstone.
    WriteDone,
    RemoveBin,
}

/// Decides how to bring one entry to a consistent state after a crash: the file is then
/// either in place (no entry) or in the vault (entry, original gone) — never neither, never a
/// half copy that counts. `original` is consulted only for a committed entry without a release
/// in progress, `dest` only for a release in progress.
pub fn plan(files: EntryFiles, original: Original, dest: Destination) -> Vec<Step> {
    use Step::*;
    let mut steps = Vec::new();
    if files.done {
        // Released: the restored file was durable before the tombstone was written.
        if files.tmp {
            steps.push(RemoveTmp);
        }
        if files.bin {
            steps.push(RemoveBin);
        }
        if files.meta {
            steps.push(RemoveMeta);
        }
        if files.release {
            steps.push(RemoveRestoreTemp);
            steps.push(RemoveRelease);
        }
        return steps;
    }
    if !files.bin {
        // Never committed: the original was not touched. Roll back.
        if files.tmp {
            steps.push(RemoveTmp);
        }
        if files.meta {
            steps.push(RemoveMeta);
        }
        if files.release {
            steps.push(RemoveRelease);
        }
        return steps;
    }
    if files.tmp {
        steps.push(RemoveTmp);
    }
    if !files.meta {
        // A committed copy without its metadata cannot be restored faithfully nor matched
        // to its original; the applier keeps it and reports it. Nothing to do here.
        return steps;
    }
    if files.release {
        match dest {
            Destination::Restored => steps.extend([
                RemoveRestoreTemp,
                WriteDone,
                RemoveBin,
                RemoveMeta,
                RemoveRelease,
            ]),
            Destination::NotRestored => steps.extend([RemoveRestoreTemp, RemoveRelease]),
        }
        return steps;
    }
    if original == Original::Same {
        steps.push(UnlinkOriginal);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use Destination::*;
    use Original::*;
    use Step::*;

    fn files(tmp: bool, meta: bool, bin: bool, release: bool, done: bool) -> EntryFiles {
        EntryFiles {
            tmp,
            meta,
            bin,
            release,
            done,
        }
    }

    #[test]
    fn the_transform_is_its_own_inverse_and_hides_the_original() {
        let original: Vec<u8> = b"\x7fELF\x02\x01\x01"
            .iter()
            .copied()
            .cycle()
            .take(5000)
            .collect();
        let mut enc = original.clone();
        transform(&mut enc, 0);
        assert_ne!(&enc[..4], b"\x7fELF");
        assert!(!enc.windows(7).any(|w| w == b"\x7fELF\x02\x01\x01"));
        // Chunked decoding at arbitrary offsets gives the same bytes back.
        let (a, b) = enc.split_at_mut(1234);
        transform(a, 0);
        transform(b, 1234);
        assert_eq!(enc, original);
        // The same key stream as the byte-at-a-time definition.
        let mut one = original.clone();
        transform(&mut one, 77);
        for (i, (o, e)) in original.iter().zip(&one).enumerate() {
            let pos = 77 + i as u64;
            assert_eq!(
                *o ^ KEY[(pos % 64) as usize] ^ ((pos / 64) as u8).wrapping_mul(0x9d),
                *e
            );
        }
    }

    #[test]
    fn entry_ids_are_stable_per_action_and_path_and_valid() {
        assert_eq!(entry_id(7, "/tmp/x"), entry_id(7, "/tmp/x"));
        assert_ne!(entry_id(7, "/tmp/x"), entry_id(8, "/tmp/x"));
        assert_ne!(entry_id(7, "/tmp/x"), entry_id(7, "/tmp/y"));
        palisade_common::action::check_entry_id(&entry_id(u64::MAX, "/a")).unwrap();
    }

    #[test]
    fn an_uncommitted_copy_is_rolled_back_and_the_original_left_alone() {
        for (tmp, meta) in [(true, false), (true, true), (false, true)] {
            let steps = plan(files(tmp, meta, false, false, false), Same, NotRestored);
            assert!(!steps.contains(&UnlinkOriginal), "{steps:?}");
            assert_eq!(steps.contains(&RemoveTmp), tmp);
            assert_eq!(steps.contains(&RemoveMeta), meta);
        }
    }

    #[test]
    fn a_committed_copy_finishes_the_move_only_if_the_original_is_that_file() {
        assert_eq!(
            plan(files(false, true, true, false, false), Same, NotRestored),
            vec![UnlinkOriginal]
        );
        assert_eq!(
            plan(files(false, true, true, false, false), NotIt, NotRestored),
            vec![]
        );
        // A committed entry never loses its copy, whatever else is found.
        for orig in [Same, NotIt] {
            for dest in [Restored, NotRestored] {
                let steps = plan(files(true, true, true, false, false), orig, dest);
                assert!(!steps.contains(&RemoveBin), "{steps:?}");
            }
        }
    }

    #[test]
    fn a_release_finishes_only_once_the_file_is_restored_else_rolls_back() {
        assert_eq!(
            plan(files(false, true, true, true, false), NotIt, Restored),
            vec![
                RemoveRestoreTemp,
                WriteDone,
                RemoveBin,
                RemoveMeta,
                RemoveRelease
            ]
        );
        assert_eq!(
            plan(files(false, true, true, true, false), Same, NotRestored),
            vec![RemoveRestoreTemp, RemoveRelease]
        );
        // The tombstone was written: only cleanup remains.
        assert_eq!(
            plan(files(false, true, true, true, true), NotIt, NotRestored),
            vec![RemoveBin, RemoveMeta, RemoveRestoreTemp, RemoveRelease]
        );
        assert_eq!(
            plan(files(false, false, false, false, true), NotIt, NotRestored),
            vec![]
        );
    }

    #[test]
    fn a_copy_without_metadata_is_kept() {
        assert_eq!(
            plan(files(false, false, true, false, false), Same, Restored),
            vec![]
        );
    }
}
