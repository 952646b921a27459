//! The agent's journal (SQLite, WAL, `synchronous=FULL`) in its state directory: every action
//! it has received, where each stands, and the outbox of results the controller has not yet
//! acknowledged. A kill -9 at any moment loses nothing: an action is journaled before its
//! receipt is sent, a result before it is sent, and a result leaves the outbox only when the
//! controller says it has committed it.

use std::path::Path;

use anyhow::{Context, Result};
use palisade_common::action::{ActionReport, ActionSpec};
use palisade_common::wire::{DesiredState, LocalRelease};
use palisade_common::{ActionId, ActionKind, codec};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::clock::now_ms as now;

pub struct Journal {
    conn: Connection,
}

/// What the agent keeps about its network enforcement besides the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NetLocal {
    /// The controller's addresses, pinned when an isolation went in: an isolated device may
    /// not be able to resolve the name again.
    pub controller: Vec<std::net::SocketAddr>,
    /// Digest of our table as last applied (by the agent or by a break-glass release).
    pub digest: Option<String>,
    /// SHA-256 of the script that made it: the same plan again needs no new transaction.
    pub script_sha256: Option<String>,
    /// Isolations ended here without the controller, until it has heard of them.
    pub local_releases: Vec<LocalRelease>,
    /// Serials of break-glass codes already used: each works once.
    pub used_codes: Vec<u32>,
}

/// Where an action stands on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Received,
    Finished,
    Acknowledged,
}

const V1: &str = "
CREATE TABLE actions (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    spec        BLOB NOT NULL,
    stage       TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY REFERENCES actions(id),
    report     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

impl Journal {
    pub fn open(path: &Path) -> Result<Journal> {
        // Owner-only before SQLite opens it, so that its -wal and -shm files are too (SQLite
        // gives them the database file's mode). Only when it does not exist yet: several
        // threads open the journal, and closing any descriptor of the file drops every POSIX
        // lock this process holds on it. Without its locks, the first other reader (the
        // sqlite3 shell) took itself for the last connection and deleted the -wal and -shm
        // files under a running agent, whose later commits went to an unlinked file.
        if !path.exists() {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create journal {}", path.display()))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The runtime and the executor (lasting actions) each hold a connection.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement goes through the cache, and there are more than rusqlite's 16.
        conn.set_prepared_statement_cache_capacity(32);
        Migrations::new(vec![M::up(V1)])
            .to_latest(&mut conn)
            .context("cannot migrate the journal")?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Journal { conn })
    }

    /// Records a newly delivered action. Returns false if it was already known.
    pub fn record(&self, spec: &ActionSpec) -> Result<bool> {
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO actions (id, kind, spec, stage, received_at) VALUES (?1, ?2, ?3, 'received', ?4)",
        )?;
        let n = insert.execute(params![
            spec.id.0 as i64,
            spec.params.kind().as_str(),
            codec::encode(spec)?,
            now()
        ])?;
        Ok(n == 1)
    }

    /// Puts a result in the outbox and marks its action finished, in one transaction.
    pub fn finish(&mut self, report: &ActionReport) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO outbox (id, report, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![report.id.0 as i64, codec::encode(report)?, now()])?;
        tx.prepare_cached("UPDATE actions SET stage = 'finished', finished_at = ?2 WHERE id = ?1")?
            .execute(params![report.id.0 as i64, now()])?;
        tx.commit()?;
        Ok(())
    }

    /// The controller committed the result: it leaves the outbox.
    pub fn acknowledged(&mut self, id: ActionId) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute([id.0 as i64])?;
        tx.prepare_cached("UPDATE actions SET stage = 'acknowledged' WHERE id = ?1")?
            .execute([id.0 as i64])?;
        tx.commit()?;
        Ok(())
    }

    pub fn known_ids(&self) -> Result<Vec<ActionId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM actions ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|v| ActionId(v as u64)))
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    pub fn outbox(&self) -> Result<Vec<ActionReport>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT report FROM outbox ORDER BY id")?;
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        blobs
            .iter()
            .map(|b| codec::decode(b).context("corrupt outbox entry"))
            .collect()
    }

    /// Actions received but not finished: interrupted by a restart, to be run again.
    pub fn unfinished(&self) -> Result<Vec<ActionSpec>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT spec FROM actions WHERE stage = 'received' ORDER BY id")?;
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        blobs
            .iter()
            .map(|b| codec::decode(b).context("corrupt journal entry"))
            .collect()
    }

    pub fn kind_of(&self, id: ActionId) -> Result<Option<ActionKind>> {
        let kind: Option<String> = self
            .conn
            .prepare_cached("SELECT kind FROM actions WHERE id = ?1")?
            .query_row([id.0 as i64], |r| r.get(0))
            .optional()?;
        Ok(kind.and_then(|k| k.parse().ok()))
    }

    pub fn stage(&self, id: ActionId) -> Result<Option<Stage>> {
        let stage: Option<String> = self
            .conn
            .prepare_cached("SELECT stage FROM actions WHERE id = ?1")?
            .query_row([id.0 as i64], |r| r.get(0))
            .optional()?;
        Ok(stage.map(|s| match s.as_str() {
            "received" => Stage::Received,
            "finished" => Stage::Finished,
            _ => Stage::Acknowledged,
        }))
    }

    /// A finished, successful offboard whose result may still be unacknowledged.
    pub fn offboard_finished(&self) -> Result<bool> {
        let mut exists = self.conn.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM actions WHERE kind = 'offboard' AND stage IN ('finished', 'acknowledged'))",
        )?;
        Ok(exists.query_row([], |r| r.get(0))?)
    }

    /// Whether an action of one of `kinds` is running or its result is not yet acknowledged:
    /// then the controller's copy of the desired state predates it.
    pub fn pending_of(&self, kinds: &[ActionKind]) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind FROM actions WHERE stage IN ('received', 'finished')")?;
        let pending: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(pending
            .iter()
            .any(|k| kinds.iter().any(|want| want.as_str() == k)))
    }

    /// The agent's own network facts (pinned controller addresses, what it applied, local
    /// releases, used break-glass codes).
    pub fn net(&self) -> Result<NetLocal> {
        let text: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'net'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        text.map(|t| decode_net(&t))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The desired state (default if none was journaled) and the network facts, read in one
    /// statement: what the once-a-second watch looks at, so one read transaction per round.
    pub fn state(&self) -> Result<(DesiredState, NetLocal)> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE key IN ('desired', 'net')")?;
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let (mut desired, mut net) = (DesiredState::default(), NetLocal::default());
        for (key, value) in rows {
            match key.as_str() {
                "desired" => desired = decode_desired(&value)?,
                _ => net = decode_net(&value)?,
            }
        }
        Ok((desired, net))
    }

    pub fn set_net(&self, net: &NetLocal) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('net', ?1)")?
            .execute([serde_json::to_vec(net)?])?;
        Ok(())
    }

    pub fn desired(&self) -> Result<Option<DesiredState>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'desired'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        blob.map(|b| decode_desired(&b)).transpose()
    }

    pub fn set_desired(&self, d: &DesiredState) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('desired', ?1)")?
            .execute([codec::encode(d)?])?;
        Ok(())
    }
}

