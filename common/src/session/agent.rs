//! The agent side of a session.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::action::{ActionReport, ActionSpec, Progress};
use crate::ids::ActionId;
use crate::wire::{
    AgentMessage, ControllerMessage, DesiredState, DeviceEvent, Hello, ObservedState, RulesInfo,
    VaultEntry, Welcome,
};

use super::{DEFAULT_HEARTBEAT, SILENCE_LIMIT};

/// What the agent driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The controller accepted the session.
    Welcomed(Welcome),
    /// A new action: journal it, then call [`AgentSession::receipt_persisted`], then run it.
    Received(ActionSpec),
    /// The controller committed this result: drop it from the outbox.
    ResultAcked(ActionId),
    /// Reconcile the host to this state.
    Desired(DesiredState),
    /// The controller answered the probe of this number over the live connection.
    ProbeAnswered(u64),
    /// The rule set to enforce: fetch it unless already loaded.
    Rules(RulesInfo),
    /// Stop this running action.
    Cancel(ActionId),
    /// The controller is silent or broke the protocol: drop the connection and reconnect.
    Closed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitingWelcome,
    Ready,
    Closed,
}

/// One connection's worth of agent protocol. The journal seeds it with the ids it already has
/// and the results it still owes, so that a restart or a reconnect replays, never repeats.
#[derive(Debug)]
pub struct AgentSession {
    state: State,
    hello: Option<Hello>,
    transmit: VecDeque<AgentMessage>,
    events: VecDeque<AgentEvent>,
    /// Actions in the journal (received, running or finished).
    known: HashSet<ActionId>,
    /// Announced to the driver, not yet journaled.
    persisting: HashSet<ActionId>,
    /// Results not yet acknowledged by the controller.
    outbox: BTreeMap<ActionId, ActionReport>,
    heartbeat: Duration,
    next_heartbeat: Option<Instant>,
    heartbeat_seq: u64,
    /// Probes sent and not yet answered.
    probes: HashSet<u64>,
    last_heard: Instant,
}

impl AgentSession {
    pub fn new(
        now: Instant,
        hello: Hello,
        known: impl IntoIterator<Item = ActionId>,
        outbox: impl IntoIterator<Item = ActionReport>,
    ) -> AgentSession {
        AgentSession {
            state: State::AwaitingWelcome,
            hello: Some(hello),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            known: known.into_iter().collect(),
            persisting: HashSet::new(),
            outbox: outbox.into_iter().map(|r| (r.id, r)).collect(),
            heartbeat: DEFAULT_HEARTBEAT,
            next_heartbeat: None,
            heartbeat_seq: 0,
            probes: HashSet::new(),
            last_heard: now,
        }
    }

