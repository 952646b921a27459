//! The code-execution planner: exec event facts in, verdict out. Pure: the Linux applier
//! (`linux/exec.rs`) gathers the facts (fstat of the file, lstat of its directories, its
//! hash) and enforces the verdict; this module only decides.
//!
//! A file may run while execution is restricted when it is
//! * trusted: a regular file owned by root, writable by nobody else, under a configured
//!   system path, with every directory from that system path down to the file owned by root
//!   and writable by nobody else; or
//! * on the allowlist, by exact path or by SHA-256; or
//! * the agent's own binary.
//!
//! Everything else is denied.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A file's identity on this boot: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// The policy the planner applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Canonical absolute directories whose root-owned contents are trusted.
    pub system_paths: Vec<PathBuf>,
    pub allow_sha256: HashSet<[u8; 32]>,
    pub allow_paths: HashSet<String>,
    /// The agent's own executable.
    pub own_exe: Option<FileId>,
}

/// Owner and permission bits of a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

impl Owner {
    /// Owned by root and not writable by group or others.
    pub fn root_only_writable(&self) -> bool {
        self.uid == 0 && self.mode & 0o022 == 0
    }

    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// What the applier found out about an executable being opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Canonical absolute path as the kernel names it (may end in " (deleted)").
    pub path: String,
    pub id: FileId,
    pub file: Owner,
    /// The directories [`dirs_to_check`] named, in the same order, with what `lstat` found
    /// (`None`: could not be read, or not a directory).
    pub dirs: Vec<(PathBuf, Option<Owner>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Why),
    Deny(Why),
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    pub fn why(&self) -> &Why {
        match self {
            Verdict::Allow(w) | Verdict::Deny(w) => w,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    OwnBinary,
    AllowlistedPath,
    AllowlistedHash,
    /// Root-owned under this system path.
    Trusted(PathBuf),
    NotOnASystemPath,
    NotARegularFile,
    /// The file is not root's, or others may write it.
    FileWritableByOthers,
    /// This directory on the way is not root's, or others may write it.
    DirectoryWritableByOthers(PathBuf),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::OwnBinary => write!(f, "the agent's own binary"),
            Why::AllowlistedPath => write!(f, "path on the allowlist"),
            Why::AllowlistedHash => write!(f, "sha256 on the allowlist"),
            Why::Trusted(root) => write!(f, "trusted system binary under {}", root.display()),
            Why::NotOnASystemPath => write!(f, "not under a system path"),
            Why::NotARegularFile => write!(f, "not a regular file"),
            Why::FileWritableByOthers => write!(f, "not owned by root or writable by others"),
            Why::DirectoryWritableByOthers(d) => write!(
                f,
                "directory {} is not root's or is writable by others",
                d.display()
            ),
        }
    }
}

/// The system path `path` lies under and the directories from it down to the file's parent,
/// which must all be root's: what the applier must `lstat`. `None` if `path` is under no
/// system path.
pub fn dirs_to_check(rules: &Rules, path: &str) -> Option<(PathBuf, Vec<PathBuf>)> {
    let p = Path::new(path);
    if !p.is_absolute() || path.ends_with(" (deleted)") {
        return None;
    }
    let root = rules
        .system_paths
        .iter()
        .filter(|r| p.starts_with(r) && p != r.as_path())
        .max_by_key(|r| r.components().count())?;
    let mut dirs = vec![root.clone()];
    let rest = p.strip_prefix(root).ok()?;
    let mut cur = root.clone();
    let comps: Vec<_> = rest.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        match c {
            std::path::Component::Normal(n) => {
                cur.push(n);
                dirs.push(cur.clone());
            }
            // A canonical path has no `.`/`..`; refuse to reason about one that does.
            _ => return None,
        }
    }
    Some((root.clone(), dirs))
}

/// Whether the verdict could turn on the file's hash: the applier hashes only then (and for
/// denial reports).
pub fn hash_matters(rules: &Rules, facts: &Facts) -> bool {
    !rules.allow_sha256.is_empty() && !decide(rules, facts, None).allowed()
}

/// The verdict for `facts`; `sha256` is the file's digest, when the applier computed it.
pub fn decide(rules: &Rules, facts: &Facts, sha256: Option<&[u8; 32]>) -> Verdict {
    if rules.own_exe == Some(facts.id) {
        return Verdict::Allow(Why::OwnBinary);
    }
    if rules.allow_paths.contains(&facts.path) {
        return Verdict::Allow(Why::AllowlistedPath);
    }
    if sha256.is_some_and(|h| rules.allow_sha256.contains(h)) {
        return Verdict::Allow(Why::AllowlistedHash);
    }
    trusted(rules, facts)
}

