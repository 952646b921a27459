//! The agent's main loop: keep one session connection to the controller, journal what arrives,
//! run it, upload its artifacts, and keep its result in the outbox until acknowledged.
//! Executions run on their own tasks and outlive reconnects.

use palisade_common::text::escape_control;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_common::action::{ActionReport, ActionSpec, Outcome, Progress};
use palisade_common::session::{AgentEvent, AgentSession};
use palisade_common::wire::{Detection, DeviceEvent, Hello, ObservedState};
use palisade_common::{ActionKind, ActionParams};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::events::Aggregator;
use crate::executor::{CAPABILITIES, Executor, ProbeRequest, Scanner, Upload};
use crate::footprint::Trimmer;
use crate::host::{CollectLimits, Host};
use crate::identity::{self, Identity};
use crate::journal::Journal;
use crate::realtime::Realtime;
use crate::transport::{self, LinkEnd, UploadError, Uploader};

#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// Largest file `request sample` uploads.
    pub max_sample: u64,
    /// Largest investigation package uploaded.
    pub max_package: u64,
    /// The budget of each collector of an investigation package.
    pub collect: CollectLimits,
    /// How long a silent link may stay up before it counts as lost.
    pub link_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a new isolation may take to prove the controller still answers.
    pub verify_isolation: Duration,
    /// Scanner worker threads.
    pub scan_threads: usize,
    /// Files above this many bytes are skipped by scans.
    pub scan_max_file_size: u64,
    /// Share of each scan worker's time spent working (100: no limit).
    pub scan_cpu_percent: u8,
    /// Directories real-time protection watches (with everything below them) when the
    /// controller turns it on.
    pub realtime_paths: Vec<PathBuf>,
}

