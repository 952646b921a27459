//! `cargo xtask lab up|status|exec|down`: a controller on this host and N agents, each in its
//! own network namespace on a bridge (IPv4 and IPv6 documentation ranges), plus an unmanaged
//! outsider. The lab itself is `palisade_tests::lab::Lab`, the one the lab tests use.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use palisade_tests::lab::Lab;
use serde_json::{Value, json};

use super::{AGENT_BIN, Api, CONTROLLER_BIN, CTL_BIN, build};

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build the binaries and bring up a controller and N agents in network namespaces.
    Up {
        #[arg(long, default_value_t = 2)]
        agents: u8,
        /// Where the controller's data, the agents' state and the logs go (replaced).
        #[arg(long, default_value = "./palisade-lab")]
        data_dir: PathBuf,
        /// TCP address of the controller's API on this host.
        #[arg(long, default_value = "127.0.0.1:7480")]
        api: std::net::SocketAddr,
    },
    /// Show the lab's hosts, processes and devices.
    Status(DataDir),
    /// Run a command inside a lab host's network namespace: `lab exec agent1 -- ip addr`.
    Exec {
        host: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop every lab process and remove every namespace and link, even after a crash.
    Down,
}

#[derive(Args)]
pub struct DataDir {
    #[arg(long, default_value = "./palisade-lab")]
    data_dir: PathBuf,
}

