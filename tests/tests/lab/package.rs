//! Lab tier: collect an investigation package from an agent running in its own network
//! namespace, with things planted on the host, through a link that is cut mid-upload and an
//! agent that is killed mid-upload. Needs root (namespaces, veth, tc, /etc/cron.d); without it
//! the tests fail, they do not skip.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_tests::lab::{Lab, LabHost};
use palisade_tests::{Agent, Controller, eventually, sha256_hex};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// Agent settings that bound a collection and notice a dead link quickly (collectors get 20 s:
/// under a loaded full test run, hashing the temp dirs took more than 4).
const AGENT_ARGS: &[&str] = &["--collector-timeout", "20s", "--link-timeout", "3s"];

/// Things planted on the host for the package to show, removed on drop.
struct Planted {
    marker: String,
    process: Child,
    listener: TcpListener,
    port: u16,
    cron: PathBuf,
    made_cron_dir: bool,
    tmp_file: PathBuf,
    tmp_sha256: String,
}

impl Planted {
    fn new(ns: &LabHost) -> Planted {
        let marker = format!("palisade-marker-{}", std::process::id());
        // A process whose command line carries the marker.
        let process = Command::new("sleep")
            .arg0(&marker)
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        // A listening socket inside the agent's namespace, on a chosen port.
        let netns = std::fs::File::open(ns.netns_path()).expect("open the namespace");
        let listener = std::thread::spawn(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("0.0.0.0:47123").expect("listen in the namespace")
        })
        .join()
        .expect("listener thread");
        let port = listener.local_addr().unwrap().port();
        // A cron entry.
        let made_cron_dir = !Path::new("/etc/cron.d").exists();
        std::fs::create_dir_all("/etc/cron.d").expect("/etc/cron.d");
        let cron = PathBuf::from(format!("/etc/cron.d/palisade-test-{}", std::process::id()));
        std::fs::write(&cron, format!("*/5 * * * * root /usr/bin/true {marker}\n"))
            .expect("write the cron entry");
        // A file in /tmp.
        let tmp_file = PathBuf::from(format!("/tmp/{marker}.bin"));
        let bytes = format!("dropped by {marker}").into_bytes();
        std::fs::write(&tmp_file, &bytes).unwrap();
        Planted {
            marker,
            process,
            listener,
            port,
            cron,
            made_cron_dir,
            tmp_file,
            tmp_sha256: sha256_hex(&bytes),
        }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.cron);
        if self.made_cron_dir {
            let _ = std::fs::remove_dir("/etc/cron.d");
        }
        let _ = std::fs::remove_file(&self.tmp_file);
        let _ = &self.listener;
    }
}

fn part_len(ctl: &Controller, action: u64) -> u64 {
    std::fs::read_dir(ctl.data_dir().join("uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{action}-"))
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// The offset of the controller's "upload resumes" line for `action`, if it logged one.
fn resumed_at(ctl: &Controller, action: u64) -> Option<u64> {
    ctl.log()
        .lines()
        .filter(|l| {
            l.contains("upload resumes where it stopped")
                && l.contains(&format!("action={action} "))
        })
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("offset="))
                .and_then(|o| o.parse().ok())
        })
}

fn request_package(ctl: &Controller, device: &str) -> u64 {
    let id = ctl.request(&["collect-package", device, "--comment", "lab package"]);
    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "ok"]);
    id
}

