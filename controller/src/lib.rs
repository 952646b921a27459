//! The Palisade controller: queues every action for approval, delivers it to the agents over
//! QUIC, records results, history and audit, and serves the operators' JSON API.

pub mod admission;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod config;
pub mod fsutil;
pub mod pki;
pub mod rules;
pub mod service;
pub mod store;
pub mod tickets;
pub mod transport;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

pub use service::Controller;

/// Everything the controller is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// UDP address of the agents' QUIC endpoint.
    pub listen: SocketAddr,
    /// TCP address of the operators' HTTP API.
    pub api: SocketAddr,
    /// Extra names (DNS or IP) for the server certificate.
    pub server_names: Vec<String>,
    pub approval_expiry: Duration,
    pub delivery_timeout: Duration,
    pub heartbeat: Duration,
    pub max_artifact_size: u64,
    /// Most containment targets in force at once.
    pub max_contained: u64,
    /// HTTPS for the API and the web UI: `Auto` serves TLS unless `api` is a loopback
    /// address; `Always` serves TLS everywhere.
    pub api_tls: ApiTls,
    /// PEM certificate chain and key for the HTTPS listener; without them the controller
    /// issues one from its own CA (named by `server_names`).
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    /// How long a browser session lasts after the login.
    pub session_ttl: Duration,
    /// Connections one source address may hold that are not yet a verified device
    /// (handshaking, or anonymous for enrolment); more are refused.
    pub max_pending_per_source: u64,
    /// Handshakes in progress above which a new connection must first prove its address with
    /// a QUIC retry (0: always).
    pub retry_above: u64,
    /// Handshakes in progress at most; beyond, new connections wait in line briefly or are
    /// refused (`admission`): a storm larger than the controller can finish within the
    /// agents' handshake time-out would otherwise be spent on handshakes their agents have
    /// already given up on.
    pub max_handshakes: u64,
    /// An API request's headers must arrive within this.
    pub api_header_timeout: Duration,
    /// An API request's body must arrive within this (from the end of its headers).
    pub api_body_timeout: Duration,
    /// A keep-alive API connection with no request for this long is closed.
    pub api_idle_timeout: Duration,
    /// API connections open at once, in total and per client address.
    pub api_max_connections: u64,
    pub api_max_connections_per_address: u64,
}

/// When the API listens with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiTls {
    Auto,
    Always,
}

impl std::str::FromStr for ApiTls {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ApiTls::Auto),
            "always" => Ok(ApiTls::Always),
            other => Err(format!("api_tls {other:?} is not auto or always")),
        }
    }
}

impl Config {
    /// Whether the API is served over TLS.
    pub fn api_uses_tls(&self) -> bool {
        self.api_tls == ApiTls::Always || !self.api.ip().is_loopback()
    }
}

impl Config {
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            listen: "127.0.0.1:7443".parse().expect("literal address"),
            api: "127.0.0.1:7480".parse().expect("literal address"),
            server_names: vec![],
            approval_expiry: Duration::from_secs(7 * 24 * 3600),
            delivery_timeout: Duration::from_secs(14 * 24 * 3600),
            heartbeat: Duration::from_secs(10),
            max_artifact_size: 1 << 30,
            max_contained: 64,
            api_tls: ApiTls::Auto,
            api_cert: None,
            api_key: None,
            session_ttl: Duration::from_secs(8 * 3600),
            max_pending_per_source: 32,
            retry_above: 64,
            max_handshakes: 256,
            api_header_timeout: Duration::from_secs(10),
            api_body_timeout: Duration::from_secs(300),
            api_idle_timeout: Duration::from_secs(60),
            api_max_connections: 4096,
            api_max_connections_per_address: 64,
        }
    }
}

/// Where the controller actually listens, written to `<data-dir>/listening.json` once both
/// endpoints are bound (useful with port 0, and for tools that start a controller).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    pub quic: SocketAddr,
    pub api: SocketAddr,
    /// Whether the API speaks HTTPS.
    #[serde(default)]
    pub api_tls: bool,
    pub ca_sha256: String,
}

/// Runs the controller until ctrl-c / SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    fsutil::private_dir(&config.data_dir)?;
    let ca = pki::Ca::load_or_create(&config.data_dir)?;
    let store = store::Store::open(&config.data_dir.join("controller.sqlite"))
        .context("cannot open the controller database")?;
    bootstrap_admin(&store, &config).await?;
    let artifacts = artifacts::Artifacts::open(&config.data_dir, config.max_artifact_size)?;
    let mut tls = pki::server_tls(&ca, &config.server_names)?;
    // Agents resume their TLS sessions on reconnect, across restarts too (tickets.rs). A
    // client spends a ticket on every attempt, and in a storm attempts are refused at the
    // handshake limit: four tickets let an agent be refused three times and still resume.
    let ticket_secret = secret(&config.data_dir.join("ticket.key"))?;
    tls.ticketer = Arc::new(tickets::Tickets::new(&ticket_secret));
    tls.send_tls13_tickets = 4;
    let fingerprint = ca.fingerprint();
    let controller = Arc::new(Controller::new(store, artifacts, ca, config.clone()));

    let reset_secret = secret(&config.data_dir.join("reset.key"))?;
    let endpoint = transport::endpoint(tls, config.listen, &reset_secret)?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen on {}", config.api))?;
    let api_addr = listener.local_addr()?;
    let api_tls = if config.api_uses_tls() {
        Some(web::tls::server_config(&controller.ca, &config)?)
    } else {
        None
    };
    let listening = Listening {
        quic: quic_addr,
        api: api_addr,
        api_tls: api_tls.is_some(),
        ca_sha256: fingerprint.clone(),
    };
    std::fs::write(
        config.data_dir.join("listening.json"),
        serde_json::to_vec_pretty(&listening)?,
    )?;
    tracing::info!(%quic_addr, %api_addr, ca_sha256 = %fingerprint, "controller listening");

    tokio::spawn(transport::serve(endpoint.clone(), controller.clone()));
    tokio::spawn(service::sweeper(controller.clone()));
    let app = web::app(controller.clone());
    web::serve::serve(
        listener,
        api_tls,
        app,
        web::serve::Limits::from_config(&config),
        shutdown_signal(),
    )
    .await;
    endpoint.close(0u32.into(), b"controller shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// On first start, creates the `admin` user and writes its API token to
/// `<data-dir>/admin.token` (0600).
async fn bootstrap_admin(store: &store::Store, config: &Config) -> Result<()> {
    if store.read(store::auth::user_count).await? > 0 {
        return Ok(());
    }
    let token = store
        .write(|c| store::auth::add_user(c, "bootstrap", "admin", auth::Role::Admin, &[]))
        .await?;
    let path = config.data_dir.join("admin.token");
    fsutil::write_private(&path, format!("{token}\n").as_bytes())?;
    tracing::warn!(path = %path.display(), "created user 'admin'; its API token is in this file (0600)");
    eprintln!(
        "palisade-controller: first start: the admin API token is in {}",
        path.display()
    );
    Ok(())
}

/// A 32-byte secret kept in `path` (0600), made on first use.
fn secret(path: &std::path::Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        Ok(_) => anyhow::bail!(
            "{} is not a 32-byte secret; remove it to make a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = random_bytes::<32>().to_vec();
            fsutil::write_private(path, &bytes)?;
            Ok(bytes)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `N` random bytes from the system's secure generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system random generator failed");
    out
}
