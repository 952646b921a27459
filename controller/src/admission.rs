//! Who gets a QUIC handshake, and when: the endpoint's flood limits and its waiting line.
//!
//! A handshake costs the controller an ECDSA signature and more; thousands at once (a fleet
//! reconnecting after a restart) would all finish late, after their agents gave up on them. So
//! at most `max_handshakes` run at once. A connection beyond that waits in line for a place,
//! for at most [`MAX_WAIT`]. A waiting agent costs both sides a retransmitted packet now and
//! then; one refused comes back later with a new connection (a key exchange and a ClientHello
//! on its side, a retry and a refusal on ours), again and again in a storm. Only an address
//! that answered a QUIC retry may wait, and it counts against its source like a handshake:
//! spoofed or single-source floods cannot fill the line.
//!
//! Quinn-free: `transport::serve` holds the connections; this module keeps the counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection may wait in line for a handshake: two thirds of what its agent gives
/// the whole handshake ([`HANDSHAKE_TIMEOUT`](palisade_common::wire::HANDSHAKE_TIMEOUT)).
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The flood limits of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one source IP may hold before they are a verified device (waiting,
    /// handshaking, or anonymous for enrolment).
    pub pending_per_source: u64,
    /// Handshakes in progress above which unvalidated sources get a QUIC retry (0: always).
    pub retry_above: u64,
    /// Handshakes in progress at most; beyond, new connections wait in line.
    pub max_handshakes: u64,
    /// Connections waiting in line at most; beyond, new ones are refused at once.
    pub max_waiting: u64,
}

impl Limits {
    /// The limits of a controller's configuration: the line holds what the handshakes in
    /// flight would finish sixteen times over.
    pub fn of(config: &crate::Config) -> Limits {
        Limits {
            pending_per_source: config.max_pending_per_source,
            retry_above: config.retry_above,
            max_handshakes: config.max_handshakes,
            max_waiting: config.max_handshakes.saturating_mul(16),
        }
    }
}

/// What to do with a new incoming connection.
pub enum Admit {
    /// Start its handshake now.
    Accept(Slot),
    /// Put it in line; start it once [`Slot::start`] says yes, or refuse it after [`MAX_WAIT`].
    Wait(Slot),
    /// Ask the client to prove its address first (stateless retry).
    Retry,
    /// Refused at once (a small packet); the reason is for the log.
    Refuse(&'static str),
}

/// Counts connections per source address, handshakes in progress and connections in line.
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    /// Woken whenever a handshake ends: a place for the first in line.
    freed: tokio::sync::Notify,
    /// Connections refused since the start, at once or after waiting too long.
    refused: AtomicU64,
}

/// What the connection layer is doing now, for the controller's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Handshakes in progress.
    pub handshaking: u64,
    /// Connections waiting in line for a handshake.
    pub waiting: u64,
    /// Connections refused since the controller started (at the limits, or after waiting
    /// too long in line).
    pub refused: u64,
}

#[derive(Default)]
struct State {
    per_source: HashMap<IpAddr, u64>,
    handshaking: u64,
    waiting: u64,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Default::default(),
            freed: tokio::sync::Notify::new(),
            refused: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides on a connection from `ip`; an accepted or waiting one holds a [`Slot`] until it
    /// is a verified device or ends.
    pub fn decide(self: &Arc<Self>, ip: IpAddr, validated: bool, may_retry: bool) -> Admit {
        let mut st = self.state();
        let pending = st.per_source.get(&ip).copied().unwrap_or(0);
        if pending >= self.limits.pending_per_source {
            return self.refuse("too many pending from this source");
        }
        let retry = !validated && may_retry;
        // A newcomer goes behind anyone already in line, even when a place just freed.
        if st.handshaking >= self.limits.max_handshakes || st.waiting > 0 {
            if retry {
                // Checked before the line: a spoofed source never holds a place in it.
                return Admit::Retry;
            }
            if st.waiting >= self.limits.max_waiting {
                return self.refuse("too many connections waiting for a handshake");
            }
            st.waiting += 1;
            *st.per_source.entry(ip).or_default() += 1;
            return Admit::Wait(Slot {
                admission: self.clone(),
                ip,
                place: Place::Waiting,
                pending: true,
            });
        }
        if retry && st.handshaking >= self.limits.retry_above {
            return Admit::Retry;
        }
        st.handshaking += 1;
        *st.per_source.entry(ip).or_default() += 1;
        Admit::Accept(Slot {
            admission: self.clone(),
            ip,
            place: Place::Handshaking,
            pending: true,
        })
    }

    /// Resolves once a handshake has ended since the last call (at once if one has).
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    #[cfg(test)]
    fn pending(&self, ip: IpAddr) -> u64 {
        self.state().per_source.get(&ip).copied().unwrap_or(0)
    }

    fn refuse(&self, why: &'static str) -> Admit {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Admit::Refuse(why)
    }

    /// A connection in line waited [`MAX_WAIT`] and is refused.
    pub fn gave_up_waiting(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let st = self.state();
        Counts {
            handshaking: st.handshaking,
            waiting: st.waiting,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Waiting,
    Handshaking,
    Done,
}

/// An admitted connection's place in the counts; given back as it progresses or on drop.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    place: Place,
    pending: bool,
}

impl Slot {
    /// Moves a waiting connection to a handshake place if one is free; false while every
    /// place is taken. Call it for the first in line only: the line is first come, first
    /// served.
    pub fn start(&mut self) -> bool {
        if self.place != Place::Waiting {
            return true;
        }
        let mut st = self.admission.state();
        if st.handshaking >= self.admission.limits.max_handshakes {
            return false;
        }
        st.waiting -= 1;
        st.handshaking += 1;
        self.place = Place::Handshaking;
        true
    }

