//! The antivirus scanner's logic, without touching the host: the engine (the controller's
//! compiled YARA rules, deserialized — the agent never compiles —, hash lists indexed by file
//! size, the built-in EICAR check), path exclusions, the clean-file cache, and one scan's
//! tallies and detections. `host::linux::scan` walks the filesystems and feeds it bytes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use md5::Digest;
use palisade_common::sigs::{EICAR_NAME, HashAlgo, HashSig, RulesBundle, eicar};
use serde::Serialize;

use crate::host::{FileMeta, ScanSink, ScanWorker, Skip};

/// Signatures ready to match: what one rule-set version compiled to on the controller.
pub struct Engine {
    pub version: u64,
    pub sources: Vec<String>,
    rules: Option<yara_x::Rules>,
    sigs: Vec<HashSig>,
    /// Indexes into `sigs` by the size they name.
    by_size: HashMap<u64, Vec<usize>>,
    /// Indexes into `sigs` that match any size (`*` in `.hsb`).
    any_size: Vec<usize>,
    eicar: memchr::memmem::Finder<'static>,
}

impl Engine {
    /// No uploaded rules: EICAR only.
    pub fn builtin() -> Engine {
        Engine::new(RulesBundle::default(), None)
    }

    /// The engine of a bundle fetched from the controller.
    pub fn from_bundle(bytes: &[u8]) -> Result<Engine, String> {
        let bundle = palisade_common::codec::decode_bundle(bytes)
            .map_err(|e| format!("malformed rules bundle: {e}"))?;
        let rules = if bundle.yara.is_empty() {
            None
        } else {
            Some(
                yara_x::Rules::deserialize(&bundle.yara)
                    .map_err(|e| format!("cannot load the compiled rules: {e}"))?,
            )
        };
        Ok(Engine::new(bundle, rules))
    }

    fn new(bundle: RulesBundle, rules: Option<yara_x::Rules>) -> Engine {
        let mut by_size: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut any_size = Vec::new();
        for (i, s) in bundle.hashes.iter().enumerate() {
            match s.size {
                Some(n) => by_size.entry(n).or_default().push(i),
                None => any_size.push(i),
            }
        }
        Engine {
            version: bundle.version,
            sources: bundle.sources,
            rules,
            sigs: bundle.hashes,
            by_size,
            any_size,
            eicar: memchr::memmem::Finder::new(&eicar()).into_owned(),
        }
    }

    pub fn yara_rules(&self) -> usize {
        self.rules.as_ref().map_or(0, |r| r.iter().count())
    }

    pub fn hash_entries(&self) -> usize {
        self.sigs.len()
    }

    /// A matcher for one worker thread (a YARA scanner is not shared between threads).
    pub fn matcher(&self, timeout: Duration) -> Matcher<'_> {
        let scanner = self.rules.as_ref().map(|r| {
            let mut s = yara_x::Scanner::new(r);
            s.set_timeout(timeout);
            // We want which rules matched, not every offset of every pattern.
            s.fast_scan(true);
            s
        });
        Matcher {
            engine: self,
            scanner,
        }
    }
}

/// One worker's matcher: every signature against one file's bytes.
pub struct Matcher<'r> {
    engine: &'r Engine,
    scanner: Option<yara_x::Scanner<'r>>,
}

/// What matching one file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// `builtin:…`, `yara:RULE`, `hash:NAME` — empty when clean.
    pub matches: Vec<String>,
    /// The YARA scan could not finish (time limit): the file is not known clean.
    pub incomplete: Option<String>,
}

