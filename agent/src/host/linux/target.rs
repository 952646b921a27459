//! Opening a file the controller names for a destructive action, safely: every component is
//! resolved by the kernel with `RESOLVE_NO_SYMLINKS` (no symlink anywhere on the way, no race
//! between check and use: later steps work on the descriptors opened here), only regular files
//! pass, and the agent's own files, `/proc`, `/sys` and the protected paths are refused.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::sys::statfs::{PROC_SUPER_MAGIC, SYSFS_MAGIC, fstatfs};

use crate::host::HostError;

/// The paths refused besides the agent's own: the boot chain, the account databases, the
/// service manager, kernel modules. (`/dev` and `/run` are not on it: device nodes and sockets
/// are refused by type, and `/dev/shm` and `/run/user` are where droppers hide.)
pub const DEFAULT_PROTECTED: &[&str] = &[
    "/boot",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/fstab",
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd",
    "/usr/lib/systemd",
    "/usr/bin/systemctl",
    "/lib/modules",
    "/usr/lib/modules",
];

/// What may never be quarantined, beyond `/proc` and `/sys`.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// The agent's state directory: its identity, journal and vault.
    pub state_dir: PathBuf,
    pub paths: Vec<PathBuf>,
}

/// A regular file, open, with the directory it is in.
pub struct Target {
    pub path: PathBuf,
    pub dir: OwnedFd,
    pub name: OsString,
    pub file: File,
    pub stat: FileStat,
}

const FS_IMMUTABLE_FL: i64 = 0x10;
const FS_APPEND_FL: i64 = 0x20;

fn refuse(path: &Path, why: impl std::fmt::Display) -> HostError {
    HostError::Refused(format!("{}: {why}", path.display()))
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens the directory `dir` (absolute) without following any symlink.
pub fn open_dir(dir: &Path) -> Result<OwnedFd, Errno> {
    openat2(AT_FDCWD, dir, how(OFlag::O_PATH | OFlag::O_DIRECTORY))
}

/// Refuses a path under the agent's state directory (identity, journal, vault, spool): what
/// every action that reads or moves a named file checks, quarantine and sample alike.
pub fn refuse_own_files(path: &Path, protection: &Protection) -> Result<(), HostError> {
    if !protection.state_dir.as_os_str().is_empty() {
        let state = std::fs::canonicalize(&protection.state_dir)
            .unwrap_or_else(|_| protection.state_dir.clone());
        if path.starts_with(&state) || path.starts_with(&protection.state_dir) {
            return Err(refuse(path, "is one of the agent's own files"));
        }
    }
    Ok(())
}

/// Checks `path` against the refusals and opens it.
pub fn open(path: &Path, protection: &Protection) -> Result<Target, HostError> {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refuse(path, "not an absolute path without '.' or '..'"));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(refuse(path, "is the root directory"));
    };
    for special in ["/proc", "/sys"] {
        if path.starts_with(special) {
            return Err(refuse(
                path,
                format!("is under {special}, which is refused"),
            ));
        }
    }
    refuse_own_files(path, protection)?;
    if let Some(p) = protection.paths.iter().find(|p| path.starts_with(p)) {
        return Err(refuse(path, format!("is protected ({})", p.display())));
    }
    let through_link = |path: &Path| {
        let real = std::fs::canonicalize(path)
            .map(|r| format!(" to {}", r.display()))
            .unwrap_or_default();
        refuse(path, format!("resolves through a symbolic link{real}"))
    };
    let dir = open_dir(parent).map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV => through_link(path),
        Errno::ENOENT => refuse(path, "does not exist"),
        Errno::ENOTDIR => refuse(path, "a component of the path is not a directory"),
        e => HostError::io(format!("cannot open {}", parent.display()), e.into()),
    })?;
    if let Ok(fs) = fstatfs(&dir)
        && (fs.filesystem_type() == PROC_SUPER_MAGIC || fs.filesystem_type() == SYSFS_MAGIC)
    {
        return Err(refuse(path, "is on /proc or /sys, which is refused"));
    }
    // The name alone, then its type, before anything opens it for reading: a device is never
    // opened, a FIFO never blocks.
    let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| match e {
        Errno::ENOENT => refuse(path, "does not exist"),
        e => HostError::io(format!("cannot stat {}", path.display()), e.into()),
    })?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let why = match kind {
        SFlag::S_IFREG => None,
        SFlag::S_IFDIR => Some("is a directory"),
        SFlag::S_IFLNK => Some("is a symbolic link"),
        SFlag::S_IFIFO => Some("is a FIFO"),
        SFlag::S_IFSOCK => Some("is a socket"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Some("is a device"),
        _ => Some("is not a regular file"),
    };
    if let Some(why) = why {
        return Err(refuse(path, why));
    }
    let fd = openat2(
        &dir,
        name,
        how(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
    )
    .map_err(|e| match e {
        Errno::ELOOP => refuse(path, "is a symbolic link"),
        Errno::ENOENT => refuse(path, "does not exist"),
        e => HostError::io(format!("cannot open {}", path.display()), e.into()),
    })?;
    let stat = fstat(&fd).map_err(|e| HostError::io("fstat", e.into()))?;
    if (stat.st_dev, stat.st_ino) != (st.st_dev, st.st_ino)
        || SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
    {
        return Err(refuse(path, "was replaced while being opened"));
    }
    if let Ok(me) = std::fs::metadata("/proc/self/exe") {
        use std::os::unix::fs::MetadataExt;
        if (me.dev(), me.ino()) == (stat.st_dev, stat.st_ino) {
            return Err(refuse(path, "is the agent's own binary"));
        }
    }
    let file = File::from(fd);
    let flags = inode_flags(file.as_raw_fd());
    if flags & FS_IMMUTABLE_FL != 0 {
        return Err(refuse(
            path,
            "is immutable (chattr +i): it cannot be removed until the flag is cleared with chattr -i",
        ));
    }
    if flags & FS_APPEND_FL != 0 {
        return Err(refuse(
            path,
            "is append-only (chattr +a): it cannot be removed until the flag is cleared with chattr -a",
        ));
    }
    if let Ok(d) = openat2(&dir, ".", how(OFlag::O_RDONLY | OFlag::O_DIRECTORY))
        && inode_flags(d.as_raw_fd()) & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0
    {
        return Err(refuse(
            path,
            format!(
                "its directory {} is immutable or append-only (chattr): the file cannot be removed",
                parent.display()
            ),
        ));
    }
    Ok(Target {
        path: path.to_owned(),
        dir,
        name: name.to_owned(),
        file,
        stat,
    })
}

/// The inode flags (`chattr`), or 0 where the filesystem has none.
fn inode_flags(fd: i32) -> i64 {
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a long into `flags`, which lives for the call.
    let rc = unsafe { nix::libc::ioctl(fd, nix::libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc == 0 {
        flags as i64 & 0xffff_ffff
    } else {
        0
    }
}

/// Syncs a directory given as an `O_PATH` descriptor (fsync needs a real one).
pub fn sync_dir(dir: &OwnedFd) -> std::io::Result<()> {
    let d = openat2(dir, ".", how(OFlag::O_RDONLY | OFlag::O_DIRECTORY))?;
    File::from(d).sync_all()
}

/// What is at `name` in `dir` now, without following a symlink.
pub fn stat_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> Option<FileStat> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Splits an absolute path into its directory (opened safely) and name.
pub fn open_parent(path: &Path) -> Result<(OwnedFd, OsString), HostError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(refuse(path, "has no parent directory"));
    };
    let dir = open_dir(parent).map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV => refuse(path, "resolves through a symbolic link"),
        Errno::ENOENT => refuse(path, "its directory does not exist"),
        e => HostError::io(format!("cannot open {}", parent.display()), e.into()),
    })?;
    Ok((dir, name.to_owned()))
}

