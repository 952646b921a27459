//! Rule sets as operators upload them: YARA sources compiled once, here, with yara-x, and
//! ClamAV hash lists parsed; the result is the bundle agents fetch. Agents never compile.

use palisade_common::codec;
use palisade_common::sigs::{self, HashSig, RulesBundle};
use serde::Deserialize;

/// Most files in one upload.
pub const MAX_FILES: usize = 256;
/// Errors listed in one refusal; the rest are counted.
const MAX_LISTED_ERRORS: usize = 20;

/// One uploaded file.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The file's name (no directory): its extension says what it is: `.yar`/`.yara`,
    /// `.hdb`, `.hsb`.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    pub content: String,
}

/// What an upload compiled to, before the store gives it a version.
#[derive(Debug)]
pub struct Compiled {
    /// `yara_x::Rules::serialize`, empty without YARA files.
    pub yara: Vec<u8>,
    pub yara_rules: u64,
    pub hashes: Vec<HashSig>,
    pub files: serde_json::Value,
    pub sources: Vec<String>,
}

impl Compiled {
    /// The bundle of `version` as agents fetch it, and its SHA-256 (lowercase hex).
    pub fn bundle(&self, version: u64) -> Result<(Vec<u8>, String), String> {
        let bundle = RulesBundle {
            version,
            yara: self.yara.clone(),
            hashes: self.hashes.clone(),
            sources: self.sources.clone(),
        };
        let bytes = codec::encode_bundle(&bundle).map_err(|e| e.to_string())?;
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        Ok((bytes, sha))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    Yara,
    HashList,
}

fn kind_of(name: &str) -> Result<FileKind, String> {
    if name.is_empty() || name.len() > 128 || name.contains(['/', '\0']) || name.starts_with('.') {
        return Err(format!(
            "file name {name:?} must be 1 to 128 characters without / and not start with a dot"
        ));
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("yar" | "yara") => Ok(FileKind::Yara),
        Some("hdb" | "hsb") => Ok(FileKind::HashList),
        _ => Err(format!(
            "{name}: unknown kind of rule file (expected .yar, .yara, .hdb or .hsb)"
        )),
    }
}

/// Compiles an upload. Every problem is reported as `file:line: message`, all files checked
/// before giving up, so that one refusal lists everything to fix.
pub fn compile(files: &[RuleFile]) -> Result<Compiled, Vec<String>> {
    let mut errors = Vec::new();
    if files.is_empty() {
        return Err(vec!["upload at least one rule file".into()]);
    }
    if files.len() > MAX_FILES {
        return Err(vec![format!("at most {MAX_FILES} files per upload")]);
    }
    let mut seen = std::collections::HashSet::new();
    let mut compiler = yara_x::Compiler::new();
    compiler.colorize_errors(false);
    let mut any_yara = false;
    let mut hashes = Vec::new();
    let mut described = Vec::new();
    for f in files {
        if !seen.insert(f.name.as_str()) {
            errors.push(format!("{}: uploaded twice", f.name));
            continue;
        }
        let kind = match kind_of(&f.name) {
            Ok(k) => k,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let sha = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            f.content.as_bytes(),
        ));
        match kind {
            FileKind::Yara => {
                any_yara = true;
                let before = compiler.errors().len();
                let src = yara_x::SourceCode::from(f.content.as_str()).with_origin(f.name.as_str());
                let _ = compiler.add_source(src);
                for e in &compiler.errors()[before..] {
                    errors.push(describe_yara_error(&f.name, e));
                }
                described.push(serde_json::json!({"name": f.name, "kind": "yara", "sha256": sha}));
            }
            FileKind::HashList => match sigs::parse_hash_list(&f.name, &f.content) {
                Ok(list) => {
                    described.push(serde_json::json!({"name": f.name, "kind": "hash_list",
                        "entries": list.len(), "sha256": sha}));
                    hashes.extend(list);
                }
                Err(bad) => errors.extend(bad.iter().map(|e| e.to_string())),
            },
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(MAX_LISTED_ERRORS);
        if n > MAX_LISTED_ERRORS {
            errors.push(format!("… and {} more", n - MAX_LISTED_ERRORS));
        }
        return Err(errors);
    }
    let (yara, yara_rules) = if any_yara {
        let rules = compiler.build();
        let count = rules.iter().count() as u64;
        let bytes = rules
            .serialize()
            .map_err(|e| vec![format!("cannot serialize the compiled rules: {e}")])?;
        (bytes, count)
    } else {
        (Vec::new(), 0)
    };
    Ok(Compiled {
        yara,
        yara_rules,
        hashes,
        files: serde_json::Value::Array(described),
        sources: files.iter().map(|f| f.name.clone()).collect(),
    })
}

/// `file:line: title` from a yara-x error (its report carries the line of its main label).
fn describe_yara_error(file: &str, e: &yara_x::errors::CompileError) -> String {
    let json = serde_json::to_value(e).unwrap_or_default();
    let title = json["title"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string().lines().next().unwrap_or("error").to_owned());
    // The first label names the spot; its text says what is wrong there.
    let label = json["labels"].get(0);
    let origin = label
        .and_then(|l| l["code_origin"].as_str())
        .unwrap_or(file);
    let text = label
        .and_then(|l| l["text"].as_str())
        .filter(|t| !t.is_empty());
    let detail = match text {
        Some(t) if t != title => format!("{title}: {t}"),
        _ => title,
    };
    match json["line"].as_u64() {
        Some(line) => format!("{origin}:{line}: {detail}"),
        None => format!("{origin}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &str) -> RuleFile {
        RuleFile {
            name: name.into(),
            content: content.into(),
        }
    }

    #[test]
    fn yara_and_hash_lists_compile_into_one_bundle() {
        let c = compile(&[
            file(
                "a.yar",
                "rule one { strings: $a = \"evil\" condition: $a }\nrule two { condition: filesize == 3 }",
            ),
            file("b.hdb", "44d88612fea8a8f36de82e1278abb02f:68:Eicar-MD5\n"),
        ])
        .unwrap();
        assert_eq!(c.yara_rules, 2);
        assert_eq!(c.hashes.len(), 1);
        let (bytes, sha) = c.bundle(7).unwrap();
        assert_eq!(sha.len(), 64);
        let back = codec::decode_bundle(&bytes).unwrap();
        assert_eq!(back.version, 7);
        assert!(yara_x::Rules::deserialize(&back.yara).is_ok());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let errs = compile(&[
            file(
                "bad.yar",
                "rule ok { condition: true }\n\nrule broken {\n  condition: $missing\n}\n",
            ),
            file("bad.hdb", "nothex:1:x\n"),
            file("notes.txt", ""),
        ])
        .unwrap_err();
        assert!(errs[0].starts_with("bad.yar:4: "), "{errs:?}");
        assert!(errs[1].starts_with("bad.hdb:1: "), "{errs:?}");
        assert!(errs[2].contains("unknown kind"), "{errs:?}");
    }
}
