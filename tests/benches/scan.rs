//! The antivirus scanner side by side with the tools people already time it against, in one
//! run, with the same thread count: our `palisade-agent scan` (cold, then again with its
//! clean-file cache), `yara -r -p N` (Debian's yara 4.2) with the same YARA rules, `clamscan`
//! with the same hash list and the same strings as ClamAV body signatures (`.ndb`), N
//! processes over N shares of the corpus (clamscan has no threads), and `sha256sum` over the
//! corpus (N processes through `xargs -P`) as the floor.
//!
//! The corpus (≥ 2 GB, ≥ 20,000 files: small text and binary files, medium and large files,
//! pieces of the system's executables, random bytes, planted matches) and the rule set (120
//! YARA rules, 10,000 MD5 hash-list entries) are generated once, deterministically, in
//! `PALISADE_BENCH_DIR` (default `/var/tmp/palisade-scan-bench`) and reused. The rules are
//! compiled by a real controller from an upload, as in production. Every tool runs once over
//! a warm page cache (a `sha256sum` pass warms it first). Peak RSS is from `wait4`.
//!
//! `cargo build --release --workspace --bins --benches && cargo bench --workspace --bench scan`
//!
//! Environment: `PALISADE_BENCH_THREADS` (default: the CPUs), `PALISADE_BENCH_DIR`.
//!
//! Under `cargo test` it is a smoke run: a corpus of a few hundred files in a temporary
//! directory, the same tools, the same comparison of what each one found.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_tests::scan_rules::{
    HASHES, RULES, Rng, Sig, absent_hash_lines, ndb, signatures, yara_rules,
};
use palisade_tests::{Controller, bench, bin, sqlite3};

/// Planted files per kind: matching a rule's text, its hex pattern, a hash-list line.
const PLANTED: usize = 30;

/// How many files of each size class the corpus holds.
struct Sizes {
    small: usize,
    medium: usize,
    large: usize,
}

impl Sizes {
    fn new() -> Sizes {
        if bench::smoke() {
            Sizes {
                small: 300,
                medium: 4,
                large: 1,
            }
        } else {
            Sizes {
                small: 20_000,
                medium: 900,
                large: 60,
            }
        }
    }
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// Builds the corpus and the rule files once; returns (corpus dir, files, bytes).
fn prepare(base: &Path, sigs: &[Sig], sizes: &Sizes) -> (PathBuf, u64, u64) {
    let corpus = base.join("corpus");
    let done = base.join("corpus.done");
    let rules = base.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("bench.yar"), yara_rules(sigs)).unwrap();
    std::fs::write(rules.join("bench.ndb"), ndb(sigs)).unwrap();
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&corpus);
        eprintln!("building the corpus in {} …", corpus.display());
        let mut rng = Rng(0xc0_4b05);
        // Pieces of real executables, for realistic binary content.
        let mut exe_pool = Vec::new();
        for p in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"] {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if exe_pool.len() > 64 << 20 {
                    break;
                }
                if let Ok(m) = e.metadata()
                    && m.is_file()
                    && m.len() < 8 << 20
                    && let Ok(b) = std::fs::read(e.path())
                {
                    exe_pool.extend_from_slice(&b);
                }
            }
        }
        assert!(exe_pool.len() > 1 << 20, "no executables to sample");
        let words: Vec<String> = (0..4000)
            .map(|_| {
                let len = 3 + rng.below(8) as usize;
                rng.word(len)
            })
            .collect();
        let mut hash_lines = String::new();
        let mut n = 0usize;
        let write = |rng: &mut Rng, size: usize, n: &mut usize| -> Vec<u8> {
            let mut data = vec![0u8; size];
            match rng.below(3) {
                0 => rng.fill(&mut data),
                1 => {
                    let mut t = Vec::with_capacity(size + 16);
                    while t.len() < size {
                        t.extend_from_slice(
                            words[rng.below(words.len() as u64) as usize].as_bytes(),
                        );
                        t.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
                    }
                    t.truncate(size);
                    data = t;
                }
                _ => {
                    let start =
                        rng.below((exe_pool.len() - size.min(exe_pool.len() - 1)) as u64) as usize;
                    let end = (start + size).min(exe_pool.len());
                    data[..end - start].copy_from_slice(&exe_pool[start..end]);
                }
            }
            let dir = corpus
                .join(format!("d{:03}", *n % 200))
                .join(format!("s{:02}", *n % 7));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{:06}", *n)), &data).unwrap();
            *n += 1;
            data
        };
        for _ in 0..sizes.small {
            let size = 1024 + rng.below(100 << 10) as usize;
            write(&mut rng, size, &mut n);
        }
        for _ in 0..sizes.medium {
            let size = (512 << 10) + rng.below(2 << 20) as usize;
            write(&mut rng, size, &mut n);
        }
        for _ in 0..sizes.large {
            let size = (4 << 20) + rng.below(4 << 20) as usize;
            write(&mut rng, size, &mut n);
        }
        // Planted: files matching a rule's text, its hex pattern, the hash list.
        let planted = corpus.join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        for i in 0..PLANTED {
            let g = &sigs[i * 3];
            let mut data = vec![0u8; 20_000];
            rng.fill(&mut data);
            data[5000..5000 + g.text.len()].copy_from_slice(g.text.as_bytes());
            std::fs::write(planted.join(format!("text{i}")), &data).unwrap();
            let mut data = vec![0u8; 20_000];
            rng.fill(&mut data);
            let mut pat = g.hex[..4].to_vec();
            pat.push(0x99);
            pat.extend_from_slice(&g.hex[5..7]);
            pat.extend_from_slice(&[1, 2]);
            pat.extend_from_slice(&g.hex[7..10]);
            data[7000..7000 + pat.len()].copy_from_slice(&pat);
            std::fs::write(planted.join(format!("hex{i}")), &data).unwrap();
            let mut data = vec![0u8; 3000 + i];
            rng.fill(&mut data);
            hash_lines += &format!("{}:{}:Bench.Hash.{i}\n", md5_hex(&data), data.len());
            std::fs::write(planted.join(format!("hash{i}")), &data).unwrap();
        }
        // The rest of the hash list: files that do not exist, of plausible sizes.
        hash_lines += &absent_hash_lines(&mut rng, PLANTED..HASHES);
        std::fs::write(rules.join("bench.hdb"), hash_lines).unwrap();
        std::fs::write(&done, format!("{n}")).unwrap();
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![corpus.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (corpus, files, bytes)
}