    /// The handshake is over (done or failed), or the connection left the line.
    pub fn handshake_over(&mut self) {
        let place = std::mem::replace(&mut self.place, Place::Done);
        let mut st = self.admission.state();
        match place {
            Place::Waiting => st.waiting -= 1,
            Place::Handshaking => {
                st.handshaking -= 1;
                drop(st);
                self.admission.freed.notify_one();
            }
            Place::Done => {}
        }
    }

    /// The connection is a verified device: it no longer counts against its source.
    pub fn verified(&mut self) {
        self.handshake_over();
        if std::mem::take(&mut self.pending) {
            let mut st = self.admission.state();
            if let Some(n) = st.per_source.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    st.per_source.remove(&self.ip);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.verified();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(pending_per_source: u64, retry_above: u64) -> Arc<Admission> {
        Admission::new(Limits {
            pending_per_source,
            retry_above,
            max_handshakes: 1000,
            max_waiting: 1000,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_cannot_hold_more_than_its_pending_connections() {
        let a = admission(2, 100);
        let (flood, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let s1 = a.decide(flood, false, true);
        let s2 = a.decide(flood, false, true);
        assert!(matches!(a.decide(flood, false, true), Admit::Refuse(_)));
        assert!(
            matches!(a.decide(other, false, true), Admit::Accept(_)),
            "another source is still served"
        );
        // A connection that became a verified device gives its place back.
        let Admit::Accept(mut s1) = s1 else {
            panic!("first connection refused")
        };
        s1.verified();
        assert_eq!(a.pending(flood), 1);
        assert!(matches!(a.decide(flood, false, true), Admit::Accept(_)));
        drop(s2);
        assert_eq!(a.pending(flood), 0, "every slot given back");
    }

    #[test]
    fn under_load_unvalidated_sources_must_answer_a_retry_first() {
        let a = admission(100, 1);
        let ip = ip("192.0.2.1");
        let Admit::Accept(mut first) = a.decide(ip, false, true) else {
            panic!("no load yet: accepted")
        };
        assert!(matches!(a.decide(ip, false, true), Admit::Retry));
        assert!(
            matches!(a.decide(ip, true, false), Admit::Accept(_)),
            "a validated address is served"
        );
        first.handshake_over();
        assert!(matches!(a.decide(ip, false, true), Admit::Accept(_)));
        let always = admission(100, 0);
        assert!(matches!(always.decide(ip, false, true), Admit::Retry));
        assert!(
            matches!(always.decide(ip, false, false), Admit::Accept(_)),
            "a connection that already answered a retry cannot be asked again"
        );
    }

    #[test]
    fn beyond_the_handshake_limit_validated_connections_wait_in_line_first_come_first_served() {
        let a = Admission::new(Limits {
            pending_per_source: 100,
            retry_above: 100,
            max_handshakes: 2,
            max_waiting: 2,
        });
        let (one, two) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let Admit::Accept(mut first) = a.decide(one, true, false) else {
            panic!("under the limit: accepted")
        };
        let _second = a.decide(two, true, false);
        assert!(
            matches!(a.decide(one, false, true), Admit::Retry),
            "an unproven address answers a retry before it may wait"
        );
        let Admit::Wait(mut early) = a.decide(two, true, false) else {
            panic!("a validated address waits for a place")
        };
        assert!(!early.start(), "no place yet");
        first.handshake_over();
        let Admit::Wait(mut late) = a.decide(one, true, false) else {
            panic!("a newcomer goes behind the line, though a place is free")
        };
        assert!(
            matches!(a.decide(two, true, false), Admit::Refuse(_)),
            "the line is full"
        );
        assert!(early.start(), "the first in line takes the freed place");
        assert!(!late.start());
        let counts = |handshaking, waiting| Counts {
            handshaking,
            waiting,
            refused: 1,
        };
        assert_eq!(a.counts(), counts(2, 1), "one refused: the full line");
        drop(late);
        assert_eq!(
            a.counts(),
            counts(2, 0),
            "leaving the line gives its place back"
        );
        drop(first);
        assert_eq!(a.pending(one), 0);
        early.verified();
        assert_eq!(a.counts(), counts(1, 0));
        a.gave_up_waiting();
        assert_eq!(a.counts().refused, 2);
    }

    #[tokio::test]
    async fn a_handshake_that_ends_wakes_the_line() {
        let a = Admission::new(Limits {
            pending_per_source: 100,
            retry_above: 100,
            max_handshakes: 1,
            max_waiting: 1,
        });
        let Admit::Accept(mut first) = a.decide(ip("192.0.2.1"), true, false) else {
            panic!("under the limit: accepted")
        };
        let waker = tokio::spawn({
            let a = a.clone();
            async move { a.freed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waker.is_finished());
        first.handshake_over();
        tokio::time::timeout(Duration::from_secs(5), waker)
            .await
            .expect("woken")
            .unwrap();
    }
}
