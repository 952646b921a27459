//! `palisade-controller`: runs the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use palisade_controller::Config;

#[derive(Parser)]
#[command(
    name = "palisade-controller",
    version,
    about = "Palisade controller: action queue, approval, history and the agents' QUIC endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Directory for the database, CA, artifacts and the bootstrap admin token.
    #[arg(
        long,
        env = "PALISADE_DATA_DIR",
        default_value = "/var/lib/palisade-controller"
    )]
    data_dir: PathBuf,
    /// UDP address for agents (QUIC).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// TCP address for the operators' HTTP API.
    #[arg(long, default_value = "127.0.0.1:7480")]
    api: SocketAddr,
    /// Extra DNS names or IPs for the server certificate (agents verify the fixed name
    /// `palisade-controller` against the pinned CA, so this is only for other tools).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// How long a pending action waits for approval before it expires.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    approval_expiry: Duration,
    /// How long an approved action may take to be delivered and finished before it times out.
    #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// Interval of the agents' heartbeats; three missed ones end a session.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Largest artifact (sample, package) an agent may upload, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_artifact_size: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let config = Config {
        data_dir: args.data_dir,
        listen: args.listen,
        api: args.api,
        server_names: args.server_names,
        approval_expiry: args.approval_expiry,
        delivery_timeout: args.delivery_timeout,
        heartbeat: args.heartbeat,
        max_artifact_size: args.max_artifact_size,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(palisade_controller::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}
