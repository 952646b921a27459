//! The real Linux host.

mod files;
mod inventory;

use std::path::Path;

use palisade_common::wire::Inventory;

use super::{Host, HostError, Snapshot};

#[derive(Debug, Default)]
pub struct LinuxHost;

impl Host for LinuxHost {
    fn inventory(&self) -> Inventory {
        inventory::collect()
    }

    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError> {
        files::snapshot(path, max, dest)
    }
}
