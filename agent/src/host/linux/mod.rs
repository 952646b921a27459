//! The real Linux host.

mod collect;
pub mod exec;
mod files;
pub mod footprint;
mod inventory;
mod net;
mod procs;
pub mod realtime;
pub mod scan;
pub mod target;
pub mod vault;

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use palisade_common::wire::{ExecDenial, Inventory};

use super::{
    CollectLimits, Collected, ExecPolicy, ExecStatus, Host, HostError, NetStatus, Quarantined,
    Snapshot,
};
use crate::vault::{EntryMeta, Released};
use exec::{ExecConfig, ExecGuard};
use target::Protection;

/// The real host. Vault actions need the agent's state directory (`LinuxHost::with_vault`);
/// a host without one (for enrolment) refuses them.
pub struct LinuxHost {
    exec: ExecGuard,
    protection: Protection,
    net_watch: net::Watch,
}

impl LinuxHost {
    pub fn new(exec: ExecConfig) -> LinuxHost {
        LinuxHost {
            exec: ExecGuard::new(exec),
            protection: Protection::default(),
            net_watch: net::Watch::default(),
        }
    }

    /// This host, with its vault in `state_dir`, refusing to quarantine the default
    /// protected paths and `extra_protected`.
    pub fn with_vault(mut self, state_dir: PathBuf, extra_protected: Vec<PathBuf>) -> LinuxHost {
        let mut paths: Vec<PathBuf> = target::DEFAULT_PROTECTED
            .iter()
            .map(PathBuf::from)
            .collect();
        paths.extend(extra_protected);
        self.protection = Protection { state_dir, paths };
        self
    }

    pub fn vault(&self) -> Result<vault::Vault, HostError> {
        vault::Vault::open(&self.protection.state_dir)
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

    fn addresses(&self) -> Vec<std::net::IpAddr> {
        inventory::addresses()
    }

    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError> {
        // Never the agent's own identity, journal, vault or spool (as quarantine refuses).
        target::refuse_own_files(path, &self.protection)?;
        files::snapshot(path, max, dest)
    }

    fn quarantine_file(
        &self,
        path: &Path,
        expect_sha256: Option<&str>,
        entry: &str,
        action: u64,
    ) -> Result<Quarantined, HostError> {
        let vault = self.vault()?;
        if vault.is_committed(entry) {
            return Ok(Quarantined {
                entry: vault.quarantine_finish(entry)?,
                killed: vec![],
                already: true,
            });
        }
        let t = target::open(path, &self.protection)?;
        if let Some(want) = expect_sha256 {
            let have = vault::hash_file(&t.file).map_err(|e| HostError::io("read the file", e))?;
            (&t.file)
                .seek(SeekFrom::Start(0))
                .map_err(|e| HostError::io("seek", e))?;
            if have != want {
                return Err(HostError::Refused(format!(
                    "{}: has sha256 {have}, not {want}",
                    path.display()
                )));
            }
        }
        let killed = procs::stop_users(path, t.stat.st_dev, t.stat.st_ino)?;
        let meta = vault.quarantine(&t, entry, action)?;
        if target::stat_at(&t.dir, &t.name).is_some_and(|st| st.st_ino == meta.ino) {
            return Err(HostError::Refused(format!(
                "{}: still in place after quarantine",
                path.display()
            )));
        }
        Ok(Quarantined {
            entry: meta,
            killed,
            already: false,
        })
    }

    fn find_by_hash(&self, roots: &[PathBuf], sha256: &str) -> Result<Vec<PathBuf>, HostError> {
        vault::find_by_hash(roots, sha256, &self.protection)
    }

    fn release(
        &self,
        entry: &str,
        dest: Option<&Path>,
        overwrite: bool,
        action: u64,
    ) -> Result<Released, HostError> {
        self.vault()?
            .release(entry, dest, overwrite, action, &self.protection)
    }

    fn vault_entries(&self) -> Result<Vec<EntryMeta>, HostError> {
        self.vault()?.entries()
    }

    fn vault_released(&self) -> Result<Vec<Released>, HostError> {
        self.vault()?.tombstones()
    }

    fn vault_recover(&self) -> Result<Vec<String>, HostError> {
        self.vault()?.recover()
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

    fn scan(&self, job: &super::ScanJob, sink: &dyn super::ScanSink) -> super::Walked {
        scan::scan(job, sink)
    }

    fn watch(
        &self,
        roots: &[PathBuf],
        feed: crate::host::feed::Feed,
    ) -> Result<(Box<dyn super::Watching>, Vec<String>), HostError> {
        realtime::watch(roots, feed)
    }

    fn take_exec_denials(&self) -> (Vec<ExecDenial>, u64) {
        self.exec.take_denials()
    }

    fn apply_net(&self, script: &str) -> Result<NetStatus, HostError> {
        net::apply(script)
    }

    fn net_status(&self) -> Result<NetStatus, HostError> {
        net::status()
    }

    fn net_changed(&self) -> bool {
        self.net_watch.changed()
    }

    fn resolve(&self, host_port: &str) -> Result<Vec<std::net::SocketAddr>, HostError> {
        net::resolve(host_port)
    }
}
