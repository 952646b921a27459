//! `cargo xtask`: developer tasks for the Palisade workspace.
//!
//! `cargo xtask quickstart` builds the binaries, starts a controller and one enrolled agent on
//! this machine, prints how to point `palisadectl` at them, and stays in the foreground until
//! ctrl-c / SIGTERM, when it stops both.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod bench;
mod lab;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// How long the controller may take from start to answering its API.
const CONTROLLER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `palisade-agent enroll` may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to show up online in the controller.
const AGENT_ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the waiting loops look at the children and at signals.
const POLL: Duration = Duration::from_millis(100);
/// Lines of a child's log shown when it fails.
const LOG_TAIL_LINES: usize = 25;

const CONTROLLER_BIN: &str = "palisade-controller";
const AGENT_BIN: &str = "palisade-agent";
const CTL_BIN: &str = "palisadectl";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the Palisade workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the binaries, run a controller and an enrolled agent on this machine, and print
    /// how to use palisadectl with them. Runs until ctrl-c; running it again with the same
    /// data directory reuses the controller's data and the agent's identity.
    Quickstart(QuickstartArgs),
    /// Build the .deb packages (release binaries) into target/debian/.
    Deb(DebArgs),
    /// Build the release binaries, run the benchmarks (all, or those named) and write their
    /// output into docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// A controller and agents in network namespaces on this host (root).
    Lab {
        #[command(subcommand)]
        command: lab::LabCmd,
    },
}

#[derive(Args)]
struct DebArgs {
    /// Where to put the packages.
    #[arg(long, default_value = "target/debian")]
    out: PathBuf,
}

#[derive(Args)]
struct QuickstartArgs {
    /// Directory for the controller's data (`controller/`), the agent's state (`agent/`) and
    /// the logs of both (`logs/`).
    #[arg(long, default_value = "./palisade-data")]
    data_dir: PathBuf,
    /// TCP address of the controller's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7480")]
    api: SocketAddr,
    /// UDP address of the controller's QUIC endpoint for agents.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Quickstart(args) => quickstart(args),
        Task::Deb(args) => deb(args),
        Task::Bench(args) => bench::run(args, &workspace_root()),
        Task::Lab { command } => {
            return match lab::run(command) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("lab: error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("quickstart: interrupted before everything was running; stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("quickstart: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A stop was requested (ctrl-c, SIGTERM, SIGHUP) before the quickstart finished starting.
#[derive(Debug)]
struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

// ---------------------------------------------------------------------------------------------
// quickstart

struct Layout {
    data: PathBuf,
    controller: PathBuf,
    agent: PathBuf,
    controller_log: PathBuf,
    agent_log: PathBuf,
}

impl Layout {
    fn new(data_dir: &Path) -> Result<Layout> {
        let data = std::path::absolute(data_dir)
            .with_context(|| format!("cannot make {} an absolute path", data_dir.display()))?;
        let logs = data.join("logs");
        Ok(Layout {
            controller: data.join("controller"),
            agent: data.join("agent"),
            controller_log: logs.join("controller.log"),
            agent_log: logs.join("agent.log"),
            data,
        })
    }

    fn admin_token(&self) -> PathBuf {
        self.controller.join("admin.token")
    }

    fn listening_json(&self) -> PathBuf {
        self.controller.join("listening.json")
    }

    fn agent_json(&self) -> PathBuf {
        self.agent.join("identity").join("agent.json")
    }
}

fn quickstart(args: QuickstartArgs) -> Result<()> {
    signals::install()?;
    let layout = Layout::new(&args.data_dir)?;
    let logs = layout
        .controller_log
        .parent()
        .expect("log path has a parent");
    fs::create_dir_all(logs).with_context(|| format!("cannot create {}", logs.display()))?;
    // Each run starts fresh logs, so that what they show is about this run.
    for log in [&layout.controller_log, &layout.agent_log] {
        File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    }

    let bins = build(false)?;
    let controller_bin = &bins[CONTROLLER_BIN];
    let agent_bin = &bins[AGENT_BIN];
    let ctl_bin = &bins[CTL_BIN];

    // The controller.
    let first_start = !layout.admin_token().exists();
    // A listening.json left by an earlier run would name stale addresses.
    match fs::remove_file(layout.listening_json()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot remove the stale {}",
                    layout.listening_json().display()
                )
            });
        }
    }
    step(format!(
        "starting {CONTROLLER_BIN} ({}, data in {})",
        if first_start {
            "first start"
        } else {
            "reusing its existing data"
        },
        layout.controller.display()
    ));
    let mut controller_cmd = Command::new(controller_bin);
    controller_cmd
        .arg("run")
        .arg("--data-dir")
        .arg(&layout.controller)
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--api")
        .arg(args.api.to_string());
    let mut controller = Proc::spawn(CONTROLLER_BIN, &mut controller_cmd, &layout.controller_log)?;
    let ready = wait_for_controller(&mut controller, &layout)?;
    let api = &ready.api;
    step(format!(
        "{CONTROLLER_BIN} is ready: QUIC on {}, API on {}",
        ready.quic, api.base
    ));