impl Settings {
    pub fn new(state_dir: PathBuf) -> Settings {
        Settings {
            state_dir,
            max_sample: 256 << 20,
            max_package: 512 << 20,
            collect: CollectLimits::default(),
            link_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            verify_isolation: Duration::from_secs(5),
            scan_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            scan_max_file_size: 128 << 20,
            scan_cpu_percent: 100,
            realtime_paths: crate::realtime::DEFAULT_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// How `run` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or ctrl-c.
    Stopped,
    /// The device was offboarded: identity and journal are erased.
    Offboarded,
}

enum ExecEvent {
    /// The report, and the spool files to delete once it is journaled.
    Finished(ActionReport, Vec<PathBuf>),
    /// A running action's progress, to pass on.
    Progress(palisade_common::ActionId, Progress),
    /// A new rule set is loaded: tell the controller.
    RulesLoaded(u64),
    /// Fetching or loading a rule set failed; it is tried again at the next announcement.
    RulesFailed(u64),
}

/// What the watch did on its own, for the session to report.
#[derive(Debug)]
enum WatchNews {
    /// An isolation's time box ran out: it is released.
    Expired,
    /// Our table was removed or altered, and is put back: what was found.
    Tampered(String),
    /// The exec restriction had drifted (a listener that died) and was reapplied.
    Reapplied,
}

pub async fn run<H: Host>(settings: Settings, host: H) -> Result<Exit> {
    let identity = Identity::load(&settings.state_dir)?;
    let spool = settings.state_dir.join("spool");
    identity::private_dir(&spool)?;
    let journal_path = settings.state_dir.join("journal.sqlite");
    let mut journal = Journal::open(&journal_path)?;
    let mut executor = Executor::new(
        host,
        spool.clone(),
        settings.max_sample,
        journal_path.clone(),
    );
    executor.max_package = settings.max_package;
    executor.collect = settings.collect;
    executor.net.controller = Some(identity.info.controller.clone());
    executor.net.verify_within = settings.verify_isolation;
    let mut scanner = Scanner::default();
    scanner.threads = settings.scan_threads;
    scanner.max_file_size = settings.scan_max_file_size;
    scanner.cpu_percent = settings.scan_cpu_percent;
    executor.scanner = Arc::new(scanner);
    load_rules(&executor, &settings.state_dir);
    let executor = Arc::new(executor);
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<ProbeRequest>();
    executor.set_prober(probe_tx);
    // The rule-set version being fetched, so that repeated announcements fetch it once.
    let mut fetching: Option<u64> = None;
    let (exec_tx, mut exec_rx) = mpsc::unbounded_channel::<ExecEvent>();
    let (uploader_tx, uploader_rx) = watch::channel::<Option<Uploader>>(None);
    tracing::info!(device = %identity.info.device_id, controller = %identity.info.controller, "agent starting");

    // A crash may have interrupted a quarantine or a release: finish or roll it back before
    // anything else touches the vault.
    match executor.host().vault_recover() {
        Ok(steps) => {
            for step in steps {
                tracing::warn!(%step, "vault recovery");
            }
        }
        Err(e) => tracing::error!(error = %e, "vault recovery failed"),
    }

    // Lasting state first, before any connection: a restriction or an isolation survives
    // restarts (an isolation whose time box ran out meanwhile ends now).
    if executor.expire_isolation(&journal)? {
        tracing::warn!("an isolation's time box ran out while the agent was down; released");
    }
    let (detected_tx, mut detected_rx) =
        mpsc::channel::<Vec<Detection>>(crate::realtime::DETECTIONS_CAPACITY);
    let mut realtime: Option<Realtime> = None;
    // Detections not yet sent (kept while the controller is unreachable, bounded).
    let mut unsent_detections: Vec<Detection> = Vec::new();
    let mut observed = executor.reconcile(&journal, None)?;
    apply_realtime(
        &executor,
        &journal,
        &settings,
        &mut realtime,
        &detected_tx,
        &mut observed,
    )?;
    match &observed.drift {
        Some(drift) => tracing::error!(%drift, "cannot enforce the desired state"),
        None => tracing::info!(
            revision = observed.desired_revision,
            restrict_execution = observed.restrict_execution,
            "desired state enforced"
        ),
    }
    let mut events = Aggregator::new(EVENTS_PER_FLUSH, MAX_UNSENT_EVENTS);
    // The time box, the tamper check and the exec self-repair run whether or not the
    // controller is reachable; the watch stops when `run` returns (it drops `_watch`).
    let (watch_tx, mut watch_rx) = mpsc::channel::<WatchNews>(WATCH_NEWS_CAPACITY);
    let _watch = spawn_watch(executor.clone(), journal_path.clone(), watch_tx)?;

    // Work a restart interrupted is run again: every current kind is safe to repeat. Spool
    // files of other actions are leftovers of results journaled before the restart.
    let unfinished = journal.unfinished()?;
    clean_spool(&spool, &unfinished);
    for spec in unfinished {
        tracing::info!(action = %spec.id, kind = %spec.params.kind(), "resuming interrupted action");
        spawn_execution(executor.clone(), spec, exec_tx.clone(), uploader_rx.clone());
    }

    let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
    // Results not yet in the journal's outbox (e.g. the disk is full): journaled, then sent,
    // as soon as the journal takes them. Until then they are neither sent nor forgotten.
    let mut unjournaled: VecDeque<(ActionReport, Vec<PathBuf>)> = VecDeque::new();
    let mut journal_failing = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Start-up, a new session and every action touch code an idle agent does not run again.
    let trimmer = Trimmer::start(QUIET_BEFORE_TRIM);
    loop {
        let hello = Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: CAPABILITIES.to_vec(),
            inventory: executor.host().inventory(),
            observed: executor.observed(&journal)?,
        };
        let connected = tokio::select! {
            c = transport::connect(&identity, &hello, settings.link_timeout) => c,
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Stopped),
            _ = term.recv() => return Ok(Exit::Stopped),
        };
        let mut link = match connected {
            Ok(link) => link,
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "cannot reach the controller");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = tokio::signal::ctrl_c() => return Ok(Exit::Stopped),
                    _ = term.recv() => return Ok(Exit::Stopped),
                }
            }
        };
        let mut last_addresses = hello.inventory.addresses.clone();
        let mut last_inventory_check = Instant::now();
        let mut session = AgentSession::new(
            Instant::now(),
            hello,
            journal.known_ids()?,
            journal.outbox()?,
        );
        let _ = session.take_hello(); // sent by `connect` as the stream's opening
        uploader_tx.send_replace(Some(link.uploader()));
        executor.set_live_controller(Some(link.remote()));
        // Probes asked before the welcome, and those in flight, by number.
        let mut probes_waiting: Vec<ProbeRequest> = Vec::new();
        let mut probes: HashMap<u64, ProbeRequest> = HashMap::new();
        let mut flush = tokio::time::interval(EVENTS_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let end = 'session: loop {
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                msg = link.incoming.recv() => match msg {
                    Some(Ok(m)) => session.handle_message(Instant::now(), m),
                    Some(Err(end)) => break end,
                    None => break LinkEnd::Lost("connection reader stopped".into()),
                },
                ev = exec_rx.recv() => match ev {
                    Some(ExecEvent::Finished(report, cleanup)) => {
                        trimmer.busy();
                        unjournaled.push_back((report, cleanup));
                    }
                    Some(ExecEvent::Progress(id, p)) => {
                        // A scan reports every second: no trim while it runs.
                        trimmer.busy();
                        session.progress(id, p);
                    }
                    Some(ExecEvent::RulesLoaded(version)) => {
                        trimmer.busy();
                        fetching = None;
                        tracing::info!(version, "rules loaded");
                        session.rules_enforced(version);
                    }
                    Some(ExecEvent::RulesFailed(version)) => {
                        // Tried again at the next announcement (every reconnect).
                        tracing::warn!(version, "rules not loaded");
                        fetching = None;
                    }
                    None => break LinkEnd::Lost("executor stopped".into()),
                },
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
                found = detected_rx.recv() => if let Some(found) = found {
                    unsent_detections.extend(found);
                    if unsent_detections.len() > MAX_UNSENT_DETECTIONS {
                        let extra = unsent_detections.len() - MAX_UNSENT_DETECTIONS;
                        tracing::warn!(dropped = extra, "real-time detections not sent: too many while the controller is unreachable");
                        unsent_detections.drain(..extra);
                    }
                    if let Err(back) = session.detections(std::mem::take(&mut unsent_detections)) {
                        unsent_detections = back;
                    }
                },
                news = watch_rx.recv() => if let Some(news) = news {
                    // Found while connected, or while the controller was out of reach.
                    if let WatchNews::Tampered(found) = news {
                        events.add_event(DeviceEvent::NetTamper { found, at_ms: now_ms() });
                    }
                    session.observed(executor.observed(&journal)?);
                },
                req = probe_rx.recv() => if let Some(req) = req {
                    match session.probe() {
                        Some(seq) => { probes.insert(seq, req); }
                        None => probes_waiting.push(req),
                    }
                },
                _ = flush.tick() => {
                    // Addresses move (DHCP, an admin): the controller follows a contained
                    // device's addresses and needs to hear of them.
                    if last_inventory_check.elapsed() >= INVENTORY_EVERY {
                        last_inventory_check = Instant::now();
                        let addresses = executor.host().addresses();
                        if addresses != last_addresses {
                            tracing::info!(?addresses, "addresses changed");
                            last_addresses = addresses;
                            session.inventory(executor.host().inventory());
                        }
                    }
                    let (denials, dropped) = executor.host().take_exec_denials();
                    events.add(denials, dropped, now_ms());
                    if let Err(unsent) = session.events(events.flush()) {
                        events.requeue(unsent);
                    }
                }
                _ = tokio::signal::ctrl_c() => { link.close("agent stopping"); return Ok(Exit::Stopped) }
                _ = term.recv() => { link.close("agent stopping"); return Ok(Exit::Stopped) }
            }
            while let Some((report, _)) = unjournaled.front() {
                if let Err(e) = journal.finish(report) {
                    if !journal_failing {
                        tracing::error!(action = %report.id, error = %format!("{e:#}"), "cannot journal the result; retrying every second");
                    }
                    journal_failing = true;
                    break;
                }
                journal_failing = false;
                let Some((report, cleanup)) = unjournaled.pop_front() else {
                    break;
                };
                for path in cleanup {
                    let _ = std::fs::remove_file(path);
                }
                tracing::info!(action = %report.id, outcome = ?report.outcome, summary = %escape_control(&report.summary), "action finished");
                let kind = journal.kind_of(report.id)?;
                session.submit_result(report);
                if matches!(
                    kind,
                    Some(ActionKind::Quarantine | ActionKind::ReleaseQuarantine)
                ) {
                    session.vault(executor.vault_listing());
                }
            }
            let mut offboarded = false;
            while let Some(event) = session.poll_event() {
                match event {
                    AgentEvent::ProbeAnswered(seq) => {
                        if let Some(reply) = probes.remove(&seq) {
                            let _ = reply.try_send(());
                        }
                    }
                    AgentEvent::Welcomed(w) => {
                        trimmer.busy();
                        backoff.reset();
                        for req in probes_waiting.drain(..) {
                            if let Some(seq) = session.probe() {
                                probes.insert(seq, req);
                            }
                        }
                        tracing::info!(device = %w.device_id, "session established");
                        session.vault(executor.vault_listing());
                        session.rules_enforced(executor.scanner.version());
                        if let Err(back) =
                            session.detections(std::mem::take(&mut unsent_detections))
                        {
                            unsent_detections = back;
                        }
                    }
                    AgentEvent::Rules(info) => {
                        if info.version != executor.scanner.version()
                            && fetching != Some(info.version)
                        {
                            fetching = Some(info.version);
                            spawn_rules_fetch(
                                executor.clone(),
                                settings.state_dir.clone(),
                                info,
                                link.uploader(),
                                exec_tx.clone(),
                            );
                        }
                    }
                    AgentEvent::Cancel(id) => {
                        let running = executor.scanner.cancel(id);
                        tracing::warn!(action = %id, running, "cancel requested");
                    }
                    AgentEvent::Received(spec) => {
                        // Not journaled, not confirmed: the controller delivers it again on
                        // the next connection (e.g. once the full disk has room).
                        if let Err(e) = journal.record(&spec) {
                            tracing::error!(action = %spec.id, error = %format!("{e:#}"), "cannot journal the action; reconnecting to receive it again");
                            break 'session LinkEnd::Lost(format!(
                                "cannot journal action {}",
                                spec.id
                            ));
                        }
                        session.receipt_persisted(spec.id);
                        trimmer.busy();
                        tracing::info!(action = %spec.id, kind = %spec.params.kind(), "action received");
                        session.progress(
                            spec.id,
                            Progress {
                                message: "started".into(),
                                permille: None,
                            },
                        );
                        spawn_execution(
                            executor.clone(),
                            spec,
                            exec_tx.clone(),
                            uploader_rx.clone(),
                        );
                    }
                    AgentEvent::ResultAcked(id) => {
                        // Still in the outbox if this fails: replayed and acknowledged again
                        // on the next connection.
                        if let Err(e) = journal.acknowledged(id) {
                            tracing::error!(action = %id, error = %format!("{e:#}"), "cannot journal the acknowledgement; reconnecting");
                            break 'session LinkEnd::Lost(format!(
                                "cannot journal the ack of {id}"
                            ));
                        }
                        if journal.kind_of(id)? == Some(ActionKind::Offboard) {
                            offboarded = true;
                        }
                    }
                    AgentEvent::Desired(desired) => {
                        trimmer.busy();
                        let revision = desired.revision;
                        // Journaled by `reconcile`; if that fails, the next connection's
                        // `Desired` tries again.
                        let mut observed = match executor.reconcile(&journal, Some(desired)) {
                            Ok(o) => o,
                            Err(e) => {
                                tracing::error!(revision, error = %format!("{e:#}"), "cannot apply the desired state; reconnecting");
                                break 'session LinkEnd::Lost(format!(
                                    "cannot apply desired revision {revision}"
                                ));
                            }
                        };
                        apply_realtime(
                            &executor,
                            &journal,
                            &settings,
                            &mut realtime,
                            &detected_tx,
                            &mut observed,
                        )?;
                        tracing::info!(revision, restrict_execution = observed.restrict_execution, drift = ?observed.drift, "desired state applied");
                        session.observed(observed);
                    }
                    AgentEvent::Closed(reason) => tracing::warn!(%reason, "session closed"),
                }
            }
            while let Some(msg) = session.poll_transmit() {
                if let Err(e) = link.send(&msg).await {
                    tracing::warn!(error = %format!("{e:#}"), "send failed");
                    break;
                }
            }
            if offboarded {
                link.close("offboarded");
                drop(journal);
                return offboard(&settings);
            }
            if session.is_closed() {
                break LinkEnd::Lost("session closed".into());
            }
        };
        uploader_tx.send_replace(None);
        executor.set_live_controller(None);
        match end {
            LinkEnd::Refused(reason) => {
                if journal.offboard_finished()? {
                    // The controller revoked us after committing the offboard; its ack was lost.
                    drop(journal);
                    return offboard(&settings);
                }
                tracing::error!(%reason, "the controller refuses this agent's certificate; re-enroll it");
                let delay = settings.max_backoff;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(Exit::Stopped),
                    _ = term.recv() => return Ok(Exit::Stopped),
                }
            }
            LinkEnd::Lost(reason) => {
                let delay = backoff.next();
                tracing::warn!(%reason, retry_in = ?delay, "connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(Exit::Stopped),
                    _ = term.recv() => return Ok(Exit::Stopped),
                }
            }
        }
    }
}

