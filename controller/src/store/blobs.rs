//! Artifacts small enough to live in the database (up to [`MAX_LEN`] bytes): a fleet-wide
//! sample of a script or a config file is thousands of these. As files, each cost a create, a
//! write, a read-back, a rename and a share of a filesystem flush, on one thread, and that
//! thread paced the whole action. Here each is one row in the writer's next group commit.
//! Larger artifacts stay files (`crate::artifacts`), where an upload can resume.

use palisade_common::action::ArtifactRef;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Cached, Result};

/// The largest artifact kept in the database: the protocol's whole uploads, which are never
/// resumed. SQLite reads blobs of up to a few tens of KiB faster from its pages than from
/// files of their own (sqlite.org, "Internal Versus External BLOBs"); past that, a file can
/// also be resumed and streamed.
pub const MAX_LEN: u64 = palisade_common::wire::WHOLE_UPLOAD_MAX;

/// Stores `bytes` under their SHA-256 (lowercase hex). Storing the same content again changes
/// nothing.
pub fn put(conn: &Connection, sha256: &str, bytes: &[u8]) -> Result<()> {
    conn.execute_cached(
        "INSERT INTO artifact_blobs (sha256, bytes) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![sha256, bytes],
    )?;
    Ok(())
}

/// The content stored under `sha256`, if it is here.
pub fn get(conn: &Connection, sha256: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT bytes FROM artifact_blobs WHERE sha256 = ?1")?
        .query_row([sha256], |r| r.get(0))
        .optional()?)
}

/// The artifacts of `named` whose content is here, each at the size it is held at.
pub fn held(conn: &Connection, named: &[ArtifactRef]) -> Result<Vec<ArtifactRef>> {
    let mut held = Vec::new();
    let mut len =
        conn.prepare_cached("SELECT length(bytes) FROM artifact_blobs WHERE sha256 = ?1")?;
    for a in named {
        let size: Option<i64> = len.query_row([&a.sha256], |r| r.get(0)).optional()?;
        if let Some(size) = size {
            held.push(ArtifactRef {
                size: size as u64,
                ..a.clone()
            });
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_once_and_only_what_is_here_is_held() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        let named = |sha: &str| ArtifactRef {
            name: "sample".into(),
            size: 999,
            sha256: sha.into(),
        };
        put(&c, "aa", b"hello").unwrap();
        // The same content again (another device's copy of the same file).
        put(&c, "aa", b"hello").unwrap();
        let rows: i64 = c
            .query_row("SELECT count(*) FROM artifact_blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(get(&c, "aa").unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(get(&c, "bb").unwrap(), None);
        // Held at the size it is stored at, whatever the report claimed.
        let held = held(&c, &[named("aa"), named("bb")]).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].sha256.as_str(), held[0].size), ("aa", 5));
    }
}
