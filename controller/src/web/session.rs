//! Browser sessions: password login (argon2), an HttpOnly SameSite=Strict cookie holding a
//! random session id (stored hashed), a CSRF token per session that every state-changing
//! request must echo in `X-CSRF-Token`, rate-limited failed logins, logout and expiry. API
//! tokens (`Authorization: Bearer`) keep working and need no CSRF token: browsers never send
//! them on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::password;
use super::tls::ClientAddr;
use crate::api::{ApiError, ApiResult, Body};
use crate::auth::{Permission, Principal};
use crate::service::Controller;
use crate::store::{StoreError, sessions};

pub const COOKIE: &str = "palisade_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Failed logins counted over this window.
const WINDOW: Duration = Duration::from_secs(300);
/// Failed logins allowed per user name, and per client address, within the window.
pub const PER_USER: usize = 5;
pub const PER_ADDRESS: usize = 20;
/// Keys remembered at most (older ones are forgotten first).
const MAX_KEYS: usize = 10_000;

/// Counts login attempts per user name and per client address. An attempt is reserved before
/// its password is verified (so concurrent guesses count at once) and given back only if it
/// succeeds; keys expire with the window, and a full map refuses new keys rather than
/// forgetting the ones it holds.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    /// Counts an attempt against every key, or `Err(retry_after)` when a key has used up its
    /// attempts (nothing is counted then).
    pub fn reserve(&self, keys: &[(String, usize)], now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().expect("limiter lock");
        let mut wait = Duration::ZERO;
        for (key, max) in keys {
            if let Some(times) = map.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < WINDOW);
                if times.len() >= *max {
                    let oldest = times[times.len() - max];
                    wait = wait.max(WINDOW.saturating_sub(now.duration_since(oldest)));
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        let new_keys = keys.iter().filter(|(k, _)| !map.contains_key(k)).count();
        if map.len() + new_keys > MAX_KEYS {
            map.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < WINDOW));
            if map.len() + new_keys > MAX_KEYS {
                // Full of live keys: refuse newcomers for now, never forget a lockout.
                return Err(Duration::from_secs(1));
            }
        }
        for (key, _) in keys {
            map.entry(key.clone()).or_default().push(now);
        }
        Ok(())
    }

    /// The attempt reserved at `at` succeeded: the user's failures are forgotten and the
    /// address gets its attempt back.
    pub fn succeeded(&self, user_key: &str, address_key: &str, at: Instant) {
        let mut map = self.failures.lock().expect("limiter lock");
        map.remove(user_key);
        if let Some(times) = map.get_mut(address_key) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                map.remove(address_key);
            }
        }
    }
}

/// Password hashes computed at once, at most: each argon2id run holds about 19 MiB, so
/// unbounded logins grew the controller by gigabytes. One per core (at least 2).
fn hashing() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        Arc::new(tokio::sync::Semaphore::new(n))
    })
}

/// Runs a password hash or check on a blocking thread if a hashing slot is free, else answers
/// 503 at once rather than queueing.
pub async fn with_hashing_slot<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many password checks at once; try again shortly",
        )
    };
    let permit = hashing().clone().try_acquire_owned().map_err(|_| busy())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The limiter's key for a client address: IPv4 whole, IPv6 by its /64 (one host usually
/// holds a whole /64).
fn address_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn id_hash(cookie: &str) -> String {
    crate::pki::sha256_hex(cookie.as_bytes())
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(m: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
}

async fn live_session(
    headers: &HeaderMap,
    ctl: &Controller,
) -> ApiResult<Option<(String, sessions::Session)>> {
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    let hash = id_hash(&cookie);
    let h = hash.clone();
    let session = ctl.store.read(move |c| sessions::session(c, &h)).await?;
    Ok(session.map(|s| (hash, s)))
}

/// The principal of a request without an `Authorization` header: its session cookie's, if
/// the session is live and — for anything but GET and HEAD — the CSRF header matches.
pub async fn principal(parts: &Parts, ctl: &Arc<Controller>) -> ApiResult<Principal> {
    let Some((_, session)) = live_session(&parts.headers, ctl).await? else {
        return Err(if session_cookie(&parts.headers).is_some() {
            unauthorized("the session has expired or ended; log in again")
        } else {
            unauthorized("missing Authorization: Bearer <token> (or a session cookie)")
        });
    };
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !equal_in_constant_time(sent, session.csrf.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "this request changes state: send the session's CSRF token in X-CSRF-Token",
            ));
        }
    }
    Ok(session.principal)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    name: String,
    password: String,
}

