//! Antivirus scans end to end with the real binaries: rules uploaded and compiled on the
//! controller, fetched by the agent, custom / quick / full scans, detections turned into
//! quarantine actions by each automation level, cancellation; and the scanner on nasty files.
//!
//! Test strings (EICAR, the YARA marker) are assembled at run time, never stored whole in a
//! binary: a quick scan reads running executables, this test's own included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_tests::{Agent, Controller, bin, eventually, sha256_hex};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn eicar() -> Vec<u8> {
    palisade_common::sigs::eicar()
}

/// A string that only the planted file contains.
fn marker() -> String {
    ["PALISADE", "SCAN", "TEST", "MARKER", "7f3a91"].join("-")
}

fn rule_text() -> String {
    format!(
        "rule palisade_test_marker {{\n  strings:\n    $a = \"{}\"\n  condition:\n    $a\n}}\n",
        marker()
    )
}

/// Bytes that match the uploaded hash list (and nothing else).
fn hashed_bytes() -> Vec<u8> {
    (0..4096u32)
        .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

struct Lab {
    ctl: Controller,
    agent: Agent,
    device: String,
    rules_dir: tempfile::TempDir,
}

/// A controller with a running agent that enforces an uploaded rule set (one YARA rule, one
/// hash-list line), scans needing no approval.
fn lab() -> Lab {
    lab_with(&[])
}

/// [`lab`], with extra arguments of `palisade-agent run`.
fn lab_with(run_args: &[&str]) -> Lab {
    let ctl = Controller::start();
    ctl.without_approval(&["scan"]);
    let agent = ctl.enroll_agent().with_run_args(run_args).started();
    let device = agent.device_id();
    let rules_dir = tempfile::tempdir().unwrap();
    let yar = rules_dir.path().join("marker.yar");
    std::fs::write(&yar, rule_text()).unwrap();
    let hdb = rules_dir.path().join("planted.hdb");
    let data = hashed_bytes();
    std::fs::write(
        &hdb,
        format!("{}:{}:Palisade.Test.Planted\n", md5_hex(&data), data.len()),
    )
    .unwrap();
    let v = ctl.json(&[
        "rules",
        "upload",
        yar.to_str().unwrap(),
        hdb.to_str().unwrap(),
        "--comment",
        "test rules",
    ]);
    assert_eq!(v["rule_set"]["version"], 1, "{v}");
    assert_eq!(v["rule_set"]["yara_rules"], 1);
    assert_eq!(v["rule_set"]["hash_entries"], 1);
    eventually(T, "the agent to enforce rule set 1", || {
        let d = ctl.json(&["devices", "show", &device]);
        (d["device"]["rules_version"] == 1).then_some(())
    });
    Lab {
        ctl,
        agent,
        device,
        rules_dir,
    }
}

/// A directory with the three planted detections and a clean file.
fn plant(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let eicar_path = dir.join("eicar.com");
    std::fs::write(&eicar_path, eicar()).unwrap();
    let yara_path = dir.join("sub/dropper.sh");
    std::fs::write(&yara_path, format!("#!/bin/sh\n# {}\necho hi\n", marker())).unwrap();
    let hash_path = dir.join("sub/deeper/payload.bin");
    std::fs::write(&hash_path, hashed_bytes()).unwrap();
    std::fs::write(dir.join("clean.txt"), b"nothing to see").unwrap();
    [eicar_path, yara_path, hash_path]
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect()
}

fn scan(l: &Lab, mode: &str, paths: &[&str], exclusions: &[&str]) -> Value {
    let mut args = vec![
        "scan",
        l.device.as_str(),
        "--mode",
        mode,
        "--comment",
        "scan test",
    ];
    for p in paths {
        args.extend_from_slice(&["--path", p]);
    }
    for x in exclusions {
        args.extend_from_slice(&["--exclude", x]);
    }
    let id = l.ctl.request(&args);
    l.ctl.wait_status(id, "succeeded", Duration::from_secs(600))
}

fn detections(v: &Value) -> Vec<(String, Vec<String>)> {
    v["action"]["result_detail"]["detections"]
        .as_array()
        .unwrap_or_else(|| panic!("no detections array: {v}"))
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                d["matches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn quarantines(ctl: &Controller, device: &str) -> Vec<Value> {
    let v = ctl.json(&[
        "actions",
        "list",
        "--kind",
        "quarantine",
        "--device",
        device,
        "--limit",
        "1000",
    ]);
    v["actions"].as_array().unwrap().clone()
}

#[test]
fn bad_rule_files_are_refused_with_file_line_and_message() {
    let ctl = Controller::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yar");
    std::fs::write(
        &bad,
        "rule fine { condition: true }\n\nrule broken {\n  condition: $nowhere\n}\n",
    )
    .unwrap();
    let hdb = dir.path().join("bad.hdb");
    std::fs::write(
        &hdb,
        "44d88612fea8a8f36de82e1278abb02f:68:ok\nnot-a-hash:12:bad\n",
    )
    .unwrap();
    let err = ctl.ctl_fails(
        &admin_token(&ctl),
        &[
            "rules",
            "upload",
            bad.to_str().unwrap(),
            hdb.to_str().unwrap(),
        ],
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("bad.yar:4:"), "{err}");
    assert!(err.contains("bad.hdb:2:"), "{err}");
    let list = ctl.json(&["rules", "list"]);
    assert_eq!(list["rule_sets"].as_array().unwrap().len(), 0);
    // A viewer may not upload rules.
    let viewer = ctl.add_user("vic", "viewer", &[]);
    let good = dir.path().join("good.yar");
    std::fs::write(&good, "rule fine { condition: true }").unwrap();
    let err = ctl.ctl_fails(&viewer, &["rules", "upload", good.to_str().unwrap()]);
    assert!(err.contains("admin"), "{err}");
}

fn admin_token(ctl: &Controller) -> String {
    std::fs::read_to_string(ctl.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_custom_scan_finds_eicar_a_yara_match_and_a_hash_match_and_each_automation_level_acts() {
    let l = lab();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();

    // none: detections recorded, no action.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "none"]);
    let planted = plant(dir.path());
    let v = scan(&l, "custom", &[&root], &[]);
    let found = detections(&v);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, {
        let mut p: Vec<&str> = planted.iter().map(String::as_str).collect();
        p.sort();
        p
    });
    let by_path = |p: &str| found.iter().find(|(x, _)| x == p).unwrap().1.clone();
    assert_eq!(by_path(&planted[0]), vec!["builtin:EICAR-Test-File"]);
    assert_eq!(by_path(&planted[1]), vec!["yara:palisade_test_marker"]);
    assert_eq!(by_path(&planted[2]), vec!["hash:Palisade.Test.Planted"]);
    let det = &v["action"]["result_detail"]["detections"][0];
    assert_eq!(det["sha256"], sha256_hex(&eicar()));
    assert_eq!(det["size"], 68);
    assert_eq!(v["action"]["result_detail"]["rules_version"], 1);
    assert!(quarantines(&l.ctl, &l.device).is_empty());
    let events = l.ctl.json(&["devices", "events", &l.device]);
    let n = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "detection")
        .count();
    assert_eq!(n, 3, "{events}");

    // Exclusions leave files out.
    let v = scan(&l, "custom", &[&root], &["**/sub"]);
    assert_eq!(detections(&v).len(), 1);

    // semi: one pending quarantine per detection, from the automation; a rescan adds none.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "semi"]);
    scan(&l, "custom", &[&root], &[]);
    let q = quarantines(&l.ctl, &l.device);
    assert_eq!(q.len(), 3, "{q:?}");
    for a in &q {
        assert_eq!(a["status"], "pending_approval", "{a}");
        assert_eq!(a["source"], "automated_device_action");
        assert_eq!(a["requested_by"], "scanner");
    }
    scan(&l, "custom", &[&root], &[]);
    assert_eq!(
        quarantines(&l.ctl, &l.device).len(),
        3,
        "no duplicate of an open action"
    );
    let ids: Vec<String> = q.iter().map(|a| a["id"].to_string()).collect();
    let mut reject = vec!["actions", "reject"];
    reject.extend(ids.iter().map(String::as_str));
    reject.extend(["--comment", "next level"]);
    l.ctl.json(&reject);

    // full: approved at once by the automation, delivered, files gone into the vault.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "full"]);
    scan(&l, "custom", &[&root], &[]);
    let q: Vec<Value> = quarantines(&l.ctl, &l.device)
        .into_iter()
        .filter(|a| a["status"] != "rejected")
        .collect();
    assert_eq!(q.len(), 3, "{q:?}");
    for a in &q {
        let id = a["id"].as_u64().unwrap();
        let v = l.ctl.wait_status(id, "succeeded", T);
        assert_eq!(v["action"]["decided_by"], "automation");
    }
    for p in &planted {
        assert!(!Path::new(p).exists(), "{p} should be quarantined");
    }
    assert!(dir.path().join("clean.txt").exists());
    let vault = l.ctl.json(&["devices", "vault", &l.device]);
    assert_eq!(vault["entries"].as_array().unwrap().len(), 3, "{vault}");
}

#[test]
fn a_repeated_scan_reads_only_what_changed() {
    let mut l = lab();
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "none"]);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        std::fs::write(dir.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let first = scan(&l, "custom", &[root], &[]);
    let c = &first["action"]["result_detail"]["counts"];
    assert_eq!(c["files"], 200);
    assert_eq!(c["cached"], 0);
    std::fs::write(dir.path().join("f7"), "changed").unwrap();
    let second = scan(&l, "custom", &[root], &[]);
    let c = &second["action"]["result_detail"]["counts"];
    assert_eq!(c["files"], 200);
    assert_eq!(c["cached"], 199, "{c}");
    // A new rule set scans everything again.
    let yar = l.rules_dir.path().join("other.yar");
    std::fs::write(&yar, "rule other { condition: false }").unwrap();
    l.ctl.json(&["rules", "upload", yar.to_str().unwrap()]);
    eventually(T, "rule set 2 enforced", || {
        let d = l.ctl.json(&["devices", "show", &l.device]);
        (d["device"]["rules_version"] == 2).then_some(())
    });
    let third = scan(&l, "custom", &[root], &[]);
    assert_eq!(third["action"]["result_detail"]["counts"]["cached"], 0);
    // The rules survive an agent restart: it enforces them before it connects.
    l.agent.kill9();
    l.agent.start();
    let again = scan(&l, "custom", &[root], &[]);
    assert_eq!(again["action"]["result_detail"]["rules_version"], 2);
}

/// Where the workspace and the toolchain live: left out of machine-wide scans to keep them
/// short (they are large and hold this test's own build).
fn big_local_dirs() -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut out = vec![
        workspace.to_str().unwrap().to_owned(),
        "/usr".into(),
        "/var".into(),
        "/opt".into(),
        "/root".into(),
        "/work".into(),
        "/snap".into(),
        "/nix".into(),
    ];
    if let Ok(home) = std::env::var("CARGO_HOME") {
        out.push(home);
    }
    out
}

