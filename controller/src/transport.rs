//! The agents' QUIC endpoint: mutual TLS, enrolment for connections without a certificate,
//! one session per device connection, and upload streams.
//!
//! Architecture invariant: this is the controller's only module that uses quinn. It turns
//! streams into frames for the sans-IO `ControllerSession` and events into store writes; a
//! result is acknowledged to the agent only after the store has committed it.

use palisade_common::text::escape_control;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use palisade_common::action::ActionSpec;
use palisade_common::codec::{Decode, Encode};
use palisade_common::frame::{self, FrameError, HEADER_LEN};
use palisade_common::limits;
use palisade_common::session::{ControllerEvent, ControllerSession};
use palisade_common::wire::{
    AgentMessage, EnrollRequest, EnrollResponse, HANDSHAKE_TIMEOUT, Hello, Opening, RulesReply,
    RulesRequest, UploadBegin, UploadReply, Welcome, close_code,
};
use palisade_common::{ActionKind, DeviceId};
use quinn::{Connection, RecvStream, SendStream};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::admission::{self, Admit, Slot};
use crate::artifacts::{self, PartialUpload};
use crate::service::{Controller, SessionCommand};
use crate::store::{actions, blobs, containment, desired, devices, events, now_ms, scan};

/// The agents' endpoint. `reset_secret` is kept in the data directory so that a restarted
/// controller can answer an agent's packets for a connection it has lost with a stateless
/// reset: agents notice a controller restart at once instead of after their silence limit.
pub fn endpoint(
    tls: rustls::ServerConfig,
    addr: SocketAddr,
    reset_secret: &[u8],
) -> Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    transport.max_concurrent_bidi_streams(16u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.cid_generator(|| Box::new(RandomCids));
    // quinn sends at most one stateless reset per 20 ms by default; after a restart a whole
    // fleet needs one each, at once. A reset is always smaller than the packet that caused it,
    // so it amplifies nothing.
    endpoint_config.min_reset_interval(Duration::ZERO);
    let socket =
        std::net::UdpSocket::bind(addr).with_context(|| format!("cannot listen on udp {addr}"))?;
    size_buffers(&socket);
    QuicThread::endpoint(endpoint_config, server, socket)
}

/// The runtime quinn runs on: the endpoint's driver, which reads the socket and hands each
/// packet to its connection, on a thread of its own (`quic`); the connections' drivers (their
/// packets' crypto, their timers) on the main runtime with the sessions.
///
/// Sharing one runtime, the socket reader was one task among 20,000 sessions and their
/// connections in a fair scheduler: during a fleet-wide action it waited its turn while agents'
/// packets filled the socket buffer, and the kernel dropped them (34,743 at 8,000 agents),
/// each one a retransmission timeout for some agent. Alone on its thread it is always ready to
/// read: a packet the controller cannot handle at once waits in its connection's queue instead
/// of being lost. (With every quinn driver on that thread, it was the one saturated.)
#[derive(Debug)]
struct QuicThread {
    quic: tokio::runtime::Handle,
    main: tokio::runtime::Handle,
    /// Set while `Endpoint::new` runs, whose one spawn is the endpoint's driver.
    endpoint_driver_next: std::sync::atomic::AtomicBool,
}

