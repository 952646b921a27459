//! Reading files on behalf of the controller, safely: no symlink is ever followed, nothing but
//! a regular file is read, and the open file (not the path) is what gets checked.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

use ring::digest;

use crate::host::{HostError, Snapshot};

pub fn snapshot(path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError> {
    let refuse = |why: &str| HostError::Refused(format!("{}: {why}", path.display()));
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse("not an absolute path without '..'"));
    }
    // O_NOFOLLOW refuses a symlink as the last component; O_NONBLOCK keeps a FIFO from
    // blocking the open; O_NOCTTY keeps a terminal from becoming ours.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => refuse("is a symbolic link"),
            Some(nix::libc::ENOENT) => refuse("does not exist"),
            _ => HostError::io(format!("cannot open {}", path.display()), e),
        })?;
    let meta = file.metadata().map_err(|e| HostError::io("stat", e))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(refuse("is a directory"));
    }
    if ft.is_fifo() {
        return Err(refuse("is a FIFO"));
    }
    if ft.is_socket() {
        return Err(refuse("is a socket"));
    }
    if ft.is_block_device() || ft.is_char_device() {
        return Err(refuse("is a device"));
    }
    if !ft.is_file() {
        return Err(refuse("is not a regular file"));
    }
    // The path as the kernel resolved it for this open file: if it differs, a directory on
    // the way was a symbolic link (or the file moved between resolving and opening).
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| HostError::io("resolve opened file", e))?;
    if real != path {
        return Err(refuse(&format!(
            "resolves through a symbolic link to {}",
            real.display()
        )));
    }
    if meta.len() > max {
        return Err(refuse(&format!(
            "is {} bytes, more than the limit of {max}",
            meta.len()
        )));
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| HostError::io(format!("cannot create {}", dest.display()), e))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    let mut src = file.take(max + 1);
    loop {
        let n = src.read(&mut buf).map_err(|e| HostError::io("read", e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max {
            drop(out);
            let _ = std::fs::remove_file(dest);
            return Err(refuse(&format!(
                "grew past the limit of {max} bytes while being read"
            )));
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| HostError::io("write snapshot", e))?;
    }
    out.sync_all()
        .map_err(|e| HostError::io("sync snapshot", e))?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(ctx.finish().as_ref());
    Ok(Snapshot {
        path: dest.to_owned(),
        size,
        sha256,
    })
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"hello sample").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/inner"), b"inner").unwrap();
        std::os::unix::fs::symlink(dir.path().join("file"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("dirlink")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_is_copied_and_hashed() {
        let dir = setup();
        let out = dir.path().join("out");
        let snap = snapshot(&dir.path().join("file"), 1024, &out).unwrap();
        assert_eq!(snap.size, 12);
        assert_eq!(std::fs::read(&out).unwrap(), b"hello sample");
        assert_eq!(
            hex::encode(snap.sha256),
            hex::encode(digest::digest(&digest::SHA256, b"hello sample"))
        );
    }

    #[test]
    fn everything_but_a_regular_file_reached_directly_is_refused() {
        let dir = setup();
        let cases = [
            ("sub", "is a directory"),
            ("link", "is a symbolic link"),
            ("dirlink/inner", "resolves through a symbolic link"),
            ("fifo", "is a FIFO"),
            ("missing", "does not exist"),
        ];
        for (name, why) in cases {
            let out = dir.path().join(format!("out-{}", name.replace('/', "_")));
            let err = snapshot(&dir.path().join(name), 1024, &out)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(!out.exists(), "{name}: left a snapshot behind");
        }
        let err = snapshot(Path::new("/dev/null"), 1024, &dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("is a device"), "{err}");
        let err = snapshot(&dir.path().join("file"), 4, &dir.path().join("o2")).unwrap_err();
        assert!(err.to_string().contains("more than the limit"), "{err}");
    }
}
