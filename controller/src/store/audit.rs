//! The audit log: one append-only row per transition, each row's hash covering its content and
//! the previous row's hash, so that an edited, deleted or reordered row breaks the chain.

use palisade_common::{ActionId, DeviceId};
use ring::digest;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

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
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// Walks the whole chain in order.
pub fn verify(conn: &Connection) -> Result<Verification> {
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
            });
        }
        expected_prev = rec.hash;
        expected_seq += 1;
    }
    Ok(Verification {
        records,
        first_broken: None,
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
        }
        c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        c
    }

    #[test]
    fn intact_chain_verifies() {
        let v = verify(&db()).unwrap();
        assert_eq!(v.records, 5);
        assert!(v.first_broken.is_none());
    }

    fn broken(c: &Connection) -> (i64, String) {
        let b = verify(c).unwrap().first_broken.expect("tampering found");
        (b.seq, b.reason)
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