#[test]
fn quick_and_full_scans_find_eicar_in_temp() {
    let l = lab();
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "none"]);
    let dir = tempfile::Builder::new()
        .prefix("palisade-scan-quick")
        .tempdir_in("/tmp")
        .unwrap();
    let planted = dir.path().join("dropped.com");
    std::fs::write(&planted, eicar()).unwrap();
    let want = planted.to_str().unwrap();

    let big = big_local_dirs();
    let excl: Vec<&str> = big.iter().map(String::as_str).collect();
    let v = scan(&l, "quick", &[], &excl);
    let found = detections(&v);
    assert!(
        found.iter().any(|(p, _)| p == want),
        "quick scan missed {want}: {found:?}"
    );
    let roots = &v["action"]["result_detail"]["roots"];
    assert!(
        roots.as_array().unwrap().iter().any(|r| r == "/tmp"),
        "{roots}"
    );

    let v = scan(&l, "full", &[], &excl);
    let found = detections(&v);
    assert!(
        found.iter().any(|(p, _)| p == want),
        "full scan missed {want}: {found:?}"
    );
    let roots = v["action"]["result_detail"]["roots"].to_string();
    assert!(
        !roots.contains("\"/proc\""),
        "pseudo filesystems are skipped: {roots}"
    );
}

