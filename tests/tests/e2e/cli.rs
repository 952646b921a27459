//! `palisadectl` itself: completion scripts and manual pages from its own definitions, and an
//! artifact download that waits for its action and names the file asked for.

use std::process::Command;
use std::time::Duration;

use palisade_tests::{Controller, bin, sha256_hex};

const T: Duration = Duration::from_secs(60);

#[test]
fn completions_and_manual_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("palisadectl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        // Every subcommand is offered, including the deep ones.
        for word in ["palisadectl", "isolate", "collect-package", "break-glass"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let err = Command::new(bin("palisadectl"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!err.status.success());

    let dir = tempfile::tempdir().unwrap();
    for b in ["palisadectl", "palisade-agent", "palisade-controller"] {
        let out = Command::new(bin(b))
            .arg("man")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{b} man: {out:?}");
    }
    let page = std::fs::read_to_string(dir.path().join("palisadectl-action-isolate.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("Cut the device off the network"), "{page}");
    for p in [
        "palisadectl.1",
        "palisade-agent-enroll.1",
        "palisade-controller.1",
    ] {
        assert!(dir.path().join(p).is_file(), "no {p}");
    }
}

#[test]
fn download_wait_fetches_the_artifact_once_the_action_is_done() {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent().started();
    let device = agent.device_id();
    let bytes: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let path = ctl.dir.path().join("evidence.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let id = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        path.to_str().unwrap(),
        "--comment",
        "wait for it",
    ]);
    // Without --wait, a download before the upload says why there is nothing yet.
    let early = ctl.ctl_fails(
        &ctl.admin_token,
        &["artifacts", "download", &id.to_string(), "-o", "/dev/null"],
    );
    assert!(
        early.contains("no artifacts") && early.contains("pending_approval"),
        "{early}"
    );

    ctl.json(&["actions", "approve", &id.to_string(), "--comment", "go"]);
    let out = ctl.dir.path().join("got.tar.gz");
    let dl = ctl.ctl(&[
        "artifacts",
        "download",
        &id.to_string(),
        "--wait",
        "--timeout",
        &format!("{}s", T.as_secs()),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        dl.status.success(),
        "{}",
        String::from_utf8_lossy(&dl.stderr)
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&out).unwrap()),
        sha256_hex(&bytes)
    );
    // The file under construction was `got.tar.gz.part`, gone now.
    assert!(!ctl.dir.path().join("got.tar.gz.part").exists());
    assert!(!ctl.dir.path().join("got.tar.part").exists());

    // An output that cannot be written: the error names it first, on one line.
    let missing = ctl.dir.path().join("no-such-dir").join("x.bin");
    let err = ctl.ctl_fails(
        &ctl.admin_token,
        &[
            "artifacts",
            "download",
            &id.to_string(),
            "-o",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let named = err.find(missing.to_str().unwrap()).unwrap_or(usize::MAX);
    let part = err.find(".part").unwrap_or(usize::MAX);
    assert!(named < part, "{err}");
}