impl QuicThread {
    /// The process's `quic` runtime, started on first use; its thread runs it for the
    /// process's life.
    fn handle() -> Result<tokio::runtime::Handle> {
        static HANDLE: std::sync::Mutex<Option<tokio::runtime::Handle>> =
            std::sync::Mutex::new(None);
        let mut handle = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handle.as_ref() {
            return Ok(h.clone());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the QUIC runtime")?;
        let h = rt.handle().clone();
        std::thread::Builder::new()
            .name("quic".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .context("cannot start the quic thread")?;
        *handle = Some(h.clone());
        Ok(h)
    }

    /// An endpoint on `socket`, its driver on the `quic` thread. Called within the main
    /// runtime, whose tasks the connections' drivers join.
    fn endpoint(
        config: quinn::EndpointConfig,
        server: quinn::ServerConfig,
        socket: std::net::UdpSocket,
    ) -> Result<quinn::Endpoint> {
        let runtime = Arc::new(QuicThread {
            quic: QuicThread::handle()?,
            main: tokio::runtime::Handle::try_current()
                .context("the QUIC endpoint is made within the main runtime")?,
            endpoint_driver_next: true.into(),
        });
        let endpoint = quinn::Endpoint::new(config, Some(server), socket, runtime.clone())?;
        anyhow::ensure!(
            !runtime
                .endpoint_driver_next
                .load(std::sync::atomic::Ordering::SeqCst),
            "quinn made an endpoint without spawning its driver"
        );
        Ok(endpoint)
    }
}

impl quinn::Runtime for QuicThread {
    fn new_timer(&self, at: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        let _in = self.main.enter();
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        use std::sync::atomic::Ordering;
        if self.endpoint_driver_next.swap(false, Ordering::SeqCst) {
            self.quic.spawn(future);
        } else {
            self.main.spawn(future);
        }
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        // Registered with the `quic` thread's reactor, which its driver polls.
        let _in = self.quic.enter();
        Ok(Arc::new(OneDatagram(
            quinn::TokioRuntime.wrap_udp_socket(socket)?,
        )))
    }
}

/// The endpoint's socket, sending one datagram per system call. quinn keeps each connection's
/// send buffer at the size of the largest batch it ever sent: with segmentation offload, up to
/// ten datagrams. That was the largest item in a heap profile of an idle controller (13 KiB per
/// connection at 2,000 agents); at 20,000, idle RSS fell from about 1,010 to 890 MiB without it.
/// The controller's messages are small; batches would only save system calls on bulk sends
/// (rule bundles).
#[derive(Debug)]
struct OneDatagram(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneDatagram {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// The socket buffers the endpoint asks for. When a fleet reconnects at once, thousands of
/// first packets arrive within a second; at Linux's default (208 KiB) most were dropped
/// (884,089 receive-buffer drops in one 4,000-agent benchmark) and their handshakes waited out
/// retransmission timers while the CPU idled.
const SOCKET_BUFFER: usize = 16 << 20;

/// Sizes the endpoint's socket buffers: forced past `net.core.rmem_max`/`wmem_max` with
/// CAP_NET_ADMIN, else up to those limits, with a warning when that is less than asked.
fn size_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2;
    if granted < SOCKET_BUFFER {
        tracing::warn!(
            granted,
            wanted = SOCKET_BUFFER,
            "the agents' UDP receive buffer is smaller than asked: packets of a reconnecting \
             fleet may be dropped; raise net.core.rmem_max (see docs/operations.md)"
        );
    }
}

/// Random 8-byte connection ids that any controller instance accepts as plausible, so that a
/// restarted one answers packets of connections it lost with a stateless reset (quinn's default
/// generator signs ids with a per-process key and silently drops the others).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&crate::random_bytes::<8>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

pub async fn serve(endpoint: quinn::Endpoint, ctl: Arc<Controller>) {
    let admission = ctl.admission.clone();
    // Connections waiting for a handshake place, oldest first.
    let mut line: std::collections::VecDeque<(Instant, quinn::Incoming, Slot)> = Default::default();
    let start = |incoming: quinn::Incoming, slot: Slot| {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = connection(incoming, ctl, slot).await {
                tracing::debug!(%remote, error = %format!("{e:#}"), "connection ended");
            }
        });
    };
    loop {
        let oldest = line.front().map(|(since, ..)| *since + admission::MAX_WAIT);
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                match admission.decide(
                    remote.ip(),
                    incoming.remote_address_validated(),
                    incoming.may_retry(),
                ) {
                    Admit::Accept(slot) => start(incoming, slot),
                    Admit::Wait(slot) => line.push_back((Instant::now(), incoming, slot)),
                    Admit::Retry => {
                        // Only an address that answers the retry gets a handshake or a place
                        // in line: spoofed sources cost us one small packet each.
                        let _ = incoming.retry();
                    }
                    Admit::Refuse(why) => {
                        tracing::debug!(%remote, why, "refused connection");
                        incoming.refuse();
                    }
                }
            }
            () = admission.freed(), if !line.is_empty() => {}
            () = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now).into()), if oldest.is_some() => {}
        }
        let now = Instant::now();
        while let Some((since, _, slot)) = line.front_mut() {
            if now.duration_since(*since) >= admission::MAX_WAIT {
                let (_, incoming, _) = line.pop_front().expect("front exists");
                tracing::debug!(remote = %incoming.remote_address(), "refused connection: waited too long for a handshake");
                admission.gave_up_waiting();
                incoming.refuse();
            } else if slot.start() {
                let (_, incoming, slot) = line.pop_front().expect("front exists");
                start(incoming, slot);
            } else {
                break;
            }
        }
    }
}