/// How often denials are drained, aggregated and sent, and the watch looks at the desired
/// state.
const EVENTS_FLUSH: Duration = Duration::from_secs(1);
/// At most this many events per flush: the rate limit of what the agent reports on its own.
const EVENTS_PER_FLUSH: usize = 20;
/// How often the agent looks for changed addresses.
const INVENTORY_EVERY: Duration = Duration::from_secs(5);
/// Quiet time after which the agent hands back the pages of its program that start-up and
/// its last work touched (`footprint`).
const QUIET_BEFORE_TRIM: Duration = Duration::from_secs(10);
/// Least time between two attempts to repair an exec restriction's drift.
const HEAL_EVERY: Duration = Duration::from_secs(30);
/// Events kept while the controller is unreachable.
const MAX_UNSENT_EVENTS: usize = 200;
/// Real-time detections kept while the controller is unreachable (the oldest go first).
const MAX_UNSENT_DETECTIONS: usize = 1000;

/// Reports of the watch kept while no session takes them (the observed state sent on
/// connecting says the rest).
const WATCH_NEWS_CAPACITY: usize = 64;

/// Stops the watch when dropped.
struct Watch {
    _stop: std::sync::mpsc::Sender<()>,
}

/// Every second, on a thread of its own, holds what the desired state asks of the device:
/// ends an isolation whose time box ran out, puts back our nftables table if it was tampered
/// with, and restarts an exec restriction whose listener died (at most every `HEAL_EVERY`, so
/// a lasting failure does not flood the log). So these hold while the controller is
/// unreachable (the connect loop and its back-off) as much as during a session. One read of
/// the journal per round: this is most of what an idle agent does. What the watch did goes to
/// `news`; a full channel (a long time offline) drops the news, not the repair.
fn spawn_watch<H: Host>(
    executor: Arc<Executor<H>>,
    journal_path: PathBuf,
    news: mpsc::Sender<WatchNews>,
) -> Result<Watch> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut journal: Option<Journal> = None;
            let mut last_heal: Option<Instant> = None;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(EVENTS_FLUSH)
            {
                if journal.is_none() {
                    match Journal::open(&journal_path) {
                        Ok(j) => journal = Some(j),
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "watch: cannot open the journal");
                            continue;
                        }
                    }
                }
                let Some(j) = journal.as_ref() else { continue };
                let watched = match executor.watch(j) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot hold the desired state (time box, network rules)");
                        continue;
                    }
                };
                let mut found = Vec::new();
                if watched.expired {
                    found.push(WatchNews::Expired);
                }
                if let Some(what) = watched.tampered {
                    tracing::warn!(found = %escape_control(&what), "network rules tampered with; reapplied");
                    found.push(WatchNews::Tampered(what));
                }
                if let Some(drift) = watched.exec_drift
                    && last_heal.is_none_or(|t| t.elapsed() >= HEAL_EVERY)
                {
                    last_heal = Some(Instant::now());
                    match executor.reconcile(j, None) {
                        Ok(healed) => {
                            tracing::warn!(%drift, healed = healed.drift.is_none(), "desired state drifted; reapplied");
                            found.push(WatchNews::Reapplied);
                        }
                        Err(e) => tracing::error!(%drift, error = %format!("{e:#}"), "desired state drifted; cannot reapply"),
                    }
                }
                for n in found {
                    if let Err(e) = news.try_send(n) {
                        tracing::debug!(news = ?e.into_inner(), "watch news not kept: too many unsent");
                    }
                }
            }
        })
        .context("cannot start the watch")?;
    Ok(Watch { _stop: stop_tx })
}

