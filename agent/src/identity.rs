//! The agent's identity in its state directory: its private key, its certificate (naming its
//! device id), the controller's CA, and where the controller is. Secret files are 0600 in a
//! 0700 directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use palisade_common::DeviceId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub device_id: DeviceId,
    /// `HOST:PORT` of the controller's QUIC endpoint, as given at enrolment.
    pub controller: String,
    pub ca_sha256: String,
    /// The controller's Ed25519 public key for break-glass release codes (hex).
    #[serde(default)]
    pub breakglass_key: String,
}

#[derive(Clone)]
pub struct Identity {
    pub info: AgentInfo,
    pub key_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    /// The TLS client configuration made from these files, once per process (clones share
    /// it): reconnects skip parsing the key again, and the controller's session tickets, kept
    /// in it (in memory only), let a reconnect resume the session instead of signing and
    /// verifying certificates again.
    pub tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("identity")
}

impl Identity {
    pub fn exists(state_dir: &Path) -> bool {
        dir(state_dir).join("agent.json").exists()
    }

    pub fn load(state_dir: &Path) -> Result<Identity> {
        let d = dir(state_dir);
        if !d.join("agent.json").exists() {
            bail!(
                "this agent is not enrolled (no {}); run `palisade-agent enroll` first",
                d.join("agent.json").display()
            );
        }
        let read = |name: &str| {
            fs::read(d.join(name))
                .with_context(|| format!("cannot read {}", d.join(name).display()))
        };
        Ok(Identity {
            info: serde_json::from_slice(&read("agent.json")?).context("agent.json is invalid")?,
            key_der: read("key.der")?,
            cert_der: read("cert.der")?,
            ca_der: read("ca.der")?,
            tls: Arc::default(),
        })
    }

    /// Writes the identity, each file durable before the next, `agent.json` last so that a
    /// crash leaves either no identity or a whole one.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let d = dir(state_dir);
        private_dir(state_dir)?;
        private_dir(&d)?;
        write_private(&d.join("key.der"), &self.key_der)?;
        write_private(&d.join("cert.der"), &self.cert_der)?;
        write_private(&d.join("ca.der"), &self.ca_der)?;
        write_private(
            &d.join("agent.json"),
            &serde_json::to_vec_pretty(&self.info)?,
        )?;
        fs::File::open(&d)?.sync_all()?;
        Ok(())
    }
}

pub fn private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Forgets everything: identity, journal, spool. What is left is an empty state directory.
pub fn erase(state_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(state_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}
