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

pub trait Host: Send + Sync + 'static {
    /// What the device is now: names, addresses, size.
    fn inventory(&self) -> Inventory;

    /// Copies the regular file at `path` to `dest` (created new), at most `max` bytes, and
    /// hashes the copy. Refuses anything that is not a regular file, and any path that goes
    /// through a symbolic link.
    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError>;
}
