//! The real Linux host.

mod collect;
pub mod exec;
mod files;
mod inventory;

use std::path::Path;

use palisade_common::wire::{ExecDenial, Inventory};

use super::{CollectLimits, Collected, ExecPolicy, ExecStatus, Host, HostError, Snapshot};
use exec::{ExecConfig, ExecGuard};

pub struct LinuxHost {
    exec: ExecGuard,
}

impl LinuxHost {
    pub fn new(exec: ExecConfig) -> LinuxHost {
        LinuxHost {
            exec: ExecGuard::new(exec),
        }
    }
}

impl Default for LinuxHost {
    fn default() -> LinuxHost {
        LinuxHost::new(ExecConfig::default())
    }
}

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

    fn set_exec_policy(&self, policy: &ExecPolicy) -> Result<ExecStatus, HostError> {
        self.exec.apply(policy)
    }

    fn exec_status(&self) -> ExecStatus {
        self.exec.status()
    }

    fn take_exec_denials(&self) -> (Vec<ExecDenial>, u64) {
        self.exec.take_denials()
    }
}