pub fn run(cmd: LabCmd) -> Result<ExitCode> {
    match cmd {
        LabCmd::Up {
            agents,
            data_dir,
            api,
        } => up(agents, &data_dir, api).map(|_| ExitCode::SUCCESS),
        LabCmd::Status(d) => status(&d.data_dir).map(|_| ExitCode::SUCCESS),
        LabCmd::Exec { host, command } => exec(&host, &command),
        LabCmd::Down => {
            let n = Lab::down_all()?;
            println!("lab down: removed {n} lab(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<u32> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .env("NO_COLOR", "1")
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    Ok(child.id())
}

fn up(agents: u8, data_dir: &Path, api_addr: std::net::SocketAddr) -> Result<()> {
    if !(1..=20).contains(&agents) {
        bail!("--agents must be 1 to 20");
    }
    palisade_tests::lab::require_root("cargo xtask lab up")?;
    let bins = build(false)?;
    let bin = |name: &str| {
        bins.get(name)
            .cloned()
            .with_context(|| format!("cargo did not report {name}"))
    };
    let (controller_bin, agent_bin, ctl_bin) =
        (bin(CONTROLLER_BIN)?, bin(AGENT_BIN)?, bin(CTL_BIN)?);
    if data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("cannot clear {}", data_dir.display()))?;
    }
    let data_dir = std::path::absolute(data_dir)?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    let mut names: Vec<String> = (1..=agents).map(|i| format!("agent{i}")).collect();
    names.push("outsider".into());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut lab = Lab::up(&name_refs)?;
    let quic = format!("{}:7443", lab.gateway_v4);
    let ctl_dir = data_dir.join("controller");
    let pid = spawn_detached(
        Command::new(&controller_bin)
            .arg("--data-dir")
            .arg(&ctl_dir)
            .args(["--listen", &quic, "--api", &api_addr.to_string()]),
        &logs.join("controller.log"),
    )?;
    lab.track(pid)?;
    let started = Instant::now();
    let listening: Value = loop {
        if let Ok(bytes) = std::fs::read(ctl_dir.join("listening.json"))
            && let Ok(v) = serde_json::from_slice(&bytes)
        {
            break v;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the controller did not start; see {}",
                logs.join("controller.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ca = listening["ca_sha256"]
        .as_str()
        .context("listening.json has no ca_sha256")?
        .to_owned();
    let token = std::fs::read_to_string(ctl_dir.join("admin.token"))?
        .trim()
        .to_owned();
    let api = Api::new(format!("http://{api_addr}"), token.clone());
    for host in lab.hosts.clone().iter().filter(|h| h.name != "outsider") {
        let (status, body) = api.post(
            "/api/v1/enroll-tokens",
            &json!({"uses": 1, "expires_in": "1h"}),
        )?;
        if status != 201 {
            bail!("cannot create an enrolment token: HTTP {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        let enroll_token = v["token"]["token"]
            .as_str()
            .context("no token in the answer")?;
        let state = data_dir.join(&host.name);
        let out = host
            .command(&agent_bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["enroll", "--controller", &quic, "--ca-sha256", &ca])
            .env("PALISADE_ENROLL_TOKEN", enroll_token)
            .output()?;
        if !out.status.success() {
            bail!(
                "enrolling {} failed: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pid = spawn_detached(
            host.command(&agent_bin)
                .arg("--state-dir")
                .arg(&state)
                .arg("run"),
            &logs.join(format!("{}.log", host.name)),
        )?;
        lab.track(pid)?;
    }
    let (gw4, gw6) = (lab.gateway_v4, lab.gateway_v6);
    let hosts = lab.hosts.clone();
    lab.keep()?;

    println!("lab up: controller on {quic} ([{gw6}]:7443), API http://{api_addr}");
    println!(
        "{:<10} {:<16} {:<16} ADDRESS (v6)",
        "HOST", "NETNS", "ADDRESS"
    );
    for h in &hosts {
        println!("{:<10} {:<16} {:<16} {}", h.name, h.netns, h.v4, h.v6);
    }
    println!("\nexport PALISADE_URL=http://{api_addr}");
    println!(
        "export PALISADE_TOKEN=$(cat {})",
        ctl_dir.join("admin.token").display()
    );
    println!("{} devices list", ctl_bin.display());
    println!("cargo xtask lab exec agent1 -- ip addr      # a shell command on a lab host");
    println!("cargo xtask lab status                      # what runs");
    println!("cargo xtask lab down                        # remove everything");
    println!("logs: {}", logs.display());
    let _ = gw4;
    Ok(())
}

fn status(data_dir: &Path) -> Result<()> {
    let states = Lab::states();
    if states.is_empty() {
        println!("no lab is up");
        return Ok(());
    }
    for s in &states {
        println!(
            "lab {} on bridge {} ({} / {})",
            s["id"],
            s["bridge"].as_str().unwrap_or("?"),
            s["gateway_v4"].as_str().unwrap_or("?"),
            s["gateway_v6"].as_str().unwrap_or("?")
        );
        for h in s["hosts"].as_array().into_iter().flatten() {
            println!(
                "  {:<10} {:<16} {:<16} {}",
                h["name"].as_str().unwrap_or("?"),
                h["netns"].as_str().unwrap_or("?"),
                h["v4"].as_str().unwrap_or("?"),
                h["v6"].as_str().unwrap_or("?")
            );
        }
        for pid in s["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
        {
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            println!(
                "  pid {pid:<8} {} {}",
                if alive { "running" } else { "exited " },
                cmd.trim()
            );
        }
    }
    let token = data_dir.join("controller/admin.token");
    let listening = data_dir.join("controller/listening.json");
    if let (Ok(token), Ok(l)) = (std::fs::read_to_string(&token), std::fs::read(&listening)) {
        let l: Value = serde_json::from_slice(&l)?;
        let api = Api::new(
            format!("http://{}", l["api"].as_str().unwrap_or("127.0.0.1:7480")),
            token.trim().to_owned(),
        );
        match api.get("/api/v1/devices") {
            Ok((200, body)) => {
                let v: Value = serde_json::from_str(&body)?;
                for d in v["devices"].as_array().into_iter().flatten() {
                    println!(
                        "  device {} {} online={}",
                        d["id"].as_str().unwrap_or("?"),
                        d["hostname"].as_str().unwrap_or("?"),
                        d["online"]
                    );
                }
            }
            Ok((code, body)) => println!("  controller API answered {code}: {body}"),
            Err(e) => println!("  controller API unreachable: {e:#}"),
        }
    }
    Ok(())
}

fn exec(host: &str, command: &[String]) -> Result<ExitCode> {
    let netns = Lab::states()
        .iter()
        .flat_map(|s| s["hosts"].as_array().cloned().unwrap_or_default())
        .find(|h| h["name"] == host)
        .and_then(|h| h["netns"].as_str().map(str::to_owned))
        .with_context(|| format!("no lab host {host:?} (see `cargo xtask lab status`)"))?;
    let status = Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(command)
        .status()?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}
