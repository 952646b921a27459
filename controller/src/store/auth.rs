//! Users, API tokens, enrolment tokens and approval policy. Secrets are stored as SHA-256
//! hashes only; the plaintext is shown once, when it is made.

use super::Cached;
use palisade_common::ActionKind;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Result, StoreError, audit, now_ms};
use crate::auth::{Principal, Role};

pub fn token_hash(token: &str) -> String {
    crate::pki::sha256_hex(token.as_bytes())
}

fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(crate::random_bytes::<24>()))
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub device_groups: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
}

pub fn user_count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row_cached("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

/// Creates a user with a first API token and returns the token.
pub fn add_user(
    conn: &Connection,
    actor: &str,
    name: &str,
    role: Role,
    device_groups: &[String],
) -> Result<String> {
    palisade_common::limits::check_chars("name", name, 64).map_err(StoreError::Invalid)?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
    {
        return Err(StoreError::Invalid(format!(
            "invalid user name {name:?}: 1 to 64 letters, digits or . _ @ -"
        )));
    }
    let exists: bool = conn.query_row_cached(
        "SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?;
    if exists {
        return Err(StoreError::Conflict(format!(
            "user {name:?} already exists"
        )));
    }
    conn.execute_cached(
        "INSERT INTO users (name, role, device_groups, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, role.as_str(), serde_json::to_string(device_groups)?, actor, now_ms()],
    )?;
    let token = new_secret("pal_");
    conn.execute_cached(
        "INSERT INTO api_tokens (token_hash, user_name, created_at) VALUES (?1, ?2, ?3)",
        params![token_hash(&token), name, now_ms()],
    )?;
    audit::append(
        conn,
        actor,
        "user_added",
        None,
        None,
        &serde_json::json!({"user": name, "role": role, "device_groups": device_groups}),
    )?;
    Ok(token)
}

pub fn list_users(conn: &Connection) -> Result<Vec<User>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, role, device_groups, created_by, created_at FROM users ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, role, groups, created_by, created_at) = row?;
        out.push(User {
            name,
            role: role.parse().map_err(StoreError::Sql)?,
            device_groups: serde_json::from_str(&groups)?,
            created_by,
            created_at,
        });
    }
    Ok(out)
}