impl Matcher<'_> {
    pub fn check(&mut self, data: &[u8]) -> Verdict {
        let mut v = Verdict::default();
        if self.engine.eicar.find(data).is_some() {
            v.matches.push(EICAR_NAME.to_owned());
        }
        if let Some(scanner) = &mut self.scanner {
            match scanner.scan(data) {
                Ok(results) => {
                    for rule in results.matching_rules() {
                        v.matches.push(format!("yara:{}", rule.identifier()));
                    }
                }
                Err(e) => v.incomplete = Some(format!("yara: {e}")),
            }
        }
        self.hashes(data, &mut v.matches);
        v
    }

    fn hashes(&self, data: &[u8], out: &mut Vec<String>) {
        let e = self.engine;
        let sized = e.by_size.get(&(data.len() as u64));
        if sized.is_none() && e.any_size.is_empty() {
            return;
        }
        let candidates = sized.into_iter().flatten().chain(e.any_size.iter());
        let mut digests: [Option<Vec<u8>>; 3] = [None, None, None];
        for &i in candidates {
            let sig = &e.sigs[i];
            let slot = sig.algo as usize;
            let d = digests[slot].get_or_insert_with(|| digest(sig.algo, data));
            if *d == sig.digest {
                out.push(format!("hash:{}", sig.name));
            }
        }
    }
}

fn digest(algo: HashAlgo, data: &[u8]) -> Vec<u8> {
    match algo {
        HashAlgo::Md5 => md5::Md5::digest(data).to_vec(),
        HashAlgo::Sha1 => ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
            .as_ref()
            .to_vec(),
        HashAlgo::Sha256 => ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec(),
    }
}

/// Paths a scan leaves out: a plain path excludes itself and everything under it; a pattern
/// with `*`, `?` or `[` is a glob over the whole path (`*` and `?` stay within one component,
/// `**` crosses them).
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    prefixes: Vec<String>,
    globs: Vec<String>,
}

impl Exclusions {
    pub fn new(patterns: &[String]) -> Exclusions {
        let mut e = Exclusions::default();
        for p in patterns {
            if p.contains(['*', '?', '[']) {
                e.globs.push(p.clone());
            } else {
                e.prefixes.push(p.trim_end_matches('/').to_owned());
            }
        }
        e
    }

    pub fn excludes(&self, path: &Path) -> bool {
        let Some(s) = path.to_str() else {
            // Non-UTF-8 paths: only prefixes can apply.
            let b = path.as_os_str().as_encoded_bytes();
            return self.prefixes.iter().any(|p| under(b, p.as_bytes()));
        };
        self.prefixes
            .iter()
            .any(|p| under(s.as_bytes(), p.as_bytes()))
            || self.globs.iter().any(|g| glob(g.as_bytes(), s.as_bytes()))
    }
}

fn under(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path[prefix.len()] == b'/' || prefix.is_empty())
}

