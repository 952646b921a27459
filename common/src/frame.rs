//! Framing: every message on a QUIC stream is `len: u32 BE | version: u8 | payload`, where
//! `len` counts the version byte and the payload and never exceeds [`MAX_FRAME_LEN`].
//! See `docs/protocol.md`.

use bincode::{Decode, Encode};

use crate::codec::{self, CodecError};

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Oldest wire version this build still reads.
pub const MIN_WIRE_VERSION: u8 = 1;
/// Hard upper bound of a frame's `len`, so a peer cannot make us allocate more.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(u64),
    #[error("empty frame")]
    Empty,
    #[error("unsupported wire version {0} (this build reads {MIN_WIRE_VERSION} to {WIRE_VERSION})")]
    Version(u8),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encodes `msg` as one complete frame.
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = codec::encode(msg)?;
    let len = payload.len() as u64 + 1;
    if len > u64::from(MAX_FRAME_LEN) {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len as usize);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(WIRE_VERSION);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the length prefix and checks it against the limit before anything is allocated.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    Ok(len as usize)
}

/// Decodes a frame body (what follows the length prefix).
pub fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    Ok(codec::decode(payload)?)
}

/// Decodes the first complete frame in `buf`, if there is one, and says how many bytes it used.
/// `Ok(None)` means "need more bytes"; an error means the stream is unusable.
pub fn decode<T: Decode<()>>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = body_len(header.try_into().expect("slice of HEADER_LEN"))?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// Frames from a stream that arrives in pieces of any size, one frame at a time: it asks for no
/// more than the rest of the frame it is assembling, so it never holds more than one frame, and
/// it checks a frame's length before taking its body. Reading into it with a cancel-safe read
/// makes the whole read cancel-safe: bytes already taken wait here for the rest.
#[derive(Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
}

/// Capacity a reassembler keeps between frames; a larger frame's buffer is given back, so an
/// idle stream holds little.
const KEPT_CAPACITY: usize = 1024;

impl Reassembler {
    /// How many bytes the frame being assembled still needs (the rest of its length prefix
    /// first). An error means the stream announced a frame it may not send.
    pub fn wanted(&self) -> Result<usize, FrameError> {
        match self.buf.get(..HEADER_LEN) {
            None => Ok(HEADER_LEN - self.buf.len()),
            Some(header) => {
                let len = body_len(header.try_into().expect("slice of HEADER_LEN"))?;
                Ok(HEADER_LEN + len - self.buf.len())
            }
        }
    }

    /// Takes bytes read from the stream (at most [`Reassembler::wanted`] of them) and returns
    /// the frame they complete, if they do.
    pub fn push<T: Decode<()>>(&mut self, bytes: &[u8]) -> Result<Option<T>, FrameError> {
        self.buf.extend_from_slice(bytes);
        let Some((msg, used)) = decode(&self.buf)? else {
            return Ok(None);
        };
        self.buf.drain(..used);
        if self.buf.is_empty() && self.buf.capacity() > KEPT_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(Some(msg))
    }

    /// True between two frames, where a stream may end cleanly.
    pub fn at_boundary(&self) -> bool {
        self.buf.is_empty()
    }
}
