//! The host-capability layer: everything the agent does to or reads from the machine goes
//! through these traits. `linux` is the real implementation; `fake` records calls for the unit
//! tests of the logic above. New actions add a capability here and an applier in `linux`.
//!
//! Architecture invariant: only `host/linux/` touches the host (files outside the agent's
//! state directory, processes, firewall, fanotify).

pub mod exec_plan;
pub mod fake;
pub mod feed;
pub mod linux;
pub mod net_plan;

use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_common::wire::{ExecDenial, Inventory};
use serde::Serialize;

use crate::vault::{EntryMeta, Released};

/// A file copied out of its place for upload: the copy is ours, so its bytes cannot change
/// between hashing and sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> HostError {
        HostError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A process killed because it used a file being quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Killed {
    pub pid: i32,
    pub cmdline: String,
    /// `exe`, `open` or `mapped`.
    pub uses: &'static str,
}

/// A file moved into the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub entry: EntryMeta,
    pub killed: Vec<Killed>,
    /// The entry was already committed by an earlier run of the same action.
    pub already: bool,
}

/// The budget of one collector of an investigation package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectLimits {
    /// Wall-clock time a collector may take before it is given up on.
    pub timeout: Duration,
    /// Bytes of output a collector may produce; more is cut.
    pub max_bytes: u64,
}

impl Default for CollectLimits {
    fn default() -> CollectLimits {
        CollectLimits {
            timeout: Duration::from_secs(30),
            max_bytes: 32 << 20,
        }
    }
}

/// How one collector ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectStatus {
    /// Everything it looks at was collected.
    Ok,
    /// It stopped early (budget) or skipped some items; what it has is in the package.
    Partial,
    /// What it reads does not exist on this host (e.g. no nft); nothing to collect.
    Unavailable,
    /// It failed; the error says why.
    Failed,
    /// It overran its time budget and was abandoned.
    TimedOut,
}

/// A file a collector puts in the package, named relative to the package root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What one collector produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub collector: String,
    pub status: CollectStatus,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub files: Vec<CollectedFile>,
}

/// The code-execution policy to enforce: restricted or not, and the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecPolicy {
    pub restrict: bool,
    pub allow_sha256: Vec<[u8; 32]>,
    pub allow_paths: Vec<String>,
}

/// What the host found enforced about code execution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecStatus {
    /// Marks are in place and the listener answers.
    pub restricted: bool,
    /// Mount points carrying an exec-permission mark.
    pub marked: Vec<String>,
    /// The listener thread runs and has polled within the last two seconds.
    pub listener_alive: bool,
    /// Exec events answered and denied since the restriction began.
    pub answered: u64,
    pub denied: u64,
    pub allowlist_sha256: usize,
    pub allowlist_paths: usize,
}

/// Our nftables table as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// SHA-256 (hex) of the listing; `None` when the table does not exist.
    pub digest: Option<String>,
    pub listing: String,
    /// When the transaction that made it was committed (unix ms), for a status `apply_net`
    /// returns: the moment the rules took effect, before they were read back.
    pub committed_at_ms: Option<i64>,
}

/// Identity and change times of a file met by a scan: the clean-file cache's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// Why a scan did not read a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Above the per-file size cap.
    TooLarge,
    /// Not a regular file when opened (FIFO, device, socket …): never read.
    Special,
    /// Gone between listing and opening.
    Vanished,
    /// Could not be opened or read.
    Unreadable(String),
}

/// The scan's logic as the host's walker sees it (see `crate::scan::Scan`).
pub trait ScanSink: Sync {
    /// Leave this path (and, for a directory, everything under it) out.
    fn excluded(&self, path: &Path) -> bool;
    /// Stop as soon as possible.
    fn cancelled(&self) -> bool;
    /// State for one worker thread (its own YARA scanner).
    fn worker(&self) -> Box<dyn ScanWorker + '_>;
}

pub trait ScanWorker {
    /// Whether the file must be read: false if it is known clean.
    fn wants(&mut self, meta: &FileMeta) -> bool;
    /// The file's bytes (up to the size cap).
    fn scan(&mut self, meta: &FileMeta, data: &[u8]);
    fn skipped(&mut self, path: &Path, why: Skip);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanMode {
    /// Where malware lives and starts from: temp dirs, `/dev/shm`, home dirs to a depth,
    /// cron and systemd unit dirs, `ld.so.preload`, running processes' executables.
    Quick,
    /// Every local filesystem, pseudo filesystems skipped.
    Full,
    /// The given paths.
    Custom,
}

/// What to walk and how.
#[derive(Debug, Clone)]
pub struct ScanJob {
    pub mode: ScanMode,
    /// For `Custom`.
    pub paths: Vec<PathBuf>,
    pub threads: usize,
    /// Files above this many bytes are skipped, not read.
    pub max_file_size: u64,
    /// Each worker rests so that it works this share of its time (100: never rests).
    pub cpu_percent: u8,
}

/// What real-time protection's watcher reports (see `crate::realtime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A file's writer closed it after writing, or a file or directory was moved in.
    Written(PathBuf),
    /// Events under this watched root may have been lost (the kernel's queue or ours
    /// overflowed): the root must be scanned again.
    Overflow(PathBuf),
}

