//! The quarantine vault on disk: moves a file into `<state-dir>/vault/` as an encoded copy
//! with its metadata, restores it, and after a crash finishes or rolls back what was under
//! way. The format and the recovery decisions are in `crate::vault`; this module does the IO,
//! in an order that makes every crash point safe:
//!
//! quarantine: copy → `E.tmp` (fsync) → `E.meta` (fsync) → decode and check the hash → rename
//! to `E.bin` and fsync the vault (the entry now counts) → unlink the original and fsync its
//! directory.
//!
//! release: `E.release` (fsync) → decode into a temporary name next to the destination, set
//! owner, mode, extended attributes and times, fsync, read back and check the hash → rename
//! into place (never over a different file unless asked) and fsync the directory → `E.done`
//! (fsync) → remove `E.bin`, `E.meta`, `E.release`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, RenameFlags, ResolveFlag, openat2, renameat, renameat2};
use nix::sys::stat::{fchmod, fstat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use ring::digest;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::target::{self, Protection, Target};
use crate::clock::now_ms;
use crate::host::HostError;
use crate::vault::{
    self, Destination, EntryFiles, EntryMeta, MAGIC, Original, ReleaseIntent, Released, Step,
};

const CHUNK: usize = 1 << 20;

pub struct Vault {
    dir: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let context = context.into();
    move |e| HostError::io(context, e)
}

fn errno(context: impl Into<String>) -> impl FnOnce(Errno) -> HostError {
    let context = context.into();
    move |e| HostError::io(context, e.into())
}

impl Vault {
    /// The vault of the agent whose state directory is `state_dir`, made 0700 if missing.
    pub fn open(state_dir: &Path) -> Result<Vault, HostError> {
        if state_dir.as_os_str().is_empty() {
            return Err(HostError::Refused(
                "this agent has no state directory, so no vault".into(),
            ));
        }
        let dir = state_dir.join("vault");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod vault"))?;
        Ok(Vault { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{id}.{suffix}"))
    }

    fn sync(&self) -> Result<(), HostError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync vault directory"))
    }

    fn write_json<T: Serialize>(&self, id: &str, suffix: &str, value: &T) -> Result<(), HostError> {
        let path = self.file(id, suffix);
        let new = self.file(id, &format!("{suffix}.new"));
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| HostError::io("encode metadata", std::io::Error::other(e)))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&new)
            .map_err(io(format!("cannot write {}", new.display())))?;
        f.write_all(&text).map_err(io("write metadata"))?;
        f.sync_all().map_err(io("sync metadata"))?;
        std::fs::rename(&new, &path).map_err(io("rename metadata"))?;
        self.sync()
    }

    fn read_json<T: DeserializeOwned>(&self, id: &str, suffix: &str) -> Result<T, HostError> {
        let path = self.file(id, suffix);
        let bytes = std::fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            HostError::io(
                format!("corrupt {}", path.display()),
                std::io::Error::other(e),
            )
        })
    }

    fn remove(&self, id: &str, suffix: &str) -> Result<(), HostError> {
        match std::fs::remove_file(self.file(id, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(HostError::io(format!("cannot remove {id}.{suffix}"), e))
            }
            _ => Ok(()),
        }
    }

    pub fn meta(&self, id: &str) -> Result<EntryMeta, HostError> {
        self.read_json(id, "meta")
    }

    pub fn is_committed(&self, id: &str) -> bool {
        self.file(id, "bin").exists()
    }

    /// The tombstone of a released entry.
    pub fn released(&self, id: &str) -> Option<Released> {
        self.read_json(id, "done").ok()
    }

    /// Every committed entry, oldest first.
    pub fn entries(&self) -> Result<Vec<EntryMeta>, HostError> {
        let mut out = Vec::new();
        for (id, files) in self.scan()? {
            if files.bin && files.meta && !files.done {
                match self.meta(&id) {
                    Ok(m) => out.push(m),
                    // Listed by recovery for an operator; never hides the other entries.
                    Err(e) => tracing::warn!(entry = %id, error = %e, "unreadable vault entry"),
                }
            }
        }
        out.sort_by(|a, b| (a.quarantined_at, &a.id).cmp(&(b.quarantined_at, &b.id)));
        Ok(out)
    }

    /// Every tombstone.
    pub fn tombstones(&self) -> Result<Vec<Released>, HostError> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, f)| f.done)
            .filter_map(|(id, _)| self.released(&id))
            .collect())
    }

    fn scan(&self) -> Result<BTreeMap<String, EntryFiles>, HostError> {
        let mut map: BTreeMap<String, EntryFiles> = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("read vault"))? {
            let e = e.map_err(io("read vault"))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((id, suffix)) = name.split_once('.') else {
                continue;
            };
            let f = map.entry(id.to_owned()).or_default();
            match suffix {
                "tmp" => f.tmp = true,
                "meta" => f.meta = true,
                "bin" => f.bin = true,
                "release" => f.release = true,
                "done" => f.done = true,
                _ => {}
            }
        }
        Ok(map)
    }

    /// Finishes a committed entry (removes the original if a crash left it) and returns it.
    pub fn quarantine_finish(&self, id: &str) -> Result<EntryMeta, HostError> {
        self.recover_entry(id)?;
        self.meta(id)
    }

    /// Moves the open `target` into the vault as entry `id`. Re-running it for an entry that
    /// is already committed finishes that entry instead.
    pub fn quarantine(&self, t: &Target, id: &str, action: u64) -> Result<EntryMeta, HostError> {
        if self.is_committed(id) {
            return self.quarantine_finish(id);
        }
        for stale in ["tmp", "meta", "release", "done"] {
            self.remove(id, stale)?;
        }
        let tmp = self.file(id, "tmp");
        let result = self.copy_in(t, id, action, &tmp);
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = self.remove(id, "tmp");
                let _ = self.remove(id, "meta");
                return Err(e);
            }
        };
        // Commit: from here on the vault copy is the file.
        std::fs::rename(&tmp, self.file(id, "bin")).map_err(io("commit vault entry"))?;
        self.sync()?;
        if let Err(e) = unlink_original(t, &meta) {
            // The file stays where it is: drop the copy, or a later recovery would finish a
            // move this action reported as failed.
            if target::stat_at(&t.dir, &t.name)
                .is_some_and(|st| (st.st_dev, st.st_ino) == (meta.dev, meta.ino))
            {
                self.remove(id, "bin")?;
                self.remove(id, "meta")?;
                self.sync()?;
            }
            return Err(e);
        }
        Ok(meta)
    }

    fn copy_in(
        &self,
        t: &Target,
        id: &str,
        action: u64,
        tmp: &Path,
    ) -> Result<EntryMeta, HostError> {
        let before = t.stat;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io(format!("cannot create {}", tmp.display())))?;
        out.write_all(MAGIC).map_err(io("write vault copy"))?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        let mut src = &t.file;
        loop {
            let n = src.read(&mut buf).map_err(io("read the file"))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            vault::transform(&mut buf[..n], offset);
            out.write_all(&buf[..n]).map_err(io("write vault copy"))?;
            offset += n as u64;
        }
        out.sync_all().map_err(io("sync vault copy"))?;
        drop(out);
        let after = fstat(&t.file).map_err(errno("fstat"))?;
        if after.st_size != before.st_size
            || (after.st_mtime, after.st_mtime_nsec) != (before.st_mtime, before.st_mtime_nsec)
            || offset != before.st_size as u64
        {
            return Err(HostError::Refused(format!(
                "{}: changed while being copied into the vault; try again",
                t.path.display()
            )));
        }
        let sha256 = hex::encode(ctx.finish());
        let meta = EntryMeta {
            id: id.to_owned(),
            action,
            path: t.path.to_string_lossy().into_owned(),
            sha256,
            size: offset,
            mode: before.st_mode & 0o7777,
            uid: before.st_uid,
            gid: before.st_gid,
            atime_sec: before.st_atime,
            atime_nsec: before.st_atime_nsec,
            mtime_sec: before.st_mtime,
            mtime_nsec: before.st_mtime_nsec,
            ctime_sec: before.st_ctime,
            xattrs: read_xattrs(t.file.as_raw_fd()),
            dev: before.st_dev,
            ino: before.st_ino,
            quarantined_at: now_ms(),
        };
        self.write_json(id, "meta", &meta)?;
        // The copy on disk, decoded, must be the file.
        let (size, sha) = decode_hash(tmp, None)?;
        if size != meta.size || sha != meta.sha256 {
            return Err(HostError::Refused(format!(
                "{}: the vault copy does not read back as the file (sha256 {sha}, expected {})",
                t.path.display(),
                meta.sha256
            )));
        }
        Ok(meta)
    }

    /// Restores entry `id` to `dest` (default: where it came from).
    pub fn release(
        &self,
        id: &str,
        dest: Option<&Path>,
        overwrite: bool,
        action: u64,
        protection: &Protection,
    ) -> Result<Released, HostError> {
        if !self.is_committed(id) {
            if let Some(done) = self.released(id) {
                return Ok(done);
            }
            return Err(HostError::Refused(format!("no vault entry {id}")));
        }
        // Finish or roll back an interrupted attempt first.
        self.recover_entry(id)?;
        if let Some(done) = self.released(id) {
            return Ok(done);
        }
        let meta = self.meta(id)?;
        let dest = dest
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from(&meta.path));
        check_destination(&dest, protection)?;
        let (dir, name) = target::open_parent(&dest)?;
        let temp = OsString::from(format!(
            ".{}.palisade-restore-{id}",
            target::lossy(&name).chars().take(100).collect::<String>()
        ));
        let intent = ReleaseIntent {
            action,
            dest: dest.to_string_lossy().into_owned(),
            temp: temp.to_string_lossy().into_owned(),
            overwrite,
        };
        if !overwrite
            && let Some(existing) = target::stat_at(&dir, &name)
            && !(target::is_regular(&existing)
                && hash_at(&dir, &name).is_some_and(|h| h == meta.sha256))
        {
            return Err(HostError::Refused(format!(
                "{}: a different file is there; release with overwrite, or to another path",
                dest.display()
            )));
        }
        self.write_json(id, "release", &intent)?;
        match self.restore(&meta, &dir, &name, &temp, overwrite, &dest) {
            Ok(()) => {}
            Err(e) => {
                let _ = unlinkat(&dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                let _ = self.remove(id, "release");
                let _ = self.sync();
                return Err(e);
            }
        }
        self.finish_release(&meta, &intent)
    }

    fn restore(
        &self,
        meta: &EntryMeta,
        dir: &OwnedFd,
        name: &OsStr,
        temp: &OsStr,
        overwrite: bool,
        dest: &Path,
    ) -> Result<(), HostError> {
        let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
        let fd = openat2(
            dir,
            temp,
            OpenHow::new()
                .flags(
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                )
                .mode(target::mode(0o600))
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
        )
        .map_err(errno(format!(
            "cannot create a file next to {}",
            dest.display()
        )))?;
        let mut out = File::from(fd);
        let (size, sha) = decode_hash(&self.file(&meta.id, "bin"), Some(&mut out))?;
        if size != meta.size || sha != meta.sha256 {
            return Err(HostError::Refused(format!(
                "vault entry {} is corrupt: it decodes to sha256 {sha}, expected {}",
                meta.id, meta.sha256
            )));
        }
        fchown(
            &out,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(errno("chown the restored file"))?;
        fchmod(&out, target::mode(meta.mode)).map_err(errno("chmod the restored file"))?;
        for (k, v) in &meta.xattrs {
            if let Ok(value) = hex::decode(v) {
                // A security.* attribute may be refused by the running LSM; the others must
                // come back.
                if let Err(e) = set_xattr(out.as_raw_fd(), k, &value)
                    && !k.starts_with("security.")
                {
                    return Err(HostError::io(format!("cannot restore xattr {k}"), e));
                }
            }
        }
        futimens(
            &out,
            &TimeSpec::new(meta.atime_sec, meta.atime_nsec),
            &TimeSpec::new(meta.mtime_sec, meta.mtime_nsec),
        )
        .map_err(errno("set the restored file's times"))?;
        out.sync_all().map_err(io("sync the restored file"))?;
        drop(out);
        // What is on disk, read back, must be the file: checked before it takes its place.
        if hash_at(dir, temp).as_deref() != Some(meta.sha256.as_str()) {
            return Err(HostError::Refused(format!(
                "{}: the restored copy does not read back with sha256 {}",
                dest.display(),
                meta.sha256
            )));
        }
        let placed = if overwrite {
            renameat(dir, temp, dir, name)
        } else {
            renameat2(dir, temp, dir, name, RenameFlags::RENAME_NOREPLACE)
        };
        match placed {
            Ok(()) => {}
            Err(Errno::EEXIST) if hash_at(dir, name).as_deref() == Some(meta.sha256.as_str()) => {
                // The same bytes are already there (put back by someone else).
                let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
            }
            Err(Errno::EEXIST) => {
                return Err(HostError::Refused(format!(
                    "{}: a different file is there; release with overwrite, or to another path",
                    dest.display()
                )));
            }
            Err(e) => {
                return Err(HostError::io(
                    format!("cannot put the file at {}", dest.display()),
                    e.into(),
                ));
            }
        }
        target::sync_dir(dir).map_err(io("sync the restored file's directory"))
    }

    fn finish_release(
        &self,
        meta: &EntryMeta,
        intent: &ReleaseIntent,
    ) -> Result<Released, HostError> {
        let done = Released {
            id: meta.id.clone(),
            action: intent.action,
            restored_to: intent.dest.clone(),
            sha256: meta.sha256.clone(),
            size: meta.size,
            released_at: now_ms(),
        };
        self.write_json(&meta.id, "done", &done)?;
        self.remove(&meta.id, "bin")?;
        self.remove(&meta.id, "meta")?;
        self.remove(&meta.id, "release")?;
        self.sync()?;
        Ok(done)
    }

    /// Brings every entry to a consistent state after a crash. Returns what was done, one
    /// line per step, for the log.
    pub fn recover(&self) -> Result<Vec<String>, HostError> {
        let mut log = Vec::new();
        // Half-written metadata never counts.
        for e in std::fs::read_dir(&self.dir).map_err(io("read vault"))? {
            let e = e.map_err(io("read vault"))?;
            if e.file_name().as_bytes().ends_with(b".new") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for id in self.scan()?.into_keys() {
            log.extend(self.recover_entry(&id)?);
        }
        Ok(log)
    }

    fn recover_entry(&self, id: &str) -> Result<Vec<String>, HostError> {
        let files = self.scan_one(id);
        let meta: Option<EntryMeta> = files.meta.then(|| self.meta(id).ok()).flatten();
        let intent: Option<ReleaseIntent> = files
            .release
            .then(|| self.read_json(id, "release").ok())
            .flatten();
        let original = match &meta {
            Some(m) if files.bin && !files.release && !files.done => {
                match target::open_parent(Path::new(&m.path)) {
                    Ok((dir, name)) => match target::stat_at(&dir, &name) {
                        // A finished quarantine leaves no mark, so the original is told
                        // apart from a later file by identity *and* bytes: a new file can
                        // reuse the freed inode number with the same size.
                        Some(st)
                            if (st.st_dev, st.st_ino, st.st_size as u64)
                                == (m.dev, m.ino, m.size)
                                && hash_at(&dir, &name).as_deref() == Some(&m.sha256) =>
                        {
                            Original::Same
                        }
                        _ => Original::NotIt,
                    },
                    Err(_) => Original::NotIt,
                }
            }
            _ => Original::NotIt,
        };
        let dest = match (&meta, &intent) {
            (Some(m), Some(i)) => match target::open_parent(Path::new(&i.dest)) {
                Ok((dir, name)) if hash_at(&dir, &name).as_deref() == Some(&m.sha256) => {
                    Destination::Restored
                }
                _ => Destination::NotRestored,
            },
            _ => Destination::NotRestored,
        };
        let steps = vault::plan(files, original, dest);
        let mut log = Vec::new();
        for step in steps {
            log.push(format!("vault entry {id}: {step:?}"));
            match step {
                Step::RemoveTmp => self.remove(id, "tmp")?,
                Step::RemoveMeta => self.remove(id, "meta")?,
                Step::RemoveRelease => self.remove(id, "release")?,
                Step::RemoveBin => self.remove(id, "bin")?,
                Step::RemoveRestoreTemp => {
                    if let Some(i) = &intent
                        && let Ok((dir, _)) = target::open_parent(Path::new(&i.dest))
                    {
                        let _ = unlinkat(&dir, i.temp.as_str(), UnlinkatFlags::NoRemoveDir);
                    }
                }
                Step::WriteDone => {
                    if let (Some(m), Some(i)) = (&meta, &intent) {
                        let done = Released {
                            id: id.to_owned(),
                            action: i.action,
                            restored_to: i.dest.clone(),
                            sha256: m.sha256.clone(),
                            size: m.size,
                            released_at: now_ms(),
                        };
                        self.write_json(id, "done", &done)?;
                    }
                }
                Step::UnlinkOriginal => {
                    if let Some(m) = &meta {
                        let (dir, name) = target::open_parent(Path::new(&m.path))?;
                        match unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                            Ok(()) | Err(Errno::ENOENT) => {}
                            Err(e) => return Err(errno(format!("cannot remove {}", m.path))(e)),
                        }
                        target::sync_dir(&dir).map_err(io("sync directory"))?;
                    }
                }
            }
        }
        if !log.is_empty() {
            self.sync()?;
        }
        if files.bin && meta.is_none() && !files.done {
            log.push(format!(
                "vault entry {id}: a committed copy without readable metadata; kept for an operator"
            ));
        }
        Ok(log)
    }

    fn scan_one(&self, id: &str) -> EntryFiles {
        EntryFiles {
            tmp: self.file(id, "tmp").exists(),
            meta: self.file(id, "meta").exists(),
            bin: self.file(id, "bin").exists(),
            release: self.file(id, "release").exists(),
            done: self.file(id, "done").exists(),
        }
    }

    /// Decodes a committed entry and hashes it: what it really holds.
    pub fn verify(&self, id: &str) -> Result<(u64, String), HostError> {
        decode_hash(&self.file(id, "bin"), None)
    }
}