fn cookie_header(ctl: &Controller, value: &str, max_age: u64) -> String {
    let secure = if ctl.config.api_uses_tls() {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// Logs in with a user name and password; sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/session", tag = "session",
    request_body = Login,
    responses((status = 200, description = "logged in: the principal, the CSRF token and the expiry; sets the session cookie"),
        (status = 401, description = "wrong user name or password"),
        (status = 429, description = "too many failed logins"),
        (status = 503, description = "too many password checks at once (one per core); try again shortly")))]
pub async fn login(
    State(ctl): State<Arc<Controller>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Body(login): Body<Login>,
) -> ApiResult<Response> {
    // User names have at most 64 characters: a longer one is nobody, and must not make the
    // limiter keep a large key.
    let user_key = format!("user:{}", login.name.chars().take(65).collect::<String>());
    let address = address_key(peer.ip());
    let keys = [(user_key.clone(), PER_USER), (address.clone(), PER_ADDRESS)];
    // Reserved before the password is verified: concurrent guesses count at once, and a
    // password too long to hash counts like any other.
    let attempt = Instant::now();
    if let Err(wait) = ctl.web.limiter.reserve(&keys, attempt) {
        let secs = wait.as_secs().max(1);
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed logins; try again in {secs} s"),
        )
        .into_response();
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(r);
    }
    let name = login.name.clone();
    let stored = ctl
        .store
        .read(move |c| sessions::password_hash(c, &name))
        .await?;
    let ok = login.password.len() <= password::MAX_LEN
        && with_hashing_slot(move || password::verify(&login.password, stored.as_deref())).await?;
    if !ok {
        tracing::warn!(key = %user_key, %peer, "failed login");
        return Err(unauthorized("wrong user name or password"));
    }
    ctl.web.limiter.succeeded(&user_key, &address, attempt);
    let cookie = hex::encode(crate::random_bytes::<32>());
    let csrf = hex::encode(crate::random_bytes::<24>());
    let ttl = ctl.config.session_ttl;
    let (user, h, c2) = (login.name.clone(), id_hash(&cookie), csrf.clone());
    let expires_at = ctl
        .store
        .write(move |c| sessions::create_session(c, &user, &h, &c2, ttl.as_millis() as i64))
        .await?;
    let h = id_hash(&cookie);
    let Some(session) = ctl.store.read(move |c| sessions::session(c, &h)).await? else {
        return Err(unauthorized("the new session could not be read back"));
    };
    let mut r = Json(json!({
        "user": session.principal,
        "csrf": csrf,
        "expires_at": expires_at,
    }))
    .into_response();
    let set = cookie_header(&ctl, &cookie, ttl.as_secs());
    if let Ok(v) = set.parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// Who is logged in: the principal, and for a browser session its CSRF token and expiry.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, description = "the caller, with the session's CSRF token"),
        (status = 401, description = "no session")))]
pub async fn current(
    State(ctl): State<Arc<Controller>>,
    headers: HeaderMap,
    who: Principal,
) -> ApiResult<Json<serde_json::Value>> {
    let session = if headers.contains_key(header::AUTHORIZATION) {
        None
    } else {
        live_session(&headers, &ctl).await?.map(|(_, s)| s)
    };
    let permissions: Vec<Permission> = [
        Permission::View,
        Permission::Respond,
        Permission::Approve,
        Permission::Investigate,
        Permission::Admin,
    ]
    .into_iter()
    .filter(|p| who.role.grants(*p))
    .collect();
    Ok(Json(json!({
        "user": who,
        "csrf": session.as_ref().map(|s| s.csrf.clone()),
        "expires_at": session.as_ref().map(|s| s.expires_at),
        "permissions": permissions,
    })))
}

/// Ends the session (needs its CSRF token) and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204, description = "logged out")))]
pub async fn logout(
    State(ctl): State<Arc<Controller>>,
    headers: HeaderMap,
    _who: Principal,
) -> ApiResult<Response> {
    if let Some((hash, _)) = live_session(&headers, &ctl).await? {
        ctl.store
            .write(move |c| sessions::delete_session(c, &hash))
            .await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = cookie_header(&ctl, "", 0).parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// 10 characters to 1,024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    password: String,
    /// Needed when users change their own password (admins setting another's do not).
    #[serde(default)]
    current_password: Option<String>,
}

/// Sets a user's password: an admin for anyone, a user for themself with the current one.
/// Ends the user's sessions.
#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "users",
    params(("name" = String, Path, description = "user name")),
    request_body = NewPassword,
    responses((status = 200, description = "password set: {\"user\": name}"),
        (status = 403, description = "neither an admin nor the user with the current password")))]
