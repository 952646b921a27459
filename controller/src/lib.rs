//! The Palisade controller: queues every action for approval, delivers it to the agents over
//! QUIC, records results, history and audit, and serves the operators' JSON API.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod config;
pub mod fsutil;
pub mod pki;
pub mod rules;
pub mod service;
pub mod store;
pub mod transport;

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
        }
    }
}

/// Where the controller actually listens, written to `<data-dir>/listening.json` once both
/// endpoints are bound (useful with port 0, and for tools that start a controller).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    pub quic: SocketAddr,
    pub api: SocketAddr,
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
    let tls = pki::server_tls(&ca, &config.server_names)?;
    let fingerprint = ca.fingerprint();
    let controller = Arc::new(Controller::new(store, artifacts, ca, config.clone()));

    let reset_secret = secret(&config.data_dir.join("reset.key"))?;
    let endpoint = transport::endpoint(tls, config.listen, &reset_secret)?;
    let quic_addr = endpoint.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen on {}", config.api))?;
    let api_addr = listener.local_addr()?;
    let listening = Listening {
        quic: quic_addr,
        api: api_addr,
        ca_sha256: fingerprint.clone(),
    };
    std::fs::write(
        config.data_dir.join("listening.json"),
        serde_json::to_vec_pretty(&listening)?,
    )?;
    tracing::info!(%quic_addr, %api_addr, ca_sha256 = %fingerprint, "controller listening");

    tokio::spawn(transport::serve(endpoint.clone(), controller.clone()));
    tokio::spawn(service::sweeper(controller.clone()));
    let app = api::router(controller.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    server.await?;
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