/// Downloads, extracts with the system tar, checks `sha256sum -c`, returns the directory.
fn download_and_check(ctl: &Controller, token: &str, id: u64, dir: &Path) -> PathBuf {
    let file = dir.join(format!("package-{id}.tar.gz"));
    let out = ctl.ctl_as(
        token,
        &[
            "artifacts",
            "download",
            &id.to_string(),
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "download failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let artifacts = ctl.action(id)["action"]["artifacts"].clone();
    assert_eq!(artifacts[0]["name"], "package.tar.gz");
    assert_eq!(
        sha256_hex(&std::fs::read(&file).unwrap()),
        artifacts[0]["sha256"].as_str().unwrap()
    );
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&file)
        .arg("-C")
        .arg(dir)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.join(format!("collect-{id}"));
    let out = Command::new("sha256sum")
        .args(["--strict", "-c", "SHA256SUMS"])
        .current_dir(&root)
        .output()
        .expect("run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum -c failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

fn json_file(root: &Path, name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name} in the package: {e}")),
    )
    .unwrap_or_else(|e| panic!("{name} is JSON: {e}"))
}

#[test]
fn a_package_from_a_namespaced_agent_survives_a_cut_link_and_holds_what_was_planted() {
    let lab = Lab::up(&["device"]).expect("lab up (needs root)");
    let ns = lab.host("device");
    let ctl = Controller::start_on(&format!("{}:0", lab.gateway_v4), &[]);
    let mut agent: Agent = ctl
        .enroll_agent()
        .in_netns(ns)
        .with_run_args(AGENT_ARGS)
        .started();
    let device = agent.device_id();
    eventually(T, "the agent to come online", || {
        ctl.device_online(&device).then_some(())
    });
    let planted = Planted::new(ns);
    let work = tempfile::tempdir().unwrap();

    // 1. A link cut mid-upload: the upload resumes on the next connection.
    ns.throttle_out("200kbit").unwrap();
    let id = request_package(&ctl, &device);
    eventually(T, "the upload to start", || {
        (part_len(&ctl, id) > 0).then_some(())
    });
    ns.set_link(false).unwrap();
    eventually(T, "the agent to notice the dead link", || {
        agent.log().contains("connection lost").then_some(())
    });
    ns.unthrottle().unwrap();
    ns.set_link(true).unwrap();
    let v = ctl.wait_status(id, "succeeded", T);
    let offset = resumed_at(&ctl, id)
        .unwrap_or_else(|| panic!("the controller logged no resumed upload for action {id}"));
    assert!(offset > 0, "resumed at {offset}");
    let detail = &v["action"]["result_detail"];
    assert!(
        detail["collectors"].as_array().unwrap().len() >= 20,
        "{detail}"
    );
    let root = download_and_check(&ctl, &ctl.admin_token, id, work.path());

    // Everything listed in the manifest is there, with its status.
    let manifest = json_file(&root, "manifest.json");
    let names: Vec<&str> = manifest["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "system",
        "disks",
        "processes",
        "open_files",
        "sockets",
        "interfaces",
        "routes",
        "neighbours",
        "dns",
        "proxy",
        "firewall",
        "users",
        "sudoers",
        "logins",
        "autoruns",
        "kernel_modules",
        "packages",
        "suid_sgid",
        "temp_files",
        "logs",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        std::fs::read_to_string(root.join("summary.txt"))
            .unwrap()
            .contains("sha256sum -c SHA256SUMS")
    );

    // The planted process, with its marker command line and the hash of what it runs.
    let procs = json_file(&root, "processes/processes.json");
    let p = procs["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cmdline"][0] == planted.marker.as_str())
        .unwrap_or_else(|| panic!("no process with {} in the package", planted.marker));
    assert_eq!(p["pid"], planted.process.id());
    assert_eq!(p["exe_sha256"].as_str().map(str::len), Some(64), "{p}");
    // The listening socket in the agent's namespace, with its owner.
    let sockets = json_file(&root, "sockets/sockets.json");
    let s = sockets["listening"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["local_port"] == planted.port && s["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no listener on {} in {sockets}", planted.port));
    assert_eq!(s["state"], "LISTEN");
    assert_eq!(s["pid"], std::process::id());
    // Only the namespace's sockets: the controller's API listener on the host is not there.
    let api_port = ctl.api.port();
    assert!(
        !sockets["listening"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["local_port"] == api_port && s["proto"] == "tcp"),
        "host sockets leaked into the namespace's view"
    );
    let ifaces = json_file(&root, "interfaces/interfaces.json");
    assert!(ifaces.to_string().contains(&ns.v4.to_string()), "{ifaces}");
    // The cron entry, listed and copied.
    let cron_name = planted.cron.display().to_string();
    let autoruns = json_file(&root, "autoruns/autoruns.json");
    assert!(
        autoruns["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["path"] == cron_name.as_str() && i["kind"] == "cron_table"),
        "{cron_name} not in autoruns"
    );
    let copy = std::fs::read_to_string(root.join(format!("autoruns/raw{cron_name}"))).unwrap();
    assert!(copy.contains(&planted.marker), "{copy}");
    // The file in /tmp, with its hash.
    let temp = json_file(&root, "temp_files/temp_files.json");
    let tmp_name = planted.tmp_file.display().to_string();
    let entry = temp["directories"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == tmp_name.as_str())
        .unwrap_or_else(|| panic!("{tmp_name} not in temp_files"));
    assert_eq!(entry["sha256"], planted.tmp_sha256.as_str());

    // 2. The agent killed mid-upload: after its restart it reuses the package it had built
    //    and the upload resumes instead of starting over.
    ns.throttle_out("200kbit").unwrap();
    let id2 = request_package(&ctl, &device);
    eventually(T, "the second upload to start", || {
        (part_len(&ctl, id2) > 0).then_some(())
    });
    agent.kill9();
    ns.unthrottle().unwrap();
    agent.start();
    let v2 = ctl.wait_status(id2, "succeeded", T);
    assert!(
        agent
            .log()
            .contains("reusing the package built before the restart"),
        "{}",
        agent.log()
    );
    let offset = resumed_at(&ctl, id2)
        .unwrap_or_else(|| panic!("no resumed upload logged for action {id2}"));
    assert!(offset > 0);
    assert_eq!(v2["action"]["artifacts"].as_array().unwrap().len(), 1);
    download_and_check(&ctl, &ctl.admin_token, id2, work.path());
    // The spool is emptied once the result is journaled.
    eventually(
        Duration::from_secs(10),
        "the agent's spool to be emptied",
        || {
            (std::fs::read_dir(agent.state_dir.join("spool"))
                .unwrap()
                .count()
                == 0)
                .then_some(())
        },
    );

    // 3. Only users with the investigate permission download packages.
    let approver = ctl.add_user("ann", "approver", &[]);
    let err = ctl.ctl_fails(
        &approver,
        &[
            "artifacts",
            "download",
            &id.to_string(),
            "-o",
            work.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(err.contains("investigate"), "{err}");
    assert!(!work.path().join("x").exists());
    let investigator = ctl.add_user("ivy", "investigator", &[]);
    let dir = tempfile::tempdir().unwrap();
    download_and_check(&ctl, &investigator, id, dir.path());
}