/// Unlinks the quarantined file — that very file — and syncs its directory.
fn unlink_original(t: &Target, meta: &EntryMeta) -> Result<(), HostError> {
    match target::stat_at(&t.dir, &t.name) {
        Some(st) if (st.st_dev, st.st_ino) == (meta.dev, meta.ino) => {
            match unlinkat(&t.dir, t.name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(HostError::io(
                        format!(
                            "the vault holds a copy, but {} cannot be removed",
                            t.path.display()
                        ),
                        e.into(),
                    ));
                }
            }
        }
        _ => {}
    }
    target::sync_dir(&t.dir).map_err(io("sync directory"))
}

/// Whether `dest` may receive a restored file.
fn check_destination(dest: &Path, protection: &Protection) -> Result<(), HostError> {
    let refuse = |why: &str| HostError::Refused(format!("{}: {why}", dest.display()));
    if !dest.is_absolute() {
        return Err(refuse("not an absolute path"));
    }
    // `..` is resolved by the kernel even without symlinks: it would carry the file past the
    // checks below (`/tmp/../<state dir>/identity/key.der`).
    if dest
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refuse("not an absolute path without '.' or '..'"));
    }
    for special in ["/proc", "/sys"] {
        if dest.starts_with(special) {
            return Err(refuse("is under /proc or /sys"));
        }
    }
    if !protection.state_dir.as_os_str().is_empty() && dest.starts_with(&protection.state_dir) {
        return Err(refuse("is one of the agent's own files"));
    }
    Ok(())
}