/// Mode bits for a new file.
pub fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits)
}

/// A name as bytes, for messages.
pub fn lossy(name: &std::ffi::OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path, protection: &Protection) -> String {
        match open(path, protection) {
            Ok(_) => panic!("{} was opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dot_dot_and_symlinked_directories_on_the_way_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("state/identity")).unwrap();
        std::fs::write(r.join("state/identity/key.der"), b"secret").unwrap();
        std::fs::create_dir(r.join("work")).unwrap();
        std::fs::write(r.join("work/file"), b"x").unwrap();
        std::os::unix::fs::symlink(r.join("state"), r.join("work/link")).unwrap();
        let protection = Protection {
            state_dir: r.join("state"),
            paths: vec![],
        };
        let err = refusal(&r.join("work/../state/identity/key.der"), &protection);
        assert!(err.contains("without '.' or '..'"), "{err}");
        let err = refusal(&r.join("work/link/identity/key.der"), &protection);
        assert!(err.contains("resolves through a symbolic link"), "{err}");
        assert!(open(&r.join("work/file"), &protection).is_ok());
    }

    /// What is checked is what is used: once open, the target is the descriptors, so a
    /// directory on the way swapped for a symlink afterwards changes nothing.
    #[test]
    fn a_parent_swapped_for_a_symlink_after_the_open_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("work")).unwrap();
        std::fs::write(r.join("work/file"), b"the target").unwrap();
        std::fs::create_dir(r.join("victim")).unwrap();
        std::fs::write(r.join("victim/file"), b"the victim").unwrap();
        let t = open(&r.join("work/file"), &Protection::default()).unwrap();
        std::fs::rename(r.join("work"), r.join("moved")).unwrap();
        std::os::unix::fs::symlink(r.join("victim"), r.join("work")).unwrap();
        let victim = std::fs::metadata(r.join("victim/file")).unwrap();
        let now = stat_at(&t.dir, &t.name).expect("the name in the opened directory");
        use std::os::unix::fs::MetadataExt;
        assert_eq!((now.st_dev, now.st_ino), (t.stat.st_dev, t.stat.st_ino));
        assert_ne!(now.st_ino, victim.ino());
        // And a new open of the path refuses the swapped-in link.
        let err = refusal(&r.join("work/file"), &Protection::default());
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_sample_of_the_agents_own_files_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("state/identity")).unwrap();
        std::fs::write(r.join("state/identity/key.der"), b"secret").unwrap();
        std::fs::write(r.join("other"), b"fine").unwrap();
        use crate::host::Host;
        let host =
            super::super::LinuxHost::new(Default::default()).with_vault(r.join("state"), vec![]);
        let err = host
            .snapshot_file(&r.join("state/identity/key.der"), 1 << 20, &r.join("copy"))
            .unwrap_err();
        assert!(err.to_string().contains("agent's own files"), "{err}");
        assert!(!r.join("copy").exists(), "the key was copied");
        assert!(
            host.snapshot_file(&r.join("other"), 1 << 20, &r.join("copy2"))
                .is_ok()
        );
    }
}
