//! Handing the agent's own program pages back to the kernel (`MADV_PAGEOUT`, Linux 5.4 and
//! later); `crate::footprint` decides when. What is still used faults back in from the file.
//! Nothing is written: the program's mappings are read-only or copy-on-write and keep their
//! contents.

use std::ffi::c_void;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;

use nix::sys::mman::{MmapAdvise, madvise};
use nix::sys::stat::{major, minor};

/// Asks the kernel to reclaim the resident pages of this program's read-only mappings (its
/// code and constants). Returns the size of the mappings advised.
pub fn trim() -> io::Result<u64> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let device = (major(exe.dev()), minor(exe.dev()));
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for m in maps.lines().filter_map(Mapping::parse) {
        if m.writable || m.inode != exe.ino() || m.device != device {
            continue;
        }
        let Some(start) = NonNull::new(m.start as *mut c_void) else {
            continue;
        };
        let len = m.end - m.start;
        // The range is a whole mapping the kernel listed for this process, so it is
        // page-aligned, and the program's own mappings stay mapped for its lifetime.
        // SAFETY: MADV_PAGEOUT only reclaims pages: a later access reads the same contents
        // back (from the file, or from swap for a page copied on write).
        unsafe { madvise(start, len, MmapAdvise::MADV_PAGEOUT) }?;
        advised += len as u64;
    }
    Ok(advised)
}

/// One line of `/proc/self/maps`, as far as `trim` needs it.
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    device: (u64, u64),
    inode: u64,
}

impl Mapping {
    /// `start-end perms offset major:minor inode [path]`, numbers in hex but the inode.
    fn parse(line: &str) -> Option<Mapping> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let (dev_major, dev_minor) = fields.next()?.split_once(':')?;
        Some(Mapping {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            writable: perms.contains('w'),
            device: (
                u64::from_str_radix(dev_major, 16).ok()?,
                u64::from_str_radix(dev_minor, 16).ok()?,
            ),
            inode: fields.next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of this program's own file mappings, from `/proc/self/smaps`.
    fn resident_kib() -> u64 {
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(m) = Mapping::parse(line) {
                ours = m.inode == exe.ino() && !m.writable;
            } else if let Some(rss) = line.strip_prefix("Rss:")
                && ours
            {
                kib += rss.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
            }
        }
        kib
    }

    #[test]
    fn trim_gives_back_the_programs_resident_code() {
        let before = resident_kib();
        assert!(
            before > 256,
            "this test's own code is resident: {before} KiB"
        );
        let advised = trim().unwrap();
        assert!(advised > before << 10, "advised {advised} bytes");
        let after = resident_kib();
        assert!(
            after < before / 2,
            "resident code after the trim: {after} KiB, before: {before} KiB"
        );
    }

    #[test]
    fn maps_lines_are_read_with_and_without_a_path() {
        let m = Mapping::parse(
            "55d2ba76a000-55d2bbd34000 r-xp 007c7000 fe:00 5311313                    /usr/sbin/palisade-agent (deleted)",
        )
        .unwrap();
        assert_eq!((m.start, m.end), (0x55d2ba76a000, 0x55d2bbd34000));
        assert_eq!((m.device, m.inode, m.writable), ((0xfe, 0), 5311313, false));
        let anon = Mapping::parse("7f0c2c000000-7f0c2c021000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(anon.writable);
        assert_eq!(anon.inode, 0);
        assert!(Mapping::parse("garbage").is_none());
    }
}
