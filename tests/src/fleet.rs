//! The fleet simulator: many agents from one process, each with its own key, certificate and
//! QUIC connection (the agent's own transport code, real mutual TLS, the real sans-IO
//! session), and a journal-less executor that answers the two kinds it declares at once: a
//! sample is a small generated file uploaded like a real one; an offboarding succeeds and the
//! simulated agent stops once the controller refuses it. For the scale benchmarks and their CI smoke test.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use palisade_agent::identity::Identity;
use palisade_agent::runtime::Backoff;
use palisade_agent::transport::{self, LinkEnd};
use palisade_common::action::{ActionReport, ArtifactRef, Outcome};
use palisade_common::session::{AgentEvent, AgentSession};
use palisade_common::wire::{EnrollRequest, Hello, Inventory, ObservedState};
use palisade_common::{ActionKind, ActionParams};
use rcgen::{CertificateParams, DnType, KeyPair};
use tokio::sync::watch;

/// Counters the scenarios read.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub sessions: AtomicU64,
    pub results: AtomicU64,
    /// Results the controller said it committed.
    pub committed: AtomicU64,
    /// Failed connection attempts: refused, or given up on (`timeouts`).
    pub errors: AtomicU64,
    /// Connection attempts given up on after the agents' handshake time-out.
    pub timeouts: AtomicU64,
}

/// Enrolls one simulated agent (a fresh key and certificate).
pub async fn enroll(controller: &str, ca_sha256: &str, token: &str, n: usize) -> Result<Identity> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "palisade-sim");
    let csr = params.serialize_request(&key)?;
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_der: csr.der().to_vec(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        inventory: inventory(n),
        capabilities: vec![ActionKind::RequestSample, ActionKind::Offboard],
    };
    transport::enroll(controller, ca_sha256, request, key.serialize_der()).await
}

fn inventory(n: usize) -> Inventory {
    Inventory {
        hostname: format!("sim-{n:05}"),
        os: "Simulated Linux".into(),
        kernel: "6.1.0-sim".into(),
        arch: "x86_64".into(),
        addresses: vec![],
        cpus: 1,
        memory_bytes: 1 << 30,
        boot_time_unix: 0,
        gateways: vec![],
    }
}

/// How many simulated agents share one UDP socket (a QUIC endpoint). The controller tells
/// connections apart by their connection ids, not their addresses, so sharing changes nothing
/// for it; for the simulator, an endpoint per agent cost 20,000 sockets and quinn's 3 MB
/// receive buffer each, zeroed on every connection attempt (80 % of the machine in a storm).
pub const AGENTS_PER_ENDPOINT: usize = 500;

/// How many simulated agents may be connecting at once. Real agents each have a machine of
/// their own; here 20,000 share about one core. Unbounded, a storm's new attempts (a key
/// exchange and a ClientHello each, under the endpoint's lock) crowded out the handshakes
/// already under way: their answers to the controller came late, the handshakes timed out,
/// and every time-out was another attempt. At 20,000 agents the controller then completed
/// nothing for 10 s at a time while this process used its core. The limit is four times the
/// controller's default `--max-handshakes` (256), so its line is still exercised.
pub const MAX_CONNECTING: usize = 1024;

static CONNECTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONNECTING);

/// Endpoints for `agents` simulated agents connecting to `controller`
/// (see [`AGENTS_PER_ENDPOINT`]); agent `n` uses endpoint `n % len`.
/// Each has a 16 MiB receive buffer (forced: the benchmarks run as root), since 500 agents'
/// packets arrive on it; at the default, thousands were dropped in every storm.
pub fn endpoints(controller: std::net::SocketAddr, agents: usize) -> Result<Vec<quinn::Endpoint>> {
    use nix::sys::socket::{setsockopt, sockopt};
    (0..agents.div_ceil(AGENTS_PER_ENDPOINT).max(1))
        .map(|_| {
            let any: std::net::SocketAddr = if controller.is_ipv6() {
                "[::]:0".parse()?
            } else {
                "0.0.0.0:0".parse()?
            };
            let socket = std::net::UdpSocket::bind(any)?;
            setsockopt(&socket, sockopt::RcvBufForce, &(16 << 20))
                .context("a receive buffer of 16 MiB")?;
            Ok(quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )?)
        })
        .collect()
}

