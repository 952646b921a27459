//! Real-time protection's watcher: inotify (through `notify`) on the watched roots and every
//! directory below them. Only "the writer is done" reaches the feed: a close after writing
//! (`IN_CLOSE_WRITE`), a move into a watched directory (`IN_MOVED_TO`, file or whole
//! directory) and a new directory (walked: what was written into it before its own watch was
//! in place has no event). A kernel queue overflow (`IN_Q_OVERFLOW`, notify's `Flag::Rescan`) or a watch
//! error flags the roots for a rescan. The callback runs on notify's thread and never blocks.

use std::path::PathBuf;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, Flag, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};

use crate::host::feed::Feed;
use crate::host::{HostError, Watching};

struct Guard(#[allow(dead_code)] notify::INotifyWatcher);
impl Watching for Guard {}

pub fn watch(roots: &[PathBuf], feed: Feed) -> Result<(Box<dyn Watching>, Vec<String>), HostError> {
    let handler_feed = feed.clone();
    let mut watcher = notify::INotifyWatcher::new(
        move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if ev.flag() == Some(Flag::Rescan) {
                    handler_feed.lost(None);
                    return;
                }
                match ev.kind {
                    // A new directory is walked too: files written into it before its watch
                    // was added have no event of their own.
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                    | EventKind::Create(CreateKind::Folder) => {
                        for p in ev.paths {
                            handler_feed.written(p);
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "real-time protection: watch error");
                if e.paths.is_empty() {
                    handler_feed.lost(None);
                }
                for p in &e.paths {
                    handler_feed.lost(Some(p));
                }
            }
        },
        notify::Config::default(),
    )
    .map_err(|e| HostError::Refused(format!("cannot start inotify: {e}")))?;
    let mut skipped = Vec::new();
    let mut watched = 0;
    for root in roots {
        match std::fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                skipped.push(format!("{}: not a directory", root.display()));
                continue;
            }
            Err(e) => {
                skipped.push(format!("{}: {e}", root.display()));
                continue;
            }
        }
        match watcher.watch(root, RecursiveMode::Recursive) {
            Ok(()) => watched += 1,
            Err(e) => skipped.push(format!("{}: {e}", root.display())),
        }
    }
    if watched == 0 && !roots.is_empty() {
        return Err(HostError::Refused(format!(
            "no directory to watch: {}",
            skipped.join("; ")
        )));
    }
    Ok((Box::new(Guard(watcher)), skipped))
}
