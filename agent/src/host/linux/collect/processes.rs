//! Processes (from /proc: pid, parent, user, command line, executable and its sha256, start
//! time) and the files each one holds open.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::{Ctx, Out, user_names};

/// Executables larger than this are listed without a hash.
const MAX_HASHED_EXE: u64 = 128 << 20;

#[derive(Serialize)]
struct Process {
    pid: u32,
    ppid: Option<u32>,
    uid: Option<u32>,
    user: Option<String>,
    name: Option<String>,
    cmdline: Vec<String>,
    exe: Option<String>,
    exe_deleted: bool,
    exe_sha256: Option<String>,
    start_time_unix: Option<u64>,
    state: Option<String>,
}

pub fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

pub fn processes(ctx: &Ctx) -> anyhow::Result<Out> {
    let users = user_names();
    let boot = sysinfo::System::boot_time();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    // One hash per executable file, however many processes run it.
    let mut hashes: HashMap<(u64, u64), Option<String>> = HashMap::new();
    let mut out = Out::default();
    let mut list = Vec::new();
    let mut unhashed = 0usize;
    for pid in pids() {
        let dir = Path::new("/proc").join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let uid = field("Uid:").and_then(|v| v.split_whitespace().next()?.parse().ok());
        let cmdline: Vec<String> = std::fs::read(dir.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe_link = std::fs::read_link(dir.join("exe")).ok();
        let exe_deleted = exe_link
            .as_ref()
            .is_some_and(|p| p.to_string_lossy().ends_with(" (deleted)"));
        let exe_sha256 = if exe_link.is_none() {
            None
        } else if ctx.expired() {
            unhashed += 1;
            None
        } else {
            // Through /proc/PID/exe: the file the process runs, even if replaced or deleted.
            std::fs::File::open(dir.join("exe")).ok().and_then(|f| {
                let meta = f.metadata().ok()?;
                hashes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| ctx.hash_open(f, MAX_HASHED_EXE))
                    .clone()
            })
        };
        // /proc/PID/stat: "pid (comm) state ppid … starttime(22nd field)"; comm may hold spaces.
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let after = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let start = f
            .get(19)
            .and_then(|t| t.parse::<u64>().ok())
            .map(|t| boot + t / ticks);
        list.push(Process {
            pid,
            ppid: field("PPid:").and_then(|v| v.parse().ok()),
            uid,
            user: uid.and_then(|u| users.get(&u).cloned()),
            name: field("Name:"),
            cmdline,
            exe: exe_link.map(|p| p.to_string_lossy().into_owned()),
            exe_deleted,
            exe_sha256,
            start_time_unix: start,
            state: f.first().map(|s| s.to_string()),
        });
    }
    if unhashed > 0 {
        out.partly(format!(
            "time budget ran out: {unhashed} executables not hashed"
        ));
    }
    out.json("processes.json", &json!({"processes": list}));
    Ok(out)
}

pub fn open_files(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut list = Vec::new();
    let mut out = Out::default();
    for pid in pids() {
        if ctx.expired() {
            out.partly(format!("time budget ran out at pid {pid}"));
            break;
        }
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(entries) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut fds: Vec<(u32, String)> = entries
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.to_string_lossy().into_owned()))
            })
            .collect();
        fds.sort();
        let name = std::fs::read_to_string(dir.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        list.push(json!({
            "pid": pid,
            "name": name,
            "files": fds.into_iter().map(|(fd, target)| json!({"fd": fd, "target": target})).collect::<Vec<_>>(),
        }));
    }
    out.json("open_files.json", &json!({"processes": list}));
    Ok(out)
}
