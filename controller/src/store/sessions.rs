//! What the web Action center keeps: password hashes (argon2 PHC strings, made by
//! `crate::web::password`; never the password), browser sessions (stored as SHA-256 of the
//! cookie value, each with its CSRF token and an absolute expiry), and each user's UI
//! preferences per view.

use super::Cached;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, StoreError, audit, now_ms};
use crate::auth::Principal;

/// Stores `hash` (a PHC string) as `user`'s password hash.
pub fn set_password_hash(conn: &Connection, actor: &str, user: &str, hash: &str) -> Result<()> {
    let n = conn.execute_cached(
        "UPDATE users SET password_hash = ?2 WHERE name = ?1",
        params![user, hash],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no user {user:?}")));
    }
    // A new password ends every session of the user.
    conn.execute_cached("DELETE FROM sessions WHERE user_name = ?1", [user])?;
    audit::append(
        conn,
        actor,
        "password_set",
        None,
        None,
        &serde_json::json!({"user": user}),
    )?;
    Ok(())
}

/// The stored password hash of `user`, if the user exists and has one.
pub fn password_hash(conn: &Connection, user: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row_cached(
            "SELECT password_hash FROM users WHERE name = ?1",
            [user],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// A new session: returns nothing secret beyond what the caller made (`id_hash` is the
/// SHA-256 of the cookie value).
pub fn create_session(
    conn: &Connection,
    user: &str,
    id_hash: &str,
    csrf: &str,
    ttl_ms: i64,
) -> Result<i64> {
    let now = now_ms();
    // Expired sessions of anyone go when someone logs in: the table stays small.
    conn.execute_cached("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    let n = conn.execute_cached(
        "INSERT INTO sessions (id_hash, user_name, user_id, csrf, created_at, expires_at)
         SELECT ?1, name, id, ?3, ?4, ?5 FROM users WHERE name = ?2 AND disabled_at IS NULL",
        params![id_hash, user, csrf, now, now + ttl_ms],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no enabled user {user:?}")));
    }
    audit::append(
        conn,
        user,
        "login",
        None,
        None,
        &serde_json::json!({"expires_at": now + ttl_ms}),
    )?;
    Ok(now + ttl_ms)
}

/// A live session: who it is, its CSRF token and when it expires.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    pub expires_at: i64,
}

/// The unexpired session whose cookie hashes to `id_hash`.
pub fn session(conn: &Connection, id_hash: &str) -> Result<Option<Session>> {
    let row: Option<(String, String, String, String, i64)> = conn
        .query_row_cached(
            "SELECT u.name, u.role, u.device_groups, s.csrf, s.expires_at FROM sessions s
             JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND u.disabled_at IS NULL",
            params![id_hash, now_ms()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    row.map(|(name, role, groups, csrf, expires_at)| {
        Ok(Session {
            principal: Principal {
                name,
                role: role.parse().map_err(StoreError::Sql)?,
                device_groups: serde_json::from_str(&groups)?,
            },
            csrf,
            expires_at,
        })
    })
    .transpose()
}

/// Ends a session (logout).
pub fn delete_session(conn: &Connection, id_hash: &str) -> Result<()> {
    let user: Option<String> = conn
        .query_row_cached(
            "DELETE FROM sessions WHERE id_hash = ?1 RETURNING user_name",
            [id_hash],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(user) = user {
        audit::append(conn, &user, "logout", None, None, &serde_json::json!({}))?;
    }
    Ok(())
}

/// Largest preferences document kept per user and view.
pub const MAX_PREFS: usize = 8 * 1024;

/// `user`'s preferences for `view` (a JSON object), `{}` when none were saved.
pub fn prefs(conn: &Connection, user: &str, view: &str) -> Result<serde_json::Value> {
    let text: Option<String> = conn
        .query_row_cached(
            "SELECT prefs FROM ui_prefs WHERE user_name = ?1 AND view = ?2",
            [user, view],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match text {
        Some(t) => serde_json::from_str(&t)?,
        None => serde_json::json!({}),
    })
}

pub fn set_prefs(
    conn: &Connection,
    user: &str,
    view: &str,
    prefs: &serde_json::Value,
) -> Result<()> {
    if !prefs.is_object() {
        return Err(StoreError::Invalid(
            "preferences must be a JSON object".into(),
        ));
    }
    let text = serde_json::to_string(prefs)?;
    if text.len() > MAX_PREFS {
        return Err(StoreError::Invalid(format!(
            "preferences are {} bytes; at most {MAX_PREFS}",
            text.len()
        )));
    }
    conn.execute_cached(
        "INSERT INTO ui_prefs (user_name, view, prefs, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_name, view) DO UPDATE SET prefs = ?3, updated_at = ?4",
        params![user, view, text, now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::store::{Store, auth};

    #[test]
    fn sessions_expire_end_at_logout_and_at_a_new_password() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                auth::add_user(c, "test", "alice", Role::Approver, &["web".into()])?;
                set_password_hash(c, "test", "alice", "$argon2id$fake")?;
                assert_eq!(
                    password_hash(c, "alice")?.as_deref(),
                    Some("$argon2id$fake")
                );
                assert_eq!(password_hash(c, "nobody")?, None);

                create_session(c, "alice", "h1", "csrf1", 60_000)?;
                let s = session(c, "h1")?.expect("live session");
                assert_eq!(s.principal.name, "alice");
                assert_eq!(s.principal.device_groups, vec!["web".to_owned()]);
                assert_eq!(s.csrf, "csrf1");
                delete_session(c, "h1")?;
                assert!(session(c, "h1")?.is_none(), "logout ends the session");

                create_session(c, "alice", "h2", "csrf2", -1)?;
                assert!(session(c, "h2")?.is_none(), "an expired session is refused");

                create_session(c, "alice", "h3", "csrf3", 60_000)?;
                set_password_hash(c, "admin", "alice", "$argon2id$other")?;
                assert!(session(c, "h3")?.is_none(), "a new password ends sessions");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn prefs_are_per_user_and_view_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        store
            .write_blocking(|c| {
                auth::add_user(c, "test", "bob", Role::Viewer, &[])?;
                assert_eq!(prefs(c, "bob", "history")?, serde_json::json!({}));
                set_prefs(c, "bob", "history", &serde_json::json!({"page_size": 25}))?;
                assert_eq!(prefs(c, "bob", "history")?["page_size"], 25);
                assert_eq!(prefs(c, "bob", "pending")?, serde_json::json!({}));
                let big = serde_json::json!({"x": "y".repeat(MAX_PREFS)});
                assert!(matches!(
                    set_prefs(c, "bob", "history", &big),
                    Err(StoreError::Invalid(_))
                ));
                assert!(set_prefs(c, "bob", "history", &serde_json::json!([1])).is_err());
                Ok(())
            })
            .unwrap();
    }
}
