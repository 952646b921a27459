//! The Palisade agent: one QUIC session to the controller, a journal that makes every action
//! happen once, and a host-capability layer that does the work.

pub mod clock;
pub mod config;
pub mod events;
pub mod executor;
pub mod footprint;
pub mod host;
pub mod identity;
pub mod journal;
pub mod package;
pub mod realtime;
pub mod runtime;
pub mod scan;
pub mod scanner;
pub mod transport;
pub mod vault;

use std::path::Path;

use anyhow::{Context, Result};
use palisade_common::wire::EnrollRequest;
use rcgen::{CertificateParams, DnType, KeyPair};

use crate::host::Host;
use crate::identity::Identity;

/// Enrolls this device: makes a key, sends a certificate request with the token, checks the
/// controller against the pinned CA fingerprint, and saves the identity.
pub async fn enroll<H: Host>(
    state_dir: &Path,
    controller: &str,
    token: &str,
    ca_sha256: &str,
    host: &H,
) -> Result<Identity> {
    if Identity::exists(state_dir) {
        anyhow::bail!(
            "already enrolled (identity in {}); offboard the device, or remove the state directory to enroll again",
            identity::dir(state_dir).display()
        );
    }
    let key = KeyPair::generate().context("cannot make a key")?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "palisade-agent");
    let csr = params
        .serialize_request(&key)
        .context("cannot make a certificate request")?;
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_der: csr.der().to_vec(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        inventory: host.inventory(),
        capabilities: executor::CAPABILITIES.to_vec(),
    };
    let identity = transport::enroll(controller, ca_sha256, request, key.serialize_der()).await?;
    identity.save(state_dir)?;
    Ok(identity)
}