#[test]
fn a_running_scan_can_be_cancelled_and_reports_its_progress() {
    let l = lab();
    // Enough work to still be running after the first progress report.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let d = dir.path().join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        for j in 0..50 {
            std::fs::write(d.join(format!("f{j}")), vec![(i + j) as u8; 256 << 10]).unwrap();
        }
    }
    let root = dir.path().to_str().unwrap();
    let id = l.ctl.request(&[
        "scan",
        &l.device,
        "--mode",
        "custom",
        "--path",
        root,
        "--path",
        "/usr",
        "--comment",
        "long scan",
    ]);
    let v = l.ctl.wait_status(id, "in_progress", T);
    let progress = eventually(T, "a progress report", || {
        let v = l.ctl.action(id);
        let p = v["action"]["progress"].as_str().unwrap_or("").to_owned();
        p.contains("files").then_some(p)
    });
    assert!(progress.contains("detections so far"), "{progress} {v}");
    l.ctl
        .json(&["actions", "cancel", &id.to_string(), "--comment", "enough"]);
    let v = l.ctl.wait_status(id, "cancelled", T);
    let summary = v["action"]["result_summary"].as_str().unwrap();
    assert!(summary.contains("cancelled"), "{summary}");
    assert_eq!(v["action"]["result_detail"]["cancelled"], true);
}

