//! The audit log: one append-only row per transition, each row's hash covering its content and
//! the previous row's hash, so that an edited, deleted or reordered row breaks the chain. The
//! writer signs the chain's head after each commit (a checkpoint) with the audit key, an
//! Ed25519 key kept in a file beside the database: write access to the database alone cannot
//! recompute a rewritten chain's checkpoints.

use std::path::Path;

use palisade_common::{ActionId, DeviceId};
use ring::digest;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, now_ms};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub event: String,
    pub action_id: Option<i64>,
    pub device_id: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    /// The hostname of a device that is the actor (the actor is its id), in [`list`]; not
    /// part of the hash chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_name: Option<String>,
}

/// Appends one record in the caller's transaction.
pub fn append(
    conn: &Connection,
    actor: &str,
    event: &str,
    action: Option<ActionId>,
    device: Option<&DeviceId>,
    detail: &serde_json::Value,
) -> Result<()> {
    // Cached statements: every transition appends here, and parsing SQL each time showed as a
    // third of the writer's time in profiles.
    let prev: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev_hash) = match prev {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let mut rec = AuditRecord {
        seq,
        at: now_ms(),
        actor: actor.to_owned(),
        event: event.to_owned(),
        action_id: action.map(|a| a.0 as i64),
        device_id: device.map(|d| d.to_string()),
        detail: detail.to_string(),
        prev_hash,
        hash: String::new(),
        actor_name: None,
    };
    rec.hash = hash(&rec);
    conn.prepare_cached(
        "INSERT INTO audit (seq, at, actor, event, action_id, device_id, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        rec.seq,
        rec.at,
        rec.actor,
        rec.event,
        rec.action_id,
        rec.device_id,
        rec.detail,
        rec.prev_hash,
        rec.hash
    ])?;
    Ok(())
}

/// The hash of a record: SHA-256 over the previous hash and a JSON array of the fields, so
/// that no field can bleed into its neighbour.
fn hash(r: &AuditRecord) -> String {
    let content = serde_json::json!([
        r.prev_hash,
        r.seq,
        r.at,
        r.actor,
        r.event,
        r.action_id,
        r.device_id,
        r.detail
    ]);
    hex::encode(digest::digest(
        &digest::SHA256,
        content.to_string().as_bytes(),
    ))
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub records: u64,
    /// The first record where the chain breaks, and why.
    pub first_broken: Option<BrokenLink>,
    /// The newest checkpoint, when the chain verified up to it.
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// The key that signs checkpoints: `audit.key` (PKCS#8 Ed25519, 0600) beside the database,
/// made on first open. One key, one use: not the CA's nor the break-glass key.
pub struct AuditKey {
    pair: Ed25519KeyPair,
}

impl AuditKey {
    /// Loads the key at `path`, or makes it there when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<AuditKey> {
        use anyhow::Context;
        if !path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("cannot make the audit key"))?;
            crate::fsutil::write_private(path, pkcs8.as_ref())?;
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        Ok(AuditKey { pair })
    }

    /// The public half, which verifies checkpoints.
    pub fn public(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

/// A signed statement that record `seq` of the chain has hash `head_hash`, made at `at`
/// (milliseconds since the epoch). The chain covers every record before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub head_hash: String,
    pub at: i64,
    /// Ed25519 over [`Checkpoint::message`], lowercase hex.
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes: a domain label, then the fields on their own lines.
    fn message(seq: i64, head_hash: &str, at: i64) -> Vec<u8> {
        format!("palisade audit checkpoint v1\n{seq}\n{head_hash}\n{at}").into_bytes()
    }

    /// Whether the audit key whose public half is `public` signed this checkpoint.
    pub fn signed_by(&self, public: &[u8]) -> bool {
        let Ok(sig) = hex::decode(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&Self::message(self.seq, &self.head_hash, self.at), &sig)
            .is_ok()
    }
}

