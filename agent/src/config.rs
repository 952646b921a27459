//! The agent's configuration: a TOML file (`/etc/palisade/agent.toml` in the package),
//! overridden by command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::host::linux::exec::ExecConfig;
use crate::runtime::Settings;

/// The file's contents. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub max_sample: Option<u64>,
    pub max_package: Option<u64>,
    pub collector_timeout: Option<String>,
    pub collector_max_bytes: Option<u64>,
    pub link_timeout: Option<String>,
    /// How long a new isolation may take to prove the controller still answers over the live
    /// connection before it is rolled back.
    pub verify_isolation: Option<String>,
    /// Mount points marked for exec-permission events while execution is restricted.
    pub exec_mark: Option<Vec<PathBuf>>,
    /// Directories whose root-owned, root-only-writable contents may run while restricted.
    pub exec_system_paths: Option<Vec<PathBuf>>,
    /// Paths (files or directories) that quarantine refuses, besides the agent's own files,
    /// `/proc`, `/sys` and the built-in list.
    pub protect: Option<Vec<PathBuf>>,
    /// Scanner worker threads (default: one per CPU).
    pub scan_threads: Option<u64>,
    /// Files above this many bytes are skipped by scans.
    pub scan_max_file_size: Option<u64>,
    /// Share of each scan worker's time spent working, 1 to 100 (like a CPU limit).
    pub scan_cpu_percent: Option<u64>,
    /// Directories real-time protection watches, with everything below them, when the
    /// controller turns it on for the device's group (default: temp dirs, `/dev/shm`, home
    /// directories).
    pub realtime_paths: Option<Vec<PathBuf>>,
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

    /// The extra protected paths quarantine refuses: `overrides` (from flags) if given, else
    /// the file's.
    pub fn protect(&self, overrides: &FileConfig) -> Result<Vec<PathBuf>> {
        let paths = overrides
            .protect
            .clone()
            .or(self.protect.clone())
            .unwrap_or_default();
        if paths.iter().any(|p| !p.is_absolute()) {
            bail!("protect must list absolute paths");
        }
        Ok(paths)
    }

    /// [`FileConfig::resolve`], plus the exec-restriction configuration.
    pub fn resolve_with_exec(self, overrides: FileConfig) -> Result<(Settings, ExecConfig)> {
        let mut exec = ExecConfig::default();
        if let Some(marks) = overrides.exec_mark.clone().or(self.exec_mark.clone()) {
            if marks.is_empty() || marks.iter().any(|m| !m.is_absolute()) {
                bail!("exec_mark must list absolute mount points");
            }
            exec.mark_roots = marks;
        }
        if let Some(paths) = overrides
            .exec_system_paths
            .clone()
            .or(self.exec_system_paths.clone())
        {
            if paths.iter().any(|p| !p.is_absolute()) {
                bail!("exec_system_paths must be absolute directories");
            }
            exec.system_paths = paths;
        }
        Ok((self.resolve(overrides)?, exec))
    }

    /// Applies `overrides` (from flags) on top of the file, then defaults, and checks the
    /// result.
    pub fn resolve(self, overrides: FileConfig) -> Result<Settings> {
        let state_dir = overrides
            .state_dir
            .or(self.state_dir)
            .unwrap_or_else(|| "/var/lib/palisade-agent".into());
        let mut settings = Settings::new(std::path::absolute(&state_dir)?);
        use palisade_common::config::{duration, positive};
        settings.max_sample = positive(
            "max_sample",
            overrides.max_sample.or(self.max_sample),
            settings.max_sample,
        )?;
        settings.max_package = positive(
            "max_package",
            overrides.max_package.or(self.max_package),
            settings.max_package,
        )?;
        settings.collect.max_bytes = positive(
            "collector_max_bytes",
            overrides.collector_max_bytes.or(self.collector_max_bytes),
            settings.collect.max_bytes,
        )?;
        settings.collect.timeout = duration(
            "collector_timeout",
            overrides.collector_timeout.or(self.collector_timeout),
            settings.collect.timeout,
        )?;
        settings.link_timeout = duration(
            "link_timeout",
            overrides.link_timeout.or(self.link_timeout),
            settings.link_timeout,
        )?;
        settings.verify_isolation = duration(
            "verify_isolation",
            overrides.verify_isolation.or(self.verify_isolation),
            settings.verify_isolation,
        )?;
        settings.scan_threads = positive(
            "scan_threads",
            overrides.scan_threads.or(self.scan_threads),
            settings.scan_threads as u64,
        )? as usize;
        settings.scan_max_file_size = positive(
            "scan_max_file_size",
            overrides.scan_max_file_size.or(self.scan_max_file_size),
            settings.scan_max_file_size,
        )?;
        let cpu = positive(
            "scan_cpu_percent",
            overrides.scan_cpu_percent.or(self.scan_cpu_percent),
            u64::from(settings.scan_cpu_percent),
        )?;
        if cpu > 100 {
            bail!("scan_cpu_percent must be 1 to 100, not {cpu}");
        }
        settings.scan_cpu_percent = cpu as u8;
        if let Some(paths) = overrides.realtime_paths.or(self.realtime_paths) {
            if paths.is_empty() || paths.iter().any(|p| !p.is_absolute()) {
                bail!("realtime_paths must list absolute directories");
            }
            settings.realtime_paths = paths;
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_default_config_parses_and_resolves() {
        let text = include_str!("../../packaging/etc/agent.toml");
        let s = FileConfig::parse(text)
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/palisade-agent"));
        assert_eq!(s.max_sample, 256 << 20);
        assert_eq!((s.scan_max_file_size, s.scan_cpu_percent), (128 << 20, 100));
        assert_eq!(
            s.realtime_paths,
            ["/tmp", "/var/tmp", "/dev/shm", "/home", "/root"]
                .map(PathBuf::from)
                .to_vec()
        );
        let file = FileConfig::parse(text).unwrap();
        assert_eq!(
            file.protect(&FileConfig::default()).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn protected_paths_come_from_flags_or_the_file_and_must_be_absolute() {
        let file = FileConfig::parse("protect = [\"/opt/keep\", \"/srv/db\"]").unwrap();
        assert_eq!(
            file.protect(&FileConfig::default()).unwrap(),
            vec![PathBuf::from("/opt/keep"), PathBuf::from("/srv/db")]
        );
        let flags = FileConfig {
            protect: Some(vec!["/root/x".into()]),
            ..Default::default()
        };
        assert_eq!(
            file.protect(&flags).unwrap(),
            vec![PathBuf::from("/root/x")]
        );
        let relative = FileConfig::parse("protect = [\"opt\"]").unwrap();
        let err = relative.protect(&FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("protect"), "{err}");
    }

    #[test]
    fn flags_override_the_file_and_mistakes_are_named() {
        let file = FileConfig::parse("max_sample = 10\nstate_dir = \"/srv/a\"").unwrap();
        let s = file
            .resolve(FileConfig {
                max_sample: Some(20),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((s.max_sample, s.state_dir), (20, PathBuf::from("/srv/a")));
        let err = FileConfig::parse("state = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `state`"), "{err}");
        assert!(
            FileConfig::parse("scan_cpu_percent = 150")
                .unwrap()
                .resolve(FileConfig::default())
                .is_err()
        );
        let err = FileConfig::parse("realtime_paths = [\"tmp\"]")
            .unwrap()
            .resolve(FileConfig::default())
            .unwrap_err();
        assert!(err.to_string().contains("realtime_paths"), "{err}");
        assert!(
            FileConfig::parse("max_sample = 0")
                .unwrap()
                .resolve(FileConfig::default())
                .is_err()
        );
    }
}
