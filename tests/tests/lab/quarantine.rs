//! Lab tests of stop-and-quarantine and release (issue 4), with the real binaries, real
//! processes and real files: run as root (CI does); without root they fail, they never skip.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_tests::{Controller, Proc, bin, eventually, sha256_hex, spawn_written_program};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the quarantine lab tests need root (chown, mknod, chattr, mount namespaces); run them as root"
    );
}

fn detail(v: &Value) -> &Value {
    &v["action"]["result_detail"]
}

fn summary(v: &Value) -> String {
    v["action"]["result_summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a live slice, for the duration of the call.
    let rc = unsafe {
        nix::libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: as above; the buffer outlives the call and its length is passed.
    let len =
        unsafe { nix::libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

fn vault_of(ctl: &Controller, device: &str) -> Vec<Value> {
    ctl.json(&["devices", "vault", device])["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_running_binary_is_killed_quarantined_and_released_identical() {
    require_root();
    let ctl = Controller::start();
    ctl.without_approval(&[]);
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let work = ctl.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let evil = work.join("evil-sleep");
    std::fs::copy("/bin/sleep", &evil).unwrap();
    std::os::unix::fs::chown(&evil, Some(1234), Some(1234)).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o751)).unwrap();
    set_xattr(&evil, "user.palisade.case", b"case-42");
    let mtime = nix::sys::time::TimeSpec::new(1_600_000_000, 123_456_789);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &evil,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let bytes = std::fs::read(&evil).unwrap();
    let sha = sha256_hex(&bytes);

    // One process runs it, another only has it open.
    let mut runner = spawn_written_program(Command::new(&evil).arg("600"));
    let mut holder = Command::new("sh")
        .args(["-c", "exec 3<\"$0\"; exec sleep 600"])
        .arg(&evil)
        .spawn()
        .unwrap();
    eventually(T, "the copy to run", || {
        let exe = std::fs::read_link(format!("/proc/{}/exe", runner.id())).ok()?;
        let held = std::fs::read_link(format!("/proc/{}/fd/3", holder.id())).ok()?;
        (exe == evil && held == evil).then_some(())
    });

    let id = ctl.request(&[
        "quarantine",
        &device,
        "--path",
        evil.to_str().unwrap(),
        "--comment",
        "malware running",
    ]);
    let v = ctl.wait_status(id, "succeeded", T);
    let d = detail(&v);
    assert_eq!(d["sha256"], sha.as_str(), "{v}");
    assert_eq!(d["path"], evil.to_str().unwrap());
    let entry = d["vault_entry"].as_str().expect("vault entry").to_owned();
    let killed: Vec<(i64, String)> = d["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["pid"].as_i64().unwrap(),
                k["cmdline"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        killed
            .iter()
            .any(|(p, c)| *p == runner.id() as i64 && c.contains("evil-sleep 600")),
        "{killed:?}"
    );
    assert!(
        killed.iter().any(|(p, _)| *p == holder.id() as i64),
        "{killed:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(runner.wait().unwrap().signal(), Some(9));
    assert_eq!(holder.wait().unwrap().signal(), Some(9));
    assert!(!evil.exists(), "the file is still in place");
    assert!(summary(&v).contains(&entry), "{}", summary(&v));

    // The vault: 0700, an encoded copy that is not the binary, and its metadata.
    let vault = agent.state_dir.join("vault");
    assert_eq!(std::fs::metadata(&vault).unwrap().mode() & 0o777, 0o700);
    let copy = std::fs::read(vault.join(format!("{entry}.bin"))).unwrap();
    assert_eq!(copy.len(), bytes.len() + 16);
    assert!(!copy.starts_with(b"\x7fELF"));
    assert!(
        !copy.windows(64).any(|w| w == &bytes[..64]),
        "the vault copy contains the original's header"
    );
    let listed = eventually(T, "the vault listing", || {
        let l = vault_of(&ctl, &device);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(listed[0]["id"], entry.as_str());
    assert_eq!(listed[0]["sha256"], sha.as_str());
    let table = ctl.ctl(&["devices", "vault", &device]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&entry));

    // The undo releases it: same bytes, mode, owner, times, xattr; and it runs.
    let undo = ctl.json(&[
        "actions",
        "undo",
        &id.to_string(),
        "--comment",
        "false positive",
    ]);
    let rid = undo["actions"][0]["id"].as_u64().unwrap();
    let r = ctl.wait_status(rid, "succeeded", T);
    assert_eq!(detail(&r)["vault_entry"], entry.as_str(), "{r}");
    assert_eq!(ctl.status(id), "undone");
    assert_eq!(std::fs::read(&evil).unwrap(), bytes);
    let m = std::fs::symlink_metadata(&evil).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o751);
    assert_eq!((m.uid(), m.gid()), (1234, 1234));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(
        get_xattr(&evil, "user.palisade.case").as_deref(),
        Some(&b"case-42"[..])
    );
    let status = spawn_written_program(Command::new(&evil).arg("0"))
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "the released binary does not run: {status}"
    );
    eventually(T, "the vault listing to empty", || {
        vault_of(&ctl, &device).is_empty().then_some(())
    });
    assert!(!vault.join(format!("{entry}.bin")).exists());
}

/// Asks for a quarantine of `path` and returns the finished action.
fn quarantine_fails(ctl: &Controller, device: &str, path: &str) -> u64 {
    ctl.request(&["quarantine", device, "--path", path, "--comment", "refusal"])
}

#[test]
fn every_refusal_is_clear_and_leaves_the_file_in_place() {
    require_root();
    let ctl = Controller::start();
    ctl.without_approval(&[]);
    let work = ctl.dir.path().join("work");
    let protected = work.join("protected");
    std::fs::create_dir_all(&protected).unwrap();
    let mut agent = ctl.enroll_agent();
    agent.start_with(&["--protect", protected.to_str().unwrap()]);
    let device = agent.device_id();

    std::fs::create_dir(work.join("adir")).unwrap();
    nix::unistd::mkfifo(&work.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(work.join("sock")).unwrap();
    nix::sys::stat::mknod(
        &work.join("nulldev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::write(work.join("target"), b"payload").unwrap();
    std::os::unix::fs::symlink(work.join("target"), work.join("link")).unwrap();
    std::fs::create_dir(work.join("realdir")).unwrap();
    std::fs::write(work.join("realdir/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink(work.join("realdir"), work.join("dirlink")).unwrap();
    std::fs::write(protected.join("tool"), b"tool").unwrap();
    let immutable = work.join("immutable");
    std::fs::write(&immutable, b"locked").unwrap();
    run_ok(Command::new("chattr").arg("+i").arg(&immutable));

    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let journal = s(&agent.journal());
    let agent_bin = s(&bin("palisade-agent"));
    let cases: Vec<(String, &str)> = vec![
        (s(&work.join("adir")), "is a directory"),
        (s(&work.join("fifo")), "is a FIFO"),
        (s(&work.join("sock")), "is a socket"),
        (s(&work.join("nulldev")), "is a device"),
        (s(&work.join("link")), "is a symbolic link"),
        (
            s(&work.join("dirlink/inner")),
            "resolves through a symbolic link",
        ),
        (journal, "is one of the agent's own files"),
        (agent_bin, "is the agent's own binary"),
        ("/proc/self/status".into(), "is under /proc"),
        ("/sys/kernel/notes".into(), "is under /sys"),
        ("/etc/passwd".into(), "is protected (/etc/passwd)"),
        (s(&protected.join("tool")), "is protected"),
        (s(&immutable), "is immutable (chattr +i)"),
        (s(&work.join("missing")), "does not exist"),
    ];
    let ids: Vec<u64> = cases
        .iter()
        .map(|(p, _)| quarantine_fails(&ctl, &device, p))
        .collect();
    for ((path, why), id) in cases.iter().zip(ids) {
        let v = ctl.wait_status(id, "failed", T);
        assert!(
            summary(&v).contains(why),
            "{path}: expected {why:?}, got {:?}",
            summary(&v)
        );
        if !path.ends_with("missing") {
            assert!(
                std::fs::symlink_metadata(path).is_ok(),
                "{path} was removed by a refused quarantine"
            );
        }
    }
    run_ok(Command::new("chattr").arg("-i").arg(&immutable));
    assert!(vault_of(&ctl, &device).is_empty());
    assert!(
        std::fs::read_dir(agent.state_dir.join("vault"))
            .unwrap()
            .next()
            .is_none(),
        "a refused quarantine left something in the vault"
    );

    // A relative path is refused at request time.
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "action",
            "quarantine",
            &device,
            "--path",
            "tmp/x",
            "--comment",
            "x",
        ],
    );
    assert!(err.contains("not absolute"), "{err}");
}

#[test]
fn release_refuses_to_overwrite_a_different_file_and_restores_elsewhere_or_over_it() {
    require_root();
    let ctl = Controller::start();
    ctl.without_approval(&[]);
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let work = ctl.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let file = work.join("dropper.sh");
    std::fs::write(&file, b"#!/bin/sh\necho pwned\n").unwrap();
    let id = ctl.request(&[
        "quarantine",
        &device,
        "--path",
        file.to_str().unwrap(),
        "--comment",
        "q",
    ]);
    let v = ctl.wait_status(id, "succeeded", T);
    let entry = detail(&v)["vault_entry"].as_str().unwrap().to_owned();

    std::fs::write(&file, b"a new, different file").unwrap();
    let refused = ctl.request(&[
        "release-quarantine",
        &device,
        "--entry",
        &entry,
        "--comment",
        "back",
    ]);
    let r = ctl.wait_status(refused, "failed", T);
    assert!(
        summary(&r).contains("a different file is there"),
        "{}",
        summary(&r)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"a new, different file");
    assert_eq!(vault_of(&ctl, &device).len(), 1);

    let elsewhere = work.join("restored.sh");
    let ok = ctl.request(&[
        "release-quarantine",
        &device,
        "--entry",
        &entry,
        "--restore-path",
        elsewhere.to_str().unwrap(),
        "--comment",
        "to another path",
    ]);
    ctl.wait_status(ok, "succeeded", T);
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        b"#!/bin/sh\necho pwned\n"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"a new, different file");

    // Quarantine the restored copy, then release it over a different file, as asked.
    let id2 = ctl.request(&[
        "quarantine",
        &device,
        "--path",
        elsewhere.to_str().unwrap(),
        "--comment",
        "q2",
    ]);
    let v2 = ctl.wait_status(id2, "succeeded", T);
    let entry2 = detail(&v2)["vault_entry"].as_str().unwrap().to_owned();
    let over = ctl.request(&[
        "release-quarantine",
        &device,
        "--entry",
        &entry2,
        "--restore-path",
        file.to_str().unwrap(),
        "--overwrite",
        "--comment",
        "overwrite",
    ]);
    ctl.wait_status(over, "succeeded", T);
    assert_eq!(std::fs::read(&file).unwrap(), b"#!/bin/sh\necho pwned\n");
    let leftovers: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("palisade-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn fleet_wide_by_hash_quarantines_on_every_device_and_releases_where_held() {
    require_root();
    let ctl = Controller::start();
    let fleet_dir = ctl.dir.path().join("fleet");
    let mut a = ctl.enroll_agent();
    let mut b = ctl.enroll_agent();
    let mut idle = ctl.enroll_agent();
    a.start_with_private_dir(&fleet_dir);
    b.start_with_private_dir(&fleet_dir);
    idle.start_with_private_dir(&fleet_dir);
    let devices = [a.device_id(), b.device_id(), idle.device_id()];
    for d in &devices {
        eventually(T, "agents online", || ctl.device_online(d).then_some(()));
    }
    let payload = b"\x7fELF fleet-wide malware sample".repeat(1000);
    let sha = sha256_hex(&payload);
    let in_a = a.private_path(&fleet_dir.join("evil"));
    let in_b = b.private_path(&fleet_dir.join("sub/evil-copy"));
    std::fs::write(&in_a, &payload).unwrap();
    std::fs::create_dir(in_b.parent().unwrap()).unwrap();
    std::fs::write(&in_b, &payload).unwrap();
    std::fs::write(a.private_path(&fleet_dir.join("clean")), b"clean").unwrap();
    assert!(
        !fleet_dir.join("evil").exists(),
        "the private directories leak"
    );

    let v = ctl.json(&[
        "action",
        "quarantine",
        "--fleet",
        "--sha256",
        &sha,
        "--root",
        fleet_dir.to_str().unwrap(),
        "--comment",
        "outbreak",
    ]);
    let actions = v["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 4, "a parent and three children: {v}");
    let parent = actions[0]["id"].as_u64().unwrap();
    assert!(actions[0]["device_id"].is_null());
    let p = ctl.action(parent);
    assert_eq!(p["action"]["status"], "pending_approval");
    assert_eq!(p["action"]["children"]["pending"], 3, "{p}");

    // Approving the parent approves its children; the parent itself goes nowhere.
    ctl.json(&["actions", "approve", &parent.to_string(), "--comment", "go"]);
    let done = ctl.wait_status(parent, "succeeded", T);
    let counts = &done["action"]["children"];
    assert_eq!(
        (
            &counts["total"],
            &counts["succeeded"],
            &counts["failed"],
            &counts["pending"]
        ),
        (&3.into(), &3.into(), &0.into(), &0.into()),
        "{done}"
    );
    assert_eq!(done["children"].as_array().unwrap().len(), 3);
    assert_eq!(done["children_total"], 3);
    // The whole list of a fleet-wide action's children pages through the Action center.
    let listed = ctl.json(&["actions", "list", "--parent", &parent.to_string()]);
    let listed = listed["actions"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed.iter().all(|a| a["parent_id"] == parent),
        "{listed:?}"
    );
    let shown = String::from_utf8_lossy(&ctl.ctl(&["actions", "show", &parent.to_string()]).stdout)
        .into_owned();
    assert!(
        shown.contains("3 total: 3 succeeded, 0 failed, 0 pending"),
        "{shown}"
    );
    assert!(!in_a.exists() && !in_b.exists());
    assert!(a.private_path(&fleet_dir.join("clean")).exists());
    for (agent, n) in [(&a, 1), (&b, 1), (&idle, 0)] {
        let d = agent.device_id();
        eventually(T, "vault listings", || {
            (vault_of(&ctl, &d).len() == n).then_some(())
        });
    }

    // Release by hash on every device that holds it: the two that do.
    let v = ctl.json(&[
        "action",
        "release-quarantine",
        "--fleet",
        "--sha256",
        &sha,
        "--comment",
        "false alarm",
    ]);
    let actions = v["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3, "a parent and the two holders: {v}");
    let parent = actions[0]["id"].as_u64().unwrap();
    ctl.json(&["actions", "approve", &parent.to_string(), "--comment", "ok"]);
    let done = ctl.wait_status(parent, "succeeded", T);
    assert_eq!(done["action"]["children"]["succeeded"], 2, "{done}");
    assert_eq!(std::fs::read(&in_a).unwrap(), payload);
    assert_eq!(std::fs::read(&in_b).unwrap(), payload);
}

/// Reads the drill's vault: (file in place?, entries for the file with their decoded hashes).
fn vault_state(state: &Path) -> Vec<Value> {
    let out = Command::new(bin("palisade-agent"))
        .arg("--state-dir")
        .arg(state)
        .args(["vault", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn kill_9_at_random_moments_never_loses_the_file_nor_leaves_a_half_copy() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("victim.bin");
    let payload: Vec<u8> = (0..(192u32 << 10))
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    std::fs::write(&file, &payload).unwrap();
    let sha = sha256_hex(&payload);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash loop seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Calibrate the kill window to this machine's speed (a loaded machine may take longer to
    // start the drill than an idle one takes for dozens of moves): time a drill of two moves,
    // there and back, then kill within a quarter of that to twice that.
    let calibration = Instant::now();
    let status = Command::new(bin("palisade-agent"))
        .arg("--state-dir")
        .arg(&state)
        .arg("vault-drill")
        .arg(&file)
        .args(["--moves", "2"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "calibration drill: {status}");
    let two_moves = calibration.elapsed().as_micros() as u64;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        payload,
        "two moves: back in place"
    );
    eprintln!("a drill of two moves took {two_moves} µs");
    let started = Instant::now();
    let (mut in_place, mut in_vault) = (0, 0);
    let mut steps = std::collections::BTreeMap::new();
    for round in 0..200 {
        let log = dir.path().join("drill.log");
        let mut cmd = Command::new(bin("palisade-agent"));
        cmd.arg("--state-dir")
            .arg(&state)
            .arg("vault-drill")
            .arg(&file)
            .stdout(Stdio::null());
        let mut drill = Proc::start(&mut cmd, log);
        std::thread::sleep(Duration::from_micros(
            two_moves / 4 + rand() % (two_moves * 7 / 4),
        ));
        drill.kill9();

        // What the agent does at start.
        let out = Command::new(bin("palisade-agent"))
            .arg("--state-dir")
            .arg(&state)
            .args(["vault", "recover"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: recover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let step = line.rsplit(": ").next().unwrap_or_default().to_owned();
            *steps.entry(step).or_insert(0u32) += 1;
        }
        let entries = vault_state(&state);
        match std::fs::read(&file) {
            Ok(bytes) => {
                assert_eq!(
                    sha256_hex(&bytes),
                    sha,
                    "round {round}: the file in place is damaged"
                );
                assert!(
                    entries.is_empty(),
                    "round {round}: in place and in the vault: {entries:?}"
                );
                in_place += 1;
            }
            Err(_) => {
                assert_eq!(
                    entries.len(),
                    1,
                    "round {round}: the file is nowhere: {entries:?}"
                );
                assert_eq!(entries[0]["sha256"], sha.as_str(), "round {round}");
                assert_eq!(
                    entries[0]["decoded_sha256"],
                    sha.as_str(),
                    "round {round}: half copy"
                );
                assert_eq!(entries[0]["path"], file.to_str().unwrap());
                in_vault += 1;
            }
        }
        let junk: Vec<String> = std::fs::read_dir(state.join("vault"))
            .unwrap()
            .chain(std::fs::read_dir(&work).unwrap())
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.ends_with(".tmp")
                    || n.ends_with(".release")
                    || n.ends_with(".new")
                    || n.contains("palisade-restore")
            })
            .collect();
        assert!(
            junk.is_empty(),
            "round {round}: leftovers after recovery: {junk:?}"
        );
    }
    eprintln!(
        "200 rounds in {:?}: {in_place} ended in place, {in_vault} in the vault; recovery steps {steps:?}",
        started.elapsed()
    );
    assert!(
        in_place > 0 && in_vault > 0,
        "the kills did not land in both states ({in_place} in place, {in_vault} in the vault)"
    );
    assert!(
        !steps.is_empty(),
        "no kill landed in the middle of a move: the loop tested nothing"
    );
}

#[test]
fn the_real_agent_killed_mid_quarantine_finishes_the_action_after_restart() {
    require_root();
    let ctl = Controller::start();
    ctl.without_approval(&[]);
    let mut agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let work = ctl.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for round in 0..3u64 {
        let file = work.join(format!("big-{round}.bin"));
        let payload: Vec<u8> = (0..(24u64 << 20))
            .map(|i| (i ^ (i >> 9) ^ round) as u8)
            .collect();
        std::fs::write(&file, &payload).unwrap();
        let sha = sha256_hex(&payload);
        eventually(T, "agent online", || {
            ctl.device_online(&device).then_some(())
        });
        let id = ctl.request(&[
            "quarantine",
            &device,
            "--path",
            file.to_str().unwrap(),
            "--comment",
            "big",
        ]);
        // Kill it while it works (the copy of 24 MiB takes a moment), then restart.
        eventually(T, "the agent to start the work", || {
            let stage = palisade_tests::sqlite3(
                &agent.journal(),
                &format!("SELECT stage FROM actions WHERE id = {id}"),
            );
            (!stage.trim().is_empty()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(round * 40));
        agent.kill9();
        agent.start();
        let v = ctl.wait_status(id, "succeeded", T);
        assert_eq!(detail(&v)["sha256"], sha.as_str(), "{v}");
        assert!(!file.exists(), "round {round}: still in place");
        let entry = detail(&v)["vault_entry"].as_str().unwrap().to_owned();
        let listed = vault_state(&agent.state_dir);
        let e = listed
            .iter()
            .find(|e| e["id"] == entry.as_str())
            .expect("entry in the vault");
        assert_eq!(e["decoded_sha256"], sha.as_str());
    }
}
