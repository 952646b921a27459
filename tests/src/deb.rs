//! Builds the `.deb` packages from `packaging/` and a set of binaries with `dpkg-deb`: one
//! implementation for `cargo xtask deb` (release binaries) and the packaging tests (the
//! binaries under test).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");
const MAINTAINER: &str = "Palisade maintainers <maintainers@palisade.invalid>";
const HOMEPAGE: &str = "https://example.invalid/palisade";

pub struct Binaries {
    pub agent: PathBuf,
    pub controller: PathBuf,
    pub ctl: PathBuf,
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Stage {
    root: PathBuf,
}

impl Stage {
    fn file(&self, dest: &str, src: &Path, mode: u32) -> Result<()> {
        let path = self.root.join(dest.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("absolute dest"))?;
        fs::copy(src, &path).with_context(|| format!("cannot copy {}", src.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn text(&self, dest: &str, text: &str, mode: u32) -> Result<()> {
        let path = self.root.join(dest.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("absolute dest"))?;
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn binary(&self, dest: &str, src: &Path) -> Result<()> {
        self.file(dest, src, 0o755)?;
        run(Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(self.root.join(dest.trim_start_matches('/'))))?;
        Ok(())
    }

    /// The binary's manual pages, written by its hidden `man DIR` command from its own
    /// command-line definitions, gzipped into /usr/share/man/man1.
    fn man_pages(&self, bin: &Path) -> Result<()> {
        let dir = self.root.join("usr/share/man/man1");
        fs::create_dir_all(&dir)?;
        run(Command::new(bin).arg("man").arg(&dir))?;
        for entry in fs::read_dir(&dir)? {
            let page = entry?.path();
            if page.extension().is_some_and(|e| e == "1") {
                run(Command::new("gzip").args(["-9n", "-f"]).arg(&page))?;
                let gz = page.with_extension("1.gz");
                fs::set_permissions(&gz, fs::Permissions::from_mode(0o644))?;
            }
        }
        Ok(())
    }
}

struct Package<'a> {
    name: &'a str,
    depends: &'a str,
    description: &'a str,
    conffiles: &'a [&'a str],
    scripts: &'a str,
}

/// Builds both packages into `out` and returns their paths.
pub fn build(bins: &Binaries, out: &Path) -> Result<Vec<PathBuf>> {
    let repo = repo_root();
    let pkg = repo.join("packaging");
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    fs::create_dir_all(out)?;
    let mut debs = Vec::new();

    let agent = Package {
        name: "palisade-agent",
        depends: "libc6 (>= 2.34), libgcc-s1 (>= 4.2), nftables",
        description: "Palisade endpoint response agent\n \
            Carries out response actions (isolate, contain, quarantine, scan, restrict\n \
            execution, collect an investigation package, request a sample, offboard)\n \
            that it receives from a Palisade controller over QUIC with mutual TLS.\n \
            Each action is journaled so that none is lost or run twice.",
        conffiles: &["/etc/palisade/agent.toml"],
        scripts: "agent",
    };
    let stage = new_stage(out, agent.name)?;
    stage.binary("/usr/bin/palisade-agent", &bins.agent)?;
    stage.man_pages(&bins.agent)?;
    stage.file(
        "/lib/systemd/system/palisade-agent.service",
        &pkg.join("systemd/palisade-agent.service"),
        0o644,
    )?;
    stage.file(
        "/etc/palisade/agent.toml",
        &pkg.join("etc/agent.toml"),
        0o644,
    )?;
    docs(&stage, &repo, agent.name)?;
    debs.push(finish(&stage, &agent, &arch, &pkg, out)?);

    let controller = Package {
        name: "palisade-controller",
        depends: "libc6 (>= 2.34), libgcc-s1 (>= 4.2)",
        description: "Palisade endpoint response controller and operator CLI\n \
            Queues response actions for approval, delivers them to Palisade agents\n \
            over QUIC with mutual TLS, and records results, artifacts, history and a\n \
            hash-chained audit log. Includes palisadectl, the operator CLI.",
        conffiles: &["/etc/palisade/controller.toml"],
        scripts: "controller",
    };
    let stage = new_stage(out, controller.name)?;
    stage.binary("/usr/bin/palisade-controller", &bins.controller)?;
    stage.binary("/usr/bin/palisadectl", &bins.ctl)?;
    stage.man_pages(&bins.controller)?;
    stage.man_pages(&bins.ctl)?;
    stage.file(
        "/lib/systemd/system/palisade-controller.service",
        &pkg.join("systemd/palisade-controller.service"),
        0o644,
    )?;
    stage.file(
        "/etc/palisade/controller.toml",
        &pkg.join("etc/controller.toml"),
        0o644,
    )?;
    docs(&stage, &repo, controller.name)?;
    debs.push(finish(&stage, &controller, &arch, &pkg, out)?);
    Ok(debs)
}

fn new_stage(out: &Path, name: &str) -> Result<Stage> {
    let root = out.join("stage").join(name);
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(root.join("DEBIAN"))?;
    Ok(Stage { root })
}

fn docs(stage: &Stage, repo: &Path, name: &str) -> Result<()> {
    let doc = format!("/usr/share/doc/{name}");
    stage.file(
        &format!("{doc}/copyright"),
        &repo.join("packaging/debian/copyright"),
        0o644,
    )?;
    stage.file(
        &format!("{doc}/operations.md"),
        &repo.join("docs/operations.md"),
        0o644,
    )?;
    stage.file(
        &format!("{doc}/deploy.md"),
        &repo.join("docs/deploy.md"),
        0o644,
    )?;
    let changelog = format!(
        "palisade ({VERSION}) unstable; urgency=medium\n\n  * Release {}.\n\n -- {MAINTAINER}  Wed, 25 Nov 2026 00:00:00 +0000\n",
        env!("CARGO_PKG_VERSION")
    );
    let path = stage
        .root
        .join(format!("{}/changelog.Debian", doc.trim_start_matches('/')));
    fs::write(&path, changelog)?;
    run(Command::new("gzip").args(["-9n", "-f"]).arg(&path))?;
    fs::set_permissions(
        path.with_extension("Debian.gz"),
        fs::Permissions::from_mode(0o644),
    )?;
    stage.file(
        &format!("/usr/share/lintian/overrides/{name}"),
        &repo.join(format!(
            "packaging/debian/{}.lintian-overrides",
            if name == "palisade-agent" {
                "agent"
            } else {
                "controller"
            }
        )),
        0o644,
    )?;
    Ok(())
}

fn finish(stage: &Stage, p: &Package<'_>, arch: &str, pkg: &Path, out: &Path) -> Result<PathBuf> {
    for script in ["postinst", "prerm", "postrm"] {
        stage.file(
            &format!("/DEBIAN/{script}"),
            &pkg.join(format!("debian/{}.{script}", p.scripts)),
            0o755,
        )?;
    }
    stage.text(
        "/DEBIAN/conffiles",
        &format!("{}\n", p.conffiles.join("\n")),
        0o644,
    )?;
    // md5sums of every file outside DEBIAN/, as dpkg expects.
    let md5 = run(Command::new("sh").current_dir(&stage.root).args([
        "-c",
        "find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum",
    ]))?;
    stage.text("/DEBIAN/md5sums", &md5, 0o644)?;
    let size_kib = run(Command::new("du")
        .args(["-sk", "--exclude=DEBIAN"])
        .arg(&stage.root))?;
    let size_kib = size_kib.split_whitespace().next().unwrap_or("0");
    let control = format!(
        "Package: {}\nVersion: {VERSION}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\nInstalled-Size: {size_kib}\n\
         Depends: {}\nSection: admin\nPriority: optional\nHomepage: {HOMEPAGE}\nDescription: {}\n",
        p.name, p.depends, p.description
    );
    stage.text("/DEBIAN/control", &control, 0o644)?;
    let deb = out.join(format!("{}_{VERSION}_{arch}.deb", p.name));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage.root)
        .arg(&deb))?;
    Ok(deb)
}