async fn connection(incoming: quinn::Incoming, ctl: Arc<Controller>, mut slot: Slot) -> Result<()> {
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
    slot.handshake_over();
    let conn = conn.context("handshake abandoned: its agent has stopped waiting")??;
    let Some(cert) = peer_certificate(&conn) else {
        // Anonymous: it keeps its slot (counted against its source) until it ends.
        return Box::pin(enrolment(conn, ctl)).await;
    };
    let (device, serial) = crate::pki::client_identity(&cert)?;
    let (dev, ser) = (device.clone(), serial.clone());
    let verdict = Box::pin(ctl.store.read(move |c| {
        let revoked = devices::is_revoked(c, &ser)?;
        Ok((devices::identity(c, &dev)?, revoked))
    }))
    .await?;
    let refusal = match verdict {
        (_, true) => Some("certificate revoked"),
        (None, _) => Some("unknown device"),
        (Some(id), _) if !id.active => Some("device offboarded"),
        (Some(id), _) if id.cert_serial != serial => Some("certificate superseded"),
        _ => None,
    };
    if let Some(reason) = refusal {
        tracing::warn!(%device, serial, reason, remote = %conn.remote_address(), "refused connection");
        conn.close(close_code::REFUSED.into(), reason.as_bytes());
        bail!("refused {device}: {reason}");
    }
    slot.verified();
    let mut session_started = false;
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
        let opening: Opening = read_frame(&mut recv)
            .await?
            .context("stream closed before its opening")?;
        match opening {
            Opening::Session(hello) if !session_started => {
                session_started = true;
                let (ctl, conn, device) = (ctl.clone(), conn.clone(), device.clone());
                // Boxed: the task holds its future for the whole session, and the future
                // holds its arguments and the largest of its awaits (those are boxed too).
                let hello = Box::new(hello);
                tokio::spawn(async move {
                    if let Err(e) = session(ctl, conn, device.clone(), hello, send, recv).await {
                        tracing::info!(%device, error = %format!("{e:#}"), "session ended");
                    }
                });
            }
            Opening::Upload(begin) => {
                let (ctl, device) = (ctl.clone(), device.clone());
                tokio::spawn(async move {
                    if let Err(e) = upload(ctl, device.clone(), begin, send, recv).await {
                        tracing::warn!(%device, error = %format!("{e:#}"), "upload failed");
                    }
                });
            }
            Opening::Rules(req) => {
                let (ctl, device) = (ctl.clone(), device.clone());
                tokio::spawn(async move {
                    if let Err(e) = rules_stream(ctl, req, send).await {
                        tracing::warn!(%device, error = %format!("{e:#}"), "rules download failed");
                    }
                });
            }
            Opening::Session(_) => {
                conn.close(
                    close_code::PROTOCOL.into(),
                    b"second session on one connection",
                );
                bail!("second session stream from {device}");
            }
            Opening::Enroll(_) => {
                conn.close(close_code::PROTOCOL.into(), b"already enrolled");
                bail!("enrolment attempt from enrolled device {device}");
            }
        }
    }
}

fn peer_certificate(conn: &Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

async fn enrolment(conn: Connection, ctl: Arc<Controller>) -> Result<()> {
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("no enrolment request in time")??;
    let opening: Opening = read_frame(&mut recv).await?.context("stream closed")?;
    let Opening::Enroll(req) = opening else {
        conn.close(
            close_code::REFUSED.into(),
            b"a client certificate is required",
        );
        bail!("anonymous connection tried something other than enrolment");
    };
    let response = match enroll(&ctl, req).await {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(remote = %conn.remote_address(), %reason, "enrolment refused");
            EnrollResponse::Refused { reason }
        }
    };
    write_frame(&mut send, &response).await?;
    send.finish()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}

