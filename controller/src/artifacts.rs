//! Content-addressed storage of uploaded artifacts (samples, packages) and resumable partial
//! uploads. A file is named by its SHA-256 and only ever appears complete and checked.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use palisade_common::ActionId;
use ring::digest;

use crate::fsutil::{private_dir, sync_dir};

#[derive(Clone)]
pub struct Artifacts {
    root: PathBuf,
    uploads: PathBuf,
    pub max_size: u64,
    /// The newest upload of each partial file. An agent whose link was cut resumes on a new
    /// connection while the controller may still hold the old one's stream: the newer upload
    /// takes the file over, and the older one may not write to it any more.
    owners: Arc<Mutex<HashMap<PathBuf, u64>>>,
}

/// The right to append to a partial file, until a newer upload of it takes over.
pub struct PartialUpload {
    file: File,
    path: PathBuf,
    generation: u64,
    owners: Arc<Mutex<HashMap<PathBuf, u64>>>,
}

impl PartialUpload {
    /// Appends, unless a newer upload of the same file has taken over.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let owners = self.owners.lock().expect("owners lock");
        if owners.get(&self.path) != Some(&self.generation) {
            bail!("superseded by a newer upload of the same artifact");
        }
        self.file.write_all(bytes)?;
        Ok(())
    }
}

impl Drop for PartialUpload {
    fn drop(&mut self) {
        let mut owners = self.owners.lock().expect("owners lock");
        if owners.get(&self.path) == Some(&self.generation) {
            owners.remove(&self.path);
        }
    }
}

impl Artifacts {
    pub fn open(data_dir: &Path, max_size: u64) -> Result<Artifacts> {
        let root = data_dir.join("artifacts");
        let uploads = data_dir.join("uploads");
        private_dir(&root)?;
        private_dir(&uploads)?;
        Ok(Artifacts {
            root,
            uploads,
            max_size,
            owners: Arc::default(),
        })
    }

    pub fn path_of(&self, sha256: &str) -> Result<PathBuf> {
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            bail!("invalid sha256 {sha256:?}");
        }
        Ok(self.root.join(&sha256[..2]).join(sha256))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// The partial file of an upload; its length is where a resumed upload continues.
    pub fn partial(&self, action: ActionId, sha256: &[u8; 32]) -> PathBuf {
        self.uploads
            .join(format!("{}-{}.part", action.0, hex::encode(sha256)))
    }

    /// Opens the partial file for appending, taking it over from any older upload, and says
    /// how much of it is already there.
    pub fn resume(
        &self,
        action: ActionId,
        sha256: &[u8; 32],
        size: u64,
    ) -> Result<(PartialUpload, u64)> {
        let path = self.partial(action, sha256);
        let mut owners = self.owners.lock().expect("owners lock");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut have = file.metadata()?.len();
        if have > size {
            file.set_len(0)?;
            have = 0;
        }
        let generation = owners.get(&path).map_or(1, |g| g + 1);
        owners.insert(path.clone(), generation);
        Ok((
            PartialUpload {
                file,
                path,
                generation,
                owners: self.owners.clone(),
            },
            have,
        ))
    }

    /// Checks the finished partial file against the announced size and hash, and moves it into
    /// the content-addressed store. A mismatch deletes it.
    pub fn commit(&self, action: ActionId, sha256: &[u8; 32], size: u64) -> Result<String> {
        let part = self.partial(action, sha256);
        let check = (|| -> Result<String> {
            let mut f = File::open(&part)?;
            let len = f.metadata()?.len();
            if len != size {
                bail!("received {len} bytes, expected {size}");
            }
            let mut ctx = digest::Context::new(&digest::SHA256);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
            }
            let got = hex::encode(ctx.finish());
            if got != hex::encode(sha256) {
                bail!(
                    "sha256 mismatch: received {got}, announced {}",
                    hex::encode(sha256)
                );
            }
            Ok(got)
        })();
        let hash = match check {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        let dest = self.path_of(&hash)?;
        let dir = dest.parent().context("artifact path has a parent")?;
        fs::create_dir_all(dir)?;
        File::open(&part)?.sync_all()?;
        fs::rename(&part, &dest)?;
        sync_dir(dir)?;
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_upload_takes_the_partial_file_over_from_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path(), 1 << 20).unwrap();
        let bytes = b"hello package";
        let sha: [u8; 32] = digest::digest(&digest::SHA256, bytes)
            .as_ref()
            .try_into()
            .unwrap();
        let (mut old, have) = a.resume(ActionId(1), &sha, 13).unwrap();
        assert_eq!(have, 0);
        old.append(b"hello").unwrap();
        // The link is cut; the agent resumes on a new connection.
        let (mut new, have) = a.resume(ActionId(1), &sha, 13).unwrap();
        assert_eq!(have, 5);
        // The old stream wakes up late: it may not write any more.
        assert!(old.append(b" xx").is_err());
        drop(old);
        new.append(b" package").unwrap();
        drop(new);
        assert_eq!(a.commit(ActionId(1), &sha, 13).unwrap(), hex::encode(sha));
    }
}
