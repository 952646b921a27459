//! Scan signatures as the controller distributes them: the rule-set bundle (compiled YARA
//! rules plus parsed hash lists) and the parser of ClamAV `.hdb` / `.hsb` hash lists. The
//! agent never compiles: it deserializes what the controller compiled.

use bincode::{Decode, Encode};

/// The EICAR anti-virus test string, reversed: kept out of our own binaries in the clear, so
/// that scanning them (a quick scan reads running executables) does not detect the scanner.
const EICAR_REVERSED: &[u8] =
    br"*H+H$!ELIF-TSET-SURIVITNA-DRADNATS-RACIE$}7)CC7)^P(45XZP\4[PA@%P!O5X";

/// The EICAR anti-virus test string: every scan detects a file that contains it, with or
/// without uploaded rules.
pub fn eicar() -> Vec<u8> {
    EICAR_REVERSED.iter().rev().copied().collect()
}
/// The name a detection of [`EICAR`] reports.
pub const EICAR_NAME: &str = "builtin:EICAR-Test-File";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
}

impl HashAlgo {
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
        }
    }
}

/// One hash-list entry: a file with this digest (and, when given, this size) is malware
/// called `name`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HashSig {
    pub algo: HashAlgo,
    pub digest: Vec<u8>,
    /// `None` for `*` (any size, `.hsb` only).
    pub size: Option<u64>,
    pub name: String,
}

/// A rule set as agents receive it. `version` increases with every upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct RulesBundle {
    pub version: u64,
    /// `yara_x::Rules::serialize` output; empty when the set has no YARA rules.
    pub yara: Vec<u8>,
    pub hashes: Vec<HashSig>,
    /// The uploaded files' names, for reports.
    pub sources: Vec<String>,
}

/// A malformed hash-list line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LineError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Parses a ClamAV hash list (`.hdb`: `HASH:SIZE:NAME`, `.hsb`: `HASH:SIZE:NAME[:FLEVEL]`, where
/// SIZE may be `*` in `.hsb`). The algorithm follows from the digest length (32, 40 or 64 hex
/// digits). Empty lines and `#` comments are skipped. Every malformed line is reported with its
/// number; nothing is returned unless every line parses.
pub fn parse_hash_list(file: &str, text: &str) -> Result<Vec<HashSig>, Vec<LineError>> {
    let mut sigs = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(sig) => sigs.push(sig),
            Err(message) => errors.push(LineError {
                file: file.to_owned(),
                line: i + 1,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(sigs)
    } else {
        Err(errors)
    }
}

fn parse_line(line: &str) -> Result<HashSig, String> {
    let fields: Vec<&str> = line.split(':').collect();
    if !(3..=5).contains(&fields.len()) {
        return Err(format!(
            "expected HASH:SIZE:NAME, found {} field(s)",
            fields.len()
        ));
    }
    let hash = fields[0].to_ascii_lowercase();
    let algo = match hash.len() {
        32 => HashAlgo::Md5,
        40 => HashAlgo::Sha1,
        64 => HashAlgo::Sha256,
        n => {
            return Err(format!(
                "hash of {n} characters is not MD5 (32), SHA1 (40) or SHA256 (64)"
            ));
        }
    };
    let digest = decode_hex(&hash).ok_or_else(|| format!("hash {:?} is not hex", fields[0]))?;
    let size = match fields[1] {
        "*" => None,
        s => Some(
            s.parse::<u64>()
                .map_err(|_| format!("size {s:?} is not a number or *"))?,
        ),
    };
    let name = fields[2].trim();
    if name.is_empty() {
        return Err("the signature has no name".into());
    }
    if let Some(flevel) = fields.get(3)
        && !flevel.is_empty()
        && flevel.parse::<u32>().is_err()
    {
        return Err(format!("functionality level {flevel:?} is not a number"));
    }
    Ok(HashSig {
        algo,
        digest,
        size,
        name: name.to_owned(),
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdb_and_hsb_lines_parse_by_digest_length() {
        let text = "# comment\n\
            44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n\
            3395856CE81F2B7382DEE72602F798B642F14140:68:Eicar-SHA1\n\
            275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:*:Eicar-SHA256:73\n\n";
        let sigs = parse_hash_list("x.hsb", text).unwrap();
        assert_eq!(sigs.len(), 3);
        assert_eq!(sigs[0].algo, HashAlgo::Md5);
        assert_eq!(sigs[0].size, Some(68));
        assert_eq!(sigs[1].algo, HashAlgo::Sha1);
        assert_eq!(sigs[1].digest[0], 0x33);
        assert_eq!(sigs[2].algo, HashAlgo::Sha256);
        assert_eq!(sigs[2].size, None);
        assert_eq!(sigs[2].name, "Eicar-SHA256");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_numbers() {
        let text = "44d88612fea8a8f36de82e1278abb02f:68:ok\n\
            zz:68:short\n\
            44d88612fea8a8f36de82e1278abb02f:big:bad-size\n\
            44d88612fea8a8f36de82e1278abb02g:68:not-hex\n\
            44d88612fea8a8f36de82e1278abb02f:68\n\
            44d88612fea8a8f36de82e1278abb02f:68:\n";
        let errors = parse_hash_list("bad.hdb", text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        assert_eq!(
            errors[1].to_string(),
            "bad.hdb:3: size \"big\" is not a number or *"
        );
    }
}

#[cfg(test)]
mod eicar_tests {
    #[test]
    fn the_eicar_string_is_the_standard_one() {
        let e = super::eicar();
        assert_eq!(e.len(), 68);
        assert!(e.starts_with(b"X5O!P%@AP[4"));
        assert!(e.ends_with(b"-FILE!$H+H*"));
    }
}