/// `palisade-agent scan` on this machine, as a child, with a deadline.
fn local_scan(args: &[&str], prefix: &[&str]) -> Vec<Value> {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin("palisade-agent"));
            c
        }
        None => Command::new(bin("palisade-agent")),
    };
    let state = tempfile::tempdir().unwrap();
    let mut child = cmd
        .arg("--state-dir")
        .arg(state.path())
        .arg("scan")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run palisade-agent scan");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("palisade-agent scan hung for 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn nasty_files_never_hang_nor_crash_the_scan() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(d.join("socket")).unwrap();
    std::fs::create_dir(d.join("loop")).unwrap();
    std::os::unix::fs::symlink(d.join("loop"), d.join("loop/again")).unwrap();
    std::os::unix::fs::symlink(d.join("a"), d.join("b")).unwrap();
    std::os::unix::fs::symlink(d.join("b"), d.join("a")).unwrap();
    let unreadable = d.join("unreadable");
    std::fs::write(&unreadable, eicar()).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let sparse = std::fs::File::create(d.join("sparse-4g")).unwrap();
    sparse.set_len(4 << 30).unwrap();
    drop(sparse);
    std::fs::write(d.join("eicar.txt"), eicar()).unwrap();
    let churn = d.join("churn");
    std::fs::create_dir(&churn).unwrap();
    // Files appear and vanish while the scan runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = {
        let (churn, stop) = (churn.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = churn.join(format!("v{}", i % 500));
                let _ = std::fs::write(&p, vec![b'x'; 4096]);
                let _ = std::fs::remove_file(churn.join(format!("v{}", (i + 250) % 500)));
                i += 1;
            }
        })
    };
    let root = d.to_str().unwrap();
    // Without the capabilities that let root read anything: the 0o000 file is unreadable.
    let runs = local_scan(
        &[root, "--threads", "4", "--repeat", "3"],
        &[
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            "--inh-caps",
            "-dac_override,-dac_read_search",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().unwrap();
    for r in &runs {
        let found: Vec<&str> = r["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(found, vec![d.join("eicar.txt").to_str().unwrap()], "{r}");
        let c = &r["counts"];
        assert!(c["special"].as_u64().unwrap() >= 2, "fifo and socket: {c}");
        assert_eq!(c["too_large"], 1, "the sparse file: {c}");
        assert_eq!(c["unreadable"], 1, "{c}");
    }
}

fn require_root() {
    palisade_tests::lab::require_root(
        "the real-time protection lab tests (inotify on real files, the agent's memory)",
    )
    .unwrap();
}

/// [`lab`] with real-time protection watching `dir` only, turned on for every group from the
/// controller, and the agent saying it watches.
fn realtime_lab(dir: &Path) -> Lab {
    let l = lab_with(&["--realtime-path", dir.to_str().unwrap()]);
    let v = l.ctl.json(&["realtime", "set", "on"]);
    assert_eq!(v["realtime"][0]["device_group"], "*", "{v}");
    assert_eq!(v["realtime"][0]["enabled"], true, "{v}");
    eventually(T, "the agent to watch", || {
        let d = l.ctl.json(&["devices", "show", &l.device]);
        (d["device"]["observed"]["realtime_protection"] == true).then_some(())
    });
    l
}

/// The device's detection events (newest first) naming `path`.
fn detection_events(l: &Lab, path: &str) -> Vec<Value> {
    let events = l
        .ctl
        .json(&["devices", "events", &l.device, "--limit", "500"]);
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "detection" && e["summary"].as_str().unwrap_or("").contains(path))
        .cloned()
        .collect()
}

fn quarantine_of<'q>(q: &'q [Value], path: &str) -> Option<&'q Value> {
    q.iter().find(|a| a["params"]["path"] == path)
}

