//! The .deb packages, built from the binaries under test: contents, lintian, the systemd units
//! (verify, security exposure) and an install → enroll → run → remove round trip in a
//! throwaway Debian root. Needs root and Debian's dpkg-deb, lintian, systemd-analyze and
//! debootstrap (installed by .ci/run); without them these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use palisade_tests::deb::{self, Binaries};
use palisade_tests::{Controller, bin};

/// Both packages, built once per test run.
fn debs() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static DEBS: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    DEBS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bins = Binaries {
            agent: bin("palisade-agent"),
            controller: bin("palisade-controller"),
            ctl: bin("palisadectl"),
        };
        let debs = deb::build(&bins, dir.path()).expect("packages build");
        (dir, debs)
    })
}

fn deb_named(name: &str) -> &'static Path {
    debs()
        .1
        .iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}_"))
        })
        .unwrap()
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install it; .ci/run does)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn packages_contain_what_an_admin_needs() {
    let expect = [
        (
            "palisade-agent",
            vec![
                "-rwxr-xr-x root/root .* ./usr/bin/palisade-agent",
                "-rw-r--r-- root/root .* ./lib/systemd/system/palisade-agent.service",
                "-rw-r--r-- root/root .* ./etc/palisade/agent.toml",
                "./usr/share/doc/palisade-agent/copyright",
                "./usr/share/doc/palisade-agent/changelog.Debian.gz",
                "-rw-r--r-- root/root .* ./usr/share/man/man1/palisade-agent.1.gz",
                "./usr/share/man/man1/palisade-agent-enroll.1.gz",
            ],
        ),
        (
            "palisade-controller",
            vec![
                "-rwxr-xr-x root/root .* ./usr/bin/palisade-controller",
                "-rwxr-xr-x root/root .* ./usr/bin/palisadectl",
                "-rw-r--r-- root/root .* ./lib/systemd/system/palisade-controller.service",
                "-rw-r--r-- root/root .* ./etc/palisade/controller.toml",
                "-rw-r--r-- root/root .* ./usr/share/man/man1/palisade-controller.1.gz",
                "./usr/share/man/man1/palisadectl.1.gz",
                "./usr/share/man/man1/palisadectl-action-isolate.1.gz",
            ],
        ),
    ];
    for (name, patterns) in expect {
        let (ok, listing) = output(
            Command::new("dpkg-deb")
                .arg("--contents")
                .arg(deb_named(name)),
        );
        assert!(ok, "{listing}");
        for p in patterns {
            let (path, owner) = match p.split_once(" .* ") {
                Some((perm, path)) => (path, Some(perm)),
                None => (p, None),
            };
            let line = listing
                .lines()
                .find(|l| l.ends_with(path))
                .unwrap_or_else(|| panic!("{name}: no {path} in\n{listing}"));
            if let Some(owner) = owner {
                assert!(line.starts_with(owner), "{name}: {line} is not {owner}");
            }
        }
        let (ok, control) = output(Command::new("dpkg-deb").arg("--field").arg(deb_named(name)));
        assert!(ok);
        if name == "palisade-agent" {
            assert!(
                control.contains("nftables"),
                "the agent must depend on nftables:\n{control}"
            );
        }
        let (_, conffiles) = output(
            Command::new("dpkg-deb")
                .args(["--ctrl-tarfile"])
                .arg(deb_named(name)),
        );
        assert!(!conffiles.is_empty());
    }
}

#[test]
fn lintian_is_clean() {
    for name in ["palisade-agent", "palisade-controller"] {
        let (ok, report) = output(
            Command::new("lintian")
                .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
                .arg(deb_named(name)),
        );
        assert!(ok, "lintian on {name}:\n{report}");
    }
}

/// Extracts a package into a fresh directory.
fn unpack(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = output(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb_named(name))
            .arg(dir.path()),
    );
    assert!(ok, "{text}");
    dir
}

#[test]
fn the_units_verify_and_the_controller_is_hardened() {
    for name in ["palisade-agent", "palisade-controller"] {
        let root = unpack(name);
        // The system's own units (targets the unit orders itself against) next to ours.
        let units = root.path().join("lib/systemd/system");
        let (ok, text) = output(
            Command::new("cp")
                .args(["-rn", "/lib/systemd/system/."])
                .arg(&units),
        );
        assert!(ok, "{text}");
        let unit = units.join(format!("{name}.service"));
        let (ok, text) = output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", root.path().display()))
                .arg(&unit),
        );
        let problems: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            ok && problems.is_empty(),
            "systemd-analyze verify {name}:\n{text}"
        );
    }
    let root = unpack("palisade-controller");
    let unit = root
        .path()
        .join("lib/systemd/system/palisade-controller.service");
    let (_, text) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
    );
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for palisade-controller.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= 2.5, "controller exposure {level} > 2.5:\n{text}");
}

