//! The test harness: spawns the real `palisade-controller`, `palisade-agent` and `palisadectl`
//! binaries on loopback, each controller in its own temporary data directory, and cleans up
//! every process it started when dropped.
//!
//! ```text
//! let ctl = palisade_tests::Controller::start();
//! let agent = ctl.enroll_agent().started();
//! let device = agent.device_id();
//! ```

pub mod bench;
pub mod deb;
pub mod fleet;
pub mod fuzz;
pub mod lab;
pub mod proxy;
pub mod raw;
pub mod scan_rules;
pub mod traffic;
pub mod webdriver;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binaries under test, next to this test executable (`target/<profile>/`). They are built
/// by the README's test command (`cargo build --workspace --bins --tests` before `cargo test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins --tests` (`--release --bins --benches` for a benchmark)",
        path.display()
    );
    path
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM` …) in KiB; `None` once the process
/// is gone (or a zombie, which has no memory fields).
pub fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns `cmd`, retrying while the kernel says the program is busy.
///
/// A program the test has just written can still be open for writing in a
/// child that another test thread forked in that instant (the descriptor is
/// close-on-exec, so it goes away as soon as that child execs); `execve`
/// refuses it with `ETXTBSY` until then.
pub fn spawn_written_program(cmd: &mut Command) -> Child {
    let start = Instant::now();
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("spawn"),
        }
    }
}

/// A child process whose stderr is captured to a file, killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log clone"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Starts `cmd` with its output in `log`.
    pub fn start(cmd: &mut Command, log: PathBuf) -> Proc {
        Proc::spawn(cmd, log)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, and wait up to 10 s for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.wait_exit(Duration::from_secs(10))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct ControllerOptions {
    pub extra_args: Vec<String>,
}

/// A controller on loopback with its own data directory.
pub struct Controller {
    pub dir: Arc<TempDir>,
    pub proc: Option<Proc>,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    pub ca_sha256: String,
    pub admin_token: String,
    args: Vec<String>,
    restarts: Mutex<u32>,
}

impl Controller {
    pub fn start() -> Controller {
        Controller::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Controller {
        Controller::start_on("127.0.0.1:0", extra)
    }

    /// A controller whose QUIC endpoint listens on `quic` (e.g. a lab's bridge address); the
    /// API stays on loopback.
    pub fn start_on(quic: &str, extra: &[&str]) -> Controller {
        Controller::start_in(
            Arc::new(tempfile::tempdir().expect("temp dir")),
            quic,
            extra,
        )
    }

    /// A controller whose data directory is `dir/data`, which the caller may have prepared
    /// (e.g. mounted a small filesystem there).
    pub fn start_in(dir: Arc<TempDir>, quic: &str, extra: &[&str]) -> Controller {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, quic, api, ca) = Controller::launch(dir.path(), quic, "127.0.0.1:0", &args, 0);
        let admin_token = std::fs::read_to_string(dir.path().join("data/admin.token"))
            .expect("admin token written on first start")
            .trim()
            .to_owned();
        Controller {
            dir,
            proc: Some(proc),
            quic,
            api,
            ca_sha256: ca,
            admin_token,
            args,
            restarts: Mutex::new(0),
        }
    }

    fn launch(
        dir: &Path,
        quic: &str,
        api: &str,
        extra: &[String],
        n: u32,
    ) -> (Proc, SocketAddr, SocketAddr, String) {
        let data = dir.join("data");
        let listening = data.join("listening.json");
        let _ = std::fs::remove_file(&listening);
        let mut cmd = Command::new(bin("palisade-controller"));
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["--listen", quic, "--api", api])
            .args(extra);
        // Tests want fast failure detection; a caller may choose its own interval.
        if !extra.iter().any(|a| a == "--heartbeat") {
            cmd.args(["--heartbeat", "2s"]);
        }
        cmd.env("RUST_LOG", "info,quinn=warn,rustls=warn");
        let mut proc = Proc::spawn(&mut cmd, dir.join(format!("controller-{n}.log")));
        let v: Value = eventually(Duration::from_secs(30), "the controller to listen", || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("controller exited with {status}:\n{}", proc.log());
            }
            std::fs::read(&listening)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        });
        (
            proc,
            v["quic"].as_str().unwrap().parse().unwrap(),
            v["api"].as_str().unwrap().parse().unwrap(),
            v["ca_sha256"].as_str().unwrap().to_owned(),
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn db(&self) -> PathBuf {
        self.data_dir().join("controller.sqlite")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts again on the same data directory and the same addresses.
    pub fn restart(&mut self) {
        self.kill9();
        let n = {
            let mut r = self.restarts.lock().unwrap();
            *r += 1;
            *r
        };
        let (proc, quic, api, _) = Controller::launch(
            self.dir.path(),
            &self.quic.to_string(),
            &self.api.to_string(),
            &self.args,
            n,
        );
        assert_eq!((quic, api), (self.quic, self.api));
        self.proc = Some(proc);
    }

    /// Runs `palisadectl` with the admin token.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(&self.admin_token, args)
    }

    pub fn ctl_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("palisadectl"))
            .args(args)
            .env("PALISADE_URL", self.url())
            .env("PALISADE_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run palisadectl")
    }

    /// Runs `palisadectl --json …`, asserts success, parses stdout.
    /// Lets `kinds` run without approval (no kind: the default policy, every kind without its
    /// own).
    pub fn without_approval(&self, kinds: &[&str]) {
        let mut args = vec!["policy", "set"];
        let flags = [
            "--require-approval",
            "false",
            "--distinct-approver",
            "false",
        ];
        if kinds.is_empty() {
            self.json(&[args.as_slice(), &flags].concat());
        }
        for kind in kinds {
            args.truncate(2);
            args.extend(["--kind", kind]);
            self.json(&[args.as_slice(), &flags].concat());
        }
    }

    pub fn json(&self, args: &[&str]) -> Value {
        self.json_as(&self.admin_token, args)
    }

    pub fn json_as(&self, token: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl_as(token, &all);
        assert!(
            out.status.success(),
            "palisadectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("palisadectl --json prints JSON")
    }

    /// Runs `palisadectl`, asserts failure, returns stderr.
    pub fn ctl_fails(&self, token: &str, args: &[&str]) -> String {
        let out = self.ctl_as(token, args);
        assert!(
            !out.status.success(),
            "palisadectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn enroll_token(&self, uses: u32, expires_in: &str) -> String {
        let v = self.json(&[
            "enroll-token",
            "create",
            "--uses",
            &uses.to_string(),
            "--expires-in",
            expires_in,
        ]);
        v["token"]["token"].as_str().unwrap().to_owned()
    }

    /// Makes a user and returns their token.
    pub fn add_user(&self, name: &str, role: &str, groups: &[&str]) -> String {
        let mut args = vec!["users", "add", name, "--role", role];
        for g in groups {
            args.extend_from_slice(&["--group", g]);
        }
        self.json(&args)["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls a new agent in a fresh state directory (not yet running).
    pub fn enroll_agent(&self) -> Agent {
        self.enroll_agent_via(&self.quic.to_string())
    }

    /// Enrolls an agent that will reach the controller at `address` (e.g. through a proxy).
    pub fn enroll_agent_via(&self, address: &str) -> Agent {
        let token = self.enroll_token(1, "1h");
        let agent = Agent::new(self.dir.clone());
        let out = agent.enroll(address, &token, &self.ca_sha256);
        assert!(
            out.status.success(),
            "enrolment failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        agent
    }

    pub fn action(&self, id: u64) -> Value {
        self.json(&["actions", "show", &id.to_string()])
    }

    pub fn status(&self, id: u64) -> String {
        self.action(id)["action"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn wait_status(&self, id: u64, status: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("action {id} to be {status}"), || {
            let v = self.action(id);
            (v["action"]["status"] == status).then_some(v)
        })
    }

    /// Requests an action and returns its id.
    pub fn request(&self, args: &[&str]) -> u64 {
        let mut all = vec!["action"];
        all.extend_from_slice(args);
        let v = self.json(&all);
        v["actions"][0]["id"].as_u64().expect("created action id")
    }

    /// One call of the JSON API with a bearer token (`None`: anonymous): the status and the
    /// JSON body (`null` when there is none).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.url());
        let auth = token.map(|t| format!("Bearer {t}"));
        macro_rules! go {
            ($req:expr) => {{
                let mut req = $req;
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req
            }};
        }
        let resp = match (method, body) {
            ("GET", _) => go!(http.get(&url)).call(),
            ("DELETE", _) => go!(http.delete(&url)).call(),
            ("POST", b) => go!(http.post(&url)).send_json(b.unwrap_or(Value::Null)),
            ("PUT", b) => go!(http.put(&url)).send_json(b.unwrap_or(Value::Null)),
            (m, _) => panic!("method {m} not supported by the harness"),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn device_online(&self, device: &str) -> bool {
        self.json(&["devices", "show", device])["device"]["online"] == true
    }
}

impl Drop for Controller {
    /// A failing test shows every log of its lab, so the failure can be read from CI output.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for log in logs {
                eprintln!(
                    "===== {} =====\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
}

static AGENT_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// An agent with its own state directory, run as a real process.
pub struct Agent {
    _root: Arc<TempDir>,
    pub state_dir: PathBuf,
    pub proc: Option<Proc>,
    name: String,
    runs: u32,
    /// What the agent is started through (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
    /// Extra arguments of `palisade-agent run`.
    run_args: Vec<String>,
}

impl Agent {
    /// An agent with a fresh, not yet enrolled state directory under `root`.
    pub fn in_dir(root: Arc<TempDir>) -> Agent {
        Agent::new(root)
    }

    /// An agent that runs on an existing state directory.
    pub fn at(root: Arc<TempDir>, state_dir: PathBuf) -> Agent {
        let mut a = Agent::new(root);
        a.state_dir = state_dir;
        a
    }

    fn new(root: Arc<TempDir>) -> Agent {
        let n = AGENT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("agent{n}");
        let state_dir = root.path().join(&name);
        Agent {
            _root: root,
            state_dir,
            proc: None,
            name,
            runs: 0,
            wrapper: vec![],
            run_args: vec![],
        }
    }

    pub fn enroll(&self, controller: &str, token: &str, ca_sha256: &str) -> Output {
        Command::new(bin("palisade-agent"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args([
                "enroll",
                "--controller",
                controller,
                "--token",
                token,
                "--ca-sha256",
                ca_sha256,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run palisade-agent enroll")
    }

    pub fn device_id(&self) -> String {
        let info: Value = serde_json::from_slice(
            &std::fs::read(self.state_dir.join("identity/agent.json")).expect("agent.json"),
        )
        .expect("agent.json is JSON");
        info["device_id"].as_str().unwrap().to_owned()
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `palisade-agent run` with extra arguments (e.g. `--protect DIR`), after those
    /// of [`Agent::with_run_args`], through the wrapper if any (e.g. a network namespace).
    pub fn start_with(&mut self, extra: &[&str]) {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("palisade-agent"));
                c
            }
            None => Command::new(bin("palisade-agent")),
        };
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run")
            .args(&self.run_args)
            .args(extra);
        self.spawn(cmd);
    }

    /// Starts the agent in its own mount namespace, with a private tmpfs mounted on `dir`:
    /// agents on one machine then see different files there, as on different machines. Look
    /// at that directory through [`Agent::private_path`].
    pub fn start_with_private_dir(&mut self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("mount point");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 palisade-lab \"$0\" && exec \"$@\"")
            .arg(dir)
            .arg(bin("palisade-agent"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run");
        self.spawn(cmd);
        let pid = self.proc.as_ref().map(Proc::pid).unwrap_or(0);
        let me = std::fs::read_link("/proc/self/ns/mnt").expect("own mount namespace");
        eventually(
            Duration::from_secs(10),
            "the agent's mount namespace",
            || {
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                (ns != me && exe.ends_with("palisade-agent")).then_some(())
            },
        );
    }

    /// `path` as the running agent sees it (through its mount namespace).
    pub fn private_path(&self, path: &Path) -> PathBuf {
        let pid = self.proc.as_ref().map(Proc::pid).expect("agent running");
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
    }

    fn spawn(&mut self, mut cmd: Command) {
        self.runs += 1;
        let log = self
            .state_dir
            .parent()
            .unwrap()
            .join(format!("{}-{}.log", self.name, self.runs));
        cmd.env("RUST_LOG", "info,quinn=warn,rustls=warn");
        self.proc = Some(Proc::spawn(&mut cmd, log));
    }

    /// Runs the agent (from its next start) on a lab host: in its network namespace, with
    /// its hostname.
    pub fn in_netns(mut self, host: &lab::LabHost) -> Agent {
        self.wrapper = host.prefix();
        self
    }

    /// Extra arguments for `palisade-agent run`.
    pub fn with_run_args(mut self, args: &[&str]) -> Agent {
        self.run_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Starts the agent inside `lab`'s mount namespace, restricting execution (when asked)
    /// on the lab's tmpfs only, with the lab's `usr` as the one system path.
    pub fn start_in_exec_lab(&mut self, lab: &ExecLab) {
        let mut cmd = lab.command(bin("palisade-agent"));
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run")
            .arg("--exec-mark")
            .arg(&lab.root)
            .arg("--exec-system-path")
            .arg(lab.root.join("usr"));
        self.spawn(cmd);
    }

    pub fn started(mut self) -> Agent {
        self.start();
        self
    }

    /// Runs the agent inside a lab host's network namespace.
    pub fn start_in(&mut self, host: &lab::LabHost) {
        self.start_in_with(host, &[]);
    }

    /// Runs the agent inside a lab host's network namespace with extra `run` arguments.
    pub fn start_in_with(&mut self, host: &lab::LabHost, extra: &[&str]) {
        let mut cmd = host.command(bin("palisade-agent"));
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run")
            .args(extra);
        self.spawn(cmd);
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn journal(&self) -> PathBuf {
        self.state_dir.join("journal.sqlite")
    }
}

/// A private mount namespace (held open by a `sleep` process) with a tmpfs mounted at
/// `root`: the only filesystem exec-restriction tests ever mark. Layout:
/// `usr/bin/true` (root's, 0755, in root-only directories: trusted), `tmp/` (mode 1777) with
/// copies `tmp/true` and `tmp/false`, and an empty `mnt/` for later mounts.
pub struct ExecLab {
    _dir: TempDir,
    pub root: PathBuf,
    holder: Child,
    ns: std::fs::File,
}

/// How an exec attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exec {
    /// The program ran and exited with this code.
    Ran(i32),
    /// `execve` failed with this errno (`EPERM` = 1 when fanotify denies).
    Refused(i32),
}

impl ExecLab {
    #[allow(clippy::new_without_default)] // it mounts things: not a default value
    pub fn new() -> ExecLab {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "exec-restriction lab tests need root (private mount namespaces and fanotify); run the suite as root"
        );
        for tool in ["unshare", "mount"] {
            assert!(
                Command::new(tool).arg("--version").output().is_ok(),
                "{tool} (util-linux) is needed by the exec lab tests"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let ready = dir.path().join("ready");
        let script = format!(
            "set -e
             mount -t tmpfs -o mode=0755 palisade-exec-lab '{root}'
             mkdir -p '{root}/usr/bin' '{root}/tmp' '{root}/mnt'
             chmod 0755 '{root}/usr' '{root}/usr/bin'
             chmod 1777 '{root}/tmp'
             cp /bin/true '{root}/usr/bin/true'
             cp /bin/true '{root}/tmp/true'
             cp /bin/false '{root}/tmp/false'
             chmod 0755 '{root}/usr/bin/true' '{root}/tmp/true' '{root}/tmp/false'
             touch '{ready}'
             exec sleep 100000",
            root = root.display(),
            ready = ready.display()
        );
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
            ])
            .arg(&script)
            .stdin(Stdio::null())
            .spawn()
            .expect("start unshare");
        eventually(Duration::from_secs(10), "the exec lab to be set up", || {
            if let Ok(Some(status)) = holder.try_wait() {
                panic!("exec lab setup failed: {status}");
            }
            ready.exists().then_some(())
        });
        // The holder is unshare's child (the `sh` that became `sleep`).
        let pid: i32 = eventually(Duration::from_secs(5), "the lab's holder process", || {
            std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                holder.id(),
                holder.id()
            ))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        });
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).expect("the lab's namespace");
        // Double-check the mark target before any agent sees it: a tmpfs, in a namespace that
        // is not ours.
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} is not a mount point in the lab", root.display()));
        assert!(
            line.contains(" - tmpfs "),
            "the lab root is not a tmpfs: {line}"
        );
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
            std::fs::read_link("/proc/self/ns/mnt").unwrap(),
            "the lab must have its own mount namespace"
        );
        ExecLab {
            _dir: dir,
            root,
            holder,
            ns,
        }
    }

    /// A command that runs in the lab's mount namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        let ns = self.ns.try_clone().expect("dup the namespace fd");
        let mut cmd = Command::new(program);
        // SAFETY: between fork and exec the closure only calls setns(2), which is
        // async-signal-safe, on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Path of a lab file, absolute inside the namespace.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Tries to execute the lab file `rel` (no arguments) and says how it went.
    pub fn exec(&self, rel: &str) -> Exec {
        let mut cmd = self.command(self.path(rel));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.status() {
            Ok(s) => Exec::Ran(s.code().unwrap_or(-1)),
            Err(e) => Exec::Refused(e.raw_os_error().unwrap_or(-1)),
        }
    }

    /// Runs a shell command in the namespace (for setup: mounts, copies, chmod) and asserts
    /// it succeeds. The shell itself is outside the lab's tmpfs, so never restricted.
    pub fn sh(&self, script: &str) {
        let out = self
            .command("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh in the lab");
        assert!(
            out.status.success(),
            "lab command {script:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ExecLab {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // unshare's child (the holder) goes with it: the namespace and its tmpfs end.
    }
}

/// A small tmpfs mounted on a directory for one test (to fill it: disk-full tests), lazily
/// unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`) on `path`, keeping what was there: the
    /// directory's files are copied onto the new filesystem.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let saved = path.with_extension("before-tmpfs");
        let kept = std::fs::read_dir(path)
            .expect("mount point")
            .next()
            .is_some();
        if kept {
            std::fs::rename(path, &saved).expect("move the directory aside");
            std::fs::create_dir(path).expect("mount point");
        }
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "palisade-test",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if kept {
            let out = Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", saved.display()))
                .arg(path)
                .output()
                .expect("run cp");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::remove_dir_all(&saved).expect("remove the copy");
        }
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the filesystem with `filler` until the kernel says ENOSPC; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0x5a_u8; chunk];
            loop {
                match f.write_all(&buf) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", self.path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs the `sqlite3` shell on a database (installed by `.ci/run`).
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell is needed (apt-get install sqlite3; .ci/run installs it)");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "sqlite3 {sql:?} failed: {err}");
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
