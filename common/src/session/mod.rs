//! The agent↔controller session as two sans-IO state machines, in the manner of quinn-proto:
//! messages and time go in (`handle_message`, `handle_timeout`), messages to send and events for
//! the driver come out (`poll_transmit`, `poll_event`, `poll_timeout`). The transports own the
//! sockets and the clock; the journal and the store own durability. Tests drive a pair of
//! sessions with virtual time (see `tests` below).

mod agent;
mod controller;

pub use agent::{AgentEvent, AgentSession};
pub use controller::{ControllerEvent, ControllerSession};

use std::time::Duration;

/// A peer that has been silent this many heartbeat intervals is considered gone.
pub const SILENCE_LIMIT: u32 = 3;

/// Default heartbeat interval; the controller's `Welcome` may set another.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests;
