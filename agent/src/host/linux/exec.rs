//! The code-execution restriction on Linux: one fanotify group (`FAN_CLASS_CONTENT`) with
//! `FAN_OPEN_EXEC_PERM` marks on every mount at or under the configured roots, and one
//! listener thread that answers every event by the planner's verdict (`host::exec_plan`).
//!
//! Failure behaviour (ARCHITECTURE.md): while the listener is slow, execs on marked mounts wait
//! (killably) for its answer; when the group's descriptor closes — release, or the agent
//! dies — the kernel removes the marks and allows every pending and future exec (fail-open).
//! The agent re-applies the restriction at start, before it connects.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use nix::sys::stat::{FileStat, fstat, lstat};
use palisade_common::wire::ExecDenial;

use crate::host::exec_plan::{self, Facts, FileId, Owner, Rules, Verdict};
use crate::host::{ExecPolicy, ExecStatus, HostError};

/// Where the restriction applies and what is trusted.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Mount points whose mounts (and the mounts below them, now and later) are marked.
    pub mark_roots: Vec<PathBuf>,
    /// Directories whose root-owned contents are trusted.
    pub system_paths: Vec<PathBuf>,
    /// Largest file hashed for the allowlist and denial reports.
    pub max_hash: u64,
}

impl Default for ExecConfig {
    /// Production: every local filesystem, the usual system directories.
    fn default() -> ExecConfig {
        ExecConfig {
            mark_roots: vec!["/".into()],
            system_paths: [
                "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            max_hash: 64 << 20,
        }
    }
}

/// Pseudo and network filesystems: never marked.
const UNMARKED_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "nfsd",
    "selinuxfs",
    "hugetlbfs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "ceph",
    "fuse.sshfs",
    "overlay_lower",
];

