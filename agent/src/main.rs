//! `palisade-agent`: enroll this device, then run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palisade_agent::host::linux::LinuxHost;
use palisade_agent::runtime::{self, Exit, Settings};

#[derive(Parser)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade agent: carries out response actions on this device"
)]
struct Cli {
    /// Directory for the identity, journal and spool.
    #[arg(
        long,
        global = true,
        env = "PALISADE_STATE_DIR",
        default_value = "/var/lib/palisade-agent"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this device with a controller (once).
    Enroll {
        /// The controller's QUIC endpoint, HOST:PORT.
        #[arg(long)]
        controller: String,
        /// An enrolment token from `palisadectl enroll-token create`.
        #[arg(long, env = "PALISADE_ENROLL_TOKEN")]
        token: String,
        /// SHA-256 of the controller's CA certificate, as the controller prints it.
        #[arg(long)]
        ca_sha256: String,
    },
    /// Run: keep a session with the controller and carry out actions.
    Run {
        /// Largest file a sample request may upload, in bytes.
        #[arg(long, default_value_t = 256 << 20)]
        max_sample: u64,
        /// Largest investigation package this agent uploads, in bytes.
        #[arg(long, default_value_t = 512 << 20)]
        max_package: u64,
        /// Time budget of each collector of an investigation package (e.g. 30s).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        collector_timeout: std::time::Duration,
        /// Output budget of each collector of an investigation package, in bytes.
        #[arg(long, default_value_t = 32 << 20)]
        collector_max_bytes: u64,
        /// Silence after which the link to the controller counts as lost and is re-made.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        link_timeout: std::time::Duration,
    },
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Enroll {
                controller,
                token,
                ca_sha256,
            } => {
                let id = palisade_agent::enroll(
                    &cli.state_dir,
                    &controller,
                    &token,
                    &ca_sha256,
                    &LinuxHost,
                )
                .await?;
                println!("enrolled as device {}", id.info.device_id);
                Ok(())
            }
            Command::Run {
                max_sample,
                max_package,
                collector_timeout,
                collector_max_bytes,
                link_timeout,
            } => {
                let mut settings = Settings::new(cli.state_dir.clone());
                settings.max_sample = max_sample;
                settings.max_package = max_package;
                settings.collect = palisade_agent::host::CollectLimits {
                    timeout: collector_timeout,
                    max_bytes: collector_max_bytes,
                };
                settings.link_timeout = link_timeout;
                match runtime::run(settings, LinuxHost).await? {
                    Exit::Stopped => eprintln!("palisade-agent: stopped"),
                    Exit::Offboarded => {
                        eprintln!("palisade-agent: offboarded; identity and journal erased")
                    }
                }
                Ok::<(), anyhow::Error>(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
