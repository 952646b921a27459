//! Accounts and sessions: users, groups, sudoers, who is logged in (utmp) and the login
//! history (wtmp, btmp).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::{Ctx, Out};

pub fn users(ctx: &Ctx) -> anyhow::Result<Out> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| anyhow::anyhow!("cannot read /etc/passwd: {e}"))?;
    let users: Vec<_> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| {
                json!({
                    "name": f[0], "uid": f[2].parse::<u32>().ok(), "gid": f[3].parse::<u32>().ok(),
                    "gecos": f[4], "home": f[5], "shell": f[6],
                })
            })
        })
        .collect();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let groups: Vec<_> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| {
                json!({
                    "name": f[0], "gid": f[2].parse::<u32>().ok(),
                    "members": f[3].split(',').filter(|m| !m.is_empty()).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let mut out = Out::default();
    out.json("users.json", &json!({"users": users, "groups": groups}));
    out.raw(Path::new("/etc/passwd"), ctx.max_bytes / 4);
    out.raw(Path::new("/etc/group"), ctx.max_bytes / 4);
    Ok(out)
}

pub fn sudoers(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut paths = vec![Path::new("/etc/sudoers").to_owned()];
    let mut more: Vec<_> = std::fs::read_dir("/etc/sudoers.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    more.sort();
    paths.extend(more);
    let mut copied = Vec::new();
    for p in &paths {
        if out.raw(p, ctx.max_bytes / 8) {
            copied.push(p.display().to_string());
        }
    }
    if copied.is_empty() {
        out.unavailable = Some("no /etc/sudoers and no /etc/sudoers.d".into());
    }
    out.json("sudoers.json", &json!({"files": copied}));
    Ok(out)
}

/// Records kept of wtmp and btmp: the most recent ones.
const MAX_HISTORY: usize = 20_000;

pub fn logins(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut doc = serde_json::Map::new();
    for (key, paths) in [
        ("sessions", &["/run/utmp", "/var/run/utmp"][..]),
        ("history", &["/var/log/wtmp"][..]),
        ("failed", &["/var/log/btmp"][..]),
    ] {
        let Some(path) = paths.iter().map(Path::new).find(|p| p.exists()) else {
            doc.insert(key.into(), json!({"source": null, "records": []}));
            continue;
        };
        let keep = (MAX_HISTORY * UTMP_SIZE) as u64;
        let bytes = match tail(path, keep.min(ctx.max_bytes)) {
            Ok(b) => b,
            Err(e) => {
                out.partly(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        let mut records = parse_utmp(&bytes);
        if key == "sessions" {
            records.retain(|r| r.kind == "user_process");
        }
        doc.insert(key.into(), json!({"source": path, "records": records}));
    }
    out.json("logins.json", &doc);
    Ok(out)
}

/// The last `max` bytes of a file, starting at a record boundary.
fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let max = max - max % UTMP_SIZE as u64;
    let start = len.saturating_sub(max);
    let start = start + (UTMP_SIZE as u64 - start % UTMP_SIZE as u64) % UTMP_SIZE as u64;
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `struct utmp` of glibc on 64-bit Linux (x86_64, aarch64): 384 bytes.
pub const UTMP_SIZE: usize = 384;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LoginRecord {
    pub kind: &'static str,
    pub pid: i32,
    pub line: String,
    pub user: String,
    pub host: String,
    pub address: Option<IpAddr>,
    pub time_unix: i64,
}

pub fn parse_utmp(bytes: &[u8]) -> Vec<LoginRecord> {
    let i32_at = |r: &[u8], o: usize| i32::from_ne_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
    let text = |r: &[u8]| {
        let end = r.iter().position(|b| *b == 0).unwrap_or(r.len());
        String::from_utf8_lossy(&r[..end]).into_owned()
    };
    bytes
        .chunks_exact(UTMP_SIZE)
        .filter_map(|r| {
            let kind = match i16::from_ne_bytes([r[0], r[1]]) {
                1 => "run_level",
                2 => "boot_time",
                3 => "new_time",
                4 => "old_time",
                5 => "init_process",
                6 => "login_process",
                7 => "user_process",
                8 => "dead_process",
                9 => "accounting",
                _ => return None,
            };
            let a: [u8; 16] = r[348..364].try_into().ok()?;
            let address = if a[4..].iter().all(|b| *b == 0) {
                let v4 = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                (!v4.is_unspecified()).then_some(IpAddr::V4(v4))
            } else {
                Some(IpAddr::V6(Ipv6Addr::from(a)))
            };
            Some(LoginRecord {
                kind,
                pid: i32_at(r, 4),
                line: text(&r[8..40]),
                user: text(&r[44..76]),
                host: text(&r[76..332]),
                address,
                time_unix: i64::from(i32_at(r, 340)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: i16, user: &str, host: &str, addr: [u8; 4], time: i32) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_SIZE];
        r[0..2].copy_from_slice(&kind.to_ne_bytes());
        r[4..8].copy_from_slice(&4242i32.to_ne_bytes());
        r[8..8 + 5].copy_from_slice(b"pts/0");
        r[44..44 + user.len()].copy_from_slice(user.as_bytes());
        r[76..76 + host.len()].copy_from_slice(host.as_bytes());
        r[340..344].copy_from_slice(&time.to_ne_bytes());
        r[348..352].copy_from_slice(&addr);
        r
    }

    #[test]
    fn utmp_records_are_parsed_and_empty_ones_skipped() {
        let mut bytes = record(7, "alice", "203.0.113.9", [203, 0, 113, 9], 1_700_000_000);
        bytes.extend(vec![0u8; UTMP_SIZE]); // EMPTY
        bytes.extend(record(8, "", "", [0; 4], 1_700_000_100));
        bytes.extend([1, 2, 3]); // a torn last record is ignored
        let r = parse_utmp(&bytes);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, "user_process");
        assert_eq!(r[0].user, "alice");
        assert_eq!(r[0].line, "pts/0");
        assert_eq!(r[0].pid, 4242);
        assert_eq!(r[0].address, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(r[0].time_unix, 1_700_000_000);
        assert_eq!(r[1].kind, "dead_process");
        assert_eq!(r[1].address, None);
    }
}