/// Verdicts older than this are recomputed: directory permission changes do not touch the
/// file's ctime, so they are noticed within this time (or at once on a policy change).
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 65_536;
/// Denials kept for the runtime between two drains; more are counted, not kept.
const DENIAL_BACKLOG: usize = 1024;
/// How often the listener wakes when idle, to notice a stop and prove it is alive.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl CacheKey {
    fn of(st: &FileStat) -> CacheKey {
        CacheKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

struct Cached {
    allow: bool,
    sha256: Option<[u8; 32]>,
    at: Instant,
}

/// State shared by the applier and the listener thread.
struct Shared {
    fan: Fanotify,
    config: ExecConfig,
    rules: RwLock<Rules>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    stop: AtomicBool,
    last_tick_ms: AtomicU64,
    answered: AtomicU64,
    denied: AtomicU64,
    marked: Mutex<Vec<String>>,
    denials: Arc<Denials>,
}

#[derive(Default)]
struct Denials {
    queue: Mutex<VecDeque<ExecDenial>>,
    dropped: AtomicU64,
}

struct Active {
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
}

/// The applier: at most one active restriction.
pub struct ExecGuard {
    config: ExecConfig,
    active: Mutex<Option<Active>>,
    denials: Arc<Denials>,
    own_exe: Option<FileId>,
}

fn now_ms() -> u64 {
    u64::try_from(crate::clock::now_ms()).unwrap_or(0)
}

fn io(context: impl Into<String>, e: nix::Error) -> HostError {
    HostError::io(context, std::io::Error::from(e))
}

impl ExecGuard {
    pub fn new(config: ExecConfig) -> ExecGuard {
        let own_exe = std::fs::metadata("/proc/self/exe").ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: m.dev(),
                ino: m.ino(),
            }
        });
        ExecGuard {
            config,
            active: Mutex::new(None),
            denials: Arc::new(Denials::default()),
            own_exe,
        }
    }

    fn rules(&self, policy: &ExecPolicy) -> Rules {
        let mut system_paths = Vec::new();
        for p in &self.config.system_paths {
            system_paths.push(p.clone());
            // /bin is often a link to /usr/bin: trust what it names, too.
            if let Ok(c) = std::fs::canonicalize(p)
                && &c != p
            {
                system_paths.push(c);
            }
        }
        Rules {
            system_paths,
            allow_sha256: policy.allow_sha256.iter().copied().collect(),
            allow_paths: policy.allow_paths.iter().cloned().collect(),
            own_exe: self.own_exe,
        }
    }

    pub fn apply(&self, policy: &ExecPolicy) -> Result<ExecStatus, HostError> {
        let mut active = self.active.lock().expect("exec guard lock");
        if !policy.restrict {
            if let Some(a) = active.take() {
                a.shared.stop.store(true, Ordering::SeqCst);
                let _ = a.listener.join();
                // Dropping the last reference closes the group: the kernel removes its marks.
                drop(a.shared);
            }
            drop(active);
            return Ok(self.status());
        }
        let rules = self.rules(policy);
        if let Some(a) = active.as_ref()
            && !a.listener.is_finished()
        {
            *a.shared.rules.write().expect("rules lock") = rules;
            a.shared.cache.lock().expect("cache lock").clear();
            drop(active);
            return Ok(self.status());
        }
        // Not active, or the listener died: start afresh.
        if let Some(a) = active.take() {
            a.shared.stop.store(true, Ordering::SeqCst);
            let _ = a.listener.join();
        }
        let roots = self.roots()?;
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| io("cannot create a fanotify group", e))?;
        let shared = Arc::new(Shared {
            fan,
            config: ExecConfig {
                mark_roots: roots,
                ..self.config.clone()
            },
            rules: RwLock::new(rules),
            cache: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(now_ms()),
            answered: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            marked: Mutex::new(Vec::new()),
            denials: self.denials.clone(),
        });
        // Start answering before the first mark, so that no exec ever waits on nobody.
        let listener = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("exec-listener".into())
                .spawn(move || listen(&shared))
                .map_err(|e| HostError::io("cannot start the exec listener", e))?
        };
        if let Err(e) = mark_new_mounts(&shared) {
            shared.stop.store(true, Ordering::SeqCst);
            let _ = listener.join();
            return Err(e);
        }
        *active = Some(Active { shared, listener });
        drop(active);
        Ok(self.status())
    }

    /// The configured roots, canonical, each checked to be a mount point: a typo must not
    /// silently mark the filesystem that happens to contain it.
    fn roots(&self) -> Result<Vec<PathBuf>, HostError> {
        let mounts = mounts()?;
        let mut out = Vec::new();
        for r in &self.config.mark_roots {
            let c = std::fs::canonicalize(r)
                .map_err(|e| HostError::io(format!("exec mark root {}", r.display()), e))?;
            if !mounts.iter().any(|m| m.point == c) {
                return Err(HostError::Refused(format!(
                    "exec mark root {} is not a mount point",
                    c.display()
                )));
            }
            out.push(c);
        }
        if out.is_empty() {
            return Err(HostError::Refused("no exec mark roots configured".into()));
        }
        Ok(out)
    }

    pub fn status(&self) -> ExecStatus {
        let active = self.active.lock().expect("exec guard lock");
        let Some(a) = active.as_ref() else {
            return ExecStatus::default();
        };
        let rules = a.shared.rules.read().expect("rules lock");
        let alive = !a.listener.is_finished()
            && now_ms().saturating_sub(a.shared.last_tick_ms.load(Ordering::SeqCst)) < 2_000;
        let marked = a.shared.marked.lock().expect("marked lock").clone();
        ExecStatus {
            restricted: alive && !marked.is_empty(),
            marked,
            listener_alive: alive,
            answered: a.shared.answered.load(Ordering::Relaxed),
            denied: a.shared.denied.load(Ordering::Relaxed),
            allowlist_sha256: rules.allow_sha256.len(),
            allowlist_paths: rules.allow_paths.len(),
        }
    }

    pub fn take_denials(&self) -> (Vec<ExecDenial>, u64) {
        let list = std::mem::take(&mut *self.denials.queue.lock().expect("denials lock"));
        let dropped = self.denials.dropped.swap(0, Ordering::Relaxed);
        (list.into(), dropped)
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if let Ok(mut a) = self.active.lock()
            && let Some(a) = a.take()
        {
            a.shared.stop.store(true, Ordering::SeqCst);
            let _ = a.listener.join();
        }
    }
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    pub(super) point: PathBuf,
    pub(super) fstype: String,
}

