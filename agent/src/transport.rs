//! The agent's side of QUIC: enrolment with a pinned CA fingerprint, the mutual-TLS session
//! connection, frames in and out, and resumable uploads.
//!
//! Architecture invariant: this is the agent's only module that uses quinn; the runtime sees
//! a [`Link`] of channels and an [`Uploader`].

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use palisade_common::ActionId;
use palisade_common::codec::{Decode, Encode};
use palisade_common::frame::{self, HEADER_LEN};
use palisade_common::wire::{
    ALPN, AgentMessage, CONTROLLER_SERVER_NAME, ControllerMessage, EnrollRequest, EnrollResponse,
    HANDSHAKE_TIMEOUT, Hello, Opening, RulesInfo, RulesReply, RulesRequest, UploadBegin,
    UploadReply, WHOLE_UPLOAD_MAX, close_code,
};
use quinn::{Connection, RecvStream, SendStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::mpsc;

use crate::identity::Identity;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

async fn resolve(controller: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(controller)
        .await
        .with_context(|| {
            format!("cannot resolve controller address {controller:?} (expected HOST:PORT)")
        })?
        .next()
        .ok_or_else(|| anyhow!("controller address {controller:?} resolves to nothing"))
}

fn client_endpoint(remote: SocketAddr) -> Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    Ok(quinn::Endpoint::client(bind)?)
}

/// The silence after which a session connection counts as lost.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

