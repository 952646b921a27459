//! The scanner's walker: resolves what a quick, full or custom scan covers, walks it with a
//! pool of worker threads sharing one queue of directories and files, and reads each regular
//! file into the worker's buffer for `crate::scan` to match.
//!
//! It reads, never maps (a file truncated under us must not crash the agent), opens with
//! `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY` and checks the open file (a FIFO or device met in a
//! race is never read), never follows symlinks, skips pseudo filesystems, and counts files
//! that vanish or cannot be read instead of failing.

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use crate::host::{FileMeta, ScanJob, ScanMode, ScanSink, ScanWorker, Skip, Walked};

/// Filesystems a scan never enters: kernel views, not files anyone wrote.
const PSEUDO_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "devtmpfs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
    "selinuxfs",
];

/// Not local: a full scan leaves them to the machines that hold them.
const NETWORK_FSTYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "ceph",
    "glusterfs",
    "9p",
    "fuse.sshfs",
];

/// Home directories are walked this deep in a quick scan.
const QUICK_HOME_DEPTH: u32 = 4;

/// Where a quick scan looks, besides home directories and running executables.
const QUICK_PATHS: &[&str] = &[
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/run/user",
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/etc/crontab",
    "/var/spool/cron",
    "/etc/systemd/system",
    "/etc/systemd/user",
    "/usr/lib/systemd/system",
    "/etc/init.d",
    "/etc/rc.local",
    "/etc/profile.d",
    "/etc/ld.so.preload",
    "/usr/local/bin",
    "/usr/local/sbin",
];

#[derive(Debug)]
struct Root {
    path: PathBuf,
    /// Directory levels to descend below the root; `None`: no limit.
    depth: Option<u32>,
    /// Stay on the root's filesystem (full scans: each mount is its own root).
    same_fs: bool,
    /// For a running process's deleted executable: read it through `/proc/PID/exe` and
    /// report it under this name.
    display: Option<String>,
}

enum Job {
    Dir {
        path: PathBuf,
        depth: Option<u32>,
        dev: Option<u64>,
    },
    File {
        path: PathBuf,
        display: Option<String>,
    },
}

/// The shared work queue. Workers pop the newest job (depth first, so the queue stays
/// small); the walk ends when the queue is empty and no worker is busy.
struct Queue {
    state: Mutex<(Vec<Job>, usize)>,
    cv: Condvar,
}

impl Queue {
    fn next(&self, sink: &dyn ScanSink) -> Option<Job> {
        let mut st = self.state.lock().ok()?;
        loop {
            if sink.cancelled() {
                st.0.clear();
            }
            if let Some(j) = st.0.pop() {
                st.1 += 1;
                return Some(j);
            }
            if st.1 == 0 {
                self.cv.notify_all();
                return None;
            }
            st = self.cv.wait(st).ok()?;
        }
    }

    fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            st.0.extend(jobs);
            self.cv.notify_all();
        }
    }

    fn done(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.1 -= 1;
            if st.1 == 0 && st.0.is_empty() {
                self.cv.notify_all();
            }
        }
    }
}

pub fn scan(job: &ScanJob, sink: &dyn ScanSink) -> Walked {
    let mounts = super::exec::mounts().unwrap_or_default();
    let skip_mounts: HashSet<PathBuf> = mounts
        .iter()
        .filter(|m| PSEUDO_FSTYPES.contains(&m.fstype.as_str()))
        .map(|m| m.point.clone())
        .collect();
    let roots = match job.mode {
        ScanMode::Custom => job
            .paths
            .iter()
            .map(|p| Root {
                path: p.clone(),
                depth: None,
                same_fs: false,
                display: None,
            })
            .collect(),
        ScanMode::Quick => quick_roots(),
        ScanMode::Full => mounts
            .iter()
            .filter(|m| {
                !PSEUDO_FSTYPES.contains(&m.fstype.as_str())
                    && !NETWORK_FSTYPES.contains(&m.fstype.as_str())
                    && !m.fstype.starts_with("fuse.")
            })
            .map(|m| m.point.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|path| Root {
                path,
                depth: None,
                same_fs: true,
                display: None,
            })
            .collect(),
    };
    let mut walked = Walked::default();
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    for root in roots {
        if sink.excluded(&root.path) {
            continue;
        }
        if let Some(display) = root.display {
            walked.roots.push(display.clone());
            jobs.push(Job::File {
                path: root.path,
                display: Some(display),
            });
            continue;
        }
        if skip_mounts.iter().any(|m| root.path.starts_with(m)) {
            walked.errors.push(format!(
                "{}: on a pseudo filesystem, not scanned",
                root.path.display()
            ));
            continue;
        }
        let meta = match std::fs::symlink_metadata(&root.path) {
            Ok(m) => m,
            // Quick-scan places that this machine does not have are not errors.
            Err(_) if job.mode == ScanMode::Quick => continue,
            Err(e) => {
                walked.errors.push(format!("{}: {e}", root.path.display()));
                walked.missing.push(root.path.display().to_string());
                continue;
            }
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue; // the same directory by another name (/lib → /usr/lib)
        }
        walked.roots.push(root.path.display().to_string());
        if meta.is_dir() {
            jobs.push(Job::Dir {
                dev: root.same_fs.then_some(meta.dev()),
                path: root.path,
                depth: root.depth,
            });
        } else if meta.file_type().is_symlink() {
            walked.errors.push(format!(
                "{}: is a symbolic link, not followed",
                root.path.display()
            ));
        } else {
            jobs.push(Job::File {
                path: root.path,
                display: None,
            });
        }
    }
    let queue = Queue {
        state: Mutex::new((jobs, 0)),
        cv: Condvar::new(),
    };
    let dir_errors = Mutex::new((Vec::<String>::new(), 0u64));
    let threads = job.threads.max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut worker = sink.worker();
                let mut buf = Vec::new();
                while let Some(j) = queue.next(sink) {
                    let started = std::time::Instant::now();
                    match j {
                        Job::Dir { path, depth, dev } => {
                            let found =
                                list_dir(&path, depth, dev, sink, &mut *worker, &skip_mounts);
                            if let Ok(mut e) = dir_errors.lock() {
                                e.1 += 1;
                                if let Err(err) = &found
                                    && e.0.len() < 50
                                {
                                    e.0.push(err.clone());
                                }
                            }
                            if let Ok(children) = found {
                                queue.push(children);
                            }
                        }
                        Job::File { path, display } => {
                            scan_file(&path, display, job.max_file_size, &mut *worker, &mut buf);
                        }
                    }
                    queue.done();
                    // A CPU limit as a duty cycle: rest in proportion to the work just done.
                    if job.cpu_percent > 0 && job.cpu_percent < 100 {
                        let p = u32::from(job.cpu_percent);
                        std::thread::sleep(started.elapsed() * (100 - p) / p);
                    }
                }
            });
        }
    });
    if let Ok((errors, dirs)) = dir_errors.into_inner() {
        walked.errors.extend(errors);
        walked.directories = dirs;
    }
    walked
}

