//! The controller's configuration: a TOML file (`/etc/palisade/controller.toml` in the
//! package), overridden by command-line flags, validated into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::Config;

/// The file's contents. Every key is optional; unknown keys are an error, so a typo cannot
/// silently fall back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub server_names: Option<Vec<String>>,
    pub approval_expiry: Option<String>,
    pub delivery_timeout: Option<String>,
    pub heartbeat: Option<String>,
    pub max_artifact_size: Option<u64>,
    pub max_contained: Option<u64>,
    /// `auto` (HTTPS unless the API is on loopback) or `always`.
    pub api_tls: Option<String>,
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    pub session_ttl: Option<String>,
    pub max_pending_per_source: Option<u64>,
    pub retry_above: Option<u64>,
    pub max_handshakes: Option<u64>,
    pub api_header_timeout: Option<String>,
    pub api_body_timeout: Option<String>,
    pub api_idle_timeout: Option<String>,
    pub api_max_connections: Option<u64>,
    pub api_max_connections_per_address: Option<u64>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<FileConfig> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        FileConfig::parse(&text)
            .with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Applies `overrides` (from flags) on top of the file, then defaults, and checks the
    /// result.
    pub fn resolve(self, overrides: FileConfig) -> Result<Config> {
        let mut c = Config::with_data_dir(
            overrides
                .data_dir
                .or(self.data_dir)
                .unwrap_or_else(|| "/var/lib/palisade-controller".into()),
        );
        if let Some(v) = overrides.listen.or(self.listen) {
            c.listen = v;
        }
        if let Some(v) = overrides.api.or(self.api) {
            c.api = v;
        }
        if let Some(v) = overrides.server_names.or(self.server_names) {
            c.server_names = v;
        }
        use palisade_common::config::duration;
        c.approval_expiry = duration(
            "approval_expiry",
            overrides.approval_expiry.or(self.approval_expiry),
            c.approval_expiry,
        )?;
        c.delivery_timeout = duration(
            "delivery_timeout",
            overrides.delivery_timeout.or(self.delivery_timeout),
            c.delivery_timeout,
        )?;
        c.heartbeat = duration(
            "heartbeat",
            overrides.heartbeat.or(self.heartbeat),
            c.heartbeat,
        )?;
        if c.heartbeat < Duration::from_secs(1) {
            bail!("heartbeat must be at least 1s");
        }
        if let Some(v) = overrides.max_artifact_size.or(self.max_artifact_size) {
            if v == 0 {
                bail!("max_artifact_size must be more than zero");
            }
            c.max_artifact_size = v;
        }
        c.max_contained = palisade_common::config::positive(
            "max_contained",
            overrides.max_contained.or(self.max_contained),
            c.max_contained,
        )?;
        if let Some(v) = overrides.api_tls.or(self.api_tls) {
            c.api_tls = v.parse().map_err(anyhow::Error::msg)?;
        }
        c.api_cert = overrides.api_cert.or(self.api_cert);
        c.api_key = overrides.api_key.or(self.api_key);
        if c.api_cert.is_some() != c.api_key.is_some() {
            bail!("api_cert and api_key go together");
        }
        c.session_ttl = duration(
            "session_ttl",
            overrides.session_ttl.or(self.session_ttl),
            c.session_ttl,
        )?;
        c.max_pending_per_source = palisade_common::config::positive(
            "max_pending_per_source",
            overrides
                .max_pending_per_source
                .or(self.max_pending_per_source),
            c.max_pending_per_source,
        )?;
        if let Some(v) = overrides.retry_above.or(self.retry_above) {
            c.retry_above = v;
        }
        c.max_handshakes = palisade_common::config::positive(
            "max_handshakes",
            overrides.max_handshakes.or(self.max_handshakes),
            c.max_handshakes,
        )?;
        c.api_header_timeout = duration(
            "api_header_timeout",
            overrides.api_header_timeout.or(self.api_header_timeout),
            c.api_header_timeout,
        )?;
        c.api_body_timeout = duration(
            "api_body_timeout",
            overrides.api_body_timeout.or(self.api_body_timeout),
            c.api_body_timeout,
        )?;
        c.api_idle_timeout = duration(
            "api_idle_timeout",
            overrides.api_idle_timeout.or(self.api_idle_timeout),
            c.api_idle_timeout,
        )?;
        c.api_max_connections = palisade_common::config::positive(
            "api_max_connections",
            overrides.api_max_connections.or(self.api_max_connections),
            c.api_max_connections,
        )?;
        c.api_max_connections_per_address = palisade_common::config::positive(
            "api_max_connections_per_address",
            overrides
                .api_max_connections_per_address
                .or(self.api_max_connections_per_address),
            c.api_max_connections_per_address,
        )?;
        if c.api_max_connections_per_address > c.api_max_connections {
            bail!("api_max_connections_per_address must not exceed api_max_connections");
        }
        c.data_dir = std::path::absolute(&c.data_dir)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_default_config_parses_and_resolves() {
        let text = include_str!("../../packaging/etc/controller.toml");
        let config = FileConfig::parse(text)
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap();
        assert_eq!(
            config.data_dir,
            PathBuf::from("/var/lib/palisade-controller")
        );
        assert_eq!(config.approval_expiry, Duration::from_secs(7 * 86400));
        assert_eq!(config.api_header_timeout, Duration::from_secs(10));
        assert_eq!(config.api_body_timeout, Duration::from_secs(300));
        assert_eq!(config.api_idle_timeout, Duration::from_secs(60));
        assert_eq!(config.api_max_connections, 4096);
        assert_eq!(config.api_max_connections_per_address, 64);
    }

    #[test]
    fn the_api_limits_are_read_and_checked() {
        let c = FileConfig::parse(
            "api_header_timeout = \"2s\"\napi_body_timeout = \"3s\"\napi_idle_timeout = \"4s\"\n\
             api_max_connections = 10\napi_max_connections_per_address = 5",
        )
        .unwrap()
        .resolve(FileConfig::default())
        .unwrap();
        assert_eq!(c.api_header_timeout, Duration::from_secs(2));
        assert_eq!(c.api_body_timeout, Duration::from_secs(3));
        assert_eq!(c.api_idle_timeout, Duration::from_secs(4));
        assert_eq!(c.api_max_connections, 10);
        assert_eq!(c.api_max_connections_per_address, 5);
        for (text, name) in [
            ("api_idle_timeout = \"0s\"", "api_idle_timeout"),
            ("api_max_connections = 0", "api_max_connections"),
            (
                "api_max_connections = 4\napi_max_connections_per_address = 5",
                "api_max_connections_per_address",
            ),
        ] {
            let err = FileConfig::parse(text)
                .unwrap()
                .resolve(FileConfig::default())
                .unwrap_err();
            assert!(err.to_string().contains(name), "{text}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_and_mistakes_are_named() {
        let file = FileConfig::parse("heartbeat = \"5s\"\napi = \"127.0.0.1:9000\"").unwrap();
        let flags = FileConfig {
            heartbeat: Some("3s".into()),
            ..Default::default()
        };
        let c = file.resolve(flags).unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(3));
        assert_eq!(c.api, "127.0.0.1:9000".parse().unwrap());

        let err = FileConfig::parse("hearbeat = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `hearbeat`"), "{err}");
        let err = FileConfig::parse("approval_expiry = \"soon\"")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap_err();
        assert!(format!("{err:#}").contains("approval_expiry"), "{err:#}");
        let err = FileConfig::parse("api_cert = \"/etc/palisade/api.crt\"")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("api_cert and api_key"), "{err}");
        let err = FileConfig::parse("api_tls = \"sometimes\"")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("auto or always"), "{err}");
        let c = FileConfig::parse("api = \"0.0.0.0:7480\"\nsession_ttl = \"1h\"")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap();
        assert!(c.api_uses_tls(), "HTTPS off loopback");
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        let err = FileConfig::parse("heartbeat = \"0s\"")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }
}