fn quic_config(
    tls: Arc<rustls::ClientConfig>,
    link_timeout: Duration,
) -> Result<quinn::ClientConfig> {
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    let mut transport = quinn::TransportConfig::default();
    let link_timeout = link_timeout.max(Duration::from_secs(1));
    // Half the idle limit: a lost keep-alive is resent (QUIC loss recovery, within a few
    // round trips) long before the link is given up, and a controller holding 20,000 idle
    // agents answers 1,333 keep-alives a second, not the 2,000 a third cost (or the 4,000 of a
    // fixed 5 s). Any packet the agent sends (a heartbeat) puts the next keep-alive off.
    transport.keep_alive_interval(Some(link_timeout / 2));
    transport.max_idle_timeout(Some(link_timeout.try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Verifies the controller against the CA whose SHA-256 the admin gave at enrolment, taking
/// the CA certificate from the chain the controller presents. Remembers why it refused, so the
/// admin gets a sentence instead of a TLS alert number.
#[derive(Debug)]
struct PinnedCa {
    sha256: String,
    provider: Arc<CryptoProvider>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |why: String| {
            *self.refusal.lock().expect("refusal lock") = Some(why.clone());
            rustls::Error::General(why)
        };
        let Some(ca) = intermediates.iter().find(|c| sha256_hex(c) == self.sha256) else {
            let presented: Vec<String> = intermediates.iter().map(|c| sha256_hex(c)).collect();
            return Err(refuse(format!(
                "the controller's CA does not match --ca-sha256 {} (it presented CA {})",
                self.sha256,
                if presented.is_empty() {
                    "none".to_owned()
                } else {
                    presented.join(", ")
                }
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| refuse(format!("unusable CA certificate: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| refuse(format!("cannot verify against the CA: {e}")))?;
        inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| {
                refuse(format!(
                    "the controller's certificate is not valid under the pinned CA: {e}"
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What enrolment yields: the agent's identity, ready to be saved.
pub async fn enroll(
    controller: &str,
    ca_sha256: &str,
    request: EnrollRequest,
    key_der: Vec<u8>,
) -> Result<Identity> {
    let ca_sha256 = ca_sha256.trim().to_ascii_lowercase().replace(':', "");
    if ca_sha256.len() != 64 || !ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "--ca-sha256 must be 64 hex digits (the controller prints it at start and in listening.json)"
        );
    }
    let addr = resolve(controller).await?;
    let refusal = Arc::new(Mutex::new(None));
    let provider = provider();
    let verifier = PinnedCa {
        sha256: ca_sha256.clone(),
        provider: provider.clone(),
        refusal: refusal.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let endpoint = client_endpoint(addr)?;
    let connecting = endpoint.connect_with(
        quic_config(Arc::new(tls), LINK_TIMEOUT)?,
        addr,
        CONTROLLER_SERVER_NAME,
    )?;
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Err(_) => bail!(
            "no answer from the controller at {controller} ({addr}) within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => match refusal.lock().expect("refusal lock").take() {
            Some(why) => bail!("{why}"),
            None => bail!("cannot connect to the controller at {controller} ({addr}): {e}"),
        },
        Ok(Ok(c)) => c,
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &Opening::Enroll(request)).await?;
    send.finish()?;
    let response: EnrollResponse =
        tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv))
            .await
            .context("the controller did not answer the enrolment in time")??
            .context("the controller closed the enrolment stream without an answer")?;
    conn.close(close_code::NORMAL.into(), b"enrolled");
    endpoint.wait_idle().await;
    match response {
        EnrollResponse::Refused { reason } => {
            bail!("enrolment refused by the controller: {reason}")
        }
        EnrollResponse::Enrolled {
            device_id,
            certificate_der,
            ca_der,
            breakglass_key,
        } => {
            if sha256_hex(&ca_der) != ca_sha256 {
                bail!("the controller returned a CA that does not match --ca-sha256");
            }
            Ok(Identity {
                info: crate::identity::AgentInfo {
                    device_id,
                    controller: controller.to_owned(),
                    ca_sha256,
                    breakglass_key: hex::encode(breakglass_key),
                },
                key_der,
                cert_der: certificate_der,
                ca_der,
                tls: Arc::default(),
            })
        }
    }
}

/// Why a link ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// The controller refuses this identity (revoked, superseded, offboarded).
    Refused(String),
    /// Anything else: reconnect.
    Lost(String),
}

/// A live session connection: controller messages come in on `incoming`; `send` writes.
pub struct Link {
    conn: Connection,
    send: SendStream,
    pub incoming: mpsc::Receiver<Result<ControllerMessage, LinkEnd>>,
    _endpoint: quinn::Endpoint,
}

/// Connects on an endpoint of its own (an agent holds one connection at a time).
pub async fn connect(identity: &Identity, hello: &Hello, link_timeout: Duration) -> Result<Link> {
    let addr = resolve(&identity.info.controller).await?;
    connect_on(&client_endpoint(addr)?, identity, hello, link_timeout).await
}

/// The mutual-TLS client configuration of an enrolled identity.
fn client_tls(identity: &Identity) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(identity.ca_der.clone()))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(identity.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Room for the tickets of one controller (rustls keeps up to 8 per server name).
    tls.resumption = rustls::client::Resumption::in_memory_sessions(1);
    Ok(tls)
}

/// Connects on `endpoint`, which many connections may share: the fleet simulator's agents do,
/// since quinn gives every endpoint a receive buffer of about 3 MB, zeroed when it is made.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    hello: &Hello,
    link_timeout: Duration,
) -> Result<Link> {
    let addr = resolve(&identity.info.controller).await?;
    let tls = match identity.tls.get() {
        Some(tls) => tls.clone(),
        None => {
            let tls = Arc::new(client_tls(identity)?);
            identity.tls.get_or_init(|| tls).clone()
        }
    };
    let connecting = endpoint.connect_with(
        quic_config(tls, link_timeout)?,
        addr,
        CONTROLLER_SERVER_NAME,
    )?;
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "no answer from {addr} within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut send, recv) = conn.open_bi().await?;
    write_frame(&mut send, &Opening::Session(hello.clone())).await?;
    let (tx, incoming) = mpsc::channel(64);
    tokio::spawn(read_messages(conn.clone(), recv, tx));
    Ok(Link {
        conn,
        send,
        incoming,
        _endpoint: endpoint.clone(),
    })
}

impl Link {
    pub async fn send(&mut self, msg: &AgentMessage) -> Result<()> {
        write_frame(&mut self.send, msg).await
    }

    /// The controller's address this connection runs to.
    pub fn remote(&self) -> std::net::SocketAddr {
        self.conn.remote_address()
    }

    pub fn uploader(&self) -> Uploader {
        Uploader {
            conn: self.conn.clone(),
        }
    }

    pub fn close(&self, reason: &str) {
        self.conn
            .close(close_code::NORMAL.into(), reason.as_bytes());
    }
}

fn link_end(e: &quinn::ConnectionError) -> LinkEnd {
    match e {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == close_code::REFUSED.into()
                || close.error_code == close_code::OFFBOARDED.into() =>
        {
            LinkEnd::Refused(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => LinkEnd::Lost(other.to_string()),
    }
}

async fn read_messages(
    conn: Connection,
    mut recv: RecvStream,
    tx: mpsc::Sender<Result<ControllerMessage, LinkEnd>>,
) {
    loop {
        let item = match read_frame::<ControllerMessage>(&mut recv).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => {
                // The stream ended: the connection's close reason says why, if it closed.
                let reason = conn.closed().await;
                Err(link_end(&reason))
            }
            Err(e) => match conn.close_reason() {
                Some(reason) => Err(link_end(&reason)),
                None => Err(LinkEnd::Lost(format!("{e:#}"))),
            },
        };
        let end = item.is_err();
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

/// An upload the controller will never take (too large, action not outstanding, bad hash).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload refused by the controller: {0}")]
    Refused(String),
    #[error("upload interrupted: {0:#}")]
    Interrupted(anyhow::Error),
}

/// Uploads artifacts on streams of a live connection.
#[derive(Clone)]
pub struct Uploader {
    conn: Connection,
}

impl Uploader {
    /// Sends the file from wherever the controller says it already holds up to the end.
    /// Downloads the rule-set bundle `info` announced, checks its size and SHA-256, and
    /// returns its bytes.
    pub async fn fetch_rules(&self, info: &RulesInfo, max: u64) -> Result<Vec<u8>> {
        if info.size > max {
            bail!(
                "rule set {} is {} bytes, above this agent's limit of {max}",
                info.version,
                info.size
            );
        }
        let (mut send, mut recv) = self.conn.open_bi().await?;
        write_frame(
            &mut send,
            &Opening::Rules(RulesRequest {
                version: info.version,
            }),
        )
        .await?;
        send.finish()?;
        let reply: RulesReply = read_frame(&mut recv)
            .await?
            .ok_or_else(|| anyhow!("rules stream closed"))?;
        let (size, sha256) = match reply {
            RulesReply::Bundle {
                version,
                size,
                sha256,
            } if version == info.version && size == info.size => (size, sha256),
            RulesReply::Bundle { version, size, .. } => {
                bail!(
                    "asked for rule set {} ({} bytes), got {version} ({size} bytes)",
                    info.version,
                    info.size
                )
            }
            RulesReply::Refused { reason } => bail!("rules refused: {reason}"),
        };
        let bytes = recv.read_to_end(size as usize + 1).await?;
        if bytes.len() as u64 != size {
            bail!(
                "rule set {}: got {} of {size} bytes",
                info.version,
                bytes.len()
            );
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        if digest.as_ref() != sha256 || sha256 != info.sha256 {
            bail!("rule set {}: sha256 mismatch", info.version);
        }
        Ok(bytes)
    }

    pub async fn upload(
        &self,
        action: ActionId,
        name: &str,
        path: &std::path::Path,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<(), UploadError> {
        let interrupted = UploadError::Interrupted;
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| interrupted(e.into()))?;
        let begin = UploadBegin {
            action,
            name: name.to_owned(),
            size,
            sha256,
        };
        write_frame(&mut send, &Opening::Upload(begin))
            .await
            .map_err(interrupted)?;
        // Small enough to send whole: the bytes go with the opening, a round trip sooner.
        let whole = size <= WHOLE_UPLOAD_MAX;
        if whole {
            // One byte past the announced size is enough to tell that the copy grew.
            let mut bytes = Vec::with_capacity(size as usize + 1);
            std::fs::File::open(path)
                .and_then(|f| f.take(size + 1).read_to_end(&mut bytes))
                .map_err(|e| interrupted(e.into()))?;
            if bytes.len() as u64 != size {
                let found = if bytes.len() as u64 > size {
                    "more".to_owned()
                } else {
                    bytes.len().to_string()
                };
                return Err(UploadError::Refused(format!(
                    "the spooled copy is {found} bytes, not the {size} announced"
                )));
            }
            send.write_all(&bytes)
                .await
                .map_err(|e| interrupted(e.into()))?;
            send.finish().map_err(|e| interrupted(e.into()))?;
        }
        let reply: UploadReply = read_frame(&mut recv)
            .await
            .map_err(interrupted)?
            .ok_or_else(|| interrupted(anyhow!("stream closed")))?;
        let offset = match reply {
            UploadReply::Resume { offset: 0 } if whole => 0,
            UploadReply::Resume { offset } if !whole && offset <= size => offset,
            UploadReply::Resume { offset } => {
                return Err(UploadError::Refused(format!(
                    "controller asked to resume at {offset} of {size}"
                )));
            }
            UploadReply::Refused { reason } => return Err(UploadError::Refused(reason)),
            UploadReply::Stored => return Ok(()),
        };
        if !whole {
            let mut file = std::fs::File::open(path).map_err(|e| interrupted(e.into()))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| interrupted(e.into()))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut remaining = size - offset;
            while remaining > 0 {
                let n = file.read(&mut buf).map_err(|e| interrupted(e.into()))?;
                if n == 0 {
                    return Err(UploadError::Refused(
                        "the spooled copy is shorter than announced".into(),
                    ));
                }
                let n = n.min(remaining as usize);
                send.write_all(&buf[..n])
                    .await
                    .map_err(|e| interrupted(e.into()))?;
                remaining -= n as u64;
            }
            send.finish().map_err(|e| interrupted(e.into()))?;
        }
        match read_frame::<UploadReply>(&mut recv)
            .await
            .map_err(interrupted)?
        {
            Some(UploadReply::Stored) => Ok(()),
            Some(UploadReply::Refused { reason }) => Err(UploadError::Refused(reason)),
            Some(other) => Err(interrupted(anyhow!("unexpected reply {other:?}"))),
            None => Err(interrupted(anyhow!(
                "stream closed before the controller confirmed"
            ))),
        }
    }
}

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