async fn enroll(ctl: &Controller, req: EnrollRequest) -> Result<EnrollResponse, String> {
    let device = DeviceId::from_random(crate::random_bytes());
    let issued = ctl
        .ca
        .sign_device(&req.csr_der, &device)
        .map_err(|e| format!("{e:#}"))?;
    let serial = issued.serial.clone();
    let dev = device.clone();
    ctl.store
        .write(move |c| {
            let (token_id, group) = crate::store::auth::consume_enroll_token(c, &req.token)?;
            devices::insert(
                c,
                &dev,
                &group,
                &req.agent_version,
                &req.capabilities,
                &req.inventory,
                &serial,
                token_id,
            )?;
            // The membership rules may place it elsewhere than its token's group.
            crate::store::groups::evaluate(c, &dev, "controller")
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%device, "device enrolled");
    Ok(EnrollResponse::Enrolled {
        device_id: device,
        certificate_der: issued.der.to_vec(),
        ca_der: ctl.ca.cert_der().to_vec(),
        breakglass_key: ctl.ca.breakglass_public(),
    })
}

/// One agent's session, for as long as it stays connected. So its future lives that long (one
/// per connected agent), and a future is as large as its largest await: the awaits of the
/// setup and of each event are boxed, which took an idle session from 4.6 to 1.5 KiB.
async fn session(
    ctl: Arc<Controller>,
    conn: Connection,
    device: DeviceId,
    hello: Box<Hello>,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<()> {
    if let Some(ip) = conn.local_ip() {
        ctl.registry.saw_local_ip(ip);
    }
    let moved = {
        let (d, h) = (device.clone(), hello.clone());
        let guard = ctl.contain_guard();
        Box::pin(ctl.store.write(move |c| {
            devices::hello(
                c,
                &d,
                &h.agent_version,
                &h.capabilities,
                &h.inventory,
                &h.observed,
            )?;
            // An isolation ended on the device while it was away ends here too.
            desired::apply_local_releases(c, &d, &h.observed)?;
            // Its new inventory may match another membership rule (the desired state
            // below is read after this, so it is the new group's).
            crate::store::groups::evaluate(c, &d, "controller")?;
            containment::follow(c, &d, &guard)
        }))
        .await?
    };
    if moved {
        tracing::info!(%device, "contained device's addresses changed; peers follow");
        Box::pin(ctl.push_desired_to_all()).await;
    }
    let (tx, mut commands) = mpsc::unbounded_channel();
    let generation = ctl.registry.register(&device, tx);
    tracing::info!(%device, hostname = %escape_control(&hello.inventory.hostname), version = %escape_control(&hello.agent_version), "agent connected");

    let mut frames = FrameReader::new(recv);
    let mut session = ControllerSession::accept(
        Instant::now(),
        Welcome {
            device_id: device.clone(),
            server_time_ms: now_ms(),
            heartbeat_secs: ctl.config.heartbeat.as_secs().max(1) as u32,
        },
    );
    let d = device.clone();
    session.desired(Box::pin(ctl.store.read(move |c| desired::get(c, &d))).await?);
    let scans = hello.capabilities.contains(&ActionKind::Scan);
    if scans && let Some(set) = Box::pin(ctl.store.read(scan::current)).await? {
        session.rules(crate::service::rules_info(&set)?);
    }
    let d = device.clone();
    for spec in Box::pin(ctl.store.read(move |c| actions::outstanding(c, &d))).await? {
        Box::pin(deliver(&ctl, &device, &mut session, spec)).await?;
    }
    let mut close_after_flush: Option<(u32, String)> = None;
    let outcome: Result<()> = async {
        loop {
            while let Some(msg) = session.poll_transmit() {
                write_frame(&mut send, &msg).await?;
            }
            if let Some((code, reason)) = close_after_flush.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), send.finish_and_wait()).await;
                conn.close(code.into(), reason.as_bytes());
                return Ok(());
            }
            if session.is_closed() {
                return Ok(());
            }
            let deadline = session.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                frame = frames.next() => match frame {
                    Ok(Some(msg)) => session.handle_message(Instant::now(), *msg),
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        if e.is::<FrameError>() {
                            conn.close(close_code::PROTOCOL.into(), b"malformed frame");
                        }
                        return Err(e);
                    }
                },
                cmd = commands.recv() => match cmd.map(|c| *c) {
                    Some(SessionCommand::Deliver(spec)) => Box::pin(deliver(&ctl, &device, &mut session, spec)).await?,
                    Some(SessionCommand::Send(spec)) => session.deliver(spec),
                    Some(SessionCommand::Desired(state)) => session.desired(state),
                    // Only an agent that scans understands these messages.
                    Some(SessionCommand::Rules(info)) => if scans { session.rules(info) },
                    Some(SessionCommand::Cancel(id)) => if scans { session.cancel(id) },
                    Some(SessionCommand::Close(reason)) => {
                        conn.close(close_code::REPLACED.into(), reason.as_bytes());
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
            }
            while let Some(event) = session.poll_event() {
                if let Some(close) = Box::pin(handle_event(&ctl, &device, &mut session, event)).await? {
                    close_after_flush = Some(close);
                }
            }
        }
    }
    .await;
    ctl.registry.unregister(&device, generation);
    let d = device.clone();
    let _ = Box::pin(ctl.store.write(move |c| devices::touch(c, &d))).await;
    tracing::info!(%device, "agent disconnected");
    outcome
}