#[test]
fn the_shipped_config_files_validate() {
    let out = Command::new(bin("palisade-controller"))
        .args(["--config"])
        .arg(palisade_tests::deb::repo_root().join("packaging/etc/controller.toml"))
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent's validate also wants an identity: a fresh state dir must be refused clearly.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("palisade-agent"))
        .arg("--config")
        .arg(palisade_tests::deb::repo_root().join("packaging/etc/agent.toml"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not enrolled"));
}

/// A minimal Debian 12 root made once by debootstrap and kept (read-only use) in /var/tmp, so
/// repeated runs on one machine do not download it again.
fn debian_root() -> PathBuf {
    let cache = PathBuf::from("/var/tmp/palisade-test-bookworm.tar");
    if !cache.exists() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (ok, text) = output(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--include=nftables", "bookworm"])
                .arg(dir.path())
                .arg("http://deb.debian.org/debian"),
        );
        assert!(ok, "debootstrap failed:\n{text}");
        let tmp = cache.with_extension("tar.part");
        let (ok, text) = output(
            Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .arg("-cf")
                .arg(&tmp)
                .arg("."),
        );
        assert!(ok, "{text}");
        std::fs::rename(&tmp, &cache).unwrap();
    }
    cache
}

#[test]
fn the_agent_package_installs_enrolls_runs_and_removes_in_a_throwaway_debian() {
    let tar = debian_root();
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let r = root.path();
    let (ok, text) = output(Command::new("tar").arg("-C").arg(r).arg("-xf").arg(&tar));
    assert!(ok, "{text}");
    std::fs::copy(deb_named("palisade-agent"), r.join("tmp/agent.deb")).unwrap();
    let ctl = Controller::start();
    let token = ctl.enroll_token(1, "1h");

    // A private mount namespace with /proc mounted in the chroot; everything else is plain
    // files, so dropping the directory throws the whole install away.
    let script = format!(
        r#"set -e
mount -t proc proc "{root}/proc"
chroot "{root}" dpkg -i /tmp/agent.deb
test -x "{root}/usr/bin/palisade-agent"
test -f "{root}/etc/palisade/agent.toml"
test -d "{root}/var/lib/palisade-agent"
chroot "{root}" palisade-agent --config /etc/palisade/agent.toml enroll --controller {quic} --token {token} --ca-sha256 {ca}
chroot "{root}" palisade-agent --config /etc/palisade/agent.toml validate
chroot "{root}" palisade-agent --config /etc/palisade/agent.toml run > "{root}/tmp/agent.log" 2>&1 &
echo $! > "{root}/tmp/agent.pid"
"#,
        root = r.display(),
        quic = ctl.quic,
        token = token,
        ca = ctl.ca_sha256
    );
    let mut ns = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--fork", "sh", "-c"])
        .arg(format!("{script}\nwhile [ ! -e \"{}/tmp/stop\" ]; do sleep 0.1; done\nkill $(cat \"{}/tmp/agent.pid\") || true\nwait\nchroot \"{}\" dpkg -r palisade-agent\nchroot \"{}\" dpkg -P palisade-agent\numount \"{}/proc\"", r.display(), r.display(), r.display(), r.display(), r.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) is needed");

    let device = palisade_tests::eventually(
        std::time::Duration::from_secs(60),
        "the packaged agent to come online",
        || {
            if let Ok(Some(status)) = ns.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(ns.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("install script exited with {status}: {err}");
            }
            let devices = ctl.json(&["devices", "list"]);
            devices["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["online"] == true)
                .map(|d| d["id"].as_str().unwrap().to_owned())
        },
    );
    let v = ctl.json(&["devices", "show", &device]);
    assert_eq!(v["device"]["agent_version"], env!("CARGO_PKG_VERSION"));

    std::fs::write(r.join("tmp/stop"), b"").unwrap();
    let out = ns.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "remove failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !r.join("usr/bin/palisade-agent").exists(),
        "binary left after remove"
    );
    assert!(
        !r.join("var/lib/palisade-agent").exists(),
        "state left after purge"
    );
    assert!(
        !r.join("etc/palisade/agent.toml").exists(),
        "conffile left after purge"
    );
}