fn trusted(rules: &Rules, facts: &Facts) -> Verdict {
    if !facts.file.is_regular() {
        return Verdict::Deny(Why::NotARegularFile);
    }
    let Some((root, wanted)) = dirs_to_check(rules, &facts.path) else {
        return Verdict::Deny(Why::NotOnASystemPath);
    };
    if !facts.file.root_only_writable() {
        return Verdict::Deny(Why::FileWritableByOthers);
    }
    for dir in &wanted {
        let found = facts.dirs.iter().find(|(p, _)| p == dir);
        match found {
            Some((_, Some(o))) if o.root_only_writable() && o.mode & S_IFMT == 0o040_000 => {}
            _ => return Verdict::Deny(Why::DirectoryWritableByOthers(dir.clone())),
        }
    }
    Verdict::Allow(Why::Trusted(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u32 = 0o040_000;
    const REG: u32 = 0o100_000;

    fn rules() -> Rules {
        Rules {
            system_paths: vec!["/usr".into(), "/lab/usr".into(), "/opt/vendor".into()],
            allow_sha256: HashSet::from([[7u8; 32]]),
            allow_paths: HashSet::from(["/home/ann/tool".to_owned()]),
            own_exe: Some(FileId { dev: 9, ino: 99 }),
        }
    }

    /// Facts for `path` with the file's (uid, mode) and every directory on the way given
    /// (uid, mode) `dir`, except the named ones.
    fn facts(path: &str, file: (u32, u32), dir: (u32, u32), odd: &[(&str, (u32, u32))]) -> Facts {
        let dirs = dirs_to_check(&rules(), path)
            .map(|(_, d)| d)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let (uid, mode) = odd
                    .iter()
                    .find(|(o, _)| Path::new(o) == p)
                    .map(|(_, m)| *m)
                    .unwrap_or(dir);
                (p, Some(Owner { uid, mode }))
            })
            .collect();
        Facts {
            path: path.into(),
            id: FileId { dev: 1, ino: 2 },
            file: Owner {
                uid: file.0,
                mode: file.1,
            },
            dirs,
        }
    }

    fn verdict(
        path: &str,
        file: (u32, u32),
        odd: &[(&str, (u32, u32))],
        sha: Option<[u8; 32]>,
    ) -> Verdict {
        decide(
            &rules(),
            &facts(path, file, (0, DIR | 0o755), odd),
            sha.as_ref(),
        )
    }

    /// (path, file (uid, mode), directories with other (uid, mode), sha256, expected).
    type Case = (
        &'static str,
        (u32, u32),
        Vec<(&'static str, (u32, u32))>,
        Option<[u8; 32]>,
        Verdict,
    );

    #[test]
    fn the_owner_mode_path_hash_table() {
        use Why::*;
        let ok = (0, REG | 0o755);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Trusted system binaries.
            ("/usr/bin/true", ok, vec![], None, Verdict::Allow(Trusted("/usr".into()))),
            ("/usr/lib/x/y/z/tool", ok, vec![], None, Verdict::Allow(Trusted("/usr".into()))),
            ("/lab/usr/bin/true", ok, vec![], None, Verdict::Allow(Trusted("/lab/usr".into()))),
            ("/usr/bin/ro", (0, REG | 0o500), vec![], None, Verdict::Allow(Trusted("/usr".into()))),
            ("/usr/bin/suid", (0, REG | 0o4755), vec![], None, Verdict::Allow(Trusted("/usr".into()))),
            // The longest system path decides which directories must be root's.
            ("/opt/vendor/bin/x", ok, vec![("/opt", (1000, DIR | 0o777))], None, Verdict::Allow(Trusted("/opt/vendor".into()))),
            // Not on a system path.
            ("/tmp/true", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/dev/shm/x", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/home/bob/bin/x", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/usrlocal/bin/x", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/usr", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("relative/usr/bin/x", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/usr/bin/gone (deleted)", ok, vec![], None, Verdict::Deny(NotOnASystemPath)),
            // The file itself made writable or handed to a user.
            ("/usr/bin/x", (0, REG | 0o775), vec![], None, Verdict::Deny(FileWritableByOthers)),
            ("/usr/bin/x", (0, REG | 0o757), vec![], None, Verdict::Deny(FileWritableByOthers)),
            ("/usr/bin/x", (0, REG | 0o777), vec![], None, Verdict::Deny(FileWritableByOthers)),
            ("/usr/bin/x", (1000, REG | 0o755), vec![], None, Verdict::Deny(FileWritableByOthers)),
            ("/usr/bin/x", (1000, REG | 0o700), vec![], None, Verdict::Deny(FileWritableByOthers)),
            ("/usr/bin/x", (0, 0o020_000 | 0o755), vec![], None, Verdict::Deny(NotARegularFile)),
            // A writable directory on the way.
            ("/usr/bin/x", ok, vec![("/usr/bin", (0, DIR | 0o777))], None, Verdict::Deny(DirectoryWritableByOthers("/usr/bin".into()))),
            ("/usr/bin/x", ok, vec![("/usr/bin", (0, DIR | 0o1777))], None, Verdict::Deny(DirectoryWritableByOthers("/usr/bin".into()))),
            ("/usr/bin/x", ok, vec![("/usr/bin", (0, DIR | 0o775))], None, Verdict::Deny(DirectoryWritableByOthers("/usr/bin".into()))),
            ("/usr/bin/x", ok, vec![("/usr", (1000, DIR | 0o755))], None, Verdict::Deny(DirectoryWritableByOthers("/usr".into()))),
            ("/usr/a/b/c/x", ok, vec![("/usr/a/b", (1000, DIR | 0o700))], None, Verdict::Deny(DirectoryWritableByOthers("/usr/a/b".into()))),
            ("/usr/a/x", ok, vec![("/usr/a", (0, 0o120_000 | 0o777))], None, Verdict::Deny(DirectoryWritableByOthers("/usr/a".into()))),
            // The allowlist, by path and by hash, wins over everything.
            ("/home/ann/tool", (1000, REG | 0o777), vec![], None, Verdict::Allow(AllowlistedPath)),
            ("/home/ann/tool2", (1000, REG | 0o777), vec![], None, Verdict::Deny(NotOnASystemPath)),
            ("/tmp/copy", (1000, REG | 0o777), vec![], Some([7; 32]), Verdict::Allow(AllowlistedHash)),
            ("/tmp/copy", (1000, REG | 0o777), vec![], Some([8; 32]), Verdict::Deny(NotOnASystemPath)),
            ("/usr/bin/x", (0, REG | 0o777), vec![], Some([7; 32]), Verdict::Allow(AllowlistedHash)),
            ("/usr/bin/x", ok, vec![("/usr/bin", (0, DIR | 0o777))], Some([7; 32]), Verdict::Allow(AllowlistedHash)),
        ];
        for (path, file, odd, sha, want) in cases {
            assert_eq!(
                verdict(path, file, &odd, sha),
                want,
                "{path} {file:?} {odd:?} {sha:?}"
            );
        }
    }

    #[test]
    fn the_agent_itself_always_runs() {
        let mut f = facts(
            "/tmp/palisade-agent",
            (1000, REG | 0o777),
            (0, DIR | 0o755),
            &[],
        );
        f.id = FileId { dev: 9, ino: 99 };
        assert_eq!(decide(&rules(), &f, None), Verdict::Allow(Why::OwnBinary));
    }

    #[test]
    fn an_unreadable_directory_is_not_trusted() {
        let mut f = facts("/usr/bin/x", (0, REG | 0o755), (0, DIR | 0o755), &[]);
        f.dirs[1].1 = None;
        assert_eq!(
            decide(&rules(), &f, None),
            Verdict::Deny(Why::DirectoryWritableByOthers("/usr/bin".into()))
        );
        f.dirs.clear();
        assert!(!decide(&rules(), &f, None).allowed());
    }

    #[test]
    fn the_directories_to_check_run_from_the_system_path_to_the_parent() {
        let (root, dirs) = dirs_to_check(&rules(), "/usr/lib/a/b").unwrap();
        assert_eq!(root, PathBuf::from("/usr"));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/usr"),
                PathBuf::from("/usr/lib"),
                PathBuf::from("/usr/lib/a")
            ]
        );
        assert!(dirs_to_check(&rules(), "/usr/../tmp/x").is_none());
        assert!(dirs_to_check(&rules(), "/tmp/x").is_none());
    }

    #[test]
    fn the_hash_matters_only_for_files_not_otherwise_allowed() {
        let r = rules();
        let trusted = facts("/usr/bin/x", (0, REG | 0o755), (0, DIR | 0o755), &[]);
        let copy = facts("/tmp/x", (0, REG | 0o755), (0, DIR | 0o755), &[]);
        assert!(!hash_matters(&r, &trusted));
        assert!(hash_matters(&r, &copy));
        let no_hashes = Rules {
            allow_sha256: HashSet::new(),
            ..r
        };
        assert!(!hash_matters(&no_hashes, &copy));
    }
}
