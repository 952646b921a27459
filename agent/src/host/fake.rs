//! A recording fake host for unit tests of the executor and the session driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use palisade_common::wire::{ExecDenial, Inventory};
use ring::digest;

use super::{
    CollectLimits, CollectStatus, Collected, CollectedFile, ExecPolicy, ExecStatus, FileMeta, Host,
    HostError, NetStatus, Quarantined, ScanJob, ScanMode, ScanSink, Snapshot, Walked,
};
use crate::vault::{EntryMeta, Released};

#[derive(Default)]
pub struct FakeHost {
    pub files: Mutex<HashMap<PathBuf, Vec<u8>>>,
    pub calls: Mutex<Vec<String>>,
    pub vault: Mutex<Vec<(EntryMeta, Vec<u8>)>>,
    pub released: Mutex<Vec<Released>>,
    pub exec: Mutex<ExecPolicy>,
    /// Make `set_exec_policy` fail with this message.
    pub exec_fails: Mutex<Option<String>>,
    pub denials: Mutex<Vec<ExecDenial>>,
    /// Our nftables table as the fake kernel holds it (`None`: no table).
    pub net: Mutex<Option<String>>,
    /// Make `apply_net` fail with this message.
    pub net_fails: Mutex<Option<String>>,
    /// The feed of the last `watch`, for a test to play the kernel.
    pub watch_feed: Mutex<Option<crate::host::feed::Feed>>,
}

struct FakeWatching;
impl super::Watching for FakeWatching {}