/// Records the hop, then sends: if the controller dies in between, the reconnect redelivers.
async fn deliver(
    ctl: &Controller,
    device: &DeviceId,
    session: &mut ControllerSession,
    spec: ActionSpec,
) -> Result<()> {
    let (d, id) = (device.clone(), spec.id);
    if ctl
        .store
        .write(move |c| actions::delivered(c, &d, id))
        .await?
    {
        session.deliver(spec);
    }
    Ok(())
}

/// Applies one session event; returns a close (code, reason) to perform after flushing.
async fn handle_event(
    ctl: &Controller,
    device: &DeviceId,
    session: &mut ControllerSession,
    event: ControllerEvent,
) -> Result<Option<(u32, String)>> {
    let d = device.clone();
    match event {
        ControllerEvent::Receipt(id) => {
            ctl.store
                .write(move |c| actions::acknowledged(c, &d, id))
                .await?;
        }
        ControllerEvent::Progress(id, mut p) => {
            limits::bound_progress(&mut p);
            ctl.store
                .write(move |c| actions::progress(c, &d, id, &p))
                .await?;
        }
        ControllerEvent::Result(mut report) => {
            limits::bound_report(&mut report);
            let id = report.id;
            let deadlines = ctl.deadlines();
            // The upload stored the files; the result names them on the action.
            let mut held = ctl.artifacts.held(&report.artifacts);
            let (rec, changed, remediation) = ctl
                .store
                .write(move |c| {
                    held.extend(blobs::held(c, &report.artifacts)?);
                    let (rec, changed) = actions::result(c, &d, &report, &held)?;
                    // Detections become quarantine actions in the result's own transaction.
                    let remediation = if changed && rec.kind == ActionKind::Scan {
                        scan::remediate(c, &rec, deadlines)?
                    } else {
                        vec![]
                    };
                    Ok((rec, changed, remediation))
                })
                .await?;
            session.result_committed(id);
            for r in remediation {
                tracing::info!(%device, action = %r.id, status = %r.status, scan = %id, "detection: quarantine requested");
                if r.status == palisade_common::ActionStatus::Approved {
                    deliver(ctl, device, session, r.spec()).await?;
                }
            }
            if changed
                && rec.status == palisade_common::ActionStatus::Succeeded
                && desired::changed_by(rec.kind)
            {
                // Committed with the result: the agent hears the new state right after the ack.
                let d = device.clone();
                let state = ctl.store.read(move |c| desired::get(c, &d)).await?;
                tracing::info!(%device, revision = state.revision, restrict_execution = state.restrict_execution, "desired state changed");
                session.desired(state);
            }
            if rec.kind == ActionKind::Offboard
                && rec.status == palisade_common::ActionStatus::Succeeded
            {
                if changed {
                    let d = device.clone();
                    ctl.store
                        .write(move |c| {
                            devices::offboard(c, &d, "controller", "offboard action succeeded")
                        })
                        .await?;
                    tracing::info!(%device, "device offboarded; certificate revoked");
                }
                return Ok(Some((close_code::OFFBOARDED, "device offboarded".into())));
            }
        }
        ControllerEvent::Observed(mut o) => {
            limits::bound_observed(&mut o);
            let changed = ctl
                .store
                .write(move |c| {
                    devices::set_observed(c, &d, &o)?;
                    desired::apply_local_releases(c, &d, &o)
                })
                .await?;
            if let Some(state) = changed {
                tracing::info!(%device, revision = state.revision, "isolation released on the device");
                session.desired(state);
            }
        }
        ControllerEvent::Inventory(i) => {
            let guard = ctl.contain_guard();
            let (moved, regrouped) = ctl
                .store
                .write(move |c| {
                    devices::set_inventory(c, &d, &i)?;
                    let regrouped = match crate::store::groups::evaluate(c, &d, "controller")? {
                        Some(m) => Some((m, desired::get(c, &d)?)),
                        None => None,
                    };
                    Ok((containment::follow(c, &d, &guard)?, regrouped))
                })
                .await?;
            if let Some((m, state)) = regrouped {
                tracing::info!(%device, from = %m.from, to = %m.to, source = %m.source, "device changed group");
                session.desired(state);
            }
            if moved {
                tracing::info!(%device, "contained device's addresses changed; peers follow");
                ctl.push_desired_to_all().await;
            }
        }
        ControllerEvent::Events(mut list) => {
            limits::bound_events(&mut list);
            let n = list.len();
            ctl.store
                .write(move |c| events::record(c, &d, &list))
                .await?;
            tracing::info!(%device, events = n, "device events recorded");
        }
        ControllerEvent::Vault(entries) => {
            ctl.store
                .write(move |c| devices::set_vault(c, &d, &entries))
                .await?;
        }
        ControllerEvent::RulesEnforced(version) => {
            ctl.store
                .write(move |c| scan::set_enforced(c, &d, version))
                .await?;
            tracing::info!(%device, version, "rules enforced");
        }
        ControllerEvent::Detected(mut found) => {
            limits::bound_detections(&mut found);
            let n = found.len();
            let deadlines = ctl.deadlines();
            let created = ctl
                .store
                .write(move |c| scan::remediate_realtime(c, &d, &found, deadlines))
                .await?;
            tracing::info!(%device, detections = n, actions = created.len(), "real-time protection detections recorded");
            for r in created {
                tracing::info!(%device, action = %r.id, status = %r.status, "real-time detection: quarantine requested");
                if r.status == palisade_common::ActionStatus::Approved {
                    deliver(ctl, device, session, r.spec()).await?;
                }
            }
        }
        ControllerEvent::Closed(reason) => {
            tracing::info!(%device, %reason, "session closed");
        }
    }
    Ok(None)
}

