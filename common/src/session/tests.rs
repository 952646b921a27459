//! Deterministic pair tests: an agent session and a controller session joined by an in-memory
//! link that really encodes every message as a frame, with virtual time and a toy journal and
//! store standing in for the durable halves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;
use crate::action::{ActionParams, ActionReport, ActionSpec, Outcome, RequestSampleParams};
use crate::frame;
use crate::ids::{ActionId, DeviceId};
use crate::wire::{AgentMessage, ControllerMessage, Hello, Welcome};

/// What survives a reconnect on each side.
#[derive(Default)]
struct Durable {
    journal: BTreeSet<ActionId>,
    outbox: BTreeMap<ActionId, ActionReport>,
    executions: Vec<ActionId>,
    committed: BTreeMap<ActionId, ActionReport>,
    receipts: BTreeSet<ActionId>,
}

struct Pair {
    now: Instant,
    agent: AgentSession,
    controller: ControllerSession,
    durable: Durable,
    /// Messages in flight, so tests can reorder or drop them.
    to_controller: Vec<AgentMessage>,
    to_agent: Vec<ControllerMessage>,
}

fn hello() -> Hello {
    Hello {
        agent_version: "0.1.0".into(),
        capabilities: vec![],
        inventory: Default::default(),
        observed: Default::default(),
    }
}

fn welcome() -> Welcome {
    Welcome {
        device_id: DeviceId::from_random([1; 16]),
        server_time_ms: 0,
        heartbeat_secs: 10,
    }
}

fn spec(id: u64) -> ActionSpec {
    ActionSpec {
        id: ActionId(id),
        params: ActionParams::RequestSample(RequestSampleParams {
            path: "/etc/hosts".into(),
        }),
    }
}

fn report(id: ActionId) -> ActionReport {
    ActionReport {
        id,
        outcome: Outcome::Succeeded,
        summary: "done".into(),
        detail: "{}".into(),
        artifacts: vec![],
    }
}