#[test]
fn real_time_protection_finds_eicar_and_each_automation_level_acts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let l = realtime_lab(dir.path());

    // none: the detection is recorded, as real-time protection's, and nothing else happens.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "none"]);
    let a = dir.path().join("a.com");
    std::fs::write(&a, eicar()).unwrap();
    let a = a.to_str().unwrap();
    let e = eventually(T, "the detection of a.com", || {
        detection_events(&l, a).into_iter().next()
    });
    assert_eq!(e["source"], "automated_device_action", "{e}");
    let summary = e["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("real-time protection: builtin:EICAR-Test-File detected in"),
        "{summary}"
    );
    assert!(quarantines(&l.ctl, &l.device).is_empty());
    assert!(Path::new(a).exists());

    // semi: a pending quarantine; a file moved in (written elsewhere first) is found too.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "semi"]);
    let b = dir.path().join("sub").join("b.com");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(&b, eicar()).unwrap();
    let outside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let staged = outside.path().join("c.com");
    std::fs::write(&staged, eicar()).unwrap();
    let c = dir.path().join("c.com");
    std::fs::rename(&staged, &c).unwrap();
    for p in [&b, &c] {
        let p = p.to_str().unwrap();
        let q = eventually(T, "a pending quarantine", || {
            quarantine_of(&quarantines(&l.ctl, &l.device), p).cloned()
        });
        assert_eq!(q["status"], "pending_approval", "{q}");
        assert_eq!(q["source"], "automated_device_action");
        assert_eq!(q["requested_by"], "scanner");
        assert!(
            q["comment"]
                .as_str()
                .unwrap()
                .starts_with("real-time protection:"),
            "{q}"
        );
    }
    assert!(
        quarantine_of(&quarantines(&l.ctl, &l.device), a).is_none(),
        "none acted on a.com"
    );

    // full: approved at once, delivered, the file goes into the vault.
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "full"]);
    let d = dir.path().join("d.com");
    std::fs::write(&d, eicar()).unwrap();
    let d = d.to_str().unwrap();
    let q = eventually(T, "an automated quarantine", || {
        quarantine_of(&quarantines(&l.ctl, &l.device), d).cloned()
    });
    let v = l.ctl.wait_status(q["id"].as_u64().unwrap(), "succeeded", T);
    assert_eq!(v["action"]["decided_by"], "automation");
    assert!(!Path::new(d).exists(), "{d} should be quarantined");

    // Off: the agent stops watching, and says so.
    l.ctl.json(&["realtime", "set", "off"]);
    eventually(T, "the agent to stop watching", || {
        let d = l.ctl.json(&["devices", "show", &l.device]);
        (d["device"]["observed"]["realtime_protection"] == false).then_some(())
    });
    let v = l.ctl.json(&["realtime", "list"]);
    assert_eq!(v["devices"][0]["active"], false, "{v}");
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss(pid: i32) -> u64 {
    palisade_tests::proc_status_kib(pid, "VmHWM").expect("the agent is running") * 1024
}

#[test]
fn a_burst_of_thousands_of_writes_loses_no_file_and_keeps_the_agent_small() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let l = realtime_lab(dir.path());
    l.ctl
        .json(&["automation", "set", "--group", "*", "--level", "none"]);
    // 5,000 files as fast as we can write them, one of them EICAR in the middle: more than
    // the pending-path cap, so whatever the kernel's or the agent's queues drop has to be
    // made up by a rescan of the directory.
    let mut planted = String::new();
    for i in 0..5000 {
        let sub = dir.path().join(format!("d{}", i % 10));
        if i < 10 {
            std::fs::create_dir(&sub).unwrap();
        }
        let p = sub.join(format!("f{i}.bin"));
        if i == 2500 {
            std::fs::write(&p, eicar()).unwrap();
            planted = p.to_str().unwrap().to_owned();
        } else {
            std::fs::write(&p, format!("harmless file {i}\n").repeat(32)).unwrap();
        }
    }
    eventually(
        Duration::from_secs(180),
        "the planted file's detection",
        || detection_events(&l, &planted).into_iter().next(),
    );
    let pid = l.agent.proc.as_ref().unwrap().pid();
    let peak = peak_rss(pid);
    eprintln!(
        "agent peak RSS after the burst: {:.1} MiB; rescans: {}",
        peak as f64 / (1 << 20) as f64,
        l.agent.log().matches("rescanning the directory").count()
    );
    assert!(peak < 200 << 20, "the agent's peak RSS is {peak} bytes");
}
