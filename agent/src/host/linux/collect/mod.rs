//! The collectors of an investigation package: one small module per area, each reading the
//! host and returning files for the package. [`run_all`] runs them one after the other, each
//! on its own thread within its time and size budget, so that one that fails, panics or hangs
//! is recorded as such and the others still run.

mod autoruns;
mod files;
mod logs;
mod network;
mod packages;
mod processes;
mod system;
mod users;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ring::digest;
use serde::Serialize;

use crate::host::{CollectLimits, CollectStatus, Collected, CollectedFile};

/// What a collector sees: its deadline and its byte budget.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub deadline: Instant,
    pub max_bytes: u64,
}

impl Ctx {
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The sha256 of a regular file of at most `max` bytes, or `None` — also when the deadline
    /// passes while it reads, so that one big file cannot carry a collector past its budget
    /// and lose everything it found.
    pub fn hash_file(&self, path: &Path, max: u64) -> Option<String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .ok()?;
        self.hash_open(file, max)
    }

    /// As [`Ctx::hash_file`], for a file already open.
    pub fn hash_open(&self, file: std::fs::File, max: u64) -> Option<String> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() > max {
            return None;
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut src = file.take(max);
        loop {
            if self.expired() {
                return None;
            }
            let n = src.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Some(hex::encode(ctx.finish()))
    }
}

/// A collector's output before the runner wraps it.
#[derive(Debug, Default)]
pub struct Out {
    pub files: Vec<CollectedFile>,
    /// Why the output is incomplete, if it is.
    pub partial: Option<String>,
    /// Why there was nothing to collect, if there was not.
    pub unavailable: Option<String>,
}

impl Out {
    pub fn json(&mut self, name: &str, value: &impl Serialize) {
        let bytes = serde_json::to_vec_pretty(value)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}").into_bytes());
        self.files.push(CollectedFile {
            name: name.to_owned(),
            bytes,
        });
    }

    /// Adds a raw copy of `path` under `raw/`, at most `max` bytes; false if it is not there.
    pub fn raw(&mut self, path: &Path, max: u64) -> bool {
        match read_capped(path, max) {
            Ok((bytes, cut)) => {
                if cut {
                    self.partly(format!("{} cut at {max} bytes", path.display()));
                }
                self.files.push(CollectedFile {
                    name: raw_name(path),
                    bytes,
                });
                true
            }
            Err(_) => false,
        }
    }

    pub fn partly(&mut self, why: String) {
        match &mut self.partial {
            Some(p) if p.len() < 400 => {
                p.push_str("; ");
                p.push_str(&why);
            }
            Some(_) => {}
            None => self.partial = Some(why),
        }
    }
}

pub type Collector = fn(&Ctx) -> anyhow::Result<Out>;

/// Every collector, in package order.
pub const COLLECTORS: &[(&str, Collector)] = &[
    ("system", system::system),
    ("disks", system::disks),
    ("processes", processes::processes),
    ("open_files", processes::open_files),
    ("sockets", network::sockets),
    ("interfaces", network::interfaces),
    ("routes", network::routes),
    ("neighbours", network::neighbours),
    ("dns", network::dns),
    ("proxy", network::proxy),
    ("firewall", network::firewall),
    ("users", users::users),
    ("sudoers", users::sudoers),
    ("logins", users::logins),
    ("autoruns", autoruns::autoruns),
    ("kernel_modules", system::kernel_modules),
    ("packages", packages::packages),
    ("suid_sgid", files::suid_sgid),
    ("temp_files", files::temp_files),
    ("logs", logs::logs),
];

pub fn run_all(limits: &CollectLimits) -> Vec<Collected> {
    run(COLLECTORS, limits)
}

