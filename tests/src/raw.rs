//! Raw QUIC clients with an agent's certificate (or none), for what today's agent never sends:
//! a hostile client's bytes, or an agent of an older release speaking as it did.

use std::sync::Arc;

use palisade_agent::identity::Identity;
use palisade_common::codec::Decode;
use palisade_common::frame;
use palisade_common::wire::ALPN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A client configuration trusting the controller's CA, presenting `identity`'s certificate.
pub fn client(ca_der: &[u8], identity: Option<&Identity>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

/// Reads one frame from a raw stream; `None` if the stream ended first.
pub async fn read_frame<T: Decode<()>>(recv: &mut quinn::RecvStream) -> Option<T> {
    let mut header = [0u8; frame::HEADER_LEN];
    recv.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; frame::body_len(header).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    Some(frame::decode_body(&body).unwrap())
}