    // The agent: enroll once, then run.
    let controller_addr = connectable(ready.quic).to_string();
    let device_id = if layout.agent_json().exists() {
        let info = read_agent_json(&layout)?;
        step(format!(
            "the agent is already enrolled as device {} (identity in {})",
            info.device_id,
            layout.agent.join("identity").display()
        ));
        if info.controller != controller_addr {
            eprintln!(
                "quickstart: warning: the agent was enrolled with the controller at {} but the controller now \
                 listens on {controller_addr}; the agent will keep using {}. Run with the earlier --listen, or \
                 remove {} to enroll it again.",
                info.controller,
                info.controller,
                layout.agent.display()
            );
        }
        info.device_id
    } else {
        enroll(
            &mut controller,
            api,
            agent_bin,
            &layout,
            &controller_addr,
            &ready.ca_sha256,
        )?
    };

    step(format!(
        "starting {AGENT_BIN} (state in {})",
        layout.agent.display()
    ));
    let mut agent_cmd = Command::new(agent_bin);
    agent_cmd.arg("--state-dir").arg(&layout.agent).arg("run");
    let mut agent = Proc::spawn(AGENT_BIN, &mut agent_cmd, &layout.agent_log)?;
    wait_for_agent_online(&mut controller, &mut agent, api, &device_id)?;

    print_instructions(&layout, api, ctl_bin, &device_id);

    // Foreground until a signal or until a child gives up.
    let outcome = supervise(&mut controller, &mut agent);
    eprintln!();
    match &outcome {
        Ok(()) => step("stopping the agent and the controller".to_string()),
        Err(_) => step("one of them stopped on its own; stopping the other".to_string()),
    }
    agent.stop();
    controller.stop();
    if outcome.is_ok() {
        step("stopped".to_string());
    }
    outcome
}

fn deb(args: DebArgs) -> Result<()> {
    let bins = build(true)?;
    let bin = |name: &str| {
        bins.get(name)
            .cloned()
            .ok_or_else(|| anyhow!("cargo did not report the {name} binary"))
    };
    let binaries = palisade_tests::deb::Binaries {
        agent: bin(AGENT_BIN)?,
        controller: bin(CONTROLLER_BIN)?,
        ctl: bin(CTL_BIN)?,
    };
    let out = workspace_root().join(&args.out);
    for deb in palisade_tests::deb::build(&binaries, &out)? {
        println!("{}", deb.display());
    }
    Ok(())
}

fn step(message: String) {
    eprintln!("quickstart: {message}");
}

