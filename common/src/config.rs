//! Checks shared by the agent's and the controller's configuration files: a value from the
//! flags or the file, else the default, refused with its key's name when it makes no sense.

use std::time::Duration;

/// A configuration value that makes no sense, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The longest duration a configuration file may give (ten years): the daemons add durations
/// to the clock in milliseconds, which a longer one could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A positive duration such as `30s` or `7d`, at most [`MAX_DURATION`].
pub fn duration(
    name: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(&text)
        .map_err(|e| ConfigError(format!("{name} = {text:?}: {e}")))?;
    if d.is_zero() {
        return Err(ConfigError(format!("{name} must be longer than zero")));
    }
    if d > MAX_DURATION {
        return Err(ConfigError(format!(
            "{name} = {text:?} is longer than the limit of 10 years"
        )));
    }
    Ok(d)
}

/// A count or size that must be more than zero.
pub fn positive(name: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(ConfigError(format!("{name} must be more than zero"))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_back_and_nonsense_names_its_key() {
        let d = Duration::from_secs(9);
        assert_eq!(duration("t", None, d), Ok(d));
        assert_eq!(
            duration("t", Some("2m".into()), d),
            Ok(Duration::from_secs(120))
        );
        assert!(
            duration("timeout", Some("0s".into()), d)
                .unwrap_err()
                .to_string()
                .contains("timeout")
        );
        assert!(
            duration("timeout", Some("soon".into()), d)
                .unwrap_err()
                .to_string()
                .contains("timeout = \"soon\"")
        );
        let e = duration("session_ttl", Some("292271000y".into()), d).unwrap_err();
        assert!(
            e.to_string().contains("session_ttl") && e.to_string().contains("limit"),
            "{e}"
        );
        assert!(duration("t", Some("3650d".into()), d).is_ok());
        assert_eq!(positive("n", None, 3), Ok(3));
        assert!(
            positive("max", Some(0), 3)
                .unwrap_err()
                .to_string()
                .contains("max must be more than zero")
        );
    }
}
