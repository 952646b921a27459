//! Password hashes: argon2id with the crate's default (OWASP) parameters and a random salt,
//! stored as PHC strings. Hashing is slow on purpose; callers run it on a blocking thread.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Shortest and longest password accepted.
pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 1024;

/// Checks a new password against the (deliberately simple) policy.
pub fn check_policy(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(format!("a password needs at least {MIN_LEN} characters"));
    }
    if password.len() > MAX_LEN {
        return Err(format!("a password has at most {MAX_LEN} bytes"));
    }
    Ok(())
}

pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&crate::random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches `stored`. With no stored hash (unknown user, or a user without
/// a password) a dummy hash is checked anyway, so that the answer takes as long either way.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default());
    let (hash, real) = match stored {
        Some(h) => (h, true),
        None => (dummy.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", Some(&h)));
        assert!(!verify("correct horse batterz", Some(&h)));
        assert!(!verify("correct horse battery", None));
        assert!(!verify("x", Some("not a phc string")));
        assert_ne!(h, hash("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn the_policy_names_what_is_wrong() {
        assert!(check_policy("short").unwrap_err().contains("at least 10"));
        assert!(check_policy("long enough!").is_ok());
        assert!(check_policy(&"x".repeat(2000)).is_err());
    }
}