pub(super) fn mounts() -> Result<Vec<Mount>, HostError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| HostError::io("read /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = *fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = *fields.get(dash + 1)?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Marks every mount at or under the roots that is not marked yet.
fn mark_new_mounts(shared: &Shared) -> Result<(), HostError> {
    let mounts = mounts()?;
    let mut marked = shared.marked.lock().expect("marked lock");
    let mut first_error = None;
    for m in mounts {
        if UNMARKED_FSTYPES.contains(&m.fstype.as_str())
            || !shared
                .config
                .mark_roots
                .iter()
                .any(|r| m.point.starts_with(r))
        {
            continue;
        }
        let point = m.point.to_string_lossy().into_owned();
        if marked.contains(&point) {
            continue;
        }
        match shared.fan.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            nix::fcntl::AT_FDCWD,
            Some(m.point.as_path()),
        ) {
            Ok(()) => {
                tracing::info!(mount = %point, fstype = %m.fstype, "exec restriction: mount marked");
                marked.push(point);
            }
            // A mount that went away between reading mountinfo and marking it.
            Err(nix::Error::ENOENT) => {}
            // A root that cannot be marked fails the restriction; an odd mount below one
            // (a filesystem that refuses marks) is logged and left out.
            Err(e) if shared.config.mark_roots.contains(&m.point) => {
                tracing::error!(mount = %point, error = %e, "exec restriction: cannot mark a root");
                first_error.get_or_insert(io(format!("cannot mark mount {point}"), e));
            }
            Err(e) => {
                tracing::warn!(mount = %point, fstype = %m.fstype, error = %e, "exec restriction: cannot mark mount; left out");
            }
        }
    }
    let none = marked.is_empty();
    drop(marked);
    match first_error {
        Some(e) => Err(e),
        None if none => Err(HostError::Refused(
            "no mount to mark under the exec mark roots".into(),
        )),
        None => Ok(()),
    }
}

/// The listener: answers every exec event, and marks mounts as they appear.
fn listen(shared: &Shared) {
    let mountinfo = File::open("/proc/self/mountinfo").ok();
    while !shared.stop.load(Ordering::SeqCst) {
        shared.last_tick_ms.store(now_ms(), Ordering::SeqCst);
        let (events_ready, mounts_changed) = {
            let mut fds = vec![PollFd::new(shared.fan.as_fd(), PollFlags::POLLIN)];
            if let Some(m) = &mountinfo {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLPRI));
            }
            match poll(
                &mut fds,
                PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE),
            ) {
                Ok(0) | Err(nix::Error::EINTR) => (false, false),
                Ok(_) => {
                    let ready = |i: usize| {
                        fds.get(i)
                            .and_then(|f| f.revents())
                            .is_some_and(|r| !r.is_empty())
                    };
                    (ready(0), ready(1))
                }
                Err(e) => {
                    tracing::error!(error = %e, "exec listener: poll failed");
                    std::thread::sleep(TICK);
                    (true, false)
                }
            }
        };
        if mounts_changed && let Err(e) = mark_new_mounts(shared) {
            tracing::warn!(error = %e, "exec restriction: marking new mounts");
        }
        if events_ready {
            loop {
                match shared.fan.read_events() {
                    Ok(events) if events.is_empty() => break,
                    Ok(events) => {
                        for ev in events {
                            answer(shared, &ev);
                        }
                    }
                    Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "exec listener: read failed");
                        break;
                    }
                }
            }
        }
    }
}