/// Glob match: `**` any bytes, `*` any bytes but `/`, `?` one byte but `/`, `[abc]`/`[a-z]`
/// (with `!` or `^` to negate) one byte of a class.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(end) = p.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return !s.is_empty() && s[0] == b'[' && glob(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let mut class = &p[1..end];
            let negate = matches!(class.first(), Some(b'!' | b'^'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(&p[end + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// The clean-file cache key: a file whose identity and change times are unchanged, scanned
/// clean by the same rules version, is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    rules: u64,
}

/// Files known clean, shared by every scan of the agent's lifetime; bounded (cleared when
/// full, which only costs a rescan).
pub struct CleanCache {
    set: Mutex<HashSet<CacheKey>>,
    cap: usize,
}

impl CleanCache {
    pub fn new(cap: usize) -> CleanCache {
        CleanCache {
            set: Mutex::new(HashSet::new()),
            cap,
        }
    }

    fn key(meta: &FileMeta, rules: u64) -> CacheKey {
        CacheKey {
            dev: meta.dev,
            ino: meta.ino,
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
            rules,
        }
    }

    pub fn contains(&self, meta: &FileMeta, rules: u64) -> bool {
        self.set
            .lock()
            .map(|s| s.contains(&CleanCache::key(meta, rules)))
            .unwrap_or(false)
    }

    pub fn insert(&self, meta: &FileMeta, rules: u64) {
        if let Ok(mut s) = self.set.lock() {
            if s.len() >= self.cap {
                s.clear();
            }
            s.insert(CleanCache::key(meta, rules));
        }
    }

    pub fn len(&self) -> usize {
        self.set.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file a scan found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub matches: Vec<String>,
}

/// Counters of one scan, readable while it runs.
#[derive(Debug, Default)]
pub struct Tally {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub cached: AtomicU64,
    pub detections: AtomicU64,
    pub too_large: AtomicU64,
    pub special: AtomicU64,
    pub vanished: AtomicU64,
    pub unreadable: AtomicU64,
    pub incomplete: AtomicU64,
    pub excluded: AtomicU64,
}

/// A snapshot of a [`Tally`], for progress and results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub files: u64,
    pub bytes: u64,
    pub cached: u64,
    pub detections: u64,
    pub too_large: u64,
    pub special: u64,
    pub vanished: u64,
    pub unreadable: u64,
    pub incomplete: u64,
    pub excluded: u64,
}

impl Tally {
    pub fn counts(&self) -> Counts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            files: g(&self.files),
            bytes: g(&self.bytes),
            cached: g(&self.cached),
            detections: g(&self.detections),
            too_large: g(&self.too_large),
            special: g(&self.special),
            vanished: g(&self.vanished),
            unreadable: g(&self.unreadable),
            incomplete: g(&self.incomplete),
            excluded: g(&self.excluded),
        }
    }
}

/// Most problems kept verbatim in a result; the rest are only counted.
const MAX_PROBLEMS: usize = 50;

/// One scan: the engine, exclusions and cache it uses, and what it found so far. The host's
/// walker calls it from every worker thread.
pub struct Scan<'a> {
    pub engine: &'a Engine,
    pub cache: &'a CleanCache,
    pub exclusions: Exclusions,
    pub file_timeout: Duration,
    pub cancel: &'a AtomicBool,
    pub tally: Tally,
    pub detections: Mutex<Vec<Detection>>,
    pub problems: Mutex<Vec<String>>,
}