fn sha(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
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
    /// Scans the fake files under the custom paths (every file for quick and full scans),
    /// one worker, in path order.
    fn scan(&self, job: &ScanJob, sink: &dyn ScanSink) -> Walked {
        self.calls
            .lock()
            .unwrap()
            .push(format!("scan {:?}", job.mode));
        let mut files: Vec<(PathBuf, Vec<u8>)> = self
            .files
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| {
                job.mode != ScanMode::Custom || job.paths.iter().any(|r| p.starts_with(r))
            })
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect();
        files.sort();
        let mut worker = sink.worker();
        for (i, (path, bytes)) in files.into_iter().enumerate() {
            if sink.cancelled() {
                break;
            }
            if sink.excluded(&path) {
                continue;
            }
            let meta = FileMeta {
                path,
                dev: 1,
                ino: i as u64 + 1,
                size: bytes.len() as u64,
                mtime_ns: 0,
                ctime_ns: 0,
            };
            if worker.wants(&meta) {
                worker.scan(&meta, &bytes);
            }
        }
        // A custom root exists when a fake file is under it.
        let (roots, missing) = {
            let files = self.files.lock().unwrap();
            job.paths
                .iter()
                .map(|r| r.display().to_string())
                .partition(|r| files.keys().any(|p| p.starts_with(r)))
        };
        Walked {
            roots,
            missing,
            ..Default::default()
        }
    }

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

    fn quarantine_file(
        &self,
        path: &Path,
        expect_sha256: Option<&str>,
        entry: &str,
        action: u64,
    ) -> Result<Quarantined, HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("quarantine {} as {entry}", path.display()));
        let mut vault = self.vault.lock().unwrap();
        if let Some((m, _)) = vault.iter().find(|(m, _)| m.id == entry) {
            return Ok(Quarantined {
                entry: m.clone(),
                killed: vec![],
                already: true,
            });
        }
        let mut files = self.files.lock().unwrap();
        let bytes = files
            .get(path)
            .ok_or_else(|| HostError::Refused(format!("{}: does not exist", path.display())))?;
        let hash = sha(bytes);
        if expect_sha256.is_some_and(|w| w != hash) {
            return Err(HostError::Refused(format!(
                "{}: other hash",
                path.display()
            )));
        }
        let meta = EntryMeta {
            id: entry.into(),
            action,
            path: path.to_string_lossy().into_owned(),
            sha256: hash,
            size: bytes.len() as u64,
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_sec: 0,
            atime_nsec: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            ctime_sec: 0,
            xattrs: vec![],
            dev: 1,
            ino: 1,
            quarantined_at: 1,
        };
        let bytes = files.remove(path).unwrap_or_default();
        vault.push((meta.clone(), bytes));
        Ok(Quarantined {
            entry: meta,
            killed: vec![],
            already: false,
        })
    }

    fn find_by_hash(&self, roots: &[PathBuf], sha256: &str) -> Result<Vec<PathBuf>, HostError> {
        let files = self.files.lock().unwrap();
        let mut found: Vec<PathBuf> = files
            .iter()
            .filter(|(p, b)| roots.iter().any(|r| p.starts_with(r)) && sha(b) == sha256)
            .map(|(p, _)| p.clone())
            .collect();
        found.sort();
        Ok(found)
    }

    fn release(
        &self,
        entry: &str,
        dest: Option<&Path>,
        overwrite: bool,
        action: u64,
    ) -> Result<Released, HostError> {
        let mut vault = self.vault.lock().unwrap();
        let Some(i) = vault.iter().position(|(m, _)| m.id == entry) else {
            return self
                .released
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.id == entry)
                .cloned()
                .ok_or_else(|| HostError::Refused(format!("no vault entry {entry}")));
        };
        let dest = dest
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from(&vault[i].0.path));
        let mut files = self.files.lock().unwrap();
        if !overwrite && files.get(&dest).is_some_and(|b| *b != vault[i].1) {
            return Err(HostError::Refused(format!(
                "{}: a different file is there",
                dest.display()
            )));
        }
        let (meta, bytes) = vault.remove(i);
        files.insert(dest.clone(), bytes);
        let done = Released {
            id: meta.id,
            action,
            restored_to: dest.to_string_lossy().into_owned(),
            sha256: meta.sha256,
            size: meta.size,
            released_at: 2,
        };
        self.released.lock().unwrap().push(done.clone());
        Ok(done)
    }

    fn vault_entries(&self) -> Result<Vec<EntryMeta>, HostError> {
        Ok(self
            .vault
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _)| m.clone())
            .collect())
    }

    fn vault_released(&self) -> Result<Vec<Released>, HostError> {
        Ok(self.released.lock().unwrap().clone())
    }

    fn vault_recover(&self) -> Result<Vec<String>, HostError> {
        Ok(vec![])
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

    fn watch(
        &self,
        roots: &[PathBuf],
        feed: crate::host::feed::Feed,
    ) -> Result<(Box<dyn super::Watching>, Vec<String>), HostError> {
        self.calls.lock().unwrap().push(format!("watch {roots:?}"));
        *self.watch_feed.lock().unwrap() = Some(feed);
        Ok((Box::new(FakeWatching), vec![]))
    }

    fn take_exec_denials(&self) -> (Vec<ExecDenial>, u64) {
        (std::mem::take(&mut *self.denials.lock().unwrap()), 0)
    }

    fn apply_net(&self, script: &str) -> Result<NetStatus, HostError> {
        if let Some(why) = self.net_fails.lock().unwrap().clone() {
            return Err(HostError::Refused(why));
        }
        self.calls.lock().unwrap().push("apply_net".into());
        // What the kernel would hold: the table after the script's `delete`, if any.
        let table = script
            .find("table inet palisade {")
            .map(|at| script[at..].to_owned());
        *self.net.lock().unwrap() = table;
        self.net_status()
    }

    fn net_status(&self) -> Result<NetStatus, HostError> {
        Ok(match self.net.lock().unwrap().clone() {
            Some(listing) => NetStatus {
                digest: Some(sha(listing.as_bytes())),
                listing,
                committed_at_ms: Some(crate::clock::now_ms()),
            },
            None => NetStatus::default(),
        })
    }

    fn net_changed(&self) -> bool {
        true
    }

    fn resolve(&self, host_port: &str) -> Result<Vec<std::net::SocketAddr>, HostError> {
        host_port
            .parse()
            .map(|a| vec![a])
            .map_err(|_| HostError::Refused(format!("cannot resolve {host_port}")))
    }
}