/// Starts or stops real-time protection as the journaled desired state says, and puts in
/// `observed` whether it watches (and, if it should but cannot, why, as drift).
fn apply_realtime<H: Host>(
    executor: &Arc<Executor<H>>,
    journal: &Journal,
    settings: &Settings,
    realtime: &mut Option<Realtime>,
    detected: &mpsc::Sender<Vec<Detection>>,
    observed: &mut ObservedState,
) -> Result<()> {
    let wanted = journal.desired()?.unwrap_or_default().realtime_protection;
    let mut problem = None;
    match (wanted, realtime.is_some()) {
        (true, false) => {
            let own = vec![settings.state_dir.to_string_lossy().into_owned()];
            match crate::realtime::start(
                executor.shared_host(),
                executor.scanner.clone(),
                settings.realtime_paths.clone(),
                own,
                detected.clone(),
            ) {
                Ok(rt) => {
                    tracing::info!(paths = ?settings.realtime_paths, skipped = ?rt.skipped, "real-time protection on");
                    *realtime = Some(rt);
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot start real-time protection");
                    problem = Some(format!(
                        "real-time protection should be on but cannot start: {e:#}"
                    ));
                }
            }
        }
        (false, true) => {
            *realtime = None;
            tracing::info!("real-time protection off");
        }
        _ => {}
    }
    let active = realtime.is_some();
    executor
        .realtime_active
        .store(active, std::sync::atomic::Ordering::Relaxed);
    observed.realtime_protection = active;
    if observed.drift.is_none() {
        observed.drift = problem;
    }
    Ok(())
}