impl<'a> Scan<'a> {
    pub fn new(
        engine: &'a Engine,
        cache: &'a CleanCache,
        exclusions: Exclusions,
        cancel: &'a AtomicBool,
    ) -> Scan<'a> {
        Scan {
            engine,
            cache,
            exclusions,
            file_timeout: Duration::from_secs(30),
            cancel,
            tally: Tally::default(),
            detections: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    fn problem(&self, text: String) {
        if let Ok(mut p) = self.problems.lock()
            && p.len() < MAX_PROBLEMS
        {
            p.push(text);
        }
    }

    /// Detections in path order.
    pub fn take_detections(&self) -> Vec<Detection> {
        let mut d = self
            .detections
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        d.sort_by(|a, b| a.path.cmp(&b.path));
        d
    }
}

impl ScanSink for Scan<'_> {
    fn excluded(&self, path: &Path) -> bool {
        let out = self.exclusions.excludes(path);
        if out {
            self.tally.excluded.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn worker(&self) -> Box<dyn ScanWorker + '_> {
        Box::new(Worker {
            scan: self,
            matcher: self.engine.matcher(self.file_timeout),
        })
    }
}

struct Worker<'s, 'a> {
    scan: &'s Scan<'a>,
    matcher: Matcher<'s>,
}

impl ScanWorker for Worker<'_, '_> {
    fn wants(&mut self, meta: &FileMeta) -> bool {
        if self.scan.cache.contains(meta, self.scan.engine.version) {
            self.scan.tally.cached.fetch_add(1, Ordering::Relaxed);
            self.scan.tally.files.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn scan(&mut self, meta: &FileMeta, data: &[u8]) {
        let t = &self.scan.tally;
        t.files.fetch_add(1, Ordering::Relaxed);
        t.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let verdict = self.matcher.check(data);
        let incomplete = verdict.incomplete.is_some();
        if let Some(why) = verdict.incomplete {
            t.incomplete.fetch_add(1, Ordering::Relaxed);
            self.scan.problem(format!("{}: {why}", meta.path.display()));
        }
        if !verdict.matches.is_empty() {
            t.detections.fetch_add(1, Ordering::Relaxed);
            let sha = ring::digest::digest(&ring::digest::SHA256, data);
            let det = Detection {
                path: meta.path.to_string_lossy().into_owned(),
                sha256: hex::encode(sha.as_ref()),
                size: data.len() as u64,
                matches: verdict.matches,
            };
            if let Ok(mut d) = self.scan.detections.lock() {
                d.push(det);
            }
        } else if !incomplete {
            self.scan.cache.insert(meta, self.scan.engine.version);
        }
    }

    fn skipped(&mut self, path: &Path, why: Skip) {
        let t = &self.scan.tally;
        let counter = match why {
            Skip::TooLarge => &t.too_large,
            Skip::Special => &t.special,
            Skip::Vanished => &t.vanished,
            Skip::Unreadable(_) => &t.unreadable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Skip::Unreadable(e) = why {
            self.scan.problem(format!("{}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_cover_prefixes_and_globs() {
        let e = Exclusions::new(&[
            "/var/cache".into(),
            "/home/*/.cache/**".into(),
            "*.iso".into(),
            "/data/log[0-9].txt".into(),
        ]);
        let x = |p: &str| e.excludes(Path::new(p));
        assert!(x("/var/cache"));
        assert!(x("/var/cache/apt/a.deb"));
        assert!(!x("/var/cachet"));
        assert!(x("/home/ann/.cache/a/b/c"));
        assert!(!x("/home/ann/x/.cache/a"));
        assert!(!x("/tmp/a.iso"), "a bare * stays within one component");
        assert!(x("/data/log3.txt"));
        assert!(!x("/data/logx.txt"));
        let e = Exclusions::new(&["**/*.iso".into()]);
        assert!(e.excludes(Path::new("/tmp/a.iso")));
    }

    #[test]
    fn eicar_is_found_without_any_rules() {
        let engine = Engine::builtin();
        let mut m = engine.matcher(Duration::from_secs(1));
        let mut file = b"prefix ".to_vec();
        file.extend_from_slice(&eicar());
        assert_eq!(m.check(&file).matches, vec![EICAR_NAME.to_owned()]);
        assert!(m.check(b"harmless").matches.is_empty());
    }

    #[test]
    fn hash_lists_match_by_size_and_digest() {
        let data = b"malicious bytes";
        let sha256 = digest(HashAlgo::Sha256, data);
        let md5 = digest(HashAlgo::Md5, data);
        let bundle = RulesBundle {
            version: 3,
            yara: vec![],
            hashes: vec![
                HashSig {
                    algo: HashAlgo::Md5,
                    digest: md5.clone(),
                    size: Some(data.len() as u64),
                    name: "Md5.Sig".into(),
                },
                HashSig {
                    algo: HashAlgo::Md5,
                    digest: md5,
                    size: Some(1),
                    name: "Wrong.Size".into(),
                },
                HashSig {
                    algo: HashAlgo::Sha256,
                    digest: sha256,
                    size: None,
                    name: "Any.Size".into(),
                },
            ],
            sources: vec!["x.hsb".into()],
        };
        let bytes = palisade_common::codec::encode_bundle(&bundle).unwrap();
        let engine = Engine::from_bundle(&bytes).unwrap();
        assert_eq!(engine.version, 3);
        let mut m = engine.matcher(Duration::from_secs(1));
        assert_eq!(
            m.check(data).matches,
            vec!["hash:Md5.Sig".to_owned(), "hash:Any.Size".to_owned()]
        );
        assert!(m.check(b"other").matches.is_empty());
    }

    #[test]
    fn the_clean_cache_is_keyed_by_identity_times_and_rules() {
        let cache = CleanCache::new(2);
        let meta = FileMeta {
            path: "/x".into(),
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        cache.insert(&meta, 1);
        assert!(cache.contains(&meta, 1));
        assert!(!cache.contains(&meta, 2), "new rules rescan");
        let touched = FileMeta {
            ctime_ns: 6,
            ..meta.clone()
        };
        assert!(!cache.contains(&touched, 1));
        cache.insert(&touched, 1);
        cache.insert(&FileMeta { ino: 9, ..meta }, 1);
        assert_eq!(cache.len(), 1, "a full cache starts over");
    }
}
