//! The one place that knows the payload encoding (bincode 2, standard configuration).
//! Swapping the encoding means changing this module and the golden vectors, nothing else.

/// The traits a wire type implements; transports name these, never bincode itself.
pub use bincode::{Decode, Encode};

use crate::frame::MAX_FRAME_LEN;

/// Upper bound on what decoding one frame may allocate, whatever its bytes claim. bincode counts
/// decoded memory, not wire bytes, and one wire byte can stand for up to 8 bytes of memory (a
/// one-byte varint length decodes to a `usize`), so 8× the frame limit lets every frame that
/// fits on the wire decode while a claim of 2^60 elements is still refused before allocating.
const LIMIT: usize = 8 * MAX_FRAME_LEN as usize;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
}

/// What decoding a rules bundle may allocate. Bundles are not frames: they travel as raw bytes
/// on a rules stream (docs/protocol.md), checked against a SHA-256 first.
const BUNDLE_LIMIT: usize = 1 << 30;

fn bundle_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BUNDLE_LIMIT>()
}

/// Encodes a rules bundle (see [`crate::sigs::RulesBundle`]).
pub fn encode_bundle(value: &crate::sigs::RulesBundle) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::encode_to_vec(value, bundle_config())?)
}

/// Decodes a whole rules bundle; leftover bytes are an error.
pub fn decode_bundle(bytes: &[u8]) -> Result<crate::sigs::RulesBundle, CodecError> {
    let (value, used) = bincode::decode_from_slice(bytes, bundle_config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::encode_to_vec(value, config())?)
}

/// Decodes exactly one value from `bytes`; leftover bytes are an error.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}