pub async fn set_password(
    State(ctl): State<Arc<Controller>>,
    who: Principal,
    Path(name): Path<String>,
    Body(p): Body<NewPassword>,
) -> ApiResult<Json<serde_json::Value>> {
    let admin = who.can(Permission::Admin, None);
    if !admin {
        if who.name != name {
            return Err(ApiError::forbidden(format!(
                "{} may set only their own password",
                who.name
            )));
        }
        let n = name.clone();
        let stored = ctl
            .store
            .read(move |c| sessions::password_hash(c, &n))
            .await?;
        let current = p.current_password.clone().unwrap_or_default();
        let ok = match stored {
            None => true, // nothing to prove yet: the first password
            Some(h) => with_hashing_slot(move || password::verify(&current, Some(&h))).await?,
        };
        if !ok {
            return Err(ApiError::forbidden("the current password is wrong"));
        }
    }
    let hash = hash_new_password(p.password).await?;
    let actor = who.name.clone();
    let user = name.clone();
    ctl.store
        .write(move |c| sessions::set_password_hash(c, &actor, &name, &hash))
        .await
        .map_err(|e| match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            other => other.into(),
        })?;
    Ok(Json(json!({"user": user})))
}

/// Checks a new password against the policy and hashes it (on a blocking thread).
pub async fn hash_new_password(password: String) -> ApiResult<String> {
    password::check_policy(&password).map_err(ApiError::bad_request)?;
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m);
    with_hashing_slot(move || password::hash(&password))
        .await?
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_the_failures_and_forgets_after_the_window() {
        let l = LoginLimiter::default();
        let keys = [("user:a".to_owned(), 3), ("ip:1".to_owned(), 10)];
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.reserve(&keys, t0).is_ok());
        }
        let wait = l.reserve(&keys, t0).unwrap_err();
        assert!(wait > Duration::from_secs(200), "{wait:?}");
        assert!(
            l.reserve(&[("user:b".to_owned(), 3)], t0).is_ok(),
            "another user is not blocked"
        );
        assert!(l.reserve(&keys, t0 + WINDOW).is_ok(), "the window passed");
        l.succeeded("user:a", "ip:1", t0 + WINDOW);
        assert!(l.reserve(&keys, t0 + WINDOW).is_ok());
    }

    #[test]
    fn concurrent_guesses_beyond_the_limit_are_refused_before_any_is_verified() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        // 30 guesses arrive together: none has been verified (or failed) yet.
        let admitted = (0..30)
            .filter(|_| {
                l.reserve(
                    &[("user:root".into(), PER_USER), ("ip:1".into(), PER_ADDRESS)],
                    t0,
                )
                .is_ok()
            })
            .count();
        assert_eq!(admitted, PER_USER);
    }

    #[test]
    fn filling_the_map_does_not_unlock_a_locked_out_user() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        let victim = [("user:root".to_owned(), PER_USER)];
        for _ in 0..PER_USER {
            l.reserve(&victim, t0).unwrap();
        }
        for i in 0..MAX_KEYS + 50 {
            let _ = l.reserve(
                &[
                    (format!("user:x{i}"), PER_USER),
                    (format!("ip:{i}"), PER_ADDRESS),
                ],
                t0,
            );
        }
        assert!(l.reserve(&victim, t0).is_err(), "the lockout was forgotten");
        // After the window, keys expire and newcomers are served again.
        assert!(
            l.reserve(&[("user:new".to_owned(), PER_USER)], t0 + WINDOW)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn password_checks_beyond_the_slots_are_refused_at_once() {
        let slots = hashing().available_permits();
        let held = hashing()
            .clone()
            .acquire_many_owned(slots as u32)
            .await
            .unwrap();
        let e = with_hashing_slot(|| password::verify("a password", None))
            .await
            .unwrap_err();
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(
            !with_hashing_slot(|| password::verify("x", None))
                .await
                .unwrap()
        );
    }

    #[test]
    fn an_ipv6_address_counts_by_its_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            "ip:192.0.2.1"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; palisade_session=abc123 ; c=d".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        h.insert(header::COOKIE, "palisade_session=".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }
}