/// Sends a rule-set bundle: one `RulesReply` frame, then the raw bytes, then FIN.
async fn rules_stream(ctl: Arc<Controller>, req: RulesRequest, mut send: SendStream) -> Result<()> {
    let version = req.version;
    let found = ctl
        .store
        .read(move |c| Ok((scan::get(c, version)?, scan::bundle(c, version)?)))
        .await?;
    let (Some(set), Some(bytes)) = found else {
        write_frame(
            &mut send,
            &RulesReply::Refused {
                reason: format!("no rule set version {version}"),
            },
        )
        .await?;
        send.finish()?;
        return Ok(());
    };
    let info = crate::service::rules_info(&set)?;
    write_frame(
        &mut send,
        &RulesReply::Bundle {
            version: info.version,
            size: bytes.len() as u64,
            sha256: info.sha256,
        },
    )
    .await?;
    send.write_all(&bytes).await?;
    send.finish()?;
    let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
    Ok(())
}

/// Where an upload's bytes go: memory for a whole upload (`wire::WHOLE_UPLOAD_MAX`), kept in
/// the database, else its partial file (`None`: the artifact store already holds it, the
/// bytes are dropped).
enum Sink {
    Memory(Vec<u8>),
    File(Option<PartialUpload>),
}

async fn upload(
    ctl: Arc<Controller>,
    device: DeviceId,
    begin: UploadBegin,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<()> {
    let refuse = |reason: String| UploadReply::Refused { reason };
    let whole = begin.size <= blobs::MAX_LEN;
    let problem = if begin.size > ctl.artifacts.max_size {
        Some(format!(
            "artifact of {} bytes exceeds the controller's limit of {}",
            begin.size, ctl.artifacts.max_size
        ))
    } else if begin.name.is_empty() || begin.name.len() > 128 || begin.name.contains(['/', '\0']) {
        Some(format!("invalid artifact name {:?}", begin.name))
    } else if whole {
        // Checked in the write that stores it: one store job per whole upload.
        None
    } else {
        // Only the owner and status: an upload per device per action, at fleet scale.
        let (d, id) = (device.clone(), begin.action);
        ctl.store
            .read(move |c| actions::owned_open(c, &d, id))
            .await
            .err()
            .map(|e| e.to_string())
    };
    if let Some(reason) = problem {
        write_frame(&mut send, &refuse(reason.clone())).await?;
        send.finish()?;
        bail!("upload refused: {reason}");
    }
    let hex = hex::encode(begin.sha256);
    let (mut sink, offset) = if whole {
        // Nothing to resume: the agent sent the bytes with the opening.
        (Sink::Memory(Vec::with_capacity(begin.size as usize)), 0)
    } else if ctl.artifacts.contains(&hex) {
        (Sink::File(None), begin.size)
    } else {
        let (f, have) = ctl
            .artifacts
            .resume(begin.action, &begin.sha256, begin.size)?;
        if have > 0 {
            tracing::info!(%device, action = %begin.action, name = %escape_control(&begin.name), offset = have, size = begin.size, "upload resumes where it stopped");
        }
        (Sink::File(Some(f)), have)
    };
    write_frame(&mut send, &UploadReply::Resume { offset }).await?;
    let mut received = offset;
    // quinn's own buffers, in order: no buffer of ours to allocate and zero per upload.
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        received += chunk.bytes.len() as u64;
        if received > begin.size {
            write_frame(&mut send, &refuse("more bytes than announced".into())).await?;
            send.finish()?;
            bail!("upload overran its announced size");
        }
        match &mut sink {
            Sink::Memory(bytes) => bytes.extend_from_slice(&chunk.bytes),
            Sink::File(Some(f)) => f.append(&chunk.bytes)?,
            Sink::File(None) => {}
        }
    }
    let stored = match sink {
        Sink::Memory(bytes) => match artifacts::verify(&bytes, &begin.sha256, begin.size) {
            Err(e) => Err(e),
            Ok(()) => {
                let (d, id) = (device.clone(), begin.action);
                ctl.store
                    .write(move |c| {
                        actions::owned_open(c, &d, id)?;
                        blobs::put(c, &hex, &bytes)
                    })
                    .await
                    .map_err(anyhow::Error::from)
            }
        },
        Sink::File(None) => ctl.artifacts.flushed().await,
        Sink::File(Some(f)) => {
            drop(f);
            ctl.artifacts
                .commit(begin.action, begin.sha256, begin.size)
                .await
                .map(drop)
        }
    };
    match stored {
        // Durable in the store: the action's result names it (`actions::result`).
        Ok(()) => {
            write_frame(&mut send, &UploadReply::Stored).await?;
            tracing::info!(%device, action = %begin.action, name = %escape_control(&begin.name), size = begin.size, "artifact stored");
        }
        Err(e) => {
            write_frame(&mut send, &refuse(format!("{e:#}"))).await?;
            send.finish()?;
            bail!("upload refused: {e:#}");
        }
    }
    send.finish()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}

