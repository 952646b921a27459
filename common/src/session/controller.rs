//! The controller side of a session. It starts after the `Hello` opening (the transport reads
//! it to learn what the stream is for) and the driver's decision to accept it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::action::{ActionReport, ActionSpec, Progress};
use crate::ids::ActionId;
use crate::wire::{
    AgentMessage, ControllerMessage, DesiredState, DeviceEvent, Inventory, ObservedState,
    RulesInfo, VaultEntry, Welcome,
};

use super::SILENCE_LIMIT;

/// What the controller driver must do. Results and receipts must be committed before the
/// driver calls [`ControllerSession::result_committed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerEvent {
    Receipt(ActionId),
    Progress(ActionId, Progress),
    /// Commit it, then call [`ControllerSession::result_committed`].
    Result(ActionReport),
    Observed(ObservedState),
    Inventory(Inventory),
    /// Record these in the device's history.
    Events(Vec<DeviceEvent>),
    Vault(Vec<VaultEntry>),
    /// The rule-set version the device's scanner now enforces.
    RulesEnforced(u64),
    /// Files real-time protection found: remediate them like a scan's detections.
    Detected(Vec<crate::wire::Detection>),
    /// Drop the connection.
    Closed(String),
}

#[derive(Debug)]
pub struct ControllerSession {
    closed: bool,
    transmit: VecDeque<ControllerMessage>,
    events: VecDeque<ControllerEvent>,
    heartbeat: Duration,
    last_heard: Instant,
}

impl ControllerSession {
    /// Accepts a session: the `Welcome` is the first thing sent.
    pub fn accept(now: Instant, welcome: Welcome) -> ControllerSession {
        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
        ControllerSession {
            closed: false,
            transmit: VecDeque::from([ControllerMessage::Welcome(welcome)]),
            events: VecDeque::new(),
            heartbeat,
            last_heard: now,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn handle_message(&mut self, now: Instant, msg: AgentMessage) {
        if self.closed {
            return;
        }
        self.last_heard = now;
        match msg {
            AgentMessage::Heartbeat { seq } => {
                self.transmit
                    .push_back(ControllerMessage::HeartbeatAck { seq });
            }
            AgentMessage::Receipt { id } => self.events.push_back(ControllerEvent::Receipt(id)),
            AgentMessage::Progress { id, progress } => {
                self.events
                    .push_back(ControllerEvent::Progress(id, progress));
            }
            AgentMessage::Result(report) => self.events.push_back(ControllerEvent::Result(report)),
            AgentMessage::Observed(o) => self.events.push_back(ControllerEvent::Observed(o)),
            AgentMessage::Inventory(i) => self.events.push_back(ControllerEvent::Inventory(i)),
            AgentMessage::Events(e) => self.events.push_back(ControllerEvent::Events(e)),
            AgentMessage::Vault(v) => self.events.push_back(ControllerEvent::Vault(v)),
            AgentMessage::RulesEnforced { version } => {
                self.events
                    .push_back(ControllerEvent::RulesEnforced(version));
            }
            AgentMessage::Detected(d) => self.events.push_back(ControllerEvent::Detected(d)),
        }
    }

    /// Sends an approved action. The driver has already recorded it as delivered.
    pub fn deliver(&mut self, spec: ActionSpec) {
        if !self.closed {
            self.transmit.push_back(ControllerMessage::Deliver(spec));
        }
    }

    /// The result of `id` is committed (or was already): let the agent forget it.
    pub fn result_committed(&mut self, id: ActionId) {
        if !self.closed {
            self.transmit.push_back(ControllerMessage::ResultAck { id });
        }
    }

    pub fn desired(&mut self, state: DesiredState) {
        if !self.closed {
            self.transmit.push_back(ControllerMessage::Desired(state));
        }
    }

    /// Announces the current rule set (only to an agent that declared the scan capability).
    pub fn rules(&mut self, info: RulesInfo) {
        if !self.closed {
            self.transmit.push_back(ControllerMessage::Rules(info));
        }
    }

    /// Asks the agent to stop a running action.
    pub fn cancel(&mut self, id: ActionId) {
        if !self.closed {
            self.transmit.push_back(ControllerMessage::Cancel { id });
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let limit = self.heartbeat * SILENCE_LIMIT;
        if !self.closed && now.saturating_duration_since(self.last_heard) >= limit {
            self.close(format!("agent silent for {} s", limit.as_secs()));
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.closed).then(|| self.last_heard + self.heartbeat * SILENCE_LIMIT)
    }

    /// The next message to send. Once the queue is empty it gives its buffer back: a
    /// controller holds a session per connected agent, idle nearly always (650 bytes each).
    pub fn poll_transmit(&mut self) -> Option<ControllerMessage> {
        let msg = self.transmit.pop_front();
        if msg.is_none() {
            self.transmit = VecDeque::new();
        }
        msg
    }

    /// The next event to apply; an empty queue gives its buffer back, as in `poll_transmit`.
    pub fn poll_event(&mut self) -> Option<ControllerEvent> {
        let event = self.events.pop_front();
        if event.is_none() {
            self.events = VecDeque::new();
        }
        event
    }

    pub fn close(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.transmit.clear();
            self.events.push_back(ControllerEvent::Closed(reason));
        }
    }
}
