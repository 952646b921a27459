//! Identifier newtypes: a device id is the name in an agent's certificate, an action id is the
//! controller's sequence number for an action.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Identifies an action. Assigned by the controller, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ActionId(pub u64);

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ActionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>()
            .map(ActionId)
            .map_err(|_| IdError::Action(s.to_owned()))
    }
}

/// Identifies a device: lowercase ASCII letters, digits and `-`, 1 to 64 characters.
/// It is the common name of the device's client certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A device id from 16 random bytes, formatted like a UUID.
    pub fn from_random(bytes: [u8; 16]) -> DeviceId {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        DeviceId(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(DeviceId(s.to_owned()))
        } else {
            Err(IdError::Device(s.chars().take(80).collect()))
        }
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<C> Decode<C> for DeviceId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let s = String::decode(d)?;
        s.parse()
            .map_err(|_| bincode::error::DecodeError::Other("invalid device id"))
    }
}
bincode::impl_borrow_decode!(DeviceId);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid device id {0:?}: expected 1 to 64 lowercase letters, digits or '-'")]
    Device(String),
    #[error("invalid action id {0:?}: expected a positive integer")]
    Action(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_accepts_generated_ids_and_refuses_junk() {
        let id = DeviceId::from_random([0xab; 16]);
        assert_eq!(id.as_str(), "abababab-abab-abab-abab-abababababab");
        assert_eq!(id.as_str().parse::<DeviceId>().unwrap(), id);
        for bad in ["", "UPPER", "a/b", "x y", &"a".repeat(65)] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?} was accepted");
        }
    }
}
