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
    /// When the user was disabled; None while enabled.
    pub disabled_at: Option<i64>,
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
    // A fresh id every time, never one a removed user had: see `user_ids` in the schema.
    let id: i64 = conn.query_row_cached(
        "INSERT INTO user_ids (name, created_at) VALUES (?1, ?2) RETURNING id",
        params![name, now_ms()],
        |r| r.get(0),
    )?;
    conn.execute_cached(
        "INSERT INTO users (id, name, role, device_groups, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, name, role.as_str(), serde_json::to_string(device_groups)?, actor, now_ms()],
    )?;
    let token = new_secret("pal_");
    insert_token(conn, actor, id, name, &token, None)?;
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
        "SELECT name, role, device_groups, created_by, created_at, disabled_at FROM users ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, role, groups, created_by, created_at, disabled_at) = row?;
        out.push(User {
            name,
            role: role.parse().map_err(StoreError::Sql)?,
            device_groups: serde_json::from_str(&groups)?,
            created_by,
            created_at,
            disabled_at,
        });
    }
    Ok(out)
}

fn insert_token(
    conn: &Connection,
    actor: &str,
    user_id: i64,
    user_name: &str,
    token: &str,
    expires_at: Option<i64>,
) -> Result<i64> {
    Ok(conn.query_row_cached(
        "INSERT INTO api_tokens (token_hash, user_name, user_id, created_at, created_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING rowid",
        params![token_hash(token), user_name, user_id, now_ms(), actor, expires_at],
        |r| r.get(0),
    )?)
}

/// The principal an API token belongs to, if the token is live: not revoked, not expired, and
/// its user (by id, never by name) still there and not disabled.
pub fn authenticate(conn: &Connection, token: &str) -> Result<Option<Principal>> {
    let row: Option<(String, String, String)> = conn
        .query_row_cached(
            "SELECT u.name, u.role, u.device_groups FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1 AND t.revoked_at IS NULL
               AND (t.expires_at IS NULL OR t.expires_at > ?2) AND u.disabled_at IS NULL",
            params![token_hash(token), now_ms()],
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

/// The longest an API token may be given to live when it has an expiry: a year.
pub const MAX_API_TOKEN_TTL_MS: i64 = 366 * 24 * 3600 * 1000;

/// An API token as listed: never its secret or its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: i64,
    pub user: String,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

/// The id and name of a user that exists, or NotFound.
fn user_id(conn: &Connection, name: &str) -> Result<i64> {
    conn.query_row_cached("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no user {name:?}")))
}

/// The API tokens of `user` (every user's if None), revoked ones included, oldest first.
pub fn list_tokens(conn: &Connection, user: Option<&str>) -> Result<Vec<ApiToken>> {
    if let Some(u) = user {
        user_id(conn, u)?;
    }
    let mut stmt = conn.prepare_cached(
        "SELECT t.rowid, u.name, t.created_at, t.created_by, t.expires_at, t.revoked_at, t.revoked_by
         FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE ?1 IS NULL OR u.name = ?1 ORDER BY t.rowid",
    )?;
    let rows = stmt.query_map([user], |r| {
        Ok(ApiToken {
            id: r.get(0)?,
            user: r.get(1)?,
            created_at: r.get(2)?,
            created_by: r.get(3)?,
            expires_at: r.get(4)?,
            revoked_at: r.get(5)?,
            revoked_by: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A new API token for `user`, expiring after `ttl_ms` if given. Returns its id and the
/// token (shown once).
pub fn create_token(
    conn: &Connection,
    actor: &str,
    user: &str,
    ttl_ms: Option<i64>,
) -> Result<(i64, String)> {
    let uid = user_id(conn, user)?;
    let expires_at = match ttl_ms {
        None => None,
        Some(t) if t <= 0 => {
            return Err(StoreError::Invalid(
                "a token needs a positive lifetime".into(),
            ));
        }
        Some(t) if t > MAX_API_TOKEN_TTL_MS => {
            return Err(StoreError::Invalid(format!(
                "a token may live at most {} days",
                MAX_API_TOKEN_TTL_MS / 86_400_000
            )));
        }
        Some(t) => Some(now_ms() + t),
    };
    let token = new_secret("pal_");
    let id = insert_token(conn, actor, uid, user, &token, expires_at)?;
    audit::append(
        conn,
        actor,
        "api_token_created",
        None,
        None,
        &serde_json::json!({"user": user, "token_id": id, "expires_at": expires_at}),
    )?;
    Ok((id, token))
}

/// Revokes API token `id`: it authenticates no more. Revoking a revoked token is a conflict.
pub fn revoke_token(conn: &Connection, actor: &str, id: i64) -> Result<ApiToken> {
    let n = conn.execute_cached(
        "UPDATE api_tokens SET revoked_at = ?2, revoked_by = ?3 WHERE rowid = ?1 AND revoked_at IS NULL",
        params![id, now_ms(), actor],
    )?;
    let token = list_tokens(conn, None)?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("no API token {id}")))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "API token {id} is already revoked"
        )));
    }
    audit::append(
        conn,
        actor,
        "api_token_revoked",
        None,
        None,
        &serde_json::json!({"user": token.user, "token_id": id}),
    )?;
    Ok(token)
}