/// Reads an encoded copy, decodes it, hashes it, and writes the decoded bytes to `out`.
fn decode_hash(path: &Path, mut out: Option<&mut File>) -> Result<(u64, String), HostError> {
    let mut f = File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut magic = [0u8; 16];
    f.read_exact(&mut magic)
        .map_err(io(format!("{} is truncated", path.display())))?;
    if &magic != MAGIC {
        return Err(HostError::Refused(format!(
            "{} is not a vault copy",
            path.display()
        )));
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("read vault copy"))?;
        if n == 0 {
            break;
        }
        vault::transform(&mut buf[..n], offset);
        ctx.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n]).map_err(io("write restored file"))?;
        }
        offset += n as u64;
    }
    Ok((offset, hex::encode(ctx.finish())))
}

/// The sha256 of the regular file `name` in `dir`, if it is one.
fn hash_at(dir: &OwnedFd, name: &OsStr) -> Option<String> {
    let fd = openat2(
        dir,
        name,
        OpenHow::new()
            .flags(
                OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
            )
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
    .ok()?;
    if !target::is_regular(&fstat(&fd).ok()?) {
        return None;
    }
    hash_file(&mut File::from(fd)).ok()
}

pub fn hash_file(mut f: impl Read) -> std::io::Result<String> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

/// Every extended attribute that can be read, as (name, hex value).
fn read_xattrs(fd: i32) -> Vec<(String, String)> {
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: the kernel writes at most `names.len()` bytes into the buffer, which lives for
    // the call.
    let n = unsafe { nix::libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above, the buffer outlives the call and its length is passed.
        let len = unsafe {
            nix::libc::fgetxattr(fd, cname.as_ptr(), value.as_mut_ptr().cast(), value.len())
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((
                String::from_utf8_lossy(name).into_owned(),
                hex::encode(value),
            ));
        }
    }
    out
}

fn set_xattr(fd: i32, name: &str, value: &[u8]) -> std::io::Result<()> {
    let cname = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: name is NUL-terminated and value's pointer and length describe a live slice.
    let rc =
        unsafe { nix::libc::fsetxattr(fd, cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Regular files under `roots` whose sha256 is `sha256`, without following symlinks, and
/// skipping `/proc`, `/sys` and the agent's state directory.
pub fn find_by_hash(
    roots: &[PathBuf],
    sha256: &str,
    protection: &Protection,
) -> Result<Vec<PathBuf>, HostError> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if p.starts_with("/proc")
            || p.starts_with("/sys")
            || (!protection.state_dir.as_os_str().is_empty()
                && p.starts_with(&protection.state_dir))
        {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file()
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(&p)
            && hash_file(&mut f).is_ok_and(|h| h == sha256)
        {
            found.push(p);
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn quarantined(r: &Path) -> (Vault, EntryMeta) {
        let vault = Vault::open(&r.join("state")).unwrap();
        std::fs::create_dir_all(r.join("work")).unwrap();
        std::fs::write(r.join("work/file"), b"malware").unwrap();
        let t = target::open(&r.join("work/file"), &Protection::default()).unwrap();
        let meta = vault.quarantine(&t, "q1-test", 1).unwrap();
        (vault, meta)
    }

    #[test]
    fn a_release_is_refused_a_destination_with_dot_dot_or_a_symlink_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let (vault, _) = quarantined(r);
        std::fs::create_dir_all(r.join("state/identity")).unwrap();
        std::fs::write(r.join("state/identity/key.der"), b"secret").unwrap();
        std::os::unix::fs::symlink(r.join("state/identity"), r.join("work/link")).unwrap();
        let protection = Protection {
            state_dir: r.join("state"),
            paths: vec![],
        };
        for (dest, why) in [
            (r.join("work/../state/identity/key.der"), "'..'"),
            (r.join("work/link/key.der"), "symbolic link"),
            (r.join("state/identity/key.der"), "agent's own files"),
        ] {
            let err = vault
                .release("q1-test", Some(&dest), true, 2, &protection)
                .err()
                .unwrap_or_else(|| panic!("{} was released into", dest.display()))
                .to_string();
            assert!(err.contains(why), "{}: {err}", dest.display());
        }
        assert_eq!(
            std::fs::read(r.join("state/identity/key.der")).unwrap(),
            b"secret"
        );
        // The entry is still there, and releases where it may.
        let done = vault
            .release(
                "q1-test",
                Some(&r.join("work/restored")),
                false,
                3,
                &protection,
            )
            .unwrap();
        assert_eq!(done.restored_to, r.join("work/restored").to_string_lossy());
        assert_eq!(std::fs::read(r.join("work/restored")).unwrap(), b"malware");
    }

    /// A later file at the original path with the same device, inode number and size (the
    /// kernel reuses freed inode numbers) is not the quarantined file: neither a release nor
    /// recovery after a restart removes it.
    #[test]
    fn a_new_file_reusing_the_inode_number_is_never_taken_for_the_original() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let vault = Vault::open(&r.join("state")).unwrap();
        std::fs::create_dir_all(r.join("work")).unwrap();
        std::fs::write(r.join("work/file"), b"malware").unwrap();
        // A second link keeps the inode alive, standing in for the kernel handing its number
        // to the next file.
        std::fs::hard_link(r.join("work/file"), r.join("work/keep")).unwrap();
        let t = target::open(&r.join("work/file"), &Protection::default()).unwrap();
        let meta = vault.quarantine(&t, "q3-test", 3).unwrap();
        std::fs::write(r.join("work/keep"), b"MALWARE").unwrap();
        std::fs::rename(r.join("work/keep"), r.join("work/file")).unwrap();
        let st = std::fs::metadata(r.join("work/file")).unwrap();
        assert_eq!(
            (st.dev(), st.ino(), st.len()),
            (meta.dev, meta.ino, meta.size)
        );

        let reopened = Vault::open(&r.join("state")).unwrap();
        reopened.recover().unwrap();
        let err = reopened
            .release("q3-test", None, false, 4, &Protection::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a different file is there"), "{err}");
        assert_eq!(std::fs::read(r.join("work/file")).unwrap(), b"MALWARE");
    }

    /// A directory swapped for a symlink between the open and the move: the opened file goes
    /// into the vault, the file the link leads to is untouched.
    #[test]
    fn a_quarantine_moves_the_file_it_opened_even_if_the_path_changes_meanwhile() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let vault = Vault::open(&r.join("state")).unwrap();
        std::fs::create_dir_all(r.join("work")).unwrap();
        std::fs::write(r.join("work/file"), b"malware").unwrap();
        std::fs::create_dir(r.join("victim")).unwrap();
        std::fs::write(r.join("victim/file"), b"precious").unwrap();
        let t = target::open(&r.join("work/file"), &Protection::default()).unwrap();
        std::fs::rename(r.join("work"), r.join("moved")).unwrap();
        std::os::unix::fs::symlink(r.join("victim"), r.join("work")).unwrap();
        let meta = vault.quarantine(&t, "q2-test", 2).unwrap();
        assert_eq!(
            meta.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"malware"))
        );
        assert_eq!(std::fs::read(r.join("victim/file")).unwrap(), b"precious");
        assert!(
            !r.join("moved/file").exists(),
            "the opened file was moved into the vault"
        );
    }
}