/// An agent's messages on its session stream. The session waits for the next one in `select!`
/// beside its commands and timers, so the wait must be cancel-safe: quinn's `read_chunk` is, and
/// the bytes of a frame read so far wait in the reassembler. (A task of its own per session and
/// a channel to it held 33 MB of the RSS of a controller with 20,000 idle agents.)
struct FrameReader {
    recv: RecvStream,
    frame: frame::Reassembler,
}

impl FrameReader {
    fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            frame: frame::Reassembler::default(),
        }
    }

    /// The next message, boxed (the session's future holds it across awaits); `None` when
    /// the stream ends between two frames. Cancel-safe.
    async fn next(&mut self) -> Result<Option<Box<AgentMessage>>> {
        loop {
            let wanted = self.frame.wanted()?;
            match self.recv.read_chunk(wanted, true).await? {
                Some(chunk) => {
                    if let Some(msg) = self.frame.push(&chunk.bytes)? {
                        return Ok(Some(Box::new(msg)));
                    }
                }
                None if self.frame.at_boundary() => return Ok(None),
                None => bail!("the stream ended inside a frame"),
            }
        }
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: Decode<()>>(recv: &mut RecvStream) -> Result<Option<T>> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(frame::decode_body(&body)?))
}

pub async fn write_frame<T: Encode>(send: &mut SendStream, msg: &T) -> Result<()> {
    send.write_all(&frame::encode(msg)?).await?;
    Ok(())
}

trait FinishAndWait {
    async fn finish_and_wait(&mut self) -> Result<()>;
}

impl FinishAndWait for SendStream {
    async fn finish_and_wait(&mut self) -> Result<()> {
        self.finish()?;
        let _ = self.stopped().await;
        Ok(())
    }
}
