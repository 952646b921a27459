//! Tails of the system and authentication logs (files, or the journal when there are none).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::json;

use crate::host::CollectedFile;

use super::{Ctx, Out, find_program, run_program};

/// The most of each log kept: its end.
const MAX_TAIL: u64 = 4 << 20;

pub fn logs(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut taken = Vec::new();
    let per_file = MAX_TAIL.min(ctx.max_bytes / 4);
    for group in [
        &["/var/log/syslog", "/var/log/messages"][..],
        &["/var/log/auth.log", "/var/log/secure"][..],
        &["/var/log/kern.log"][..],
    ] {
        for f in group {
            let path = Path::new(f);
            if let Ok((bytes, size)) = tail(path, per_file) {
                taken.push(json!({"path": f, "size": size, "kept_bytes": bytes.len()}));
                out.files.push(CollectedFile {
                    name: format!("logs/{}", f.trim_start_matches("/var/log/")),
                    bytes,
                });
                break;
            }
        }
    }
    let system_log = taken.iter().any(|t| {
        let p = t["path"].as_str().unwrap_or("");
        p.ends_with("syslog") || p.ends_with("messages")
    });
    if !system_log {
        // Hosts that keep their logs only in the journal.
        if let Some(journalctl) = find_program("journalctl") {
            match run_program(
                &journalctl,
                &["--no-pager", "-o", "short-iso", "-n", "20000"],
                ctx,
            ) {
                Ok(bytes) => {
                    taken.push(json!({"path": "journalctl -n 20000", "kept_bytes": bytes.len()}));
                    out.files.push(CollectedFile {
                        name: "logs/journal.txt".into(),
                        bytes,
                    });
                }
                Err(e) => out.partly(format!("{e:#}")),
            }
        }
    }
    if taken.is_empty() {
        out.unavailable = Some("no syslog, auth log or journal on this host".into());
    }
    out.json("logs.json", &json!({"logs": taken}));
    Ok(out)
}

/// The last `max` bytes of a regular file, from the start of a line; and the file's size.
fn tail(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let start = meta.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    if start > 0
        && let Some(nl) = bytes.iter().position(|b| *b == b'\n')
    {
        bytes.drain(..=nl);
    }
    Ok((bytes, meta.len()))
}
