//! Differential test of the scanner against the `yara` command-line tool (Debian's yara 4.2):
//! the same rules, compiled by the controller (yara-x) on one side and by `yara` on the other,
//! over a corpus of system binaries, text, archives and planted matches, must match the same
//! (rule, file) pairs. `.ci/run` installs `yara`; without it this test fails, it does not skip.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use palisade_tests::{Controller, bin, sqlite3};

/// Rules that exercise the language: text, hex with jumps and wildcards, regular expressions,
/// modifiers (nocase, wide, xor, base64, fullword), counts and offsets, ranges, sets, private
/// rules, tags and meta, integer reads, and the elf, hash and math modules.
const RULES: &str = r#"
import "elf"
import "hash"

rule is_elf { condition: uint32(0) == 0x464c457f }
rule elf_shared_object { condition: elf.type == elf.ET_DYN }
rule elf_many_sections { condition: elf.number_of_sections > 25 }
rule has_libc { strings: $a = "libc.so.6" condition: $a }
rule gzip_magic { condition: uint16(0) == 0x8b1f }
rule elf_header_hex { strings: $h = { 7F 45 4C 46 [1-3] 01 } condition: $h at 0 }
rule hex_wildcards { strings: $h = { 47 4C 49 42 43 5F ?? 2E } condition: $h }
rule nocase_copyright { strings: $a = "copyright" nocase condition: $a }
rule wide_marker { strings: $a = "WideMarker" wide condition: $a }
rule ascii_and_wide { strings: $a = "DualMarker" wide ascii condition: #a == 2 }
rule url_regex { strings: $r = /https?:\/\/[a-z0-9.\-]+\.(org|com|net)/ condition: $r }
rule many_glibc { strings: $a = "GLIBC_2." condition: #a > 5 }
rule comment_start { condition: filesize < 400 and uint8(0) == 0x23 }
rule usage_and_option { strings: $a = "usage" nocase $b = "option" nocase condition: all of them }
rule two_shells { strings: $x1 = "bash" $x2 = "zsh" $x3 = "dash" condition: 2 of ($x*) }
rule early_marker { strings: $a = "EARLYMARK" condition: $a in (0..100) }
rule first_offset { strings: $a = "OFFSETMARK" condition: @a[1] > 1000 }
rule xor_secret { strings: $a = "xorsecretvalue" xor condition: $a }
rule b64_payload { strings: $a = "base64payloadmarker" base64 condition: $a }
rule fullword_evil { strings: $a = "evilword" fullword condition: $a }
private rule ld_linux { strings: $a = "ld-linux" condition: $a }
rule uses_private { condition: ld_linux and filesize > 20000 }
rule tagged : tag_one tag_two { meta: author = "palisade" strings: $a = "TAGMARK" condition: $a }
rule md5_of_planted { condition: hash.md5(0, filesize) == "ade350d0c20fafdcb76e0119bcc1d92e" or hash.sha256(0, 4) == "3bdbb4fe8397cd2b842430b39ccff01a8663c751945ef5e9a09e267fb8b1d359" }
rule big_file { condition: filesize > 1000000 }
rule none_match { strings: $a = "this string is nowhere at all 0xdeadbeef" condition: $a }
rule loop_over_matches { strings: $a = "LOOPMARK" condition: for all i in (1..#a) : (@a[i] % 2 == 0) and #a > 1 }
"#;

fn build_corpus(dir: &Path) {
    // System binaries and text.
    let mut taken = 0;
    for src in ["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/etc"] {
        let Ok(entries) = std::fs::read_dir(src) else {
            continue;
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names.into_iter().step_by(7).take(40) {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !m.is_file() || m.len() > 8 << 20 {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&p) {
                let name = p.to_string_lossy().replace('/', "_");
                std::fs::write(dir.join(name), bytes).unwrap();
                taken += 1;
            }
        }
    }
    assert!(taken > 40, "corpus too small: {taken} system files");
    // Planted matches.
    let sub = dir.join("planted");
    std::fs::create_dir(&sub).unwrap();
    let wide = |s: &str| s.bytes().flat_map(|b| [b, 0]).collect::<Vec<u8>>();
    std::fs::write(
        sub.join("wide.bin"),
        [b"xx".to_vec(), wide("WideMarker")].concat(),
    )
    .unwrap();
    std::fs::write(
        sub.join("dual.bin"),
        [b"DualMarker ".to_vec(), wide("DualMarker")].concat(),
    )
    .unwrap();
    std::fs::write(sub.join("early.txt"), b"....EARLYMARK....").unwrap();
    let mut late = vec![b'.'; 2000];
    late.extend_from_slice(b"EARLYMARK OFFSETMARK");
    std::fs::write(sub.join("late.txt"), late).unwrap();
    let xored: Vec<u8> = b"xorsecretvalue".iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(sub.join("xor.bin"), [b"zz".to_vec(), xored].concat()).unwrap();
    // base64 of "xx base64payloadmarker yy" in its three alignments.
    std::fs::write(
        sub.join("b64.txt"),
        b"eHggYmFzZTY0cGF5bG9hZG1hcmtlciB5eQ== data",
    )
    .unwrap();
    std::fs::write(sub.join("fullword-yes.txt"), b"an evilword here").unwrap();
    std::fs::write(sub.join("fullword-no.txt"), b"an evilwordsmith here").unwrap();
    std::fs::write(sub.join("tagged.txt"), b"TAGMARK").unwrap();
    std::fs::write(sub.join("comment.sh"), b"# a script\nusage: option\n").unwrap();
    std::fs::write(sub.join("shells.txt"), b"bash and dash but not the other").unwrap();
    std::fs::write(sub.join("loop-even.txt"), b"LOOPMARKxxLOOPMARK").unwrap();
    std::fs::write(sub.join("loop-odd.txt"), b"xLOOPMARKxLOOPMARK").unwrap();
    std::fs::write(sub.join("url.txt"), b"see https://www.debian.org/ for more").unwrap();
    std::fs::write(sub.join("Copyright.txt"), b"COPYRIGHT (c) nobody").unwrap();
    std::fs::write(sub.join("big.bin"), vec![7u8; 1_500_000]).unwrap();
    std::fs::write(sub.join("empty"), b"").unwrap();
    // Archives: a gzip and a tar.gz of some of the above.
    let status = Command::new("tar")
        .arg("czf")
        .arg(dir.join("archive.tar.gz"))
        .arg("-C")
        .arg(&sub)
        .args(["early.txt", "comment.sh", "url.txt"])
        .status()
        .expect("tar");
    assert!(status.success());
}

fn yara_cli(rules: &Path, corpus: &Path) -> BTreeSet<(String, String)> {
    let out = Command::new("yara")
        .args(["-r", "-w"])
        .arg(rules)
        .arg(corpus)
        .stdin(Stdio::null())
        .output()
        .expect("the yara command line tool is needed (apt-get install yara; .ci/run installs it)");
    assert!(
        out.status.success(),
        "yara failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(rule, path)| (rule.to_owned(), path.to_owned()))
        .collect()
}

fn ours(bundle: &Path, corpus: &Path) -> BTreeSet<(String, String)> {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bin("palisade-agent"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("scan")
        .arg("--rules")
        .arg(bundle)
        .arg(corpus)
        .stdin(Stdio::null())
        .output()
        .expect("run palisade-agent scan");
    assert!(
        out.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut set = BTreeSet::new();
    for d in v["detections"].as_array().unwrap() {
        for m in d["matches"].as_array().unwrap() {
            if let Some(rule) = m.as_str().unwrap().strip_prefix("yara:") {
                set.insert((rule.to_owned(), d["path"].as_str().unwrap().to_owned()));
            }
        }
    }
    set
}

#[test]
fn our_matches_equal_the_yara_command_line_tools() {
    let work = tempfile::tempdir().unwrap();
    let corpus = work.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    build_corpus(&corpus);
    let rules = work.path().join("diff.yar");
    std::fs::write(&rules, RULES).unwrap();

    // Compiled by the controller, as for an upload.
    let ctl = Controller::start();
    let v = ctl.json(&["rules", "upload", rules.to_str().unwrap()]);
    assert_eq!(v["rule_set"]["version"], 1, "{v}");
    let bundle = work.path().join("bundle.bin");
    sqlite3(
        &ctl.db(),
        &format!(
            "SELECT writefile('{}', bundle) FROM rule_sets WHERE version = 1",
            bundle.display()
        ),
    );

    let theirs = yara_cli(&rules, &corpus);
    let ours = ours(&bundle, &corpus);
    let rules_hit: BTreeSet<&str> = theirs.iter().map(|(r, _)| r.as_str()).collect();
    assert!(
        rules_hit.len() >= 20,
        "the corpus should exercise most rules; yara matched only {rules_hit:?}"
    );
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "yara only: {only_theirs:#?}\nours only: {only_ours:#?}"
    );
}
