//! The host-capability layer: everything the agent does to or reads from the machine goes
//! through these traits. `linux` is the real implementation; `fake` records calls for the unit
//! tests of the logic above. New actions add a capability here and an applier in `linux`.
//!
//! Architecture invariant: only `host/linux/` touches the host (files outside the agent's
//! state directory, processes, firewall, fanotify).

pub mod fake;
pub mod linux;

use std::path::{Path, PathBuf};

use palisade_common::wire::Inventory;
use serde::Serialize;

use crate::vault::{EntryMeta, Released};

/// A file copied out of its place for upload: the copy is ours, so its bytes cannot change
/// between hashing and sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> HostError {
        HostError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A process killed because it used a file being quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Killed {
    pub pid: i32,
    pub cmdline: String,
    /// `exe`, `open` or `mapped`.
    pub uses: &'static str,
}

/// A file moved into the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub entry: EntryMeta,
    pub killed: Vec<Killed>,
    /// The entry was already committed by an earlier run of the same action.
    pub already: bool,
}

pub trait Host: Send + Sync + 'static {
    /// What the device is now: names, addresses, size.
    fn inventory(&self) -> Inventory;

    /// Copies the regular file at `path` to `dest` (created new), at most `max` bytes, and
    /// hashes the copy. Refuses anything that is not a regular file, and any path that goes
    /// through a symbolic link.
    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError>;

    /// Stops the processes using the regular file at `path` (executable, open or mapped),
    /// checks they are gone, and moves the file into the vault as entry `entry`; with
    /// `expect_sha256`, only if the file has that hash. Refuses directories, devices, FIFOs,
    /// sockets, paths through symlinks, the agent's own files, `/proc`, `/sys`, protected
    /// paths and immutable files. Safe to repeat: an entry already committed is finished.
    fn quarantine_file(
        &self,
        path: &Path,
        expect_sha256: Option<&str>,
        entry: &str,
        action: u64,
    ) -> Result<Quarantined, HostError>;

    /// Regular files under `roots` with this sha256.
    fn find_by_hash(&self, roots: &[PathBuf], sha256: &str) -> Result<Vec<PathBuf>, HostError>;

    /// Restores vault entry `entry` to `dest` (default: its original path), refusing to replace
    /// a different file unless `overwrite`. Safe to repeat: a released entry reports its
    /// tombstone.
    fn release(
        &self,
        entry: &str,
        dest: Option<&Path>,
        overwrite: bool,
        action: u64,
    ) -> Result<Released, HostError>;

    /// The committed vault entries.
    fn vault_entries(&self) -> Result<Vec<EntryMeta>, HostError>;

    /// The tombstones of released entries.
    fn vault_released(&self) -> Result<Vec<Released>, HostError>;

    /// Finishes or rolls back whatever a crash interrupted in the vault.
    fn vault_recover(&self) -> Result<Vec<String>, HostError>;
}
