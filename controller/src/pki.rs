//! The controller's certificate authority: created on first start in the data directory, it
//! signs the controller's own server certificate and one client certificate per enrolled
//! device. Everything here is ECDSA P-256 through ring.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use palisade_common::DeviceId;
use palisade_common::wire::CONTROLLER_SERVER_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::digest;
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::write_private;

/// How long device certificates are valid. Revocation, not expiry, is what ends a device.
const DEVICE_CERT_DAYS: i64 = 3650;
const CA_DAYS: i64 = 3650 * 2;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    dir: PathBuf,
    /// Signs break-glass release codes: its own key, not the CA's (one key, one use).
    breakglass: ring::signature::Ed25519KeyPair,
}

/// Loads `breakglass.key` (PKCS#8 Ed25519, 0600) from `dir`, made on first use.
fn breakglass_key(dir: &Path) -> Result<ring::signature::Ed25519KeyPair> {
    let path = dir.join("breakglass.key");
    if !path.exists() {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("cannot make the break-glass key"))?;
        write_private(&path, pkcs8.as_ref())?;
    }
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    ring::signature::Ed25519KeyPair::from_pkcs8(&bytes)
        .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))
}

/// A freshly issued certificate and its serial number (lowercase hex), which the store keeps
/// to recognise the one certificate a device may use.
pub struct Issued {
    pub der: CertificateDer<'static>,
    pub serial: String,
}

impl Ca {
    /// Loads the CA from `dir`, or creates it there (key 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() != cert_path.exists() {
            bail!(
                "{} and {} must both exist or both be absent; refusing to make a second CA",
                key_path.display(),
                cert_path.display()
            );
        }
        if !key_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Palisade controller CA");
            dn.push(DnType::OrganizationName, "Palisade");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
            params.not_after = OffsetDateTime::now_utc() + Duration::days(CA_DAYS);
            params.serial_number = Some(random_serial());
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            fs::write(&cert_path, cert.pem())
                .with_context(|| format!("cannot write {}", cert_path.display()))?;
            tracing::info!(path = %cert_path.display(), "created controller CA");
        }
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let cert_pem = fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).context("CA key is not a valid PEM key")?;
        let cert_der = pem_to_der(&cert_pem).context("CA certificate is not valid PEM")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).context("unusable CA certificate")?;
        Ok(Ca {
            issuer,
            cert_der,
            dir: dir.to_owned(),
            breakglass: breakglass_key(dir)?,
        })
    }

    /// The public key agents verify release codes with (32 bytes), sent at enrolment.
    pub fn breakglass_public(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.breakglass.public_key().as_ref().to_vec()
    }

    /// A release code for `device`, valid until `not_after` (unix seconds).
    pub fn breakglass_code(
        &self,
        device: &DeviceId,
        serial: u32,
        not_after: u64,
    ) -> palisade_common::breakglass::Code {
        use palisade_common::breakglass::{Code, SIGNATURE_LEN};
        let sig = self
            .breakglass
            .sign(&Code::message(device, serial, not_after));
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig.as_ref());
        Code {
            serial,
            not_after,
            signature,
        }
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The SHA-256 of the CA certificate (DER), lowercase hex: what agents pin at enrolment.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Issues the controller's QUIC server certificate with a fresh key. It names
    /// [`CONTROLLER_SERVER_NAME`] plus any extra names, and is kept in the data directory so
    /// an operator can inspect it.
    pub fn server_identity(
        &self,
        extra_names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut names = vec![CONTROLLER_SERVER_NAME.to_owned()];
        names.extend(extra_names.iter().cloned());
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, CONTROLLER_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        fs::write(self.dir.join("server.pem"), cert.pem())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a device's certificate signing request. Whatever the request asks for, the
    /// certificate names `device` and is good for client authentication only.
    pub fn sign_device(&self, csr_der: &[u8], device: &DeviceId) -> Result<Issued> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .context("invalid certificate signing request")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(DEVICE_CERT_DAYS);
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            der: cert.der().clone(),
            serial: serial_hex,
        })
    }
}

/// The device id (common name) and serial (lowercase hex) of a verified client certificate.
pub fn client_identity(cert: &CertificateDer<'_>) -> Result<(DeviceId, String)> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).context("unparseable client certificate")?;
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .context("client certificate has no common name")?;
    let device: DeviceId = cn.parse()?;
    Ok((device, hex::encode(x509.raw_serial())))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

fn random_serial() -> SerialNumber {
    let mut bytes = crate::random_bytes::<16>();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte, so its DER form is these 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

/// The rustls server configuration for the agents' endpoint: our server certificate, client
/// certificates verified against our CA but optional, because enrolment happens before an
/// agent has one (the transport lets an anonymous connection do nothing else).
pub fn server_tls(ca: &Ca, extra_names: &[String]) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let (chain, key) = ca.server_identity(extra_names)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![palisade_common::wire::ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_made_once_and_signs_device_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(
            ca.fingerprint(),
            again.fingerprint(),
            "CA replaced on restart"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let device_key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::default();
        req.distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = req.serialize_request(&device_key).unwrap();
        let device = DeviceId::from_random([7; 16]);
        let issued = ca.sign_device(csr.der(), &device).unwrap();
        let (named, serial) = client_identity(&issued.der).unwrap();
        assert_eq!(
            named, device,
            "certificate must name the device, not what the CSR asked"
        );
        assert_eq!(serial, issued.serial);
        assert!(ca.sign_device(b"garbage", &device).is_err());
    }
}
