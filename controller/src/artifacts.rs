//! Content-addressed storage of uploaded artifacts (samples, packages) and resumable partial
//! uploads. A file is named by its SHA-256 and only ever appears complete and checked.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use palisade_common::ActionId;
use ring::digest;

use crate::fsutil::{private_dir, sync_dir};

#[derive(Clone)]
pub struct Artifacts {
    root: PathBuf,
    uploads: PathBuf,
    pub max_size: u64,
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

    /// Opens the partial file for appending and says how much of it is already there.
    pub fn resume(&self, action: ActionId, sha256: &[u8; 32], size: u64) -> Result<(File, u64)> {
        let path = self.partial(action, sha256);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut have = file.metadata()?.len();
        if have > size {
            file.set_len(0)?;
            have = 0;
        }
        Ok((file, have))
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

    pub fn append(file: &mut File, bytes: &[u8]) -> Result<()> {
        file.write_all(bytes)?;
        Ok(())
    }
}
