//! The real Linux host.

mod collect;
mod files;
mod inventory;

use std::path::Path;

use palisade_common::wire::Inventory;

use super::{CollectLimits, Collected, Host, HostError, Snapshot};

#[derive(Debug, Default)]
pub struct LinuxHost;

impl Host for LinuxHost {
    fn inventory(&self) -> Inventory {
        inventory::collect()
    }

    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError> {
        files::snapshot(path, max, dest)
    }

    fn collect_package(&self, limits: &CollectLimits) -> Vec<Collected> {
        collect::run_all(limits)
    }
}