/// Runs `collectors` in order, each on its own thread: a collector that errs, panics, overruns
/// its time or produces more than its bytes is recorded with its status, and the rest go on.
/// An overrunning thread is abandoned (it cannot be stopped from outside); its output is
/// dropped when it ends.
pub fn run(collectors: &[(&str, Collector)], limits: &CollectLimits) -> Vec<Collected> {
    let mut results = Vec::with_capacity(collectors.len());
    for &(name, collector) in collectors {
        let start = Instant::now();
        // The collector stops looking at 90 % of its time: the rest is for turning what it
        // found into files. (A /tmp listing of 14,000 entries took 300 ms past its deadline
        // to encode in a debug build, past the grace, and was lost whole.)
        let ctx = Ctx {
            deadline: start + limits.timeout.mul_f64(0.9),
            max_bytes: limits.max_bytes,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name(format!("collect-{name}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(|| collector(&ctx));
                let _ = tx.send(r);
            });
        // The collector checks its deadline itself; the grace lets it return what it has.
        let grace = Duration::from_millis(500).min(limits.timeout / 2);
        let outcome = match spawned {
            Err(e) => Err((CollectStatus::Failed, format!("cannot start a thread: {e}"))),
            Ok(_) => match rx.recv_timeout(limits.timeout + grace) {
                Ok(Ok(Ok(out))) => Ok(out),
                Ok(Ok(Err(e))) => Err((CollectStatus::Failed, format!("{e:#}"))),
                Ok(Err(panic)) => Err((
                    CollectStatus::Failed,
                    format!("collector panicked: {}", panic_text(&panic)),
                )),
                Err(_) => Err((
                    CollectStatus::TimedOut,
                    format!("gave up after {} ms", limits.timeout.as_millis()),
                )),
            },
        };
        let duration_ms = start.elapsed().as_millis() as u64;
        let collected = match outcome {
            Err((status, error)) => Collected {
                collector: name.to_owned(),
                status,
                error: Some(error),
                duration_ms,
                files: vec![],
            },
            Ok(mut out) => {
                if let Some(why) = enforce_size(&mut out.files, limits.max_bytes) {
                    out.partly(why);
                }
                let (status, error) = match (out.unavailable, out.partial) {
                    (Some(why), _) => (CollectStatus::Unavailable, Some(why)),
                    (None, Some(why)) => (CollectStatus::Partial, Some(why)),
                    (None, None) => (CollectStatus::Ok, None),
                };
                Collected {
                    collector: name.to_owned(),
                    status,
                    error,
                    duration_ms,
                    files: out.files,
                }
            }
        };
        tracing::debug!(collector = name, status = ?collected.status, duration_ms, "collector done");
        results.push(collected);
    }
    results
}

/// Cuts the files so that together they hold at most `max` bytes; says what was cut.
fn enforce_size(files: &mut Vec<CollectedFile>, max: u64) -> Option<String> {
    let total: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
    if total <= max {
        return None;
    }
    let mut left = max;
    for f in files.iter_mut() {
        let keep = (f.bytes.len() as u64).min(left);
        f.bytes.truncate(keep as usize);
        left -= keep;
    }
    files.retain(|f| !f.bytes.is_empty());
    Some(format!(
        "output of {total} bytes cut to the budget of {max}"
    ))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The package name of a raw copy of `path`.
pub fn raw_name(path: &Path) -> String {
    format!("raw/{}", path.display().to_string().trim_start_matches('/'))
}

/// Reads at most `max` bytes of the regular file at `path` (following symbolic links: these
/// are the host's own configuration files); says whether it was cut.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    let cut = bytes.len() as u64 > max;
    bytes.truncate(max as usize);
    Ok((bytes, cut))
}

/// Finds a program in the usual system directories.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

/// Runs a program to completion or until the deadline (then kills it); returns its stdout.
pub fn run_program(program: &Path, args: &[&str], ctx: &Ctx) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let max = ctx.max_bytes;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(max).read_to_end(&mut out);
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut err);
        err
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if ctx.expired() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{} did not finish in time", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        anyhow::bail!(
            "{} {} exited with {status}: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(out)
}

/// User names by uid, from /etc/passwd.
pub fn user_names() -> BTreeMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fine(_: &Ctx) -> anyhow::Result<Out> {
        let mut out = Out::default();
        out.json("fine.json", &serde_json::json!({"ok": true}));
        Ok(out)
    }
    fn broken(_: &Ctx) -> anyhow::Result<Out> {
        anyhow::bail!("cannot read /nonexistent")
    }
    fn panics(_: &Ctx) -> anyhow::Result<Out> {
        panic!("collector bug")
    }
    fn hangs(_: &Ctx) -> anyhow::Result<Out> {
        std::thread::sleep(Duration::from_secs(30));
        Ok(Out::default())
    }
    fn big(_: &Ctx) -> anyhow::Result<Out> {
        let mut out = Out::default();
        for i in 0..3 {
            out.files.push(CollectedFile {
                name: format!("big{i}"),
                bytes: vec![b'x'; 600],
            });
        }
        Ok(out)
    }
    fn missing(_: &Ctx) -> anyhow::Result<Out> {
        Ok(Out {
            unavailable: Some("nft is not installed".into()),
            ..Out::default()
        })
    }

    #[test]
    fn a_failing_panicking_or_hanging_collector_is_recorded_and_the_rest_go_on() {
        let limits = CollectLimits {
            timeout: Duration::from_secs(1),
            max_bytes: 1000,
        };
        let list: &[(&str, Collector)] = &[
            ("broken", broken),
            ("panics", panics),
            ("hangs", hangs),
            ("big", big),
            ("missing", missing),
            ("fine", fine),
        ];
        let started = Instant::now();
        let r = run(list, &limits);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "waited for the hung one"
        );
        let by: BTreeMap<&str, &Collected> = r.iter().map(|c| (c.collector.as_str(), c)).collect();
        assert_eq!(r.len(), 6);
        assert_eq!(by["broken"].status, CollectStatus::Failed);
        assert!(
            by["broken"]
                .error
                .as_deref()
                .unwrap()
                .contains("/nonexistent")
        );
        assert_eq!(by["panics"].status, CollectStatus::Failed);
        assert!(
            by["panics"]
                .error
                .as_deref()
                .unwrap()
                .contains("collector bug")
        );
        assert_eq!(by["hangs"].status, CollectStatus::TimedOut);
        assert!(by["hangs"].duration_ms >= 1000);
        assert_eq!(by["big"].status, CollectStatus::Partial);
        let kept: usize = by["big"].files.iter().map(|f| f.bytes.len()).sum();
        assert_eq!(kept, 1000);
        assert_eq!(by["missing"].status, CollectStatus::Unavailable);
        assert_eq!(by["fine"].status, CollectStatus::Ok);
        assert_eq!(by["fine"].files[0].name, "fine.json");
    }

    #[test]
    fn a_program_past_its_deadline_is_killed() {
        let ctx = Ctx {
            deadline: Instant::now() + Duration::from_millis(200),
            max_bytes: 1 << 20,
        };
        let started = Instant::now();
        let err = run_program(Path::new("/bin/sleep"), &["10"], &ctx).unwrap_err();
        assert!(err.to_string().contains("did not finish in time"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let ctx = Ctx {
            deadline: Instant::now() + Duration::from_secs(10),
            max_bytes: 1 << 20,
        };
        let out = run_program(Path::new("/bin/echo"), &["hi"], &ctx).unwrap();
        assert_eq!(out, b"hi\n");
    }
}
