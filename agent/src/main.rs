//! `palisade-agent`: enroll this device, run, or validate the configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade_agent::config::FileConfig;
use palisade_agent::host::linux::LinuxHost;
use palisade_agent::runtime::{self, Exit};

#[derive(Parser)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade agent: carries out response actions on this device"
)]
struct Cli {
    /// TOML configuration file; flags override it.
    #[arg(long, global = true, env = "PALISADE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the identity, journal and spool [default: /var/lib/palisade-agent].
    #[arg(long, global = true, env = "PALISADE_STATE_DIR")]
    state_dir: Option<PathBuf>,
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
        #[arg(long, env = "PALISADE_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// SHA-256 of the controller's CA certificate, as the controller prints it.
        #[arg(long)]
        ca_sha256: String,
    },
    /// Run: keep a session with the controller and carry out actions.
    Run {
        /// Largest file a sample request may upload, in bytes [default: 256 MiB].
        #[arg(long)]
        max_sample: Option<u64>,
        /// Largest investigation package this agent uploads, in bytes [default: 512 MiB].
        #[arg(long)]
        max_package: Option<u64>,
        /// Time budget of each collector of an investigation package [default: 30s].
        #[arg(long)]
        collector_timeout: Option<String>,
        /// Output budget of each collector of an investigation package, in bytes [default: 32 MiB].
        #[arg(long)]
        collector_max_bytes: Option<u64>,
        /// Silence after which the link to the controller counts as lost and is re-made [default: 30s].
        #[arg(long)]
        link_timeout: Option<String>,
        /// How long a new isolation may take to prove the controller still answers over the
        /// live connection before it is rolled back [default: 5s].
        #[arg(long)]
        verify_isolation: Option<String>,
        /// A mount point whose mount, and every mount below it (now and later), is marked for
        /// exec-permission events while execution is restricted. Repeatable [default: /, i.e.
        /// every local filesystem].
        #[arg(long = "exec-mark", value_name = "MOUNT_POINT")]
        exec_mark: Vec<PathBuf>,
        /// A directory whose root-owned, root-only-writable contents may run while execution
        /// is restricted. Repeatable [default: /usr /bin /sbin /lib /lib32 /lib64 /libx32].
        #[arg(long = "exec-system-path", value_name = "DIR")]
        exec_system_path: Vec<PathBuf>,
        /// A path (file or directory) that quarantine must refuse, besides the agent's own
        /// files, /proc, /sys and the built-in list. Repeatable [default: none].
        #[arg(long = "protect", value_name = "PATH")]
        protect: Vec<PathBuf>,
        /// Scanner worker threads [default: one per CPU].
        #[arg(long)]
        scan_threads: Option<u64>,
        /// Files above this many bytes are skipped by scans [default: 128 MiB].
        #[arg(long)]
        scan_max_file_size: Option<u64>,
        /// Share of each scan worker's time spent working, 1-100 [default: 100, no limit].
        #[arg(long)]
        scan_cpu_percent: Option<u64>,
        /// A directory real-time protection watches (with everything below it) when the
        /// controller turns it on. Repeatable [default: /tmp /var/tmp /dev/shm /home /root].
        #[arg(long = "realtime-path", value_name = "DIR")]
        realtime_path: Vec<PathBuf>,
    },
    /// Check the configuration (and the enrolment) and exit: 0 if the agent can run.
    Validate,
    /// Release this device from isolation without the controller, with a break-glass code
    /// from `palisadectl devices break-glass` (works offline, once per code).
    ReleaseIsolation {
        /// The release code, as given (dashes and case do not matter).
        #[arg(long)]
        code: String,
    },
    /// The quarantine vault on this device.
    Vault {
        #[command(subcommand)]
        command: VaultCmd,
    },
    /// Scan paths on this machine now, without the controller, and print the result as JSON
    /// (one line per run). Uses the rule set the agent last fetched (or --rules BUNDLE); it
    /// never compiles rules. EICAR is always detected.
    Scan {
        /// Files or directories to scan.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A rules bundle (as fetched from the controller) instead of the state directory's.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Worker threads [default: one per CPU].
        #[arg(long)]
        threads: Option<usize>,
        /// Files above this many bytes are skipped [default: 128 MiB].
        #[arg(long)]
        max_file_size: Option<u64>,
        /// A path or glob to leave out. Repeatable.
        #[arg(long = "exclude")]
        exclusions: Vec<String>,
        /// Scan this many times in one process: runs after the first use the clean-file cache.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Test aid: moves PATH into the vault and back in a loop through the real vault code,
    /// so that a test can kill -9 it at any moment and check `vault recover`.
    /// Write the manual pages into a directory (made if missing); the packages ship them.
    #[command(hide = true)]
    Man {
        /// The directory to write into.
        dir: PathBuf,
    },
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
    match main_result(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_result(cli: Cli) -> anyhow::Result<()> {
    if let Command::Man { dir } = &cli.command {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
        return clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir)
            .with_context(|| format!("cannot write the manual pages into {}", dir.display()));
    }
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut overrides = FileConfig {
        state_dir: cli.state_dir.clone(),
        ..Default::default()
    };
    if let Command::Run {
        max_sample,
        max_package,
        collector_timeout,
        collector_max_bytes,
        link_timeout,
        verify_isolation,
        exec_mark,
        exec_system_path,
        protect,
        scan_threads,
        scan_max_file_size,
        scan_cpu_percent,
        realtime_path,
    } = &cli.command
    {
        overrides.verify_isolation = verify_isolation.clone();
        overrides.max_sample = *max_sample;
        overrides.max_package = *max_package;
        overrides.collector_timeout = collector_timeout.clone();
        overrides.collector_max_bytes = *collector_max_bytes;
        overrides.link_timeout = link_timeout.clone();
        overrides.exec_mark = (!exec_mark.is_empty()).then(|| exec_mark.clone());
        overrides.exec_system_paths =
            (!exec_system_path.is_empty()).then(|| exec_system_path.clone());
        overrides.protect = (!protect.is_empty()).then(|| protect.clone());
        overrides.scan_threads = *scan_threads;
        overrides.scan_max_file_size = *scan_max_file_size;
        overrides.scan_cpu_percent = *scan_cpu_percent;
        overrides.realtime_paths = (!realtime_path.is_empty()).then(|| realtime_path.clone());
    }
    let protect = file.protect(&overrides)?;
    let (settings, exec) = file.resolve_with_exec(overrides)?;
    match cli.command {
        Command::Validate => {
            let identity = palisade_agent::identity::Identity::load(&settings.state_dir)?;
            println!(
                "configuration valid: state_dir {}, enrolled as device {} with controller {}",
                settings.state_dir.display(),
                identity.info.device_id,
                identity.info.controller
            );
            return Ok(());
        }
        Command::Vault { command } => return vault(&settings.state_dir, command),
        Command::ReleaseIsolation { code } => {
            let identity = palisade_agent::identity::Identity::load(&settings.state_dir)?;
            let key = hex::decode(&identity.info.breakglass_key)
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "this agent holds no break-glass key (enrolled before release codes existed); re-enroll it"
                    )
                })?;
            let executor = palisade_agent::executor::Executor::new(
                LinuxHost::default(),
                settings.state_dir.join("spool"),
                settings.max_sample,
                settings.state_dir.join("journal.sqlite"),
            );
            println!(
                "{}",
                executor.breakglass_release(&identity.info.device_id, &key, &code)?
            );
            return Ok(());
        }
        Command::VaultDrill { path, moves } => return drill(&settings.state_dir, &path, moves),
        Command::Scan {
            paths,
            rules,
            threads,
            max_file_size,
            exclusions,
            repeat,
        } => {
            return local_scan(
                &rules.unwrap_or_else(|| settings.state_dir.join("rules").join("bundle.bin")),
                paths,
                threads,
                max_file_size,
                &exclusions,
                repeat,
            );
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Enroll {
                controller,
                token,
                ca_sha256,
            } => {
                let id = palisade_agent::enroll(
                    &settings.state_dir,
                    &controller,
                    &token,
                    &ca_sha256,
                    &LinuxHost::default(),
                )
                .await?;
                println!("enrolled as device {}", id.info.device_id);
            }
            Command::Run { .. } => {
                let host = LinuxHost::new(exec).with_vault(settings.state_dir.clone(), protect);
                match runtime::run(settings, host).await? {
                    Exit::Stopped => eprintln!("palisade-agent: stopped"),
                    Exit::Offboarded => {
                        eprintln!("palisade-agent: offboarded; identity and journal erased")
                    }
                }
            }
            Command::Validate
            | Command::Vault { .. }
            | Command::VaultDrill { .. }
            | Command::ReleaseIsolation { .. }
            | Command::Man { .. }
            | Command::Scan { .. } => {
                unreachable!("handled above")
            }
        }
        Ok(())
    })
}