/// Rotates API token `id`: a new token for the same user with the same time box (the time the
/// old one had left, or none), and the old one revoked, in one transaction's worth of writes.
pub fn rotate_token(conn: &Connection, actor: &str, id: i64) -> Result<(i64, String)> {
    let old = revoke_token(conn, actor, id)?;
    let ttl = match old.expires_at {
        None => None,
        Some(e) if e > now_ms() => Some(e - now_ms()),
        Some(_) => {
            return Err(StoreError::Invalid(format!(
                "API token {id} has expired: create a new one instead"
            )));
        }
    };
    let (new_id, token) = create_token(conn, actor, &old.user, ttl)?;
    audit::append(
        conn,
        actor,
        "api_token_rotated",
        None,
        None,
        &serde_json::json!({"user": old.user, "token_id": id, "new_token_id": new_id}),
    )?;
    Ok((new_id, token))
}

/// Disables (or enables again) `user`: a disabled user's tokens and sessions authenticate no
/// more, and its sessions end for good. The last enabled admin cannot be disabled.
pub fn set_user_disabled(conn: &Connection, actor: &str, user: &str, disabled: bool) -> Result<()> {
    let uid = user_id(conn, user)?;
    if disabled {
        ensure_another_admin(conn, user)?;
        conn.execute_cached(
            "UPDATE users SET disabled_at = ?2, disabled_by = ?3 WHERE id = ?1",
            params![uid, now_ms(), actor],
        )?;
        conn.execute_cached("DELETE FROM sessions WHERE user_id = ?1", [uid])?;
    } else {
        conn.execute_cached(
            "UPDATE users SET disabled_at = NULL, disabled_by = NULL WHERE id = ?1",
            [uid],
        )?;
    }
    audit::append(
        conn,
        actor,
        if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        },
        None,
        None,
        &serde_json::json!({"user": user}),
    )?;
    Ok(())
}

/// Refuses to take away the last enabled admin other than `user`.
fn ensure_another_admin(conn: &Connection, user: &str) -> Result<()> {
    let is_admin: bool = conn.query_row_cached(
        "SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1 AND role = 'admin')",
        [user],
        |r| r.get(0),
    )?;
    let others: i64 = conn.query_row_cached(
        "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL AND name != ?1",
        [user],
        |r| r.get(0),
    )?;
    if is_admin && others == 0 {
        return Err(StoreError::Conflict(format!(
            "{user:?} is the last enabled admin"
        )));
    }
    Ok(())
}

