//! Offline break-glass release codes: what an operator reads to someone at an isolated device.
//! A code names its serial and expiry; the device it is bound to is not in the code (the agent
//! knows its own id) but in the signed message, so a code for another device fails to verify.
//! The controller signs with its break-glass Ed25519 key; the agent verifies with the public
//! key it learned at enrolment. Signing and verifying live with the key holders; this module
//! only knows the format.

use data_encoding::BASE32_NOPAD;

use crate::ids::DeviceId;

/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;
const BODY_LEN: usize = 4 + 8;
const DOMAIN: &[u8] = b"palisade break-glass release v1\0";

/// A release code, parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub serial: u32,
    /// Unix seconds after which the code is refused.
    pub not_after: u64,
    pub signature: [u8; SIGNATURE_LEN],
}

impl Code {
    /// What the controller signs and the agent verifies.
    pub fn message(device: &DeviceId, serial: u32, not_after: u64) -> Vec<u8> {
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(device.as_str().as_bytes());
        m.push(0);
        m.extend_from_slice(&serial.to_be_bytes());
        m.extend_from_slice(&not_after.to_be_bytes());
        m
    }

    /// Base32 in groups of eight, separated by dashes, easy to read aloud and to type.
    pub fn to_text(&self) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + SIGNATURE_LEN);
        bytes.extend_from_slice(&self.serial.to_be_bytes());
        bytes.extend_from_slice(&self.not_after.to_be_bytes());
        bytes.extend_from_slice(&self.signature);
        let text = BASE32_NOPAD.encode(&bytes);
        text.as_bytes()
            .chunks(8)
            .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Parses a code as typed: case, dashes and spaces do not matter.
    pub fn parse(text: &str) -> Result<Code, String> {
        let clean: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\t' | '\n'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let bytes = BASE32_NOPAD
            .decode(clean.as_bytes())
            .map_err(|e| format!("not a release code (bad character or length: {e})"))?;
        if bytes.len() != BODY_LEN + SIGNATURE_LEN {
            return Err(format!(
                "not a release code: {} bytes, expected {}",
                bytes.len(),
                BODY_LEN + SIGNATURE_LEN
            ));
        }
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[BODY_LEN..]);
        Ok(Code {
            serial: u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")),
            not_after: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_text_whatever_the_typing() {
        let code = Code {
            serial: 7,
            not_after: 1_800_000_000,
            signature: [0xa5; SIGNATURE_LEN],
        };
        let text = code.to_text();
        assert!(text.split('-').all(|g| g.len() <= 8), "{text}");
        assert_eq!(Code::parse(&text).unwrap(), code);
        assert_eq!(
            Code::parse(&text.to_lowercase().replace('-', " ")).unwrap(),
            code
        );
        assert!(
            Code::parse("hello")
                .unwrap_err()
                .contains("not a release code")
        );
        assert!(Code::parse(&text[..text.len() - 9]).is_err());
    }

    #[test]
    fn the_signed_message_binds_device_serial_and_expiry() {
        let a: DeviceId = "dev-a".parse().unwrap();
        let b: DeviceId = "dev-b".parse().unwrap();
        assert_ne!(Code::message(&a, 1, 10), Code::message(&b, 1, 10));
        assert_ne!(Code::message(&a, 1, 10), Code::message(&a, 2, 10));
        assert_ne!(Code::message(&a, 1, 10), Code::message(&a, 1, 11));
    }
}