fn offboard(settings: &Settings) -> Result<Exit> {
    identity::erase(&settings.state_dir).context("cannot erase the agent's state")?;
    tracing::warn!(state_dir = %settings.state_dir.display(), "offboarded: identity and journal erased");
    Ok(Exit::Offboarded)
}

fn spawn_execution<H: Host>(
    executor: Arc<Executor<H>>,
    spec: ActionSpec,
    done: mpsc::UnboundedSender<ExecEvent>,
    uploader: watch::Receiver<Option<Uploader>>,
) {
    tokio::spawn(async move {
        let ex = executor.clone();
        let s = spec.clone();
        let tx = done.clone();
        let id = spec.id;
        let progress = move |p: Progress| {
            let _ = tx.send(ExecEvent::Progress(id, p));
        };
        let (mut report, uploads) =
            match tokio::task::spawn_blocking(move || ex.run(&s, &progress)).await {
                Ok(r) => r,
                Err(e) => (
                    crate::executor::report(
                        &spec,
                        Outcome::Failed,
                        format!("the action crashed: {e}"),
                        serde_json::json!({}),
                    ),
                    vec![],
                ),
            };
        let mut cleanup = Vec::new();
        for upload in uploads {
            if let Err(e) = upload_until_done(&spec, &upload, uploader.clone()).await {
                report.outcome = Outcome::Failed;
                report.summary = format!("{}; {e}", report.summary);
                report.artifacts.retain(|a| a.name != upload.name);
            }
            cleanup.push(upload.snapshot.path.clone());
            cleanup.extend(upload.cleanup.iter().cloned());
        }
        if matches!(spec.params, ActionParams::Offboard {}) {
            tracing::warn!("offboard requested: waiting for the controller to confirm");
        }
        let _ = done.send(ExecEvent::Finished(report, cleanup));
    });
}