fn local_scan(
    rules: &std::path::Path,
    paths: Vec<PathBuf>,
    threads: Option<usize>,
    max_file_size: Option<u64>,
    exclusions: &[String],
    repeat: u32,
) -> anyhow::Result<()> {
    use palisade_agent::executor::{Scanner, run_scan};
    use palisade_agent::host::{ScanJob, ScanMode};
    let mut scanner = Scanner::default();
    match std::fs::read(rules) {
        Ok(bytes) => scanner.set_engine(
            palisade_agent::scan::Engine::from_bundle(&bytes)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("cannot load rules from {}", rules.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "palisade-agent: no rules at {}; built-in EICAR detection only",
                rules.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", rules.display())),
    }
    if let Some(t) = threads {
        scanner.threads = t.max(1);
    }
    if let Some(m) = max_file_size {
        scanner.max_file_size = m;
    }
    for p in &paths {
        anyhow::ensure!(p.is_absolute(), "{} is not an absolute path", p.display());
    }
    let job = ScanJob {
        mode: ScanMode::Custom,
        paths,
        threads: scanner.threads,
        max_file_size: scanner.max_file_size,
        cpu_percent: 100,
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let host = LinuxHost::default();
    for _ in 0..repeat.max(1) {
        let out = run_scan(&host, &scanner, &job, exclusions, &cancel, None);
        println!("{}", out.detail());
    }
    Ok(())
}

fn vault(state_dir: &std::path::Path, command: VaultCmd) -> anyhow::Result<()> {
    let host = LinuxHost::default().with_vault(state_dir.to_owned(), vec![]);
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
    let host = LinuxHost::default().with_vault(state_dir.to_owned(), vec![]);
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
