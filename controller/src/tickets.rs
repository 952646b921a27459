//! TLS 1.3 session tickets that outlive a controller restart.
//!
//! An agent that reconnects with a ticket resumes its TLS session: no certificate signatures
//! and no chain verification on either side, only the key exchange. What makes that worth
//! having is the reconnect storm after a restart, so the ticket key is derived from a secret in
//! the data directory (`ticket.key`, like the stateless-reset key), not made afresh at start.
//!
//! The key rolls every [`PERIOD_SECS`]: a ticket is sealed under its period's key and read only
//! during that period and the next, so no ticket is good for more than two periods. A resumed
//! session carries the client certificate of the handshake that earned the ticket; the
//! connection's identity, revocation and supersession checks read it as for a full handshake.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

/// How long one ticket key issues tickets.
const PERIOD_SECS: u64 = 6 * 3600;
const PERIOD_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Seals and opens session tickets (rustls's `ticketer`).
pub struct Tickets {
    secret: hmac::Key,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets")
    }
}

impl Tickets {
    pub fn new(secret: &[u8]) -> Tickets {
        Tickets {
            secret: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn key(&self, period: u64) -> LessSafeKey {
        let mut label = b"palisade session ticket key ".to_vec();
        label.extend_from_slice(&period.to_be_bytes());
        let derived = hmac::sign(&self.secret, &label);
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, derived.as_ref()).expect("HMAC-SHA256 gives 32 bytes"),
        )
    }

    fn seal(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = crate::random_bytes();
        let mut out = Vec::with_capacity(PERIOD_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key(period)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..PERIOD_LEN]),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < PERIOD_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (period_bytes, rest) = ticket.split_at(PERIOD_LEN);
        let period = u64::from_be_bytes(period_bytes.try_into().ok()?);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut body = sealed.to_vec();
        let plain = self
            .key(period)
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(period_bytes),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

fn period_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        / PERIOD_SECS
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        PERIOD_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(period_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(period_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::wire::CONTROLLER_SERVER_NAME;
    use std::sync::Arc;

    #[test]
    fn a_ticket_opens_after_a_restart_for_two_periods_and_never_tampered() {
        let t = Tickets::new(&[7; 32]);
        let ticket = t.seal(100, b"session state").unwrap();
        // A restarted controller derives the same keys from the same secret.
        let restarted = Tickets::new(&[7; 32]);
        assert_eq!(restarted.open(100, &ticket).unwrap(), b"session state");
        assert_eq!(restarted.open(101, &ticket).unwrap(), b"session state");
        assert!(restarted.open(102, &ticket).is_none(), "too old");
        assert!(restarted.open(99, &ticket).is_none(), "from the future");
        assert!(Tickets::new(&[8; 32]).open(100, &ticket).is_none());
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert!(
                t.open(100, &bad).is_none(),
                "byte {i} altered and still opened"
            );
        }
        assert!(t.open(100, &ticket[..20]).is_none());
        assert!(t.open(100, &[]).is_none());
    }

    /// Hands everything `from` has to send to `to`.
    fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// Runs a TLS handshake in memory; returns how it went and the client certificate the
    /// server saw.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: rustls::ServerConfig,
    ) -> (rustls::HandshakeKind, Vec<u8>) {
        let name = rustls::pki_types::ServerName::try_from(CONTROLLER_SERVER_NAME).unwrap();
        let mut c =
            rustls::Connection::from(rustls::ClientConnection::new(client.clone(), name).unwrap());
        let mut s =
            rustls::Connection::from(rustls::ServerConnection::new(Arc::new(server)).unwrap());
        for _ in 0..20 {
            pass(&mut c, &mut s);
            pass(&mut s, &mut c);
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                let peer = s.peer_certificates().expect("a client certificate")[0].to_vec();
                return (s.handshake_kind().unwrap(), peer);
            }
        }
        panic!("the handshake did not end");
    }

    #[test]
    fn a_device_resumes_its_session_after_a_restart_and_is_still_itself() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::load_or_create(dir.path()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let device = palisade_common::DeviceId::from_random([3; 16]);
        let issued = ca.sign_device(csr.der(), &device).unwrap();
        let server = || {
            let mut s = crate::pki::server_tls(&ca, &[]).unwrap();
            s.ticketer = Arc::new(Tickets::new(&[9; 32]));
            s.send_tls13_tickets = 1;
            s
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![issued.der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        client.alpn_protocols = vec![palisade_common::wire::ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::in_memory_sessions(1);
        let client = Arc::new(client);

        let (kind, peer) = handshake(&client, server());
        assert_eq!(kind, rustls::HandshakeKind::Full);
        assert_eq!(peer, issued.der.to_vec());
        // A new controller process: the same secret, fresh state.
        let (kind, peer) = handshake(&client, server());
        assert_eq!(kind, rustls::HandshakeKind::Resumed);
        assert_eq!(
            peer,
            issued.der.to_vec(),
            "a resumed session is the device that earned the ticket"
        );
        // A controller with another ticket key makes it a full handshake again.
        let mut other = server();
        other.ticketer = Arc::new(Tickets::new(&[10; 32]));
        assert_eq!(handshake(&client, other).0, rustls::HandshakeKind::Full);
    }
}