/// Wall time and peak RSS (KiB) of one command, its output kept in `out`.
fn measure(cmd: &mut Command, out: &Path) -> (Duration, u64) {
    let file = std::fs::File::create(out).unwrap();
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let (status, rss) = wait_peak(child);
    let took = start.elapsed();
    assert!(
        status == 0 || cmd.get_program() == "clamscan" && status == 1,
        "{cmd:?} exited with {status}"
    );
    (took, rss)
}

/// Waits for `child`; returns its exit code and peak RSS in KiB, the kernel's high-water mark
/// of its own memory (`VmHWM`) sampled every 10 ms until it exits. Not `wait4`'s `ru_maxrss`:
/// that also counts this process's peak, shared with the child until its `exec`.
fn wait_peak(mut child: std::process::Child) -> (i32, u64) {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let hwm = palisade_tests::proc_status_kib(pid as i32, "VmHWM");
                peak = peak.max(hwm.unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let status = child.wait().expect("wait for the benchmarked process");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (status.code().unwrap_or(-1), sampler.join().unwrap())
}

struct Row {
    tool: String,
    took: Duration,
    rss_kib: Option<u64>,
    found: String,
}

pub fn main() {
    let threads: usize = std::env::var("PALISADE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let smoke_dir = tempfile::tempdir().unwrap();
    let base = match std::env::var("PALISADE_BENCH_DIR") {
        Ok(dir) => PathBuf::from(dir),
        // The smoke corpus is small and thrown away; the real one is kept for the next run.
        Err(_) if bench::smoke() => smoke_dir.path().to_owned(),
        Err(_) => PathBuf::from("/var/tmp/palisade-scan-bench"),
    };
    let sigs = signatures();
    let (corpus, files, bytes) = prepare(&base, &sigs, &Sizes::new());
    let rules = base.join("rules");
    eprintln!(
        "corpus: {files} files, {:.2} GB; {RULES} YARA rules, {HASHES} hash entries; {threads} threads",
        bytes as f64 / 1e9
    );
    assert!(
        bench::smoke() || files >= 20_000 && bytes >= 2_000_000_000,
        "corpus below the goal size"
    );

    // The controller compiles the upload, as in production; the bundle is what agents fetch.
    let ctl = Controller::start();
    let v = ctl.json(&[
        "rules",
        "upload",
        rules.join("bench.yar").to_str().unwrap(),
        rules.join("bench.hdb").to_str().unwrap(),
    ]);
    assert_eq!(v["rule_set"]["yara_rules"], RULES as u64, "{v}");
    let bundle = base.join("bundle.bin");
    sqlite3(
        &ctl.db(),
        &format!(
            "SELECT writefile('{}', bundle) FROM rule_sets ORDER BY version DESC LIMIT 1",
            bundle.display()
        ),
    );
    let clamdb = base.join("clamdb");
    let _ = std::fs::remove_dir_all(&clamdb);
    std::fs::create_dir_all(&clamdb).unwrap();
    std::fs::copy(rules.join("bench.hdb"), clamdb.join("bench.hdb")).unwrap();
    std::fs::copy(rules.join("bench.ndb"), clamdb.join("bench.ndb")).unwrap();
    let outs = base.join("out");
    std::fs::create_dir_all(&outs).unwrap();
    let t = threads.to_string();
    let sha_cmd = format!(
        "find {} -type f -print0 | xargs -0 -P {t} -n 256 sha256sum",
        corpus.display()
    );
    // Warm the page cache.
    measure(
        Command::new("sh").args(["-c", &sha_cmd]),
        &outs.join("warmup.txt"),
    );

    let mut rows = Vec::new();
    let (took, _) = measure(
        Command::new("sh").args(["-c", &sha_cmd]),
        &outs.join("sha256sum.txt"),
    );
    rows.push(Row {
        tool: format!("sha256sum (xargs -P {t})"),
        took,
        // A pipeline of many short processes: no one peak to show.
        rss_kib: None,
        found: "—".into(),
    });

    let state = tempfile::tempdir().unwrap();
    let (took, rss) = measure(
        Command::new(bin("palisade-agent"))
            .arg("--state-dir")
            .arg(state.path())
            .args(["scan", "--threads", &t, "--repeat", "2", "--rules"])
            .arg(&bundle)
            .arg(&corpus),
        &outs.join("palisade.json"),
    );
    let runs: Vec<serde_json::Value> = std::fs::read_to_string(outs.join("palisade.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ms = |v: &serde_json::Value| Duration::from_millis(v["duration_ms"].as_u64().unwrap());
    let found = |v: &serde_json::Value| v["detections"].as_array().unwrap().len();
    let first = ms(&runs[0]);
    rows.push(Row {
        tool: format!("palisade-agent scan --threads {t}"),
        // The process's time minus the second (cached) run: load + first scan.
        took: took.saturating_sub(ms(&runs[1])),
        rss_kib: Some(rss),
        found: format!("{} files", found(&runs[0])),
    });
    rows.push(Row {
        tool: "palisade-agent scan, again (clean cache)".into(),
        took: ms(&runs[1]),
        rss_kib: Some(rss),
        found: format!(
            "{} files ({} of {} from the cache)",
            found(&runs[1]),
            runs[1]["counts"]["cached"],
            runs[1]["counts"]["files"]
        ),
    });
    eprintln!("palisade: first scan {first:?} inside the process");

    let (took, rss) = measure(
        Command::new("yara")
            .args(["-r", "-w", "-p", &t])
            .arg(rules.join("bench.yar"))
            .arg(&corpus),
        &outs.join("yara.txt"),
    );
    let yara_files: std::collections::BTreeSet<String> =
        std::fs::read_to_string(outs.join("yara.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, p)| p.to_owned()))
            .collect();
    rows.push(Row {
        tool: format!("yara -r -p {t} (4.2, YARA rules only)"),
        took,
        rss_kib: Some(rss),
        found: format!("{} files", yara_files.len()),
    });

    // clamscan: one process per share of the top-level directories, all at once.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let lists: Vec<PathBuf> = (0..threads)
        .map(|i| {
            let p = base.join(format!("clam-share-{i}.txt"));
            let mut f = std::fs::File::create(&p).unwrap();
            for d in dirs.iter().skip(i).step_by(threads) {
                writeln!(f, "{}", d.display()).unwrap();
            }
            p
        })
        .collect();
    let start = Instant::now();
    let children: Vec<_> = lists
        .iter()
        .enumerate()
        .map(|(i, list)| {
            Command::new("clamscan")
                .args(["-r", "--infected", "--no-summary", "-d"])
                .arg(&clamdb)
                .arg("--file-list")
                .arg(list)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(outs.join(format!("clamscan-{i}.txt"))).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("clamscan (apt-get install clamav)")
        })
        .collect();
    let mut clam_rss = 0;
    for c in children {
        let (code, rss) = wait_peak(c);
        assert!(code == 0 || code == 1, "clamscan exited with {code}");
        clam_rss += rss;
    }
    let took = start.elapsed();
    let clam_found: usize = (0..threads)
        .map(|i| {
            std::fs::read_to_string(outs.join(format!("clamscan-{i}.txt")))
                .unwrap()
                .lines()
                .filter(|l| l.ends_with("FOUND"))
                .count()
        })
        .sum();
    rows.push(Row {
        tool: format!("clamscan × {t} (1.4, .hdb + .ndb)"),
        took,
        rss_kib: Some(clam_rss),
        found: format!("{clam_found} files"),
    });

    // Every tool found exactly the planted files it has signatures for: ours all three kinds
    // (twice, the second time from the cache), yara the YARA ones, clamscan all three.
    let planted = |n: usize| format!("{n} files");
    assert_eq!(rows[1].found, planted(3 * PLANTED), "palisade, first run");
    assert!(
        rows[2].found.starts_with(&planted(3 * PLANTED)),
        "palisade, cached run: {}",
        rows[2].found
    );
    assert_eq!(rows[3].found, planted(2 * PLANTED), "yara");
    assert_eq!(rows[4].found, planted(3 * PLANTED), "clamscan");

    let ours = rows[1].took.as_secs_f64();
    println!("\n| tool | wall s | MB/s | files/s | peak RSS MiB | ours is × faster | detections |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let s = r.took.as_secs_f64();
        println!(
            "| {} | {:.2} | {:.0} | {:.0} | {} | {:.2} | {} |",
            r.tool,
            s,
            bytes as f64 / 1e6 / s,
            files as f64 / s,
            r.rss_kib
                .map_or("—".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            s / ours,
            r.found
        );
    }
    let mut summary = BTreeMap::new();
    summary.insert("files", files);
    summary.insert("bytes", bytes);
    println!("\n{summary:?}, {threads} threads");
}
