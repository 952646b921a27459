//! Stopping the processes that use a file: those whose executable it is, and those that have
//! it open or mapped. They are found by the file's device and inode (a path can lie: a process
//! may have been started through another hard link, or before a rename).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{major, minor};
use nix::unistd::Pid;

use crate::host::{HostError, Killed};

/// How a process uses the file with (`dev`, `ino`), if it does.
fn uses(pid: i32, dev: u64, ino: u64) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let base = format!("/proc/{pid}");
    if let Ok(m) = std::fs::metadata(format!("{base}/exe"))
        && (m.dev(), m.ino()) == (dev, ino)
    {
        return Some("exe");
    }
    if let Ok(fds) = std::fs::read_dir(format!("{base}/fd")) {
        for fd in fds.flatten() {
            if let Ok(m) = std::fs::metadata(fd.path())
                && (m.dev(), m.ino()) == (dev, ino)
            {
                return Some("open");
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string(format!("{base}/maps")) {
        let want_dev = format!("{:02x}:{:02x}", major(dev), minor(dev));
        for line in maps.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(_), Some(_), Some(_), Some(d), Some(i)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if i.parse::<u64>() == Ok(ino) && d == want_dev {
                return Some("mapped");
            }
        }
    }
    None
}

fn pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .collect()
}

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut s: String = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if s.len() > 512 {
        let mut end = 512;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Dead: gone, or a zombie waiting for its parent.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Kills every process using the file (`dev`, `ino`) and checks they are dead; scans again
/// until none is found, so that a process that forked meanwhile is caught too.
pub fn stop_users(path: &Path, dev: u64, ino: u64) -> Result<Vec<Killed>, HostError> {
    let mut killed: Vec<Killed> = Vec::new();
    for _round in 0..5 {
        let found: Vec<Killed> = pids()
            .into_iter()
            .filter(|&p| !killed.iter().any(|k| k.pid == p && is_dead(p)))
            .filter_map(|pid| {
                let how = uses(pid, dev, ino)?;
                (!is_dead(pid)).then(|| Killed {
                    pid,
                    cmdline: cmdline(pid),
                    uses: how,
                })
            })
            .collect();
        if found.is_empty() {
            return Ok(killed);
        }
        if let Some(init) = found.iter().find(|k| k.pid == 1) {
            return Err(HostError::Refused(format!(
                "{}: is used by PID 1 ({}), which is never killed",
                path.display(),
                init.cmdline
            )));
        }
        for k in &found {
            match kill(Pid::from_raw(k.pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(HostError::io(
                        format!("cannot kill process {} ({})", k.pid, k.cmdline),
                        e.into(),
                    ));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !found.iter().all(|k| is_dead(k.pid)) {
            if Instant::now() > deadline {
                let alive: Vec<String> = found
                    .iter()
                    .filter(|k| !is_dead(k.pid))
                    .map(|k| k.pid.to_string())
                    .collect();
                return Err(HostError::Refused(format!(
                    "{}: processes {} did not die after SIGKILL",
                    path.display(),
                    alive.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        killed.extend(found);
    }
    Err(HostError::Refused(format!(
        "{}: processes keep starting from it; gave up after 5 rounds of killing",
        path.display()
    )))
}