/// Signs the chain's head when records were appended since the last checkpoint, in the
/// caller's transaction (the writer's, just before it commits). On the first open of a
/// database from before checkpoints, this first checkpoint covers the old unkeyed chain as it
/// stands then.
pub fn checkpoint(conn: &Connection, key: &AuditKey) -> Result<Option<Checkpoint>> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((seq, head_hash)) = head else {
        return Ok(None);
    };
    let signed: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM audit_checkpoints")?
        .query_row([], |r| r.get(0))?;
    if signed.is_some_and(|s| s >= seq) {
        return Ok(None);
    }
    let at = now_ms();
    let signature = hex::encode(key.pair.sign(&Checkpoint::message(seq, &head_hash, at)));
    conn.prepare_cached(
        "INSERT INTO audit_checkpoints (seq, head_hash, at, signature) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![seq, head_hash, at, signature])?;
    Ok(Some(Checkpoint {
        seq,
        head_hash,
        at,
        signature,
    }))
}

/// The newest checkpoint, which the agents keep as witnesses.
pub fn latest_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, head_hash, at, signature FROM audit_checkpoints
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([], checkpoint_from_row)
        .optional()?)
}

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.get(0)?,
        head_hash: row.get(1)?,
        at: row.get(2)?,
        signature: row.get(3)?,
    })
}

/// Why the chain does not contain a checkpoint signed with the audit key, or `None` when it
/// does (record `seq` is there with hash `head_hash`). A witness's checkpoint that the chain
/// does not contain shows the chain was cut back or rewritten after the witness received it.
pub fn missing(conn: &Connection, cp: &Checkpoint) -> Result<Option<String>> {
    let hash: Option<String> = conn
        .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
        .query_row([cp.seq], |r| r.get(0))
        .optional()?;
    Ok(match hash {
        None => Some(format!(
            "record {} is not in the chain: records were deleted from its end or the database was replaced by an older copy",
            cp.seq
        )),
        Some(h) if h != cp.head_hash => Some(format!(
            "record {} has another hash than the signed checkpoint: the chain was rewritten",
            cp.seq
        )),
        Some(_) => None,
    })
}

/// Walks the whole chain in order, then checks every checkpoint against it and against the
/// audit key's public half `public`.
pub fn verify(conn: &Connection, public: &[u8]) -> Result<Verification> {
    let mut v = verify_chain(conn)?;
    if v.first_broken.is_some() {
        return Ok(v);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, head_hash, at, signature FROM audit_checkpoints ORDER BY seq",
    )?;
    let checkpoints = stmt
        .query_map([], checkpoint_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    for cp in &checkpoints {
        let reason = if !cp.signed_by(public) {
            Some(format!(
                "checkpoint of record {} is not signed with the audit key",
                cp.seq
            ))
        } else {
            missing(conn, cp)?
        };
        if let Some(reason) = reason {
            v.first_broken = Some(BrokenLink {
                seq: cp.seq,
                reason,
            });
            return Ok(v);
        }
    }
    let last_signed = checkpoints.last().map_or(0, |c| c.seq);
    if (v.records as i64) > last_signed {
        v.first_broken = Some(BrokenLink {
            seq: last_signed + 1,
            reason: "no checkpoint signed with the audit key covers this record: it was not written by the controller".to_owned(),
        });
    }
    v.checkpoint = checkpoints.last().cloned();
    Ok(v)
}

/// The unkeyed part of [`verify`]: each record links to the one before and matches its hash.
fn verify_chain(conn: &Connection) -> Result<Verification> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, actor, event, action_id, device_id, detail, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_seq = 1i64;
    let mut records = 0u64;
    while let Some(row) = rows.next()? {
        let rec = from_row(row)?;
        records += 1;
        let broken = if rec.seq != expected_seq {
            Some(format!(
                "expected record {expected_seq}, found {}: a record was deleted or reordered",
                rec.seq
            ))
        } else if rec.prev_hash != expected_prev {
            Some("does not link to the previous record".to_owned())
        } else if hash(&rec) != rec.hash {
            Some("content does not match its hash: the record was edited".to_owned())
        } else {
            None
        };
        if let Some(reason) = broken {
            return Ok(Verification {
                records,
                first_broken: Some(BrokenLink {
                    seq: rec.seq,
                    reason,
                }),
                checkpoint: None,
            });
        }
        expected_prev = rec.hash;
        expected_seq += 1;
    }
    Ok(Verification {
        records,
        first_broken: None,
        checkpoint: None,
    })
}