/// Largest rule-set bundle an agent accepts.
const MAX_RULES_BUNDLE: u64 = 1 << 30;

fn rules_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("rules").join("bundle.bin")
}

/// Loads the rule set fetched before the restart, if any: scans enforce it before the
/// controller is reachable.
fn load_rules<H: Host>(executor: &Executor<H>, state_dir: &std::path::Path) {
    let path = rules_path(state_dir);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    match crate::scan::Engine::from_bundle(&bytes) {
        Ok(engine) => {
            tracing::info!(
                version = engine.version,
                yara_rules = engine.yara_rules(),
                hash_entries = engine.hash_entries(),
                "rules loaded from the state directory"
            );
            executor.scanner.set_engine(engine);
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot load the saved rules; waiting for the controller's")
        }
    }
}

/// Fetches an announced rule set, keeps it in the state directory (written whole, then
/// renamed), loads it and reports the new version.
fn spawn_rules_fetch<H: Host>(
    executor: Arc<Executor<H>>,
    state_dir: PathBuf,
    info: palisade_common::wire::RulesInfo,
    uploader: Uploader,
    done: mpsc::UnboundedSender<ExecEvent>,
) {
    tokio::spawn(async move {
        let version = info.version;
        let result: Result<u64> = async {
            let bytes = uploader.fetch_rules(&info, MAX_RULES_BUNDLE).await?;
            let loaded = tokio::task::spawn_blocking(move || -> Result<u64> {
                let engine =
                    crate::scan::Engine::from_bundle(&bytes).map_err(anyhow::Error::msg)?;
                let path = rules_path(&state_dir);
                let dir = path.parent().context("rules path")?;
                identity::private_dir(dir)?;
                let tmp = dir.join("bundle.tmp");
                std::fs::write(&tmp, &bytes).context("cannot save the rules")?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path).context("cannot save the rules")?;
                let v = engine.version;
                executor.scanner.set_engine(engine);
                Ok(v)
            })
            .await??;
            Ok(loaded)
        }
        .await;
        match result {
            Ok(v) => {
                let _ = done.send(ExecEvent::RulesLoaded(v));
            }
            Err(e) => {
                tracing::error!(version, error = %format!("{e:#}"), "cannot fetch the rules");
                let _ = done.send(ExecEvent::RulesFailed(version));
            }
        }
    });
}