/// Sends a message through the real frame codec.
fn wire<T: bincode::Encode + bincode::Decode<()>>(msg: &T) -> T {
    let bytes = frame::encode(msg).unwrap();
    let (back, used) = frame::decode::<T>(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    back
}

impl Pair {
    fn connect(now: Instant, durable: Durable) -> Pair {
        let mut agent = AgentSession::new(
            now,
            hello(),
            durable.journal.iter().copied(),
            durable.outbox.values().cloned(),
        );
        let hello = agent.take_hello().expect("hello once");
        let _ = wire(&hello);
        let controller = ControllerSession::accept(now, welcome());
        Pair {
            now,
            agent,
            controller,
            durable,
            to_controller: vec![],
            to_agent: vec![],
        }
    }

    /// Moves every queued message to the in-flight lists.
    fn flush(&mut self) {
        while let Some(m) = self.agent.poll_transmit() {
            self.to_controller.push(wire(&m));
        }
        while let Some(m) = self.controller.poll_transmit() {
            self.to_agent.push(wire(&m));
        }
    }

    /// Delivers everything in flight, handles events like the real drivers, until quiet.
    fn run(&mut self) {
        loop {
            self.flush();
            if self.to_controller.is_empty() && self.to_agent.is_empty() {
                break;
            }
            for m in std::mem::take(&mut self.to_agent) {
                self.agent.handle_message(self.now, m);
            }
            for m in std::mem::take(&mut self.to_controller) {
                self.controller.handle_message(self.now, m);
            }
            self.drive_events();
        }
    }

    fn drive_events(&mut self) {
        while let Some(ev) = self.agent.poll_event() {
            match ev {
                AgentEvent::Received(spec) => {
                    self.durable.journal.insert(spec.id);
                    self.agent.receipt_persisted(spec.id);
                    self.durable.executions.push(spec.id);
                    let r = report(spec.id);
                    self.durable.outbox.insert(spec.id, r.clone());
                    self.agent.submit_result(r);
                }
                AgentEvent::ResultAcked(id) => {
                    self.durable.outbox.remove(&id);
                }
                _ => {}
            }
        }
        while let Some(ev) = self.controller.poll_event() {
            match ev {
                ControllerEvent::Receipt(id) => {
                    self.durable.receipts.insert(id);
                }
                ControllerEvent::Result(r) => {
                    let id = r.id;
                    self.durable.committed.entry(id).or_insert(r);
                    self.controller.result_committed(id);
                }
                _ => {}
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.agent.handle_timeout(self.now);
        self.controller.handle_timeout(self.now);
    }
}

#[test]
fn delivery_gets_receipt_result_and_ack() {
    let mut p = Pair::connect(Instant::now(), Durable::default());
    p.run();
    assert!(p.agent.is_ready());
    p.controller.deliver(spec(1));
    p.run();
    assert_eq!(p.durable.executions, vec![ActionId(1)]);
    assert!(p.durable.receipts.contains(&ActionId(1)));
    assert!(p.durable.committed.contains_key(&ActionId(1)));
    assert!(p.durable.outbox.is_empty(), "acked result left in outbox");
}

#[test]
fn duplicate_delivery_runs_once() {
    let mut p = Pair::connect(Instant::now(), Durable::default());
    p.run();
    p.controller.deliver(spec(7));
    p.controller.deliver(spec(7));
    p.run();
    p.controller.deliver(spec(7));
    p.run();
    assert_eq!(p.durable.executions, vec![ActionId(7)]);
}

#[test]
fn outbox_is_replayed_after_reconnect_and_not_run_again() {
    let start = Instant::now();
    let mut p = Pair::connect(start, Durable::default());
    p.run();
    p.controller.deliver(spec(3));
    // Deliver to the agent, but lose everything the agent sends back (link cut).
    p.flush();
    for m in std::mem::take(&mut p.to_agent) {
        p.agent.handle_message(p.now, m);
    }
    p.drive_events();
    p.flush();
    p.to_controller.clear();
    assert!(p.durable.committed.is_empty());
    assert!(p.durable.outbox.contains_key(&ActionId(3)));

    // Reconnect: the controller redelivers what it has no result for.
    let mut p = Pair::connect(p.now, p.durable);
    p.run();
    p.controller.deliver(spec(3));
    p.run();
    assert_eq!(p.durable.executions, vec![ActionId(3)], "ran twice");
    assert!(
        p.durable.committed.contains_key(&ActionId(3)),
        "result lost"
    );
    assert!(p.durable.outbox.is_empty());
}

#[test]
fn results_are_not_sent_before_welcome() {
    let mut durable = Durable::default();
    durable.outbox.insert(ActionId(9), report(ActionId(9)));
    durable.journal.insert(ActionId(9));
    let mut agent = AgentSession::new(
        Instant::now(),
        hello(),
        durable.journal.iter().copied(),
        durable.outbox.values().cloned(),
    );
    assert!(agent.poll_transmit().is_none());
    agent.handle_message(Instant::now(), ControllerMessage::Welcome(welcome()));
    assert_eq!(
        agent.poll_transmit(),
        Some(AgentMessage::Result(report(ActionId(9))))
    );
}

#[test]
fn out_of_order_and_repeated_acks_are_harmless() {
    let now = Instant::now();
    let mut agent = AgentSession::new(
        now,
        hello(),
        [ActionId(1), ActionId(2)],
        [report(ActionId(1)), report(ActionId(2))],
    );
    agent.handle_message(now, ControllerMessage::Welcome(welcome()));
    agent.handle_message(now, ControllerMessage::ResultAck { id: ActionId(2) });
    agent.handle_message(now, ControllerMessage::ResultAck { id: ActionId(2) });
    agent.handle_message(now, ControllerMessage::ResultAck { id: ActionId(42) });
    let ids: Vec<_> = agent.outbox().map(|r| r.id).collect();
    assert_eq!(ids, vec![ActionId(1)]);
    let acked: Vec<_> = std::iter::from_fn(|| agent.poll_event())
        .filter_map(|e| match e {
            AgentEvent::ResultAcked(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![ActionId(2)]);
    agent.handle_message(now, ControllerMessage::ResultAck { id: ActionId(1) });
    assert_eq!(agent.outbox().count(), 0);
}

#[test]
fn heartbeats_keep_the_session_and_silence_closes_it() {
    let mut p = Pair::connect(Instant::now(), Durable::default());
    p.run();
    for _ in 0..10 {
        p.advance(Duration::from_secs(10));
        p.run();
    }
    assert!(!p.agent.is_closed() && !p.controller.is_closed());
    // The link goes dark: both sides notice within the silence limit.
    p.advance(Duration::from_secs(10));
    p.flush();
    p.to_agent.clear();
    p.to_controller.clear();
    p.advance(Duration::from_secs(25));
    p.advance(Duration::from_secs(10));
    assert!(p.agent.is_closed());
    assert!(p.controller.is_closed());
    assert!(matches!(p.agent.poll_event(), Some(AgentEvent::Closed(_))));
}

#[test]
fn delivery_before_welcome_is_a_protocol_violation() {
    let now = Instant::now();
    let mut agent = AgentSession::new(now, hello(), [], []);
    agent.handle_message(now, ControllerMessage::Deliver(spec(1)));
    assert!(agent.is_closed());
    match agent.poll_event() {
        Some(AgentEvent::Closed(reason)) => assert!(reason.contains("before welcome"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_probe_is_answered_over_the_live_link_and_only_a_probe_is_announced() {
    let now = Instant::now();
    let mut agent = AgentSession::new(now, hello(), [], []);
    assert_eq!(agent.probe(), None, "no probe before the welcome");
    let mut p = Pair::connect(now, Durable::default());
    p.run();
    let seq = p.agent.probe().expect("ready");
    p.flush();
    let answered = |p: &mut Pair| {
        for m in std::mem::take(&mut p.to_controller) {
            p.controller.handle_message(p.now, m);
        }
        p.flush();
        for m in std::mem::take(&mut p.to_agent) {
            p.agent.handle_message(p.now, m);
        }
        std::iter::from_fn(|| p.agent.poll_event())
            .filter_map(|e| match e {
                AgentEvent::ProbeAnswered(s) => Some(s),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(answered(&mut p), vec![seq]);
    // A routine heartbeat's answer is not a probe's.
    p.advance(Duration::from_secs(10));
    p.flush();
    assert_eq!(answered(&mut p), Vec::<u64>::new());
    // A lost probe is never announced.
    let lost = p.agent.probe().unwrap();
    p.flush();
    p.to_controller.clear();
    assert!(!answered(&mut p).contains(&lost));
}

#[test]
fn rules_announcements_cancels_and_the_enforced_version_reach_the_other_side() {
    let mut p = Pair::connect(Instant::now(), Durable::default());
    p.run();
    let info = crate::wire::RulesInfo {
        version: 4,
        size: 10,
        sha256: [7; 32],
    };
    p.controller.rules(info.clone());
    p.controller.cancel(ActionId(9));
    p.agent.rules_enforced(4);
    p.flush();
    for m in std::mem::take(&mut p.to_agent) {
        p.agent.handle_message(p.now, m);
    }
    for m in std::mem::take(&mut p.to_controller) {
        p.controller.handle_message(p.now, m);
    }
    assert_eq!(p.agent.poll_event(), Some(AgentEvent::Rules(info)));
    assert_eq!(p.agent.poll_event(), Some(AgentEvent::Cancel(ActionId(9))));
    assert_eq!(
        p.controller.poll_event(),
        Some(ControllerEvent::RulesEnforced(4))
    );
}
