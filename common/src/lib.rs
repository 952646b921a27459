//! Palisade's shared vocabulary: identifiers, the action model, the wire messages, their codec
//! and framing, and the sans-IO agent↔controller session.
//!
//! Architecture invariant: this crate does no IO and reads no clock. Time is passed in by the
//! caller (`std::time::Instant` values), bytes come in as slices and go out as `Vec<u8>`.

pub mod action;
pub mod breakglass;
pub mod codec;
pub mod config;
pub mod frame;
pub mod ids;
pub mod labels;
pub mod limits;
pub mod net;
pub mod session;
pub mod sigs;
pub mod text;
pub mod wire;

pub use action::{ActionKind, ActionParams, ActionSource, ActionStatus, Outcome};
pub use ids::{ActionId, DeviceId};
