//! The scan benchmark's rule set, for the benchmarks that load it: 120 YARA rules, each an
//! ASCII word and a hex pattern with a wildcard and a jump (expressible as ClamAV body
//! signatures too), and a hash list of 10,000 lines. Deterministic, without a dependency.

/// YARA rules in the set.
pub const RULES: usize = 120;
/// Lines in its hash list.
pub const HASHES: usize = 10_000;

/// xorshift64*: deterministic bytes without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

/// Distinct strings per rule: an ASCII word and a hex pattern with a wildcard and a jump,
/// each expressible both as YARA and as a ClamAV body signature.
pub struct Sig {
    pub name: String,
    pub text: String,
    pub hex: Vec<u8>,
}

pub fn signatures() -> Vec<Sig> {
    let mut rng = Rng(0x5ca9_0001);
    (0..RULES)
        .map(|i| {
            let mut hex = vec![0u8; 10];
            rng.fill(&mut hex);
            Sig {
                name: format!("bench_family_{i:03}"),
                text: format!("{}-{}-{}", rng.word(6), rng.word(5), rng.word(7)),
                hex,
            }
        })
        .collect()
}

pub fn yara_rules(sigs: &[Sig]) -> String {
    let mut s = String::new();
    for g in sigs {
        let h: Vec<String> = g.hex.iter().map(|b| format!("{b:02X}")).collect();
        // bytes 0-3, a wildcard byte, bytes 5-6, a 0-4 byte jump, bytes 7-9
        s += &format!(
            "rule {} {{\n  strings:\n    $t = \"{}\"\n    $h = {{ {} {} {} {} ?? {} {} [0-4] {} {} {} }}\n  condition:\n    any of them\n}}\n",
            g.name, g.text, h[0], h[1], h[2], h[3], h[5], h[6], h[7], h[8], h[9]
        );
    }
    s
}

/// The same strings as ClamAV extended body signatures (`Name:Target:Offset:Hex`).
pub fn ndb(sigs: &[Sig]) -> String {
    let mut s = String::new();
    for g in sigs {
        let h: Vec<String> = g.hex.iter().map(|b| format!("{b:02x}")).collect();
        s += &format!("{}.t:0:*:{}\n", g.name, hex::encode(g.text.as_bytes()));
        s += &format!(
            "{}.h:0:*:{}{}{}{}??{}{}{{0-4}}{}{}{}\n",
            g.name, h[0], h[1], h[2], h[3], h[5], h[6], h[7], h[8], h[9]
        );
    }
    s
}

/// `.hdb` lines for files that do not exist, of plausible sizes: the filler of a hash list.
pub fn absent_hash_lines(rng: &mut Rng, range: std::ops::Range<usize>) -> String {
    let mut lines = String::new();
    for i in range {
        let mut d = [0u8; 16];
        rng.fill(&mut d);
        lines += &format!(
            "{}:{}:Bench.Absent.{i}\n",
            hex::encode(d),
            1024 + rng.below(100 << 10)
        );
    }
    lines
}