/// The principal an API token belongs to, if any.
pub fn authenticate(conn: &Connection, token: &str) -> Result<Option<Principal>> {
    let row: Option<(String, String, String)> = conn
        .query_row_cached(
            "SELECT u.name, u.role, u.device_groups FROM api_tokens t JOIN users u ON u.name = t.user_name
             WHERE t.token_hash = ?1",
            [token_hash(token)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(name, role, groups)| {
        Ok(Principal {
            name,
            role: role.parse().map_err(StoreError::Sql)?,
            device_groups: serde_json::from_str(&groups)?,
        })
    })
    .transpose()
}

/// The longest an enrolment token may live: a token is a secret that enrolls devices, so it
/// should not outlive a rollout (and a longer one overflowed the expiry's arithmetic).
pub const MAX_ENROLL_TTL_MS: i64 = 365 * 86_400_000;
/// The most uses one enrolment token may have.
pub const MAX_ENROLL_USES: u32 = 1_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct EnrollToken {
    pub id: i64,
    pub token: String,
    pub uses: u32,
    pub expires_at: i64,
    pub device_group: String,
}

pub fn create_enroll_token(
    conn: &Connection,
    actor: &str,
    uses: u32,
    ttl_ms: i64,
    device_group: &str,
) -> Result<EnrollToken> {
    if uses == 0 {
        return Err(StoreError::Invalid("a token needs at least one use".into()));
    }
    if uses > MAX_ENROLL_USES {
        return Err(StoreError::Invalid(format!(
            "uses {uses} is more than the limit of {MAX_ENROLL_USES}"
        )));
    }
    if ttl_ms <= 0 {
        return Err(StoreError::Invalid(
            "a token needs a positive lifetime".into(),
        ));
    }
    let too_long = || {
        StoreError::Invalid(format!(
            "expires_in is longer than the limit of {} days",
            MAX_ENROLL_TTL_MS / 86_400_000
        ))
    };
    if ttl_ms > MAX_ENROLL_TTL_MS {
        return Err(too_long());
    }
    let token = new_secret("pal_enr_");
    let expires_at = now_ms().checked_add(ttl_ms).ok_or_else(too_long)?;
    conn.execute_cached(
        "INSERT INTO enroll_tokens (token_hash, uses_left, expires_at, device_group, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![token_hash(&token), uses, expires_at, device_group, actor, now_ms()],
    )?;
    let id = conn.last_insert_rowid();
    audit::append(
        conn,
        actor,
        "enroll_token_created",
        None,
        None,
        &serde_json::json!({"token_id": id, "uses": uses, "expires_at": expires_at, "device_group": device_group}),
    )?;
    Ok(EnrollToken {
        id,
        token,
        uses,
        expires_at,
        device_group: device_group.to_owned(),
    })
}

/// Uses up one use of an enrolment token and returns the device group it enrolls into, or
/// says precisely why the token is refused.
pub fn consume_enroll_token(conn: &Connection, token: &str) -> Result<(i64, String)> {
    let row: Option<(i64, i64, i64, String)> = conn
        .query_row_cached(
            "SELECT id, uses_left, expires_at, device_group FROM enroll_tokens WHERE token_hash = ?1",
            [token_hash(token)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((id, uses_left, expires_at, group)) = row else {
        return Err(StoreError::Invalid(
            "enrolment token is not known to this controller".into(),
        ));
    };
    if expires_at <= now_ms() {
        return Err(StoreError::Invalid("enrolment token has expired".into()));
    }
    if uses_left <= 0 {
        return Err(StoreError::Invalid("enrolment token is used up".into()));
    }
    conn.execute_cached(
        "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE id = ?1",
        [id],
    )?;
    Ok((id, group))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Policy {
    pub require_approval: bool,
    pub distinct_approver: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require_approval: true,
            distinct_approver: false,
        }
    }
}

/// The policy for `kind` on devices of `group`: the most specific of (group, kind),
/// (group, *), (*, kind), (*, *), else the default.
pub fn policy_for(conn: &Connection, group: &str, kind: ActionKind) -> Result<Policy> {
    let row: Option<(bool, bool)> = conn
        .query_row_cached(
            "SELECT require_approval, distinct_approver FROM policies
             WHERE device_group IN (?1, '*') AND kind IN (?2, '*')
             ORDER BY (device_group = '*'), (kind = '*') LIMIT 1",
            params![group, kind.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row
        .map(|(require_approval, distinct_approver)| Policy {
            require_approval,
            distinct_approver,
        })
        .unwrap_or_default())
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub device_group: String,
    pub kind: String,
    #[serde(flatten)]
    pub policy: Policy,
}

pub fn set_policy(
    conn: &Connection,
    actor: &str,
    group: &str,
    kind: Option<ActionKind>,
    policy: Policy,
) -> Result<()> {
    let kind = kind.map(|k| k.as_str()).unwrap_or("*");
    conn.execute_cached(
        "INSERT INTO policies (device_group, kind, require_approval, distinct_approver) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_group, kind) DO UPDATE SET require_approval = ?3, distinct_approver = ?4",
        params![group, kind, policy.require_approval, policy.distinct_approver],
    )?;
    audit::append(
        conn,
        actor,
        "policy_set",
        None,
        None,
        &serde_json::json!({"device_group": group, "kind": kind, "policy": policy}),
    )?;
    Ok(())
}

pub fn list_policies(conn: &Connection) -> Result<Vec<PolicyRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_group, kind, require_approval, distinct_approver FROM policies ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PolicyRow {
            device_group: r.get(0)?,
            kind: r.get(1)?,
            policy: Policy {
                require_approval: r.get(2)?,
                distinct_approver: r.get(3)?,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
