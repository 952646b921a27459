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
        /// A path (file or directory) that quarantine must refuse, besides the agent's own
        /// files, /proc, /sys and the built-in list. Repeatable.
        #[arg(long = "protect")]
        protect: Vec<PathBuf>,
    },
    /// The quarantine vault on this device.
    Vault {
        #[command(subcommand)]
        command: VaultCmd,
    },
    /// Test aid: moves PATH into the vault and back in a loop through the real vault code,
    /// so that a test can kill -9 it at any moment and check `vault recover`.
    #[command(hide = true)]
    VaultDrill {
        path: PathBuf,
        /// Stop after this many moves (default: never).
        #[arg(long)]
        moves: Option<u64>,
    },
}

#[derive(Subcommand)]
enum VaultCmd {
    /// Each entry as JSON, with the sha256 its encoded copy really decodes to.
    List,
    /// Finish or roll back what a crash interrupted (the agent does this at every start).
    Recover,
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
                protect,
            } => {
                let mut settings = Settings::new(cli.state_dir.clone());
                settings.max_sample = max_sample;
                let host = LinuxHost::new(cli.state_dir.clone(), protect);
                match runtime::run(settings, host).await? {
                    Exit::Stopped => eprintln!("palisade-agent: stopped"),
                    Exit::Offboarded => {
                        eprintln!("palisade-agent: offboarded; identity and journal erased")
                    }
                }
                Ok::<(), anyhow::Error>(())
            }
            Command::Vault { command } => vault(&cli.state_dir, command),
            Command::VaultDrill { path, moves } => drill(&cli.state_dir, &path, moves),
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

fn vault(state_dir: &std::path::Path, command: VaultCmd) -> anyhow::Result<()> {
    let host = LinuxHost::new(state_dir.to_owned(), vec![]);
    let vault = host.vault()?;
    match command {
        VaultCmd::Recover => {
            for step in vault.recover()? {
                println!("{step}");
            }
        }
        VaultCmd::List => {
            for e in vault.entries()? {
                let (size, sha) = vault.verify(&e.id)?;
                println!(
                    "{}",
                    serde_json::json!({"id": e.id, "path": e.path, "sha256": e.sha256,
                        "size": e.size, "decoded_sha256": sha, "decoded_size": size,
                        "mode": format!("{:o}", e.mode), "uid": e.uid, "gid": e.gid,
                        "action": e.action, "quarantined_at": e.quarantined_at})
                );
            }
        }
    }
    Ok(())
}

fn drill(
    state_dir: &std::path::Path,
    path: &std::path::Path,
    moves: Option<u64>,
) -> anyhow::Result<()> {
    use palisade_agent::host::Host;
    let host = LinuxHost::new(state_dir.to_owned(), vec![]);
    host.vault_recover()?;
    let name = path.to_string_lossy().into_owned();
    let mut n = 0u64;
    while moves.is_none_or(|m| n < m) {
        let action = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        match host.vault_entries()?.into_iter().find(|e| e.path == name) {
            Some(e) => {
                host.release(&e.id, None, false, action)?;
            }
            None => {
                let id = palisade_agent::vault::entry_id(action, &name);
                host.quarantine_file(path, None, &id, action)?;
            }
        }
        n += 1;
    }
    Ok(())
}