fn decode_net(b: &[u8]) -> Result<NetLocal> {
    serde_json::from_slice(b).context("corrupt network state")
}

/// A journaled desired state, also as an older agent wrote it: fields are appended at the
/// end (the encoding has no lengths), so a copy from before the last appended flag
/// (`realtime_protection`) decodes with that flag off.
fn decode_desired(b: &[u8]) -> Result<DesiredState> {
    codec::decode(b)
        .or_else(|e| {
            let mut older = b.to_vec();
            older.push(0);
            codec::decode(&older).map_err(|_| e)
        })
        .context("corrupt desired state")
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::action::{ActionParams, Outcome, RequestSampleParams};

    fn spec(id: u64) -> ActionSpec {
        ActionSpec {
            id: ActionId(id),
            params: ActionParams::RequestSample(RequestSampleParams {
                path: "/etc/hosts".into(),
            }),
        }
    }

    fn report(id: u64) -> ActionReport {
        ActionReport {
            id: ActionId(id),
            outcome: Outcome::Succeeded,
            summary: "ok".into(),
            detail: "{}".into(),
            artifacts: vec![],
        }
    }

    #[test]
    fn survives_reopen_with_outbox_and_unfinished_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        {
            let mut j = Journal::open(&path).unwrap();
            assert!(j.record(&spec(1)).unwrap());
            assert!(!j.record(&spec(1)).unwrap(), "duplicate recorded twice");
            j.record(&spec(2)).unwrap();
            j.record(&spec(3)).unwrap();
            j.finish(&report(1)).unwrap();
            j.finish(&report(2)).unwrap();
            j.acknowledged(ActionId(2)).unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(
            j.known_ids().unwrap(),
            vec![ActionId(1), ActionId(2), ActionId(3)]
        );
        assert_eq!(j.outbox().unwrap(), vec![report(1)]);
        assert_eq!(j.unfinished().unwrap(), vec![spec(3)]);
        assert_eq!(j.stage(ActionId(2)).unwrap(), Some(Stage::Acknowledged));
    }

    #[test]
    fn the_state_is_what_desired_and_net_read_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        assert_eq!(
            j.state().unwrap(),
            (DesiredState::default(), NetLocal::default()),
            "nothing journaled yet"
        );
        let d = DesiredState {
            revision: 7,
            restrict_execution: true,
            ..Default::default()
        };
        j.set_desired(&d).unwrap();
        let net = NetLocal {
            controller: vec!["192.0.2.1:4433".parse().unwrap()],
            ..Default::default()
        };
        j.set_net(&net).unwrap();
        assert_eq!(j.state().unwrap(), (d.clone(), net.clone()));
        assert_eq!((j.desired().unwrap(), j.net().unwrap()), (Some(d), net));
    }

    #[test]
    fn a_desired_state_journaled_before_the_realtime_flag_still_decodes() {
        let d = DesiredState {
            revision: 4,
            restrict_execution: true,
            realtime_protection: false,
            ..Default::default()
        };
        let mut older = codec::encode(&d).unwrap();
        assert_eq!(older.pop(), Some(0), "the flag is the last byte");
        assert_eq!(decode_desired(&older).unwrap(), d);
        let on = DesiredState {
            realtime_protection: true,
            ..d
        };
        assert_eq!(decode_desired(&codec::encode(&on).unwrap()).unwrap(), on);
        assert!(decode_desired(&[1, 2]).is_err());
    }
}
