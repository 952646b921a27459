//! The agent's resident footprint: once the agent has been quiet for a while, it hands back
//! the pages of its own program that start-up and past work touched.
//!
//! An idle agent runs little code (a keep-alive, a journal read and a rule check a second),
//! but the code start-up ran (enrolment, the TLS handshake, the journal's migrations, the
//! first nftables reconcile) and, after a scan, the rule engine's, stays mapped and counts in
//! its RSS: 15 MB where the idle work needs 9 (`docs/benchmarks.md`). The trim itself is
//! `host::linux::footprint::trim`.

use std::time::Duration;

use tokio::sync::watch;

use crate::host::linux::footprint::trim;

/// Tells the trimmer the agent is working; it trims once the agent has been quiet for its
/// quiet time, then waits for the next work. The trimmer stops when this is dropped.
pub struct Trimmer {
    busy: watch::Sender<()>,
}

impl Trimmer {
    /// Starts the trimmer on the current runtime. The quiet time counts from now: a trim
    /// follows start-up.
    pub fn start(quiet: Duration) -> Trimmer {
        Trimmer::start_with(quiet, || match trim() {
            Ok(bytes) => tracing::debug!(mapped_kib = bytes >> 10, "footprint trimmed"),
            Err(e) => tracing::debug!(error = %e, "cannot trim the footprint"),
        })
    }

    /// `start`, calling `on_quiet` instead of the trim.
    fn start_with(quiet: Duration, mut on_quiet: impl FnMut() + Send + 'static) -> Trimmer {
        let (busy, mut work) = watch::channel(());
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(quiet, work.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
                on_quiet();
                if work.changed().await.is_err() {
                    return;
                }
            }
        });
        Trimmer { busy }
    }

    /// Work started or ended: the quiet time counts again from now.
    pub fn busy(&self) {
        self.busy.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trims_once_per_quiet_spell_and_stops_with_its_owner() {
        let trims = Arc::new(AtomicU32::new(0));
        let counted = trims.clone();
        let quiet = Duration::from_secs(10);
        let trimmer = Trimmer::start_with(quiet, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let count = || trims.load(Ordering::SeqCst);
        // Work every 6 s keeps it from trimming.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            trimmer.busy();
        }
        assert_eq!(count(), 0, "trimmed while the agent worked");
        // Quiet: one trim, and no other until the next work.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(count(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count(), 1, "trimmed again without work in between");
        trimmer.busy();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(count(), 2);
        // Work, then the owner goes: no trim after it.
        trimmer.busy();
        drop(trimmer);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(count(), 2, "trimmed after the trimmer was dropped");
        assert_eq!(
            Arc::strong_count(&trims),
            1,
            "the trimmer's task still runs"
        );
    }
}
