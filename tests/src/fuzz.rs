//! A small mutational fuzzer that runs on stable Rust inside `cargo test` (cargo-fuzz needs
//! nightly, which this project does not use). Each target starts from seeds — real frames,
//! configuration files, hash lists, JSON bodies — and feeds stacked byte mutations of them to a
//! check that must never panic and must hold its invariants. Inputs a target *accepts* (they
//! parse) join the corpus, so mutation reaches past the first validity check: a cheap stand-in
//! for coverage feedback.
//!
//! `PALISADE_FUZZ_SECS` sets each target's time budget (default 2 s: a smoke pass in CI);
//! `PALISADE_FUZZ_SEED` replays a run (the seed is printed at the start of every target).
//! A failure prints the failing input in hex; it then becomes a regression test with the input
//! inline. See docs/fuzzing.md.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// What a target made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed (or otherwise got far): worth mutating further.
    Accepted,
    /// Refused with an error, as it should be.
    Rejected,
}

/// A broken invariant, with what the target saw.
pub type Check = Result<Verdict, String>;

/// xorshift64*: small, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// The time budget per target: `PALISADE_FUZZ_SECS`, else `default`.
pub fn budget(default: Duration) -> Duration {
    match std::env::var("PALISADE_FUZZ_SECS") {
        Ok(s) => Duration::from_secs_f64(
            s.parse::<f64>()
                .unwrap_or_else(|_| panic!("PALISADE_FUZZ_SECS={s:?} is not a number of seconds")),
        ),
        Err(_) => default,
    }
}

/// The run's seed: `PALISADE_FUZZ_SEED`, else from the clock.
pub fn seed() -> u64 {
    match std::env::var("PALISADE_FUZZ_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("PALISADE_FUZZ_SEED={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Byte values that sit on edges: the payload codec's varint tags (251–254), signed and
/// unsigned limits, ASCII separators the text formats care about.
const INTERESTING: &[u8] = &[
    0, 1, 2, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, b':', b'*', b'#', b'\n', b'"', b'{',
    b'}', b'[', b']', b'=', b'\\', b'.', b'-', b'0', b'9',
];

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    1 << 20,
    (1 << 20) + 1,
    u32::MAX,
];

/// Applies one to eight random mutations to `input`, sometimes splicing in part of `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                out.drain(i..i + n);
            }
            5 if len > 0 => {
                // duplicate a range (repeats fields, lengthens lists)
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let copy = out[i..i + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            6 if !other.is_empty() => {
                // splice: a prefix of this input, a suffix of another
                let i = rng.below(len + 1);
                let j = rng.below(other.len());
                out.truncate(i);
                out.extend_from_slice(&other[j..]);
            }
            7 if len > 0 => {
                out.truncate(rng.below(len));
            }
            8 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                let bytes = if rng.chance(2) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out[i..i + 4].copy_from_slice(&bytes);
            }
            9 if len > 0 => {
                // arithmetic on a byte
                let i = rng.below(len);
                let d = 1 + rng.below(16) as u8;
                out[i] = if rng.chance(2) {
                    out[i].wrapping_add(d)
                } else {
                    out[i].wrapping_sub(d)
                };
            }
            10 if len > 1 => {
                let i = rng.below(len);
                let j = rng.below(len);
                out.swap(i, j);
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
    out.truncate(max_len);
    out
}

/// What a fuzz run did.
#[derive(Debug)]
pub struct Report {
    pub iterations: u64,
    pub accepted: u64,
    pub corpus: usize,
    pub elapsed: Duration,
}

/// Runs `target` on mutations of `seeds` (and of the inputs it accepts) until `budget` is
/// spent. Panics — naming the seed and the input in hex — on the first input whose check
/// panics or fails. The seeds themselves are checked first.
pub fn run(
    name: &str,
    seeds: Vec<Vec<u8>>,
    max_len: usize,
    budget: Duration,
    mut target: impl FnMut(&[u8]) -> Check,
) -> Report {
    const MAX_CORPUS: usize = 4096;
    let seed = seed();
    eprintln!(
        "fuzz {name}: seed {seed} (replay with PALISADE_FUZZ_SEED={seed}), budget {budget:?}"
    );
    let mut rng = Rng::new(seed);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    // Hashes of what joined the corpus (forgotten now and then, so a long run stays small).
    let mut seen: HashSet<u64> = HashSet::new();
    let start = Instant::now();
    let mut report = Report {
        iterations: 0,
        accepted: 0,
        corpus: 0,
        elapsed: Duration::ZERO,
    };
    let mut check = |input: &[u8], report: &mut Report| -> Verdict {
        report.iterations += 1;
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(Ok(v)) => {
                if v == Verdict::Accepted {
                    report.accepted += 1;
                }
                v
            }
            Ok(Err(broken)) => panic!(
                "fuzz {name}: invariant broken: {broken}\nseed {seed}, input ({} bytes): {}",
                input.len(),
                hex::encode(input)
            ),
            Err(_) => panic!(
                "fuzz {name}: the target panicked (message above)\nseed {seed}, input ({} bytes): {}",
                input.len(),
                hex::encode(input)
            ),
        }
    };
    for s in &seeds {
        check(s, &mut report);
        if seen.insert(digest(s)) {
            corpus.push(s.clone());
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    while start.elapsed() < budget {
        if seen.len() > 1 << 20 {
            seen.clear();
        }
        // Time is read once per batch: a clock read costs more than many small inputs.
        for _ in 0..64 {
            let a = &corpus[rng.below(corpus.len())];
            let b = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, a, b, max_len);
            if check(&input, &mut report) == Verdict::Accepted && seen.insert(digest(&input)) {
                if corpus.len() < MAX_CORPUS {
                    corpus.push(input);
                } else if rng.chance(8) {
                    // A full corpus keeps changing: a new accepted input replaces an old one
                    // (never a seed).
                    let at = seeds.len() + rng.below(corpus.len() - seeds.len());
                    corpus[at] = input;
                }
            }
        }
    }
    report.corpus = corpus.len();
    report.elapsed = start.elapsed();
    eprintln!(
        "fuzz {name}: {} inputs in {:.1?} ({} accepted), corpus {}",
        report.iterations, report.elapsed, report.accepted, report.corpus
    );
    report
}

fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_limit_and_change_something_eventually() {
        let mut rng = Rng::new(7);
        let base = b"HASH:12:name".to_vec();
        let mut changed = false;
        for _ in 0..1000 {
            let m = mutate(&mut rng, &base, b"other", 16);
            assert!(m.len() <= 16);
            changed |= m != base;
        }
        assert!(changed);
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        let r = catch_unwind(|| {
            run(
                "demo",
                vec![b"ok".to_vec()],
                64,
                Duration::from_millis(200),
                |i| {
                    assert!(!i.contains(&b'!'), "bang");
                    Ok(Verdict::Accepted)
                },
            )
        });
        assert!(r.is_err(), "an input with '!' is found within the budget");
    }
}