/// Stops watching when dropped.
pub trait Watching: Send {}

/// What a walk covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Walked {
    /// The roots walked (directories and single files).
    pub roots: Vec<String>,
    /// Directories that could not be listed, roots that do not exist.
    pub errors: Vec<String>,
    /// Roots asked for by name (custom and full scans) that do not exist or could not be
    /// read: not scanned, never reported clean.
    pub missing: Vec<String>,
    pub directories: u64,
}

pub trait Host: Send + Sync + 'static {
    /// What the device is now: names, addresses, size.
    fn inventory(&self) -> Inventory;

    /// The inventory's addresses alone, polled for changes: hosts with a cheaper way than
    /// the whole inventory say so.
    fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.inventory().addresses
    }

    /// Copies the regular file at `path` to `dest` (created new), at most `max` bytes, and
    /// hashes the copy. Refuses anything that is not a regular file, and any path that goes
    /// through a symbolic link.
    fn snapshot_file(&self, path: &Path, max: u64, dest: &Path) -> Result<Snapshot, HostError>;

    /// Stops the processes using the regular file at `path` (executable, open or mapped),
    /// checks they are gone, and moves the file into the vault as entry `entry`; with
    /// `expect_sha256`, only if the file has that hash. Refuses directories, devices, FIFOs,
    /// sockets, paths through symlinks, the agent's own files, `/proc`, `/sys`, protected
    /// paths and immutable files. Safe to repeat: an entry already committed is finished.
    fn quarantine_file(
        &self,
        path: &Path,
        expect_sha256: Option<&str>,
        entry: &str,
        action: u64,
    ) -> Result<Quarantined, HostError>;

    /// Regular files under `roots` with this sha256.
    fn find_by_hash(&self, roots: &[PathBuf], sha256: &str) -> Result<Vec<PathBuf>, HostError>;

    /// Restores vault entry `entry` to `dest` (default: its original path), refusing to replace
    /// a different file unless `overwrite`. Safe to repeat: a released entry reports its
    /// tombstone.
    fn release(
        &self,
        entry: &str,
        dest: Option<&Path>,
        overwrite: bool,
        action: u64,
    ) -> Result<Released, HostError>;

    /// The committed vault entries.
    fn vault_entries(&self) -> Result<Vec<EntryMeta>, HostError>;

    /// The tombstones of released entries.
    fn vault_released(&self) -> Result<Vec<Released>, HostError>;

    /// Finishes or rolls back whatever a crash interrupted in the vault.
    fn vault_recover(&self) -> Result<Vec<String>, HostError>;

    /// Runs every collector of an investigation package, each within `limits`; one that fails
    /// or overruns is recorded as such and the others still run.
    fn collect_package(&self, limits: &CollectLimits) -> Vec<Collected>;

    /// Enforces `policy`: with `restrict`, marks the configured filesystems for exec-permission
    /// events and answers them by policy (an allowlist change takes effect at once and drops
    /// the verdict cache); without, removes every mark. Idempotent. Returns what it then
    /// found enforced.
    fn set_exec_policy(&self, policy: &ExecPolicy) -> Result<ExecStatus, HostError>;

    /// What is enforced now.
    fn exec_status(&self) -> ExecStatus;

    /// Walks what `job` names in parallel (`job.threads` workers, each with its own
    /// `sink.worker()`), reads every regular file up to the size cap (read, never mapped),
    /// never follows symlinks, never opens FIFOs or devices for reading, and tolerates files
    /// that vanish or cannot be read. Returns when done or when `sink.cancelled()`.
    fn scan(&self, job: &ScanJob, sink: &dyn ScanSink) -> Walked;

    /// Watches `roots` and every directory below them (now and later) for files whose
    /// writer is done (close after writing, moved in), and hands each to `feed` without ever
    /// blocking (a full feed flags its root for a rescan instead). Roots that do not exist
    /// are skipped and named in the returned list. Watching stops when the returned guard is
    /// dropped.
    fn watch(
        &self,
        roots: &[PathBuf],
        feed: feed::Feed,
    ) -> Result<(Box<dyn Watching>, Vec<String>), HostError>;

    /// Denials since the last call (at most a bounded backlog; older ones are counted in
    /// the second value, the number dropped).
    fn take_exec_denials(&self) -> (Vec<ExecDenial>, u64);

    /// Replaces our one nftables table with `script` (from `net_plan::script`) in a single
    /// transaction, and returns the table as the kernel then holds it. Never touches another
    /// table.
    fn apply_net(&self, script: &str) -> Result<NetStatus, HostError>;

    /// Our table as the kernel holds it now.
    fn net_status(&self) -> Result<NetStatus, HostError>;

    /// Whether the firewall may have changed since the last call (true when the host cannot
    /// tell): lets the tamper check skip reading our table while nothing happens.
    fn net_changed(&self) -> bool;

    /// The socket addresses `HOST:PORT` resolves to now.
    fn resolve(&self, host_port: &str) -> Result<Vec<std::net::SocketAddr>, HostError>;
}