fn answer(shared: &Shared, ev: &nix::sys::fanotify::FanotifyEvent) {
    let Some(fd) = ev.fd() else {
        return; // queue overflow notice: nothing to answer
    };
    if !ev.mask().contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
        return;
    }
    let allow = match verdict(shared, fd, ev.pid()) {
        Ok(allow) => allow,
        Err(e) => {
            // A file we cannot even stat is not one we can trust.
            tracing::warn!(error = %e, pid = ev.pid(), "exec restriction: cannot inspect; denied");
            false
        }
    };
    let response = if allow {
        Response::FAN_ALLOW
    } else {
        Response::FAN_DENY
    };
    if let Err(e) = shared
        .fan
        .write_response(FanotifyResponse::new(fd, response))
    {
        tracing::error!(error = %e, "exec listener: cannot answer an event");
    }
    shared.answered.fetch_add(1, Ordering::Relaxed);
    if !allow {
        shared.denied.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decides one event: from the cache when the file is unchanged, else by the planner.
fn verdict(shared: &Shared, fd: BorrowedFd<'_>, pid: i32) -> Result<bool, HostError> {
    let st = fstat(fd).map_err(|e| io("fstat", e))?;
    let key = CacheKey::of(&st);
    let hit = {
        let cache = shared.cache.lock().expect("cache lock");
        cache
            .get(&key)
            .filter(|c| c.at.elapsed() < CACHE_TTL)
            .map(|c| (c.allow, c.sha256))
    };
    let (allow, sha256, path) = match hit {
        Some((true, _)) => return Ok(true),
        Some((false, sha)) => (false, sha, fd_path(fd)),
        None => {
            let path = fd_path(fd);
            let rules = shared.rules.read().expect("rules lock").clone();
            let facts = facts(&path, &st);
            let mut v = exec_plan::decide(&rules, &facts, None);
            let mut sha = None;
            if !v.allowed() {
                // Hash for the allowlist and for the denial report.
                sha = hash(fd, st.st_size as u64, shared.config.max_hash);
                if exec_plan::hash_matters(&rules, &facts) {
                    v = exec_plan::decide(&rules, &facts, sha.as_ref());
                }
            }
            if let Verdict::Deny(why) = &v {
                tracing::info!(path = %palisade_common::text::escape_control(&path), pid, reason = %why, "exec denied");
            }
            let allow = v.allowed();
            let mut cache = shared.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                key,
                Cached {
                    allow,
                    sha256: sha,
                    at: Instant::now(),
                },
            );
            (allow, sha, path)
        }
    };
    if !allow {
        report(shared, path, sha256, pid);
    }
    Ok(allow)
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "(unknown)".into())
}

fn facts(path: &str, st: &FileStat) -> Facts {
    Facts {
        path: path.to_owned(),
        id: FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        file: Owner {
            uid: st.st_uid,
            mode: st.st_mode,
        },
        dirs: Vec::new(),
    }
    .with_dirs()
}

trait WithDirs {
    fn with_dirs(self) -> Self;
}

impl WithDirs for Facts {
    /// Looks up every directory from the root down to the file's parent (`lstat`, so a
    /// symbolic link is not a directory); the planner picks the ones it needs.
    fn with_dirs(mut self) -> Facts {
        let p = Path::new(&self.path);
        if p.is_absolute() {
            let mut dirs: Vec<PathBuf> = p.ancestors().skip(1).map(Path::to_path_buf).collect();
            dirs.reverse();
            self.dirs = dirs
                .into_iter()
                .map(|d| {
                    let owner = lstat(&d).ok().map(|st| Owner {
                        uid: st.st_uid,
                        mode: st.st_mode,
                    });
                    (d, owner)
                })
                .collect();
        }
        self
    }
}

fn hash(fd: BorrowedFd<'_>, size: u64, max: u64) -> Option<[u8; 32]> {
    if size > max {
        return None;
    }
    let file = File::from(fd.try_clone_to_owned().ok()?);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        // Read by position: the event's descriptor is shared with nobody, but be explicit.
        let n = {
            use std::os::unix::fs::FileExt;
            file.read_at(&mut buf, offset).ok()?
        };
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        offset += n as u64;
        if offset > max {
            return None;
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Some(out)
}

fn report(shared: &Shared, path: String, sha256: Option<[u8; 32]>, pid: i32) {
    let (ppid, uid) = proc_status(pid);
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let at = now_ms() as i64;
    let mut q = shared.denials.queue.lock().expect("denials lock");
    if q.len() >= DENIAL_BACKLOG {
        shared.denials.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    q.push_back(ExecDenial {
        path,
        sha256,
        pid: pid.max(0) as u32,
        ppid,
        uid,
        user,
        count: 1,
        first_at_ms: at,
        last_at_ms: at,
    });
}

/// Parent pid and real uid of a process, from /proc (0, 0 if it is gone).
fn proc_status(pid: i32) -> (u32, u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (field("PPid:"), field("Uid:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_points_and_types() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    90 29 0:50 / /tmp/lab\\040dir rw master:3 - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                Mount {
                    point: "/proc".into(),
                    fstype: "proc".into()
                },
                Mount {
                    point: "/".into(),
                    fstype: "ext4".into()
                },
                Mount {
                    point: "/tmp/lab dir".into(),
                    fstype: "tmpfs".into()
                },
            ]
        );
    }
}