/// Runs one simulated agent until `stop` turns true: connects (and reconnects after a
/// controller restart), answers every delivery with an immediate result.
pub async fn run(
    identity: Identity,
    endpoint: quinn::Endpoint,
    n: usize,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_connected = false;
    // The real agent's retry schedule and defaults: a storm of 20,000 retrying at a fixed
    // short interval measures the simulator's own collapse, not the controller.
    let defaults = palisade_agent::runtime::Settings::new(std::path::PathBuf::new());
    let mut backoff = Backoff::new(defaults.min_backoff, defaults.max_backoff);
    while !*stop.borrow() {
        let hello = Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec![ActionKind::RequestSample, ActionKind::Offboard],
            inventory: inventory(n),
            observed: ObservedState::default(),
        };
        let connecting = CONNECTING.acquire().await.expect("never closed");
        let link =
            transport::connect_on(&endpoint, &identity, &hello, Duration::from_secs(30)).await;
        drop(connecting);
        let mut link = match link {
            Ok(l) => l,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let mut session = AgentSession::new(Instant::now(), hello, [], []);
        let _ = session.take_hello();
        let uploader = link.uploader();
        loop {
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                msg = link.incoming.recv() => match msg {
                    Some(Ok(m)) => session.handle_message(Instant::now(), m),
                    Some(Err(LinkEnd::Refused(_))) => return,
                    _ => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
                _ = stop.changed() => { link.close("simulation over"); return }
            }
            while let Some(event) = session.poll_event() {
                match event {
                    AgentEvent::Welcomed(_) => {
                        backoff.reset();
                        if !was_connected {
                            was_connected = true;
                            stats.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        stats.sessions.fetch_add(1, Ordering::Relaxed);
                    }
                    AgentEvent::Received(spec) => {
                        session.receipt_persisted(spec.id);
                        // The receipt goes out before the work, as a real agent's does.
                        while let Some(m) = session.poll_transmit() {
                            let _ = link.send(&m).await;
                        }
                        let report = match &spec.params {
                            ActionParams::RequestSample(p) => {
                                let bytes =
                                    format!("sample of {} on sim-{n}\n", p.path).into_bytes();
                                let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
                                let mut sha256 = [0u8; 32];
                                sha256.copy_from_slice(sha.as_ref());
                                let path = scratch_dir()
                                    .join(format!("palisade-sim-{}-{n}", std::process::id()));
                                let uploaded = std::fs::write(&path, &bytes).is_ok()
                                    && uploader
                                        .upload(
                                            spec.id,
                                            "sample",
                                            &path,
                                            bytes.len() as u64,
                                            sha256,
                                        )
                                        .await
                                        .is_ok();
                                let _ = std::fs::remove_file(&path);
                                ActionReport {
                                    id: spec.id,
                                    outcome: if uploaded {
                                        Outcome::Succeeded
                                    } else {
                                        Outcome::Failed
                                    },
                                    summary: "simulated sample".into(),
                                    detail: "{}".into(),
                                    artifacts: vec![ArtifactRef {
                                        name: "sample".into(),
                                        size: bytes.len() as u64,
                                        sha256: hex::encode(sha256),
                                    }],
                                }
                            }
                            // As a real agent's: the controller then revokes the device
                            // and closes the connection, and the simulated agent stops.
                            ActionParams::Offboard {} => ActionReport {
                                id: spec.id,
                                outcome: Outcome::Succeeded,
                                summary: "simulated offboarding".into(),
                                detail: "{}".into(),
                                artifacts: vec![],
                            },
                            _ => ActionReport {
                                id: spec.id,
                                outcome: Outcome::Failed,
                                summary: "not simulated".into(),
                                detail: "{}".into(),
                                artifacts: vec![],
                            },
                        };
                        session.submit_result(report);
                        stats.results.fetch_add(1, Ordering::Relaxed);
                    }
                    AgentEvent::ResultAcked(_) => {
                        stats.committed.fetch_add(1, Ordering::Relaxed);
                    }
                    AgentEvent::Desired(_)
                    | AgentEvent::ProbeAnswered(_)
                    | AgentEvent::Rules(_)
                    | AgentEvent::Cancel(_) => {}
                    AgentEvent::Closed(_) => {}
                }
            }
            let mut failed = false;
            while let Some(m) = session.poll_transmit() {
                if link.send(&m).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || session.is_closed() {
                break;
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Where simulated agents keep the sample they upload: memory when the machine has a tmpfs at
/// /dev/shm. The samples stand for files on other machines; on the controller's disk, their
/// creation and deletion made ext4 search past freshly freed inodes whenever the controller
/// created an artifact (a quarter of its time during a fleet-wide sample).
fn scratch_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Enrolls `count` agents with `concurrency` enrolments in flight.
pub async fn enroll_many(
    controller: &str,
    ca_sha256: &str,
    token: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<Identity>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let (c, ca, t, sem) = (
            controller.to_owned(),
            ca_sha256.to_owned(),
            token.to_owned(),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            enroll(&c, &ca, &t, n).await
        }));
    }
    let mut out = Vec::with_capacity(count);
    for t in tasks {
        out.push(t.await.context("enrolment task")??);
    }
    Ok(out)
}
