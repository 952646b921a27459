//! Quarantine + release through the real vault code, next to a plain `cp` + `sync` of the same
//! file, in one run. Files live in `$PALISADE_BENCH_DIR` (default `target/vault-bench`, on the
//! same filesystem as the build), so that both sides write to the same disk.
//!
//! ```text
//! cargo bench --workspace --bench vault            # 1 KiB, 100 MiB, 1 GiB
//! PALISADE_BENCH_SIZES=1K,100M cargo bench --workspace --bench vault
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_agent::host::Host;
use palisade_agent::host::linux::LinuxHost;
use palisade_agent::vault::entry_id;

fn parse_size(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().expect("size like 1K, 100M, 1G");
    match unit {
        "K" => n << 10,
        "M" => n << 20,
        "G" => n << 30,
        _ => panic!("size unit must be K, M or G"),
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n => format!("{} KiB", n >> 10),
    }
}

fn fill(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = std::env::var_os("PALISADE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("target/vault-bench")
        });
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("work")).unwrap();
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let host = LinuxHost::default().with_vault(state.clone(), vec![]);
    let sizes: Vec<u64> = std::env::var("PALISADE_BENCH_SIZES")
        .unwrap_or_else(|_| "1K,100M,1G".into())
        .split(',')
        .map(parse_size)
        .collect();
    println!(
        "{:>8}  {:>5}  {:>12}  {:>12}  {:>12}  {:>12}",
        "size", "runs", "quarantine", "release", "q + r", "cp + sync"
    );
    let mut action = 1u64;
    for size in sizes {
        let file = root.join("work").join(format!("file-{size}"));
        let copy = root.join("work").join(format!("copy-{size}"));
        fill(&file, size);
        sync();
        let runs = if size <= 1 << 20 {
            21
        } else if size <= 200 << 20 {
            3
        } else {
            1
        };
        let (mut q, mut r, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            assert!(
                Command::new("cp")
                    .arg(&file)
                    .arg(&copy)
                    .status()
                    .unwrap()
                    .success()
            );
            sync();
            c.push(t.elapsed());
            std::fs::remove_file(&copy).unwrap();
            sync();

            action += 1;
            let id = entry_id(action, &file.to_string_lossy());
            let t = Instant::now();
            host.quarantine_file(&file, None, &id, action)
                .expect("quarantine");
            q.push(t.elapsed());
            sync();
            let t = Instant::now();
            host.release(&id, None, false, action + 1_000_000)
                .expect("release");
            r.push(t.elapsed());
            sync();
        }
        let (q, r, c) = (median(q), median(r), median(c));
        println!(
            "{:>8}  {:>5}  {:>10.1}ms  {:>10.1}ms  {:>10.1}ms  {:>10.1}ms",
            human(size),
            runs,
            q.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            (q + r).as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3
        );
        std::fs::remove_file(&file).unwrap();
    }
    let _ = std::fs::remove_dir_all(&root);
}
