//! The channel from the host's watcher to real-time protection's worker: bounded, and it never
//! blocks the watcher. When it is full, the event's root is flagged for a rescan (a set bounded
//! by the number of roots), so nothing is silently dropped. Plain data and std channels: the
//! host layer hands events in, `crate::realtime` takes them out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::WatchEvent;

/// The watcher's side of the channel to the worker. Never blocks: when the channel is
/// full, the event's root is flagged for a rescan (a set bounded by the number of roots).
#[derive(Clone)]
pub struct Feed {
    tx: SyncSender<WatchEvent>,
    roots: Arc<Vec<PathBuf>>,
    overflowed: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl Feed {
    /// A feed for `roots` and the worker's end of it.
    pub fn new(roots: Vec<PathBuf>, capacity: usize) -> (Feed, FeedRx) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let overflowed = Arc::new(Mutex::new(BTreeSet::new()));
        let feed = Feed {
            tx,
            roots: Arc::new(roots),
            overflowed: overflowed.clone(),
        };
        (feed, FeedRx { rx, overflowed })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// A file (or a directory moved in) whose writer is done.
    pub fn written(&self, path: PathBuf) {
        match self.tx.try_send(WatchEvent::Written(path)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(WatchEvent::Written(p) | WatchEvent::Overflow(p))) => {
                self.overflow_of(&p)
            }
        }
    }

    /// Events under `path` (or anywhere, for `None`) may have been lost.
    pub fn lost(&self, path: Option<&Path>) {
        match path {
            Some(p) => self.overflow_of(p),
            None => {
                if let Ok(mut o) = self.overflowed.lock() {
                    o.extend(self.roots.iter().cloned());
                }
            }
        }
    }

    fn overflow_of(&self, path: &Path) {
        let root = root_of(&self.roots, path).unwrap_or(path);
        if let Ok(mut o) = self.overflowed.lock()
            && o.len() < self.roots.len().max(1)
        {
            o.insert(root.to_owned());
        }
    }
}

/// The worker's end of a [`Feed`].
pub struct FeedRx {
    rx: Receiver<WatchEvent>,
    overflowed: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl FeedRx {
    /// The next event within `wait`; `Err(true)` when every feed is gone.
    pub fn recv(&self, wait: Duration) -> Result<WatchEvent, bool> {
        match self.rx.recv_timeout(wait) {
            Ok(e) => Ok(e),
            Err(RecvTimeoutError::Timeout) => Err(false),
            Err(RecvTimeoutError::Disconnected) => Err(true),
        }
    }

    pub fn try_recv(&self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }

    pub fn take_overflowed(&self) -> BTreeSet<PathBuf> {
        self.overflowed
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }
}

/// The longest watched root that holds `path`.
pub fn root_of<'r>(roots: &'r [PathBuf], path: &Path) -> Option<&'r Path> {
    roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())
        .map(PathBuf::as_path)
}