    /// The `Hello` that opens the session stream; taken once.
    pub fn take_hello(&mut self) -> Option<Hello> {
        self.hello.take()
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Results still owed to the controller, in id order.
    pub fn outbox(&self) -> impl Iterator<Item = &ActionReport> {
        self.outbox.values()
    }

    pub fn handle_message(&mut self, now: Instant, msg: ControllerMessage) {
        if self.state == State::Closed {
            return;
        }
        self.last_heard = now;
        match (&self.state, msg) {
            (State::AwaitingWelcome, ControllerMessage::Welcome(w)) => {
                self.state = State::Ready;
                self.heartbeat = Duration::from_secs(u64::from(w.heartbeat_secs.max(1)));
                self.next_heartbeat = Some(now + self.heartbeat);
                // Outbox replay: everything not acknowledged goes again, oldest first.
                for report in self.outbox.values() {
                    self.transmit
                        .push_back(AgentMessage::Result(report.clone()));
                }
                self.events.push_back(AgentEvent::Welcomed(w));
            }
            (State::AwaitingWelcome, other) => {
                self.close(format!(
                    "protocol violation: {} before welcome",
                    name(&other)
                ));
            }
            (State::Ready, ControllerMessage::Welcome(_)) => {
                self.close("protocol violation: second welcome".into());
            }
            (State::Ready, ControllerMessage::HeartbeatAck { seq }) => {
                if self.probes.remove(&seq) {
                    self.events.push_back(AgentEvent::ProbeAnswered(seq));
                }
            }
            (State::Ready, ControllerMessage::Deliver(spec)) => self.on_deliver(spec),
            (State::Ready, ControllerMessage::ResultAck { id }) => {
                // Acks may come in any order, twice, or for results long gone: only a
                // pending one changes anything.
                if self.outbox.remove(&id).is_some() {
                    self.events.push_back(AgentEvent::ResultAcked(id));
                }
            }
            (State::Ready, ControllerMessage::Desired(d)) => {
                self.events.push_back(AgentEvent::Desired(d));
            }
            (State::Ready, ControllerMessage::Rules(info)) => {
                self.events.push_back(AgentEvent::Rules(info));
            }
            (State::Ready, ControllerMessage::Cancel { id }) => {
                self.events.push_back(AgentEvent::Cancel(id));
            }
            (State::Closed, _) => {}
        }
    }

    fn on_deliver(&mut self, spec: ActionSpec) {
        let id = spec.id;
        if self.persisting.contains(&id) {
            return; // the receipt goes out once the first copy is journaled
        }
        if self.known.contains(&id) {
            // A repeated delivery: confirm again, resend a result we still hold, run nothing.
            self.transmit.push_back(AgentMessage::Receipt { id });
            if let Some(report) = self.outbox.get(&id) {
                self.transmit
                    .push_back(AgentMessage::Result(report.clone()));
            }
            return;
        }
        self.persisting.insert(id);
        self.events.push_back(AgentEvent::Received(spec));
    }

    /// The driver journaled the action announced by [`AgentEvent::Received`].
    pub fn receipt_persisted(&mut self, id: ActionId) {
        if self.persisting.remove(&id) {
            self.known.insert(id);
            if self.state == State::Ready {
                self.transmit.push_back(AgentMessage::Receipt { id });
            }
        }
    }

    pub fn progress(&mut self, id: ActionId, progress: Progress) {
        if self.state == State::Ready {
            self.transmit
                .push_back(AgentMessage::Progress { id, progress });
        }
    }

    /// A journaled result: sent now if the session is up, and again after every reconnect
    /// until acknowledged.
    pub fn submit_result(&mut self, report: ActionReport) {
        self.known.insert(report.id);
        if self.state == State::Ready {
            self.transmit
                .push_back(AgentMessage::Result(report.clone()));
        }
        self.outbox.insert(report.id, report);
    }

    pub fn observed(&mut self, state: ObservedState) {
        if self.state == State::Ready {
            self.transmit.push_back(AgentMessage::Observed(state));
        }
    }

    /// The device changed (new addresses …): sent now if the session is up (a reconnect's
    /// hello carries the current inventory anyway).
    pub fn inventory(&mut self, inventory: crate::wire::Inventory) {
        if self.state == State::Ready {
            self.transmit.push_back(AgentMessage::Inventory(inventory));
        }
    }

    /// The vault's current listing: sent now if the session is up (the driver sends it again
    /// after every reconnect).
    pub fn vault(&mut self, entries: Vec<VaultEntry>) {
        if self.state == State::Ready {
            self.transmit.push_back(AgentMessage::Vault(entries));
        }
    }

    /// The rule-set version the scanner enforces now: sent if the session is up (the driver
    /// sends it again after every reconnect).
    pub fn rules_enforced(&mut self, version: u64) {
        if self.state == State::Ready {
            self.transmit
                .push_back(AgentMessage::RulesEnforced { version });
        }
    }

    /// Events for the device's history. Sent only while the session is up: returns them
    /// back if it is not, so that the driver can keep them for the next session.
    pub fn events(&mut self, events: Vec<DeviceEvent>) -> Result<(), Vec<DeviceEvent>> {
        if self.state != State::Ready {
            return Err(events);
        }
        if !events.is_empty() {
            self.transmit.push_back(AgentMessage::Events(events));
        }
        Ok(())
    }

    /// Files real-time protection found. Sent only while the session is up: returns them
    /// back if it is not, so that the driver can keep them for the next session.
    pub fn detections(
        &mut self,
        found: Vec<crate::wire::Detection>,
    ) -> Result<(), Vec<crate::wire::Detection>> {
        if self.state != State::Ready {
            return Err(found);
        }
        if !found.is_empty() {
            self.transmit.push_back(AgentMessage::Detected(found));
        }
        Ok(())
    }

    /// Asks the controller for an immediate answer over this connection (a heartbeat out of
    /// turn): proof that the link works, e.g. after new firewall rules. Returns the probe's
    /// number, announced by [`AgentEvent::ProbeAnswered`]; `None` before the welcome.
    pub fn probe(&mut self) -> Option<u64> {
        if self.state != State::Ready {
            return None;
        }
        self.heartbeat_seq += 1;
        self.probes.insert(self.heartbeat_seq);
        self.transmit.push_back(AgentMessage::Heartbeat {
            seq: self.heartbeat_seq,
        });
        Some(self.heartbeat_seq)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let limit = self.heartbeat * SILENCE_LIMIT;
        if now.saturating_duration_since(self.last_heard) >= limit {
            self.close(format!("controller silent for {} s", limit.as_secs()));
            return;
        }
        if self.next_heartbeat.is_some_and(|at| now >= at) {
            self.heartbeat_seq += 1;
            self.transmit.push_back(AgentMessage::Heartbeat {
                seq: self.heartbeat_seq,
            });
            self.next_heartbeat = Some(now + self.heartbeat);
        }
    }

    /// When [`AgentSession::handle_timeout`] next wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let silence = self.last_heard + self.heartbeat * SILENCE_LIMIT;
        Some(match self.next_heartbeat {
            Some(hb) => hb.min(silence),
            None => silence,
        })
    }

    pub fn poll_transmit(&mut self) -> Option<AgentMessage> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    fn close(&mut self, reason: String) {
        self.state = State::Closed;
        self.transmit.clear();
        self.events.push_back(AgentEvent::Closed(reason));
    }
}

fn name(msg: &ControllerMessage) -> &'static str {
    match msg {
        ControllerMessage::Welcome(_) => "welcome",
        ControllerMessage::HeartbeatAck { .. } => "heartbeat ack",
        ControllerMessage::Deliver(_) => "delivery",
        ControllerMessage::ResultAck { .. } => "result ack",
        ControllerMessage::Desired(_) => "desired state",
        ControllerMessage::Rules(_) => "rules",
        ControllerMessage::Cancel { .. } => "cancel",
    }
}
