//! Architecture invariants, checked by reading the source tree (see ARCHITECTURE.md). Each test
//! names the rule it guards; a failure lists the offending files.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files under `dirs` that mention any of `needles` outside the allowed files.
fn offenders(dirs: &[&str], needles: &[&str], allowed: &[&str]) -> Vec<String> {
    let root = root();
    let mut bad = Vec::new();
    for dir in dirs {
        for file in rust_files(&root.join(dir)) {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if allowed
                .iter()
                .any(|a| rel == *a || (a.ends_with('/') && rel.starts_with(a)))
            {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for n in needles {
                if mentions(&text, n) {
                    bad.push(format!("{rel}: {n}"));
                }
            }
        }
    }
    bad
}

/// Whether `needle` occurs in `text` at the start of a word (so `nix::` does not match
/// `unix::`).
fn mentions(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(i, _)| {
        text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

#[test]
fn only_the_transport_modules_use_quinn() {
    let bad = offenders(
        &["agent/src", "controller/src", "common/src"],
        &["quinn::", "use quinn"],
        &["agent/src/transport.rs", "controller/src/transport.rs"],
    );
    assert!(bad.is_empty(), "quinn outside a transport module: {bad:#?}");
}

#[test]
fn only_the_stores_speak_sql() {
    let bad = offenders(
        &["agent/src", "controller/src", "common/src", "cli/src"],
        &["rusqlite", "SELECT ", "INSERT INTO", "UPDATE "],
        &["controller/src/store/", "agent/src/journal.rs"],
    );
    assert!(
        bad.is_empty(),
        "SQL outside the store and the journal: {bad:#?}"
    );
}

#[test]
fn common_does_no_io_and_reads_no_clock() {
    let bad = offenders(
        &["common/src"],
        &[
            "std::fs",
            "std::net::Tcp",
            "std::net::Udp",
            "tokio",
            "SystemTime",
            "Instant::now",
            "std::process",
            "std::io::Read",
            "std::io::Write",
        ],
        &["common/src/session/tests.rs"],
    );
    assert!(bad.is_empty(), "IO or clock in common: {bad:#?}");
}

#[test]
fn only_the_codec_module_names_the_payload_encoding_outside_common_wire_types() {
    let bad = offenders(
        &["agent/src", "controller/src", "cli/src", "tests/src"],
        &["bincode"],
        &[],
    );
    assert!(
        bad.is_empty(),
        "bincode named outside common (use common::codec): {bad:#?}"
    );
}

#[test]
fn only_host_linux_runs_processes_or_calls_the_kernel_directly_in_the_agent() {
    let bad = offenders(
        &["agent/src"],
        &["std::process::Command", "nix::", "libc::", "notify::"],
        &["agent/src/host/linux/"],
    );
    assert!(
        bad.is_empty(),
        "host access outside agent/src/host/linux: {bad:#?}"
    );
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let root = root();
    let mut bad = Vec::new();
    for dir in ["agent/src", "controller/src", "common/src", "cli/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.contains("unsafe {") || line.trim_start().starts_with("unsafe fn") {
                    let before = &lines[i.saturating_sub(3)..i];
                    if !before.iter().any(|l| l.contains("SAFETY:")) {
                        bad.push(format!("{}:{}", file.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "unsafe without a SAFETY comment: {bad:#?}");
}

#[test]
fn every_dependency_is_pinned_once_in_the_workspace() {
    let root = root();
    for member in ["agent", "controller", "common", "cli", "tests", "xtask"] {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        let mut in_deps = false;
        for line in manifest.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_deps = t.contains("dependencies");
                continue;
            }
            if in_deps && !t.is_empty() && !t.starts_with('#') {
                assert!(
                    t.contains("workspace = true") || t.contains(".workspace = true"),
                    "{member}/Cargo.toml pins a dependency itself: {t}"
                );
            }
        }
    }
}

#[test]
fn the_web_page_puts_data_into_the_page_as_text_only() {
    // Everything the page shows comes from the API (hostnames, paths, comments that agents
    // and users control): it goes in with textContent or text nodes, never parsed as markup,
    // and nothing is evaluated. The content security policy (script-src 'self') is the
    // second line.
    let dir = root().join("controller/src/web/static");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout(\"",
            "javascript:",
        ] {
            if text.contains(needle) {
                bad.push(format!("{}: {needle}", path.display()));
            }
        }
        if path.extension().is_some_and(|e| e == "html") {
            let handler = text.match_indices(" on").any(|(i, _)| {
                let rest = &text[i + 3..];
                let name = rest.len()
                    - rest
                        .trim_start_matches(|c: char| c.is_ascii_lowercase())
                        .len();
                name > 0 && rest[name..].starts_with('=')
            });
            assert!(
                !text.contains("<script>") && !handler,
                "{}: inline script or handler (the CSP forbids them)",
                path.display()
            );
        }
    }
    assert!(
        bad.is_empty(),
        "markup or code built from strings: {bad:#?}"
    );
}

/// The code of `text` without its comment lines (doc comments may point up a layer).
fn code_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files under `dir` whose code names any of `needles`.
fn code_offenders(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = root();
    let mut bad = Vec::new();
    for file in rust_files(&root.join(dir)) {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let code = code_lines(&std::fs::read_to_string(&file).unwrap());
        for n in needles {
            if mentions(&code, n) {
                bad.push(format!("{rel}: {n}"));
            }
        }
    }
    bad
}

#[test]
fn the_agents_host_layer_names_no_module_above_it() {
    let above = [
        "crate::executor",
        "crate::runtime",
        "crate::realtime",
        "crate::transport",
        "crate::journal",
        "crate::package",
        "crate::scanner",
        "crate::isolation",
    ];
    let bad = code_offenders("agent/src/host", &above);
    assert!(bad.is_empty(), "the host layer reaches up: {bad:#?}");
}

#[test]
fn the_controllers_store_names_nothing_above_it() {
    let above = [
        "crate::service",
        "crate::api",
        "crate::transport",
        "axum",
        "quinn",
    ];
    let bad = code_offenders("controller/src/store", &above);
    assert!(bad.is_empty(), "the store reaches up: {bad:#?}");
    // Containment is composed by the service inside the approving job: the action queue
    // never calls it.
    let bad = code_offenders(
        "controller/src/store/actions",
        &["containment::", "super::containment"],
    );
    assert!(
        bad.is_empty(),
        "the action queue calls containment: {bad:#?}"
    );
}

/// Every Rust file of the workspace (not `target/`), relative to the root.
fn workspace_rust_files() -> Vec<(String, String)> {
    let root = root();
    let mut out = Vec::new();
    for member in ["agent", "controller", "common", "cli", "tests", "xtask"] {
        for file in rust_files(&root.join(member)) {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&file).unwrap()));
        }
    }
    out
}

#[test]
fn every_source_file_opens_with_what_it_is_for() {
    // A reader who opens a file learns from its first line what it holds (`//!`).
    let bad: Vec<String> = workspace_rust_files()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(rel, _)| rel)
        .collect();
    assert!(bad.is_empty(), "files without a `//!` opening: {bad:#?}");
}

#[test]
fn every_member_takes_the_workspace_lints() {
    // The lints live once, in the root manifest's [workspace.lints], not in flags or attributes.
    let root = root();
    let top = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(top.contains("[workspace.lints.rust]") && top.contains("[workspace.lints.clippy]"));
    for member in ["agent", "controller", "common", "cli", "tests", "xtask"] {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{member}/Cargo.toml does not take the workspace lints"
        );
    }
}
