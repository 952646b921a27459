//! HTTPS for the API and the web UI (rustls with ring): the listener's TLS configuration.
//! [`super::serve`] completes each handshake on the connection's own task, so that a slow or
//! silent client cannot hold up the others.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Config;
use crate::pki::Ca;

/// The rustls configuration of the HTTPS listener: the configured certificate, or one the
/// controller's CA issues for `palisade-controller`, the server names and the API address.
pub fn server_config(ca: &Ca, config: &Config) -> Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = match (&config.api_cert, &config.api_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("invalid PEM certificate in {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
            (chain, key)
        }
        _ => {
            let mut names = config.server_names.clone();
            let ip = config.api.ip();
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
            if ip.is_loopback() {
                names.push("localhost".into());
            }
            ca.server_identity(&names)?
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the API certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The client address of an API request (axum's `ConnectInfo`, set by [`super::serve`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);
