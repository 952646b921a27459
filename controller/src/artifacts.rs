//! Content-addressed storage of uploaded artifacts (samples, packages) and resumable partial
//! uploads. A file is named by its SHA-256 and only ever appears complete and checked.
//!
//! Finished uploads are made durable in groups, like the store's transactions: one thread
//! takes every checked upload waiting, flushes the filesystem (`syncfs`: the files' contents),
//! renames them all into place, and answers them after the next flush (the renames), which
//! also carries the next group's contents. A fleet-wide sample of 20,000 files costs hundreds
//! of flushes instead of 40,000 `fsync`s, and no flush ever runs on the async threads.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result, anyhow, bail};
use palisade_common::ActionId;
use palisade_common::action::ArtifactRef;
use ring::digest;

use crate::fsutil::private_dir;

/// Most uploads made durable by one pair of flushes.
const MAX_GROUP: usize = 1024;

#[derive(Clone)]
pub struct Artifacts {
    root: PathBuf,
    uploads: PathBuf,
    pub max_size: u64,
    /// The newest upload of each partial file. An agent whose link was cut resumes on a new
    /// connection while the controller may still hold the old one's stream: the newer upload
    /// takes the file over, and the older one may not write to it any more.
    owners: Arc<Mutex<HashMap<PathBuf, u64>>>,
    durable: mpsc::Sender<Settle>,
}