/// Removes `user`: its tokens, sessions and preferences go with it. The name may be added
/// again later, as a new user with a new id that none of the old credentials match.
pub fn remove_user(conn: &Connection, actor: &str, user: &str) -> Result<()> {
    let uid = user_id(conn, user)?;
    ensure_another_admin(conn, user)?;
    let tokens: Vec<i64> = list_tokens(conn, Some(user))?
        .into_iter()
        .map(|t| t.id)
        .collect();
    conn.execute_cached("DELETE FROM sessions WHERE user_name = ?1", [user])?;
    conn.execute_cached("DELETE FROM ui_prefs WHERE user_name = ?1", [user])?;
    conn.execute_cached("DELETE FROM api_tokens WHERE user_name = ?1", [user])?;
    conn.execute_cached("DELETE FROM users WHERE id = ?1", [uid])?;
    audit::append(
        conn,
        actor,
        "user_removed",
        None,
        None,
        &serde_json::json!({"user": user, "user_id": uid, "api_tokens_removed": tokens}),
    )?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, sessions};

    fn audited(c: &Connection, event: &str) -> i64 {
        c.query_row(
            "SELECT count(*) FROM audit WHERE event = ?1",
            [event],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn tokens_are_listed_revoked_rotated_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                add_user(c, "test", "root", Role::Admin, &[])?;
                let first = add_user(c, "root", "ivy", Role::Investigator, &[])?;
                assert_eq!(authenticate(c, &first)?.unwrap().name, "ivy");
                let (id, second) = create_token(c, "root", "ivy", Some(60_000))?;
                let listed = list_tokens(c, Some("ivy"))?;
                assert_eq!(listed.len(), 2);
                assert!(listed[1].expires_at.is_some() && listed[0].expires_at.is_none());
                assert_eq!(list_tokens(c, None)?.len(), 3);

                revoke_token(c, "root", id)?;
                assert!(
                    authenticate(c, &second)?.is_none(),
                    "a revoked token is refused"
                );
                assert!(matches!(
                    revoke_token(c, "root", id),
                    Err(StoreError::Conflict(_))
                ));
                assert!(matches!(
                    revoke_token(c, "root", 999),
                    Err(StoreError::NotFound(_))
                ));
                assert_eq!(audited(c, "api_token_revoked"), 1);

                let first_id = list_tokens(c, Some("ivy"))?[0].id;
                let (_, rotated) = rotate_token(c, "root", first_id)?;
                assert!(
                    authenticate(c, &first)?.is_none(),
                    "rotation revokes the old token"
                );
                assert_eq!(authenticate(c, &rotated)?.unwrap().name, "ivy");
                assert_eq!(audited(c, "api_token_rotated"), 1);

                // An expired token is refused: made live, then its time box moved into the past.
                let (eid, expiring) = create_token(c, "root", "ivy", Some(60_000))?;
                c.execute(
                    "UPDATE api_tokens SET expires_at = 1 WHERE rowid = ?1",
                    [eid],
                )?;
                assert!(
                    authenticate(c, &expiring)?.is_none(),
                    "an expired token is refused"
                );
                assert!(create_token(c, "root", "ivy", Some(0)).is_err());
                assert!(create_token(c, "root", "ivy", Some(MAX_API_TOKEN_TTL_MS + 1)).is_err());
                assert!(matches!(
                    create_token(c, "root", "nobody", None),
                    Err(StoreError::NotFound(_))
                ));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_disabled_or_removed_user_and_a_name_added_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                let root = add_user(c, "test", "root", Role::Admin, &[])?;
                let old = add_user(c, "root", "ivy", Role::Investigator, &[])?;
                sessions::create_session(c, "ivy", "h1", "csrf", 60_000)?;
                set_user_disabled(c, "root", "ivy", true)?;
                assert!(
                    authenticate(c, &old)?.is_none(),
                    "a disabled user's token is refused"
                );
                assert!(
                    sessions::session(c, "h1")?.is_none(),
                    "and its sessions end"
                );
                assert!(sessions::create_session(c, "ivy", "h2", "csrf", 60_000).is_err());
                assert!(
                    list_users(c)?
                        .iter()
                        .any(|u| u.name == "ivy" && u.disabled_at.is_some())
                );
                set_user_disabled(c, "root", "ivy", false)?;
                assert_eq!(authenticate(c, &old)?.unwrap().name, "ivy");
                assert!(
                    sessions::session(c, "h1")?.is_none(),
                    "ended sessions stay ended"
                );

                sessions::create_session(c, "ivy", "h3", "csrf", 60_000)?;
                remove_user(c, "root", "ivy")?;
                assert!(
                    authenticate(c, &old)?.is_none(),
                    "a removed user's token is refused"
                );
                assert!(sessions::session(c, "h3")?.is_none());
                let new = add_user(c, "root", "ivy", Role::Admin, &[])?;
                assert!(
                    authenticate(c, &old)?.is_none(),
                    "adding the name again revives nothing"
                );
                assert_eq!(authenticate(c, &new)?.unwrap().role, Role::Admin);
                for e in ["user_disabled", "user_enabled", "user_removed"] {
                    assert_eq!(audited(c, e), 1, "{e} is audited");
                }

                // The last enabled admin can be neither disabled nor removed.
                remove_user(c, "root", "ivy")?;
                assert!(matches!(
                    set_user_disabled(c, "root", "root", true),
                    Err(StoreError::Conflict(_))
                ));
                assert!(matches!(
                    remove_user(c, "root", "root"),
                    Err(StoreError::Conflict(_))
                ));
                assert!(authenticate(c, &root)?.is_some());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_removed_users_id_is_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                add_user(c, "test", "root", Role::Admin, &[])?;
                add_user(c, "root", "ivy", Role::Investigator, &[])?;
                let id = user_id(c, "ivy")?;
                remove_user(c, "root", "ivy")?;
                add_user(c, "root", "ivy", Role::Investigator, &[])?;
                assert!(user_id(c, "ivy")? > id);
                Ok(())
            })
            .unwrap();
    }
}
