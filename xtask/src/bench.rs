//! `cargo xtask bench`: builds the release binaries, runs the benchmarks one after another, and
//! writes each one's output into `docs/benchmarks.md`.
//!
//! The hand-written sections of that file explain the figures; the blocks this task writes
//! (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`) hold the last run's raw output
//! with the date, the machine and its load, so a figure can always be traced to a run.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Args;

/// Every benchmark: (package, bench target, what it measures).
const BENCHES: &[(&str, &str, &str)] = &[
    (
        "palisade-controller",
        "store_transitions",
        "durable action transitions per second, group commit against one row per transaction",
    ),
    (
        "palisade-controller",
        "history_query",
        "history queries over a large store",
    ),
    (
        "palisade-tests",
        "approve_latency",
        "approve → result latency on loopback",
    ),
    (
        "palisade-tests",
        "isolate_latency",
        "approve → isolation rules enforced (root, network namespaces)",
    ),
    (
        "palisade-tests",
        "agent_idle",
        "the idle agent's memory and CPU",
    ),
    (
        "palisade-tests",
        "action_center",
        "Action center page loads over a large history",
    ),
    (
        "palisade-tests",
        "fleet",
        "simulated fleet: connect storm, idle, fleet-wide action, reconnect storm",
    ),
    (
        "palisade-tests",
        "scan",
        "antivirus scan against yara, clamscan and sha256sum",
    ),
];

const DOC: &str = "docs/benchmarks.md";
const RAW_HEADING: &str = "## Raw output of the last `cargo xtask bench` runs";

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmarks to run (default: all). `--list` shows them.
    names: Vec<String>,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
    /// Print the output only; leave docs/benchmarks.md as it is.
    #[arg(long)]
    no_write: bool,
}

pub fn run(args: BenchArgs, root: &Path) -> Result<()> {
    if args.list {
        for (package, name, what) in BENCHES {
            println!("{name:<18} {what} ({package})");
        }
        return Ok(());
    }
    let selected: Vec<&(&str, &str, &str)> = if args.names.is_empty() {
        BENCHES.iter().collect()
    } else {
        args.names
            .iter()
            .map(|n| {
                BENCHES
                    .iter()
                    .find(|(_, name, _)| name == n)
                    .with_context(|| {
                        format!("no benchmark named {n:?} (`cargo xtask bench --list` shows them)")
                    })
            })
            .collect::<Result<_>>()?
    };
    let status = crate::cargo()
        // Benches too: they bring the dev-dependencies into the feature resolution, and a
        // build without them would leave `cargo bench` to rebuild yara-x and wasmtime.
        .args(["build", "--release", "--workspace", "--bins", "--benches"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the release build failed ({status})");
    }

    let mut failed = Vec::new();
    for (_, name, _) in selected {
        let machine = machine();
        let started = humantime::format_rfc3339_seconds(SystemTime::now());
        eprintln!("==> {name} ({machine})");
        let mut child = crate::cargo()
            // `--workspace`, not `-p`: the same features as the release build, so no second
            // build of yara-x and wasmtime.
            .args(["bench", "--workspace", "--bench", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run cargo bench")?;
        let mut output = String::new();
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line.context("cannot read the benchmark's output")?;
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
        let status = child.wait()?;
        if !status.success() {
            failed.push(format!("{name} ({status})"));
            continue;
        }
        if !args.no_write {
            let header = format!("`cargo bench --workspace --bench {name}`, {started}, {machine}");
            write_block(&root.join(DOC), name, &header, &output)?;
        }
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The CPU, its count, and the load average when a run starts (other work skews the figures).
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!("{cores} × {cpu}, load {load}")
}

/// Replaces the block of `name` in the document, or appends it under the raw-output heading.
fn write_block(doc: &Path, name: &str, header: &str, output: &str) -> Result<()> {
    let text = fs::read_to_string(doc).with_context(|| format!("cannot read {}", doc.display()))?;
    let updated = replace_block(&text, name, header, output);
    fs::write(doc, updated).with_context(|| format!("cannot write {}", doc.display()))
}

fn replace_block(text: &str, name: &str, header: &str, output: &str) -> String {
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    let block = format!("{open}\n### `{name}`\n\n{header}\n\n```text\n{output}```\n{close}");
    if let (Some(start), Some(end)) = (text.find(&open), text.find(&close))
        && start < end
    {
        return format!("{}{block}{}", &text[..start], &text[end + close.len()..]);
    }
    let mut text = text.trim_end().to_owned();
    if !text.contains(RAW_HEADING) {
        text.push_str(&format!(
            "\n\n{RAW_HEADING}\n\nWritten by `cargo xtask bench [NAME…]`; the sections above explain them.\n"
        ));
    }
    format!("{text}\n\n{block}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_appended_once_then_replaced_in_place() {
        let doc = "# Benchmarks\n\nhand-written\n";
        let once = replace_block(doc, "fleet", "run 1", "a\n");
        assert!(once.starts_with(doc.trim_end()));
        assert_eq!(once.matches(RAW_HEADING).count(), 1);
        let other = replace_block(&once, "scan", "run 1", "s\n");
        let twice = replace_block(&other, "fleet", "run 2", "b\n");
        assert_eq!(twice.matches("<!-- bench:fleet -->").count(), 1);
        assert_eq!(twice.matches(RAW_HEADING).count(), 1);
        assert!(twice.contains("run 2\n\n```text\nb\n```"), "{twice}");
        assert!(!twice.contains("run 1\n\n```text\na\n"), "{twice}");
        assert!(twice.contains("```text\ns\n```"), "{twice}");
        // The fleet block stays where it was, before the scan block.
        assert!(twice.find("bench:fleet").unwrap() < twice.find("bench:scan").unwrap());
    }
}
