//! `palisade-agent`: enroll this device, then run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palisade_agent::host::linux::LinuxHost;
use palisade_agent::host::linux::exec::ExecConfig;
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
        /// A mount point whose mount, and every mount below it (now and later), is marked for
        /// exec-permission events while execution is restricted. Repeatable. Default: `/`,
        /// i.e. every local filesystem.
        #[arg(long = "exec-mark", value_name = "MOUNT_POINT")]
        exec_mark: Vec<PathBuf>,
        /// A directory whose root-owned, root-only-writable contents may run while execution
        /// is restricted. Repeatable. Default: /usr /bin /sbin /lib /lib32 /lib64 /libx32.
        #[arg(long = "exec-system-path", value_name = "DIR")]
        exec_system_path: Vec<PathBuf>,
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
                    &LinuxHost::default(),
                )
                .await?;
                println!("enrolled as device {}", id.info.device_id);
                Ok(())
            }
            Command::Run {
                max_sample,
                exec_mark,
                exec_system_path,
            } => {
                let mut settings = Settings::new(cli.state_dir.clone());
                settings.max_sample = max_sample;
                let mut exec = ExecConfig::default();
                if !exec_mark.is_empty() {
                    exec.mark_roots = exec_mark;
                }
                if !exec_system_path.is_empty() {
                    exec.system_paths = exec_system_path;
                }
                match runtime::run(settings, LinuxHost::new(exec)).await? {
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
