//! `palisade-controller`: runs the controller, or validates its configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palisade_controller::config::FileConfig;

#[derive(Parser)]
#[command(
    name = "palisade-controller",
    version,
    about = "Palisade controller: action queue, approval, history and the agents' QUIC endpoint"
)]
struct Cli {
    /// TOML configuration file; flags override it.
    #[arg(long, global = true, env = "PALISADE_CONTROLLER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Check the configuration and exit: 0 if it is valid (systemd ExecStartPre).
    Validate,
    /// Write the manual pages into a directory (made if missing); the packages ship them.
    #[command(hide = true)]
    Man {
        /// The directory to write into.
        dir: PathBuf,
    },
}

/// Flags mirror the configuration file's keys (see packaging/etc/controller.toml).
#[derive(clap::Args)]
struct Flags {
    /// Directory for the database, CA, artifacts and the bootstrap admin token.
    #[arg(long, global = true, env = "PALISADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address for agents (QUIC) [default: 0.0.0.0:7443].
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// TCP address for the operators' HTTP API [default: 127.0.0.1:7480].
    #[arg(long, global = true)]
    api: Option<SocketAddr>,
    /// Extra DNS names or IPs for the server certificate.
    #[arg(long = "server-name", global = true)]
    server_names: Vec<String>,
    /// How long a pending action waits for approval before it expires [default: 7d].
    #[arg(long, global = true)]
    approval_expiry: Option<String>,
    /// How long an approved action may take to be delivered and finished [default: 14d].
    #[arg(long, global = true)]
    delivery_timeout: Option<String>,
    /// Interval of the agents' heartbeats; three missed ones end a session [default: 10s].
    #[arg(long, global = true)]
    heartbeat: Option<String>,
    /// Largest artifact an agent may upload, in bytes [default: 1 GiB].
    #[arg(long, global = true)]
    max_artifact_size: Option<u64>,
    /// Most containment targets in force at once [default: 64].
    #[arg(long, global = true)]
    max_contained: Option<u64>,
    /// HTTPS for the API and web UI: auto (unless on loopback) or always [default: auto].
    #[arg(long, global = true)]
    api_tls: Option<String>,
    /// PEM certificate chain for HTTPS [default: issued by the controller's CA].
    #[arg(long, global = true)]
    api_cert: Option<PathBuf>,
    /// PEM private key for --api-cert.
    #[arg(long, global = true)]
    api_key: Option<PathBuf>,
    /// How long a web session lasts after the login [default: 8h].
    #[arg(long, global = true)]
    session_ttl: Option<String>,
    /// Connections one source address may hold before they are a verified device
    /// (handshaking or enrolling); more are refused [default: 32].
    #[arg(long, global = true)]
    max_pending_per_source: Option<u64>,
    /// Handshakes in progress above which new connections must prove their address with a
    /// QUIC retry; 0 = always [default: 64].
    #[arg(long, global = true)]
    retry_above: Option<u64>,
    /// Handshakes in progress at most; beyond, new connections wait in line up to 10 s (the
    /// line holds sixteen times this), the rest are refused and retry with backoff
    /// [default: 256].
    #[arg(long, global = true)]
    max_handshakes: Option<u64>,
}

fn main() -> ExitCode {
    // Errors are logged as their message chain (`{e:#}`), never with a backtrace, yet anyhow
    // captures one for every error when RUST_BACKTRACE is set: in a reconnect storm, every
    // refused or abandoned connection unwound its stack (6 % of the controller's CPU). Panics
    // keep their backtraces; RUST_LIB_BACKTRACE=1 brings the errors' back.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet: no thread has started that could read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Man { dir }) = &cli.command {
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir));
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(anyhow::anyhow!(
                "cannot write the manual pages into {}: {e}",
                dir.display()
            )),
        };
    }
    let file = match &cli.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => return fail(e),
        },
        None => FileConfig::default(),
    };
    let f = cli.flags;
    let overrides = FileConfig {
        data_dir: f.data_dir,
        listen: f.listen,
        api: f.api,
        server_names: (!f.server_names.is_empty()).then_some(f.server_names),
        approval_expiry: f.approval_expiry,
        delivery_timeout: f.delivery_timeout,
        heartbeat: f.heartbeat,
        max_artifact_size: f.max_artifact_size,
        max_contained: f.max_contained,
        api_tls: f.api_tls,
        api_cert: f.api_cert,
        api_key: f.api_key,
        session_ttl: f.session_ttl,
        max_pending_per_source: f.max_pending_per_source,
        retry_above: f.retry_above,
        max_handshakes: f.max_handshakes,
        // The API's limits are set in the file only.
        ..FileConfig::default()
    };
    let config = match file.resolve(overrides) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(Command::Validate) = cli.command {
        println!(
            "configuration valid: data_dir {}, quic {}, api {} ({})",
            config.data_dir.display(),
            config.listen,
            config.api,
            if config.api_uses_tls() {
                "https"
            } else {
                "http"
            }
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(e.into()),
    };
    match runtime.block_on(palisade_controller::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("palisade-controller: {e:#}");
    ExitCode::FAILURE
}