/// Builds the three binaries (debug profile) and returns their paths by name, as cargo reports
/// them (so `CARGO_TARGET_DIR`, `build.target-dir` and the like are all respected).
fn build(release: bool) -> Result<HashMap<String, PathBuf>> {
    step(format!(
        "building {CONTROLLER_BIN}, {AGENT_BIN} and {CTL_BIN}"
    ));
    let mut cmd = cargo();
    // The whole workspace, as the test command builds it: with `-p` for the three binaries
    // alone, cargo unifies features differently and builds yara-x and wasmtime a second time.
    cmd.args([
        "build",
        "--workspace",
        "--bins",
        "--message-format=json-render-diagnostics",
    ])
    .args(release.then_some("--release"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .context("cannot run cargo (set CARGO to the cargo binary to use)")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || -> Result<HashMap<String, PathBuf>> {
        let mut bins = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo's output")?;
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let is_bin = msg["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
            if let (true, Some(name), Some(exe)) = (
                is_bin,
                msg["target"]["name"].as_str(),
                msg["executable"].as_str(),
            ) {
                bins.insert(name.to_string(), PathBuf::from(exe));
            }
        }
        Ok(bins)
    });
    let status = loop {
        if signals::received() > 0 {
            stop_child(&mut child, "cargo build");
            let _ = reader.join();
            return Err(Interrupted.into());
        }
        if let Some(status) = child.try_wait().context("cannot wait for cargo build")? {
            break status;
        }
        thread::sleep(POLL);
    };
    let bins = reader
        .join()
        .map_err(|_| anyhow!("the thread reading cargo's output panicked"))??;
    if signals::received() > 0 {
        return Err(Interrupted.into());
    }
    if !status.success() {
        bail!(
            "cargo build failed ({}); see its messages above",
            describe(status)
        );
    }
    for name in [CONTROLLER_BIN, AGENT_BIN, CTL_BIN] {
        match bins.get(name) {
            Some(path) if path.is_file() => {}
            Some(path) => bail!(
                "cargo reported {} for {name}, but there is no such file",
                path.display()
            ),
            None => bail!("cargo build succeeded but did not report a binary named {name}"),
        }
    }
    Ok(bins)
}

/// The workspace root: the parent of xtask's own manifest directory.
/// A `cargo` command in the workspace root, without the variables `cargo run` set for xtask:
/// build scripts (ring's, through cc) track some of them, so passing them on would rebuild
/// ring and all that depends on it every time.
pub(crate) fn cargo() -> Command {
    let mut cmd =
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives in a directory of the workspace")
        .to_path_buf()
}

struct Ready {
    quic: SocketAddr,
    ca_sha256: String,
    api: Api,
}

/// Waits until the controller has written `listening.json` and its API answers the admin
/// token. Fails early, with the end of its log, if the controller exits.
fn wait_for_controller(controller: &mut Proc, layout: &Layout) -> Result<Ready> {
    let deadline = Instant::now() + CONTROLLER_READY_TIMEOUT;
    loop {
        if signals::received() > 0 {
            return Err(Interrupted.into());
        }
        if let Some(status) = controller.exited()? {
            bail!(
                "{CONTROLLER_BIN} exited ({}) before it was ready{}",
                describe(status),
                controller.log_tail()
            );
        }
        let last_problem = match probe_controller(layout) {
            Ok(ready) => return Ok(ready),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{CONTROLLER_BIN} was not ready within {} s (last problem: {last_problem}){}",
                CONTROLLER_READY_TIMEOUT.as_secs(),
                controller.log_tail()
            );
        }
        thread::sleep(POLL * 2);
    }
}

