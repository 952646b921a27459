//! A recording fake host for unit tests of the executor and the session driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use palisade_common::wire::{ExecDenial, Inventory};
use ring::digest;

use super::{
    CollectLimits, CollectStatus, Collected, CollectedFile, ExecPolicy, ExecStatus, Host,
    HostError, Snapshot,
};

#[derive(Default)]
pub struct FakeHost {
    pub files: Mutex<HashMap<PathBuf, Vec<u8>>>,
    pub calls: Mutex<Vec<String>>,
    pub exec: Mutex<ExecPolicy>,
    /// Make `set_exec_policy` fail with this message.
    pub exec_fails: Mutex<Option<String>>,
    pub denials: Mutex<Vec<ExecDenial>>,
}

impl FakeHost {
    pub fn with_file(self, path: &str, bytes: &[u8]) -> FakeHost {
        self.files
            .lock()
            .unwrap()
            .insert(path.into(), bytes.to_vec());
        self
    }
}

impl Host for FakeHost {
    fn inventory(&self) -> Inventory {
        Inventory {
            hostname: "fake-host".into(),
            os: "FakeOS 1".into(),
            ..Default::default()
        }
    }

    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("snapshot {}", path.display()));
        let files = self.files.lock().unwrap();
        let bytes = files
            .get(path)
            .ok_or_else(|| HostError::Refused(format!("{} does not exist", path.display())))?;
        if bytes.len() as u64 > max {
            return Err(HostError::Refused(format!(
                "{} is larger than {max} bytes",
                path.display()
            )));
        }
        std::fs::write(dest, bytes).map_err(|e| HostError::io("write snapshot", e))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        Ok(Snapshot {
            path: dest.to_owned(),
            size: bytes.len() as u64,
            sha256,
        })
    }

    fn collect_package(&self, _limits: &CollectLimits) -> Vec<Collected> {
        self.calls.lock().unwrap().push("collect_package".into());
        vec![
            Collected {
                collector: "system".into(),
                status: CollectStatus::Ok,
                error: None,
                duration_ms: 3,
                files: vec![CollectedFile {
                    name: "system.json".into(),
                    bytes: br#"{"hostname": "fake-host"}"#.to_vec(),
                }],
            },
            Collected {
                collector: "firewall".into(),
                status: CollectStatus::Unavailable,
                error: Some("nft is not installed".into()),
                duration_ms: 0,
                files: vec![],
            },
            Collected {
                collector: "autoruns".into(),
                status: CollectStatus::Failed,
                error: Some("cannot read /etc/cron.d".into()),
                duration_ms: 1,
                files: vec![CollectedFile {
                    name: "raw/etc/cron.d/odd name\n".into(),
                    bytes: b"* * * * * root /tmp/x\n".to_vec(),
                }],
            },
        ]
    }

    fn set_exec_policy(&self, policy: &ExecPolicy) -> Result<ExecStatus, HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("exec restrict={}", policy.restrict));
        if let Some(why) = self.exec_fails.lock().unwrap().clone() {
            return Err(HostError::Refused(why));
        }
        *self.exec.lock().unwrap() = policy.clone();
        Ok(self.exec_status())
    }

    fn exec_status(&self) -> ExecStatus {
        let p = self.exec.lock().unwrap();
        ExecStatus {
            restricted: p.restrict,
            marked: if p.restrict { vec!["/".into()] } else { vec![] },
            listener_alive: p.restrict,
            allowlist_sha256: p.allow_sha256.len(),
            allowlist_paths: p.allow_paths.len(),
            ..Default::default()
        }
    }

    fn take_exec_denials(&self) -> (Vec<ExecDenial>, u64) {
        (std::mem::take(&mut *self.denials.lock().unwrap()), 0)
    }
}