/// Deletes spool files (named `<action id>.…`) of actions that are not to be run again.
fn clean_spool(spool: &std::path::Path, unfinished: &[ActionSpec]) {
    let keep: std::collections::HashSet<String> =
        unfinished.iter().map(|s| s.id.0.to_string()).collect();
    for entry in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.split('.').next().unwrap_or("");
        if !keep.contains(id) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Retries an upload over whatever connection is live until it is stored or refused for good.
async fn upload_until_done(
    spec: &ActionSpec,
    upload: &Upload,
    mut uploader: watch::Receiver<Option<Uploader>>,
) -> Result<(), UploadError> {
    loop {
        let current = uploader.borrow_and_update().clone();
        let Some(up) = current else {
            if uploader.changed().await.is_err() {
                return Err(UploadError::Interrupted(anyhow::anyhow!("agent stopping")));
            }
            continue;
        };
        let snap = &upload.snapshot;
        match up
            .upload(spec.id, &upload.name, &snap.path, snap.size, snap.sha256)
            .await
        {
            Ok(()) => return Ok(()),
            Err(UploadError::Refused(r)) => return Err(UploadError::Refused(r)),
            Err(e) => {
                tracing::warn!(action = %spec.id, error = %e, "upload interrupted; will resume");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Jittered exponential backoff. Public for the fleet simulator, whose agents must retry the
/// way real ones do (a fixed short retry turns a connect storm into a collapse).
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay: the current one scaled by a random factor in [0.5, 1.5).
    #[allow(clippy::should_implement_trait)] // never ends: not an iterator
    pub fn next(&mut self) -> Duration {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 2];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        let jitter = 0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0;
        let delay = self.current.mul_f64(jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(150));
        assert!(delays[7] >= Duration::from_secs(1) && delays[7] < Duration::from_secs(3));
        b.reset();
        assert!(b.next() < Duration::from_millis(150));
    }
}