/// A checked partial file to move into place (`None`: only wait for the next flush), and who
/// waits for it to be durable.
struct Settle {
    rename: Option<(PathBuf, PathBuf)>,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
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
        let fs = File::open(&root)?;
        let (durable, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("artifact-sync".into())
            .spawn(move || settle(fs, jobs))?;
        Ok(Artifacts {
            root,
            uploads,
            max_size,
            owners: Arc::default(),
            durable,
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

    /// The artifacts of `named` that the store holds, each at the size it holds it at.
    pub fn held(&self, named: &[ArtifactRef]) -> Vec<ArtifactRef> {
        named
            .iter()
            .filter_map(|a| {
                let meta = fs::metadata(self.path_of(&a.sha256).ok()?).ok()?;
                meta.is_file().then(|| ArtifactRef {
                    size: meta.len(),
                    ..a.clone()
                })
            })
            .collect()
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
    /// the content-addressed store; returns once the file is durable there. A mismatch deletes
    /// it.
    pub async fn commit(&self, action: ActionId, sha256: [u8; 32], size: u64) -> Result<String> {
        let part = self.partial(action, &sha256);
        let checked = {
            let part = part.clone();
            tokio::task::spawn_blocking(move || check(&part, &sha256, size)).await?
        };
        let hash = match checked {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        let dest = self.path_of(&hash)?;
        self.settle(Some((part, dest))).await?;
        Ok(hash)
    }

    /// Returns once everything moved into place so far is durable: a file that is already
    /// there may belong to a group whose last flush has not ended yet.
    pub async fn flushed(&self) -> Result<()> {
        self.settle(None).await
    }

    async fn settle(&self, rename: Option<(PathBuf, PathBuf)>) -> Result<()> {
        let (done, durable) = tokio::sync::oneshot::channel();
        self.durable
            .send(Settle { rename, done })
            .map_err(|_| anyhow!("the artifact store is shut down"))?;
        durable
            .await
            .map_err(|_| anyhow!("the artifact store is shut down"))?
            .map_err(|e| anyhow!(e))
    }
}

/// Reads a finished partial file back: its length and SHA-256 must be the announced ones.
fn check(part: &Path, sha256: &[u8; 32], size: u64) -> Result<String> {
    let mut f = File::open(part)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        ctx.update(&buf[..n]);
    }
    matches(len, ctx.finish(), sha256, size)?;
    Ok(hex::encode(sha256))
}

/// Checks bytes received whole against the announced size and SHA-256.
pub fn verify(bytes: &[u8], sha256: &[u8; 32], size: u64) -> Result<()> {
    matches(
        bytes.len() as u64,
        digest::digest(&digest::SHA256, bytes),
        sha256,
        size,
    )
}

fn matches(len: u64, got: digest::Digest, sha256: &[u8; 32], size: u64) -> Result<()> {
    if len != size {
        bail!("received {len} bytes, expected {size}");
    }
    if got.as_ref() != sha256 {
        bail!(
            "sha256 mismatch: received {}, announced {}",
            hex::encode(got),
            hex::encode(sha256)
        );
    }
    Ok(())
}

/// The artifact-sync thread. A file's contents are durable before its name, and its name
/// before its upload is answered. One flush serves two groups: it makes the new group's
/// contents durable and the previous group's renames. So each group costs one flush, not two:
/// during a fleet-wide sample these flushes and the store's commits queue for the same disk.
fn settle(fs: File, jobs: mpsc::Receiver<Settle>) {
    // Renamed into place: durable, and answered, after the next flush.
    let mut renamed: Vec<Settle> = Vec::new();
    loop {
        let first = if renamed.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else {
            jobs.try_recv().ok()
        };
        let group: Vec<Settle> = first
            .into_iter()
            .chain(jobs.try_iter().take(MAX_GROUP - 1))
            .collect();
        let flushed =
            nix::unistd::syncfs(&fs).map_err(|e| format!("cannot flush the artifact store: {e}"));
        for job in renamed.drain(..) {
            let _ = job.done.send(flushed.clone());
        }
        for job in group {
            match (&flushed, &job.rename) {
                // A name in the store must never point at a file whose bytes were lost.
                (Err(e), _) => {
                    let _ = job.done.send(Err(e.clone()));
                }
                (Ok(()), Some((part, dest))) => match rename_into(part, dest) {
                    Ok(()) => renamed.push(job),
                    Err(e) => {
                        let _ = job.done.send(Err(format!("{e:#}")));
                    }
                },
                // What was moved into place before this job was sent is durable now.
                (Ok(()), None) => {
                    let _ = job.done.send(Ok(()));
                }
            }
        }
    }
}

fn rename_into(part: &Path, dest: &Path) -> Result<()> {
    let dir = dest.parent().context("artifact path has a parent")?;
    fs::create_dir_all(dir)?;
    fs::rename(part, dest)
        .with_context(|| format!("cannot move {} into the artifact store", part.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_upload_takes_the_partial_file_over_from_an_older_one() {
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
        assert_eq!(
            a.commit(ActionId(1), sha, 13).await.unwrap(),
            hex::encode(sha)
        );
        let stored = fs::read(a.path_of(&hex::encode(sha)).unwrap()).unwrap();
        assert_eq!(stored, bytes);
        assert!(!a.partial(ActionId(1), &sha).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_finished_together_are_all_stored_and_a_wrong_one_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path(), 1 << 20).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let bytes = format!("sample {i}").into_bytes();
                let sha: [u8; 32] = digest::digest(&digest::SHA256, &bytes)
                    .as_ref()
                    .try_into()
                    .unwrap();
                // Every tenth announces a hash its bytes do not have.
                let announced = if i % 10 == 0 { [0u8; 32] } else { sha };
                let (mut up, _) = a
                    .resume(ActionId(i), &announced, bytes.len() as u64)
                    .unwrap();
                up.append(&bytes).unwrap();
                drop(up);
                let stored = a.commit(ActionId(i), announced, bytes.len() as u64).await;
                (i, bytes, stored)
            }));
        }
        for t in tasks {
            let (i, bytes, stored) = t.await.unwrap();
            if i % 10 == 0 {
                assert!(stored.is_err(), "upload {i} with a wrong hash was stored");
                assert!(!a.partial(ActionId(i), &[0u8; 32]).exists());
            } else {
                let hex = stored.unwrap();
                assert_eq!(fs::read(a.path_of(&hex).unwrap()).unwrap(), bytes);
            }
        }
        a.flushed().await.unwrap();
    }
}