fn quick_roots() -> Vec<Root> {
    let root = |p: &str, depth: Option<u32>| Root {
        path: PathBuf::from(p),
        depth,
        same_fs: false,
        display: None,
    };
    let mut roots: Vec<Root> = QUICK_PATHS.iter().map(|p| root(p, None)).collect();
    roots.push(root("/root", Some(QUICK_HOME_DEPTH - 1)));
    roots.push(root("/home", Some(QUICK_HOME_DEPTH)));
    // Running processes' executables, by the path they were started from, or through
    // /proc/PID/exe when that file was deleted.
    let mut exes = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let link = format!("/proc/{pid}/exe");
        let Ok(target) = std::fs::read_link(&link) else {
            continue; // kernel threads, processes gone, or not ours to see
        };
        let text = target.to_string_lossy().into_owned();
        if !exes.insert(text.clone()) {
            continue;
        }
        if let Some(deleted) = text.strip_suffix(" (deleted)") {
            roots.push(Root {
                path: PathBuf::from(link),
                depth: None,
                same_fs: false,
                display: Some(deleted.to_owned()),
            });
        } else {
            roots.push(root(&text, None));
        }
    }
    roots
}

/// The jobs one directory holds: subdirectories within the depth and regular files. Symlinks
/// and special files are not followed (special files are counted as skipped).
fn list_dir(
    path: &Path,
    depth: Option<u32>,
    dev: Option<u64>,
    sink: &dyn ScanSink,
    worker: &mut dyn ScanWorker,
    skip_mounts: &HashSet<PathBuf>,
) -> Result<Vec<Job>, String> {
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut jobs = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let child = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            if depth == Some(0) || skip_mounts.contains(&child) || sink.excluded(&child) {
                continue;
            }
            if let Some(dev) = dev {
                // A full scan walks each mount from its own root, once.
                match entry.metadata() {
                    Ok(m) if m.dev() == dev => {}
                    _ => continue,
                }
            }
            jobs.push(Job::Dir {
                path: child,
                depth: depth.map(|d| d - 1),
                dev,
            });
        } else if ft.is_file() {
            if !sink.excluded(&child) {
                jobs.push(Job::File {
                    path: child,
                    display: None,
                });
            }
        } else if !ft.is_symlink() && !sink.excluded(&child) {
            // FIFOs, sockets, devices: never opened.
            worker.skipped(&child, Skip::Special);
        }
    }
    Ok(jobs)
}

fn scan_file(
    path: &Path,
    display: Option<String>,
    cap: u64,
    worker: &mut dyn ScanWorker,
    buf: &mut Vec<u8>,
) {
    // /proc/PID/exe is a magic link: it has to be followed.
    let nofollow = if display.is_some() {
        0
    } else {
        nix::libc::O_NOFOLLOW
    };
    let flags = nofollow | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC;
    let open = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(path)
    };
    // O_NOATIME keeps a scan from touching every access time; only the owner (or root) may.
    let file = match open(nix::libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(0),
        other => other,
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(nix::libc::ENOENT | nix::libc::ENOTDIR) => Skip::Vanished,
                Some(nix::libc::ELOOP) => Skip::Special, // became a symlink
                _ => Skip::Unreadable(e.to_string()),
            };
            worker.skipped(path, why);
            return;
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return worker.skipped(path, Skip::Unreadable(e.to_string())),
    };
    if !meta.file_type().is_file() {
        return worker.skipped(path, Skip::Special);
    }
    if meta.len() > cap {
        return worker.skipped(path, Skip::TooLarge);
    }
    let fm = FileMeta {
        path: display
            .map(PathBuf::from)
            .unwrap_or_else(|| path.to_owned()),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    };
    if !worker.wants(&fm) {
        return;
    }
    buf.clear();
    // Read at most one byte past the cap: a file that grew under us is cut, not followed.
    match (&file).take(cap + 1).read_to_end(buf) {
        Ok(_) if buf.len() as u64 > cap => worker.skipped(&fm.path, Skip::TooLarge),
        Ok(_) => {
            let fm = FileMeta {
                size: buf.len() as u64,
                ..fm
            };
            worker.scan(&fm, buf);
        }
        Err(e) => worker.skipped(&fm.path, Skip::Unreadable(e.to_string())),
    }
    if buf.capacity() > 64 << 20 {
        *buf = Vec::new(); // do not keep a huge buffer for the rest of the scan
    }
}
