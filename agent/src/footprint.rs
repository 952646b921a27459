//! The agent's resident footprint: once the agent has been quiet for a while, it hands back
//! the pages of its own program that start-up and past work touched.
//!
//! An idle agent runs little code (a keep-alive, a journal read and a rule check a second),
//! but the code start-up ran (enrolment, the TLS handshake, the journal's migrations, the
//! first nftables reconcile) and, after a scan, the rule engine's, stays mapped and counts in
//! its RSS: 15 MB where the idle work needs 9 (`docs/benchmarks.md`). The trim itself is
//! `host::linux::footprint::trim`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::host::linux::footprint::trim;

/// Tells the trimmer the agent is working; it trims once the agent has been quiet for its
/// quiet time, then waits for the next work.
#[derive(Clone)]
pub struct Trimmer {
    busy: Arc<Notify>,
}

impl Trimmer {
    /// Starts the trimmer on the current runtime. The quiet time counts from now: a trim
    /// follows start-up.
    pub fn start(quiet: Duration) -> Trimmer {
        let busy = Arc::new(Notify::new());
        let notified = busy.clone();
        tokio::spawn(async move {
            loop {
                if tokio::time::timeout(quiet, notified.notified())
                    .await
                    .is_ok()
                {
                    continue;
                }
                match trim() {
                    Ok(bytes) => tracing::debug!(mapped_kib = bytes >> 10, "footprint trimmed"),
                    Err(e) => tracing::debug!(error = %e, "cannot trim the footprint"),
                }
                notified.notified().await;
            }
        });
        Trimmer { busy }
    }

    /// Work started or ended: the quiet time counts again from now.
    pub fn busy(&self) {
        self.busy.notify_one();
    }
}