fn probe_controller(layout: &Layout) -> Result<Ready> {
    let path = layout.listening_json();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{} does not exist yet", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let listening: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON (yet)", path.display()))?;
    let addr = |key: &str| -> Result<SocketAddr> {
        listening[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{} has no valid {key:?} address", path.display()))
    };
    let quic = addr("quic")?;
    let api_addr = addr("api")?;
    let ca_sha256 = listening["ca_sha256"]
        .as_str()
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("{} has no valid \"ca_sha256\"", path.display()))?
        .to_string();
    let token_path = layout.admin_token();
    let token = fs::read_to_string(&token_path)
        .with_context(|| format!("cannot read the admin token {}", token_path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("the admin token file {} is empty", token_path.display());
    }
    let api = Api::new(format!("http://{}", connectable(api_addr)), token);
    let (status, body) = api.get("/api/v1/whoami")?;
    if status != 200 {
        bail!(
            "GET {}/api/v1/whoami with the token from {} answered {status}: {}",
            api.base,
            token_path.display(),
            body.trim()
        );
    }
    Ok(Ready {
        quic,
        ca_sha256,
        api,
    })
}

struct AgentInfo {
    device_id: String,
    controller: String,
}

fn read_agent_json(layout: &Layout) -> Result<AgentInfo> {
    let path = layout.agent_json();
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let info: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let field = |key: &str| -> Result<String> {
        info[key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{} has no {key:?}", path.display()))
    };
    Ok(AgentInfo {
        device_id: field("device_id")?,
        controller: field("controller")?,
    })
}

/// Creates a one-use enrolment token and enrolls the agent with it; returns the device id.
fn enroll(
    controller: &mut Proc,
    api: &Api,
    agent_bin: &Path,
    layout: &Layout,
    controller_addr: &str,
    ca_sha256: &str,
) -> Result<String> {
    step("creating a one-use enrolment token".to_string());
    let (status, body) = api.post(
        "/api/v1/enroll-tokens",
        &json!({"uses": 1, "expires_in": "1h"}),
    )?;
    if status != 201 {
        bail!(
            "POST {}/api/v1/enroll-tokens answered {status}, expected 201: {}",
            api.base,
            body.trim()
        );
    }
    let created: Value = serde_json::from_str(&body).with_context(|| {
        format!(
            "POST {}/api/v1/enroll-tokens answered invalid JSON: {body}",
            api.base
        )
    })?;
    let token = created["token"]["token"].as_str().with_context(|| {
        format!(
            "POST {}/api/v1/enroll-tokens answered no token.token: {body}",
            api.base
        )
    })?;
    if let Some(api_ca) = created["ca_sha256"].as_str()
        && !api_ca.eq_ignore_ascii_case(ca_sha256)
    {
        bail!(
            "the API reports CA fingerprint {api_ca} but {} says {ca_sha256}; is another controller \
             listening on {}?",
            layout.listening_json().display(),
            api.base
        );
    }

    step(format!(
        "enrolling the agent with the controller at {controller_addr}"
    ));
    let mut cmd = Command::new(agent_bin);
    cmd.arg("--state-dir")
        .arg(&layout.agent)
        .arg("enroll")
        .arg("--controller")
        .arg(controller_addr)
        .arg("--ca-sha256")
        .arg(ca_sha256)
        // Through the environment rather than argv, where other users could see it.
        .env("PALISADE_ENROLL_TOKEN", token);
    let mut enrolling = Proc::spawn("palisade-agent enroll", &mut cmd, &layout.agent_log)?;
    let deadline = Instant::now() + ENROLL_TIMEOUT;
    let status = loop {
        if signals::received() > 0 {
            return Err(Interrupted.into());
        }
        if let Some(status) = enrolling.exited()? {
            break status;
        }
        if let Some(status) = controller.exited()? {
            bail!(
                "{CONTROLLER_BIN} exited ({}) while the agent was enrolling{}",
                describe(status),
                controller.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "palisade-agent enroll did not finish within {} s{}",
                ENROLL_TIMEOUT.as_secs(),
                enrolling.log_tail()
            );
        }
        thread::sleep(POLL);
    };
    if !status.success() {
        bail!(
            "palisade-agent enroll failed ({}){}",
            describe(status),
            enrolling.log_tail()
        );
    }
    if !layout.agent_json().exists() {
        bail!(
            "palisade-agent enroll succeeded but wrote no {}{}",
            layout.agent_json().display(),
            enrolling.log_tail()
        );
    }
    let info = read_agent_json(layout)?;
    step(format!("enrolled as device {}", info.device_id));
    Ok(info.device_id)
}

/// Waits until the controller reports the device online. Only warns if it does not: the
/// agent keeps retrying, and its log says why.
fn wait_for_agent_online(
    controller: &mut Proc,
    agent: &mut Proc,
    api: &Api,
    device_id: &str,
) -> Result<()> {
    let deadline = Instant::now() + AGENT_ONLINE_TIMEOUT;
    loop {
        if signals::received() > 0 {
            return Err(Interrupted.into());
        }
        check_running(controller, agent)?;
        let last_problem = match device_online(api, device_id) {
            Ok(true) => {
                step(format!("device {device_id} is online"));
                return Ok(());
            }
            Ok(false) => format!("device {device_id} is not online yet"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            eprintln!(
                "quickstart: warning: the agent is running but the controller does not report it online after {} s \
                 ({last_problem}); see {}",
                AGENT_ONLINE_TIMEOUT.as_secs(),
                agent.log.display()
            );
            return Ok(());
        }
        thread::sleep(POLL * 3);
    }
}

fn device_online(api: &Api, device_id: &str) -> Result<bool> {
    let (status, body) = api.get("/api/v1/devices")?;
    if status != 200 {
        bail!(
            "GET {}/api/v1/devices answered {status}: {}",
            api.base,
            body.trim()
        );
    }
    let list: Value = serde_json::from_str(&body)
        .with_context(|| format!("GET {}/api/v1/devices answered invalid JSON", api.base))?;
    Ok(list["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["id"] == device_id && d["online"] == true))
}

/// Fails, with the end of its log, if either child has exited.
fn check_running(controller: &mut Proc, agent: &mut Proc) -> Result<()> {
    for child in [controller, agent] {
        if let Some(status) = child.exited()? {
            bail!(
                "{} exited on its own ({}){}",
                child.name,
                describe(status),
                child.log_tail()
            );
        }
    }
    Ok(())
}

/// Runs until a stop signal (Ok) or until a child exits on its own (Err).
fn supervise(controller: &mut Proc, agent: &mut Proc) -> Result<()> {
    loop {
        if signals::received() > 0 {
            return Ok(());
        }
        check_running(controller, agent)?;
        thread::sleep(POLL * 2);
    }
}

fn print_instructions(layout: &Layout, api: &Api, ctl_bin: &Path, device_id: &str) {
    let bin_dir = ctl_bin.parent().unwrap_or(Path::new("."));
    let path_export = format!("{}:\"$PATH\"", shell_quote(&bin_dir.display().to_string()));
    let q = |p: &Path| shell_quote(&p.display().to_string());
    println!();
    println!("Palisade is running: a controller and one agent (device {device_id}).");
    println!();
    println!("  data:        {}", layout.data.display());
    println!(
        "    controller {}   (admin token: {})",
        layout.controller.display(),
        layout.admin_token().display()
    );
    println!("    agent      {}", layout.agent.display());
    println!("  logs:        {}", layout.controller_log.display());
    println!("               {}", layout.agent_log.display());
    println!("  API:         {}", api.base);
    println!("  palisadectl: {}", ctl_bin.display());
    println!();
    println!("To use palisadectl, run in another shell:");
    println!();
    println!("  export PALISADE_URL={}", api.base);
    println!(
        "  export PALISADE_TOKEN=$(cat {})",
        q(&layout.admin_token())
    );
    println!("  export PATH={path_export}");
    println!();
    println!("Then, for example:");
    println!();
    println!("  palisadectl devices list");
    println!(
        "  palisadectl action request-sample {device_id} --path /etc/hostname --comment \"first sample\""
    );
    println!("  palisadectl actions list --pending");
    println!("  palisadectl actions approve <ACTION-ID> --comment ok");
    println!();
    println!(
        "The Action center is at {}/ once the admin has a password:",
        api.base
    );
    println!();
    println!("  echo 'a long passphrase' | palisadectl users set-password admin");
    println!();
    println!(
        "Press ctrl-c to stop both. Running the same command again reuses {}.",
        layout.data.display()
    );
    println!();
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// An address a client on this machine can connect to: the loopback address instead of the
/// unspecified one.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => status.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// the controller's API

struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
    fn new(base: String, token: String) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Always the local controller: never through a proxy from the environment.
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Api {
            agent: config.into(),
            base,
            token,
        }
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {url} failed"))?;
        Self::read(response, "GET", &url)
    }

    fn post(&self, path: &str, body: &Value) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)
            .with_context(|| format!("POST {url} failed"))?;
        Self::read(response, "POST", &url)
    }

    fn read(
        mut response: ureq::http::Response<ureq::Body>,
        method: &str,
        url: &str,
    ) -> Result<(u16, String)> {
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer to {method} {url}"))?;
        Ok((status, body))
    }
}

// ---------------------------------------------------------------------------------------------
// child processes

/// A child process whose stdout and stderr go to a log file. It runs in its own process group
/// (so a ctrl-c in the terminal reaches only us, and we stop the children in order), gets
/// SIGTERM if we die, and is stopped when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where this child's output starts in the log.
    log_start: u64,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("cannot open the log {}", log.display()))
        };
        let out = open()?;
        let log_start = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = open()?;
        let parent = nix::unistd::getpid();
        cmd.stdin(Stdio::null())
            // The output goes to a file: no colour escapes in it.
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid) and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    // We died before the line above took effect.
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {name} ({})",
                Path::new(cmd.get_program()).display()
            )
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            log_start,
            status: None,
        })
    }

    /// The exit status if the child has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Stops the child: SIGTERM, then SIGKILL after a grace period (or at once on another
    /// ctrl-c). Does nothing if it has already exited.
    fn stop(&mut self) {
        if self.status.is_none() {
            self.status = Some(stop_child(&mut self.child, &self.name));
        }
    }

    /// The end of this child's output in its log, formatted to follow an error message.
    fn log_tail(&self) -> String {
        match tail(&self.log, self.log_start, LOG_TAIL_LINES) {
            Ok(lines) if lines.is_empty() => {
                format!("; it wrote nothing to {}", self.log.display())
            }
            Ok(lines) => format!(
                "; last lines of {}:\n{}",
                self.log.display(),
                lines
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Err(e) => format!("; cannot read its log {}: {e}", self.log.display()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(child: &mut Child, name: &str) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let signals_before = signals::received();
    let pid = Pid::from_raw(child.id() as i32);
    let _ = signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(_) => break,
        }
        if Instant::now() >= deadline {
            eprintln!(
                "quickstart: {name} did not stop within {} s of SIGTERM; killing it",
                STOP_GRACE.as_secs()
            );
            break;
        }
        if signals::received() > signals_before {
            eprintln!("quickstart: killing {name}");
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().unwrap_or_else(|_| ExitStatus::from_raw(9))
}

/// The last `n` lines of `path` from byte `start` on.
fn tail(path: &Path, start: u64, n: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok(lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// signals

mod signals {
    use super::*;

    static RECEIVED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_signal(_signal: nix::libc::c_int) {
        RECEIVED.fetch_add(1, Ordering::SeqCst);
    }

    /// From now on SIGINT, SIGTERM and SIGHUP only count; the waiting loops look at the count.
    pub fn install() -> Result<()> {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only touches an atomic, which is async-signal-safe.
            unsafe { signal::sigaction(sig, &action) }
                .with_context(|| format!("cannot install a handler for {sig}"))?;
        }
        Ok(())
    }

    /// How many stop signals have arrived.
    pub fn received() -> usize {
        RECEIVED.load(Ordering::SeqCst)
    }
}