/// A record from a row of `SELECT seq, at, actor, event, action_id, device_id, detail,
/// prev_hash, hash`.
fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get(0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        event: row.get(3)?,
        action_id: row.get(4)?,
        device_id: row.get(5)?,
        detail: row.get(6)?,
        prev_hash: row.get(7)?,
        hash: row.get(8)?,
        actor_name: None,
    })
}

pub fn list(conn: &Connection, action: Option<ActionId>, limit: u32) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.seq, a.at, a.actor, a.event, a.action_id, a.device_id, a.detail, a.prev_hash,
                a.hash, d.hostname
         FROM audit a LEFT JOIN devices d ON d.id = a.actor
         WHERE (?1 IS NULL OR a.action_id = ?1) ORDER BY a.seq DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![action.map(|a| a.0 as i64), limit], |row| {
        Ok(AuditRecord {
            actor_name: row.get(9)?,
            ..from_row(row)?
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit key the test databases are signed with, made once per test process.
    fn key() -> &'static AuditKey {
        static KEY: std::sync::OnceLock<(tempfile::TempDir, AuditKey)> = std::sync::OnceLock::new();
        let (_, key) = KEY.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
            (dir, key)
        });
        key
    }

    fn public() -> Vec<u8> {
        key().public()
    }

    /// Five records, each committed and signed the way the store's writer does, and the
    /// append-only triggers dropped as an attacker with the database file would.
    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        for i in 0..5 {
            append(
                &c,
                "alice",
                "requested",
                Some(ActionId(i)),
                None,
                &serde_json::json!({"i": i}),
            )
            .unwrap();
            checkpoint(&c, key()).unwrap().expect("a record to sign");
        }
        c.execute_batch(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
             DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
        )
        .unwrap();
        c
    }

    #[test]
    fn intact_chain_verifies() {
        let v = verify(&db(), &public()).unwrap();
        assert_eq!(v.records, 5);
        assert!(v.first_broken.is_none(), "{:?}", v.first_broken);
        assert_eq!(v.checkpoint.expect("newest checkpoint").seq, 5);
    }

    fn broken(c: &Connection) -> (i64, String) {
        let b = verify(c, &public())
            .unwrap()
            .first_broken
            .expect("tampering found");
        (b.seq, b.reason)
    }

    /// Every record from `from` on recomputed over its (edited) content and its new
    /// predecessor, as an attacker who knows the unkeyed hash would.
    fn rechain(c: &Connection, from: i64) {
        let last: i64 = c
            .query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))
            .unwrap();
        for seq in from..=last {
            let prev: String = c
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq - 1], |r| {
                    r.get(0)
                })
                .unwrap_or_else(|_| GENESIS.to_owned());
            c.execute(
                "UPDATE audit SET prev_hash = ?1 WHERE seq = ?2",
                params![prev, seq],
            )
            .unwrap();
            rehash(c, seq);
        }
    }

    #[test]
    fn truncating_the_tail_is_caught_by_the_signed_checkpoint() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq >= 4", []).unwrap();
        // The chain that is left is intact; its checkpoints are not.
        assert!(verify_chain(&c).unwrap().first_broken.is_none());
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 4);
        assert!(reason.contains("deleted from its end"), "{reason}");
    }

    #[test]
    fn a_rewrite_with_every_later_hash_recomputed_is_caught_by_the_key() {
        let c = db();
        c.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
            .unwrap();
        rechain(&c, 2);
        // Without the key the rewrite passes: that was the gap.
        assert!(verify_chain(&c).unwrap().first_broken.is_none());
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 2);
        assert!(reason.contains("rewritten"), "{reason}");

        // The checkpoints replaced too, signed with a key of the attacker's own.
        let dir = tempfile::tempdir().unwrap();
        let forged = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        c.execute("DELETE FROM audit_checkpoints", []).unwrap();
        checkpoint(&c, &forged).unwrap().expect("signed");
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 5);
        assert!(reason.contains("not signed with the audit key"), "{reason}");

        // Or removed: then no checkpoint covers the records.
        c.execute("DELETE FROM audit_checkpoints", []).unwrap();
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 1);
        assert!(reason.contains("not written by the controller"), "{reason}");
    }

    #[test]
    fn records_appended_without_the_key_are_caught() {
        let c = db();
        append(
            &c,
            "mallory",
            "requested",
            None,
            None,
            &serde_json::json!({}),
        )
        .unwrap();
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 6);
        assert!(reason.contains("not written by the controller"), "{reason}");
    }

    #[test]
    fn an_older_copy_misses_a_witnessed_checkpoint() {
        // The copy verifies on its own (its checkpoints are genuine): the key alone cannot
        // tell it from the current database, a witness's newer checkpoint can.
        let older = db();
        let current = db();
        append(
            &current,
            "alice",
            "approved",
            None,
            None,
            &serde_json::json!({}),
        )
        .unwrap();
        let witnessed = checkpoint(&current, key()).unwrap().expect("signed");
        assert!(witnessed.signed_by(&public()));
        assert!(verify(&older, &public()).unwrap().first_broken.is_none());
        let reason = missing(&older, &witnessed).unwrap().expect("not contained");
        assert!(reason.contains("older copy"), "{reason}");
        assert_eq!(missing(&current, &witnessed).unwrap(), None);
    }

    #[test]
    fn a_witnessed_checkpoint_catches_a_rewrite_whose_checkpoints_were_redone() {
        let c = db();
        let witnessed = latest_checkpoint(&c).unwrap().expect("signed");
        c.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .unwrap();
        rechain(&c, 3);
        let reason = missing(&c, &witnessed).unwrap().expect("not contained");
        assert!(reason.contains("rewritten"), "{reason}");
    }

    #[test]
    fn a_checkpoint_edited_in_transit_is_not_the_controllers() {
        let c = db();
        let mut cp = latest_checkpoint(&c).unwrap().expect("signed");
        assert!(cp.signed_by(&public()));
        cp.seq += 1;
        assert!(!cp.signed_by(&public()));
        cp.seq -= 1;
        cp.signature = "zz".into();
        assert!(!cp.signed_by(&public()));
    }

    /// The record's stored hash, recomputed over its (edited) content.
    fn rehash(c: &Connection, seq: i64) {
        let rec = c
            .query_row(
                "SELECT seq, at, actor, event, action_id, device_id, detail, prev_hash, hash
                 FROM audit WHERE seq = ?1",
                [seq],
                from_row,
            )
            .unwrap();
        c.execute(
            "UPDATE audit SET hash = ?1 WHERE seq = ?2",
            params![hash(&rec), seq],
        )
        .unwrap();
    }

    #[test]
    fn an_edited_row_is_found() {
        let c = db();
        c.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .unwrap();
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 3);
        assert!(reason.contains("edited"), "{reason}");
        // Recomputing the edited row's hash moves the break to the next record.
        rehash(&c, 3);
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 4);
        assert!(reason.contains("does not link"), "{reason}");
    }

    #[test]
    fn a_deleted_row_is_found_even_when_the_gap_is_closed() {
        let c = db();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 3);
        assert!(reason.contains("deleted or reordered"), "{reason}");

        // The later rows renumbered so that the sequence has no hole.
        let c = db();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        for seq in 3..=5 {
            c.execute("UPDATE audit SET seq = ?1 WHERE seq = ?2", [seq - 1, seq])
                .unwrap();
        }
        assert_eq!(broken(&c).0, 2);
    }

    #[test]
    fn reordered_rows_are_found() {
        let c = db();
        // Swap records 2 and 3 (their contents and hashes travel with them).
        c.execute_batch(
            "UPDATE audit SET seq = 100 WHERE seq = 2;
             UPDATE audit SET seq = 2 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = 100;",
        )
        .unwrap();
        let (seq, reason) = broken(&c);
        assert_eq!(seq, 2);
        assert!(reason.contains("does not link"), "{reason}");
    }

    #[test]
    fn the_database_refuses_updates_while_the_triggers_stand() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrations()
            .to_latest(&mut c)
            .unwrap();
        append(&c, "a", "e", None, None, &serde_json::json!({})).unwrap();
        let err = c.execute("UPDATE audit SET actor = 'x'", []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}
