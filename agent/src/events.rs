//! Aggregates and rate-limits what the agent reports on its own (denied executions) before it
//! goes to the controller: denials of the same file by the same user become one event with a
//! count, and at most `max_per_flush` events leave per flush; the rest are counted in one
//! `Suppressed` event. Pure: the runtime feeds it and flushes it on a timer.

use std::collections::BTreeMap;

use palisade_common::wire::{DeviceEvent, ExecDenial};

type Key = (String, Option<[u8; 32]>, u32);

#[derive(Debug)]
pub struct Aggregator {
    max_per_flush: usize,
    /// Most events kept while the controller cannot be reached.
    max_unsent: usize,
    pending: BTreeMap<Key, ExecDenial>,
    /// Order of first arrival, so that the oldest leave first.
    order: Vec<Key>,
    suppressed: Option<(u64, i64, i64)>,
    unsent: Vec<DeviceEvent>,
}

impl Aggregator {
    pub fn new(max_per_flush: usize, max_unsent: usize) -> Aggregator {
        Aggregator {
            max_per_flush,
            max_unsent,
            pending: BTreeMap::new(),
            order: Vec::new(),
            suppressed: None,
            unsent: Vec::new(),
        }
    }

    /// Adds raw denials, and `dropped` denials the host could not even keep.
    pub fn add(&mut self, denials: Vec<ExecDenial>, dropped: u64, now_ms: i64) {
        for d in denials {
            let key = (d.path.clone(), d.sha256, d.uid);
            match self.pending.get_mut(&key) {
                Some(agg) => {
                    agg.count = agg.count.saturating_add(d.count);
                    agg.first_at_ms = agg.first_at_ms.min(d.first_at_ms);
                    agg.last_at_ms = agg.last_at_ms.max(d.last_at_ms);
                    agg.pid = d.pid;
                    agg.ppid = d.ppid;
                }
                None => {
                    self.order.push(key.clone());
                    self.pending.insert(key, d);
                }
            }
        }
        if dropped > 0 {
            self.suppress(dropped, now_ms, now_ms);
        }
    }

    /// Adds an event that is not aggregated (a tamper report): sent with the next flush.
    pub fn add_event(&mut self, event: DeviceEvent) {
        self.unsent.push(event);
    }

    fn suppress(&mut self, count: u64, first: i64, last: i64) {
        let s = self.suppressed.get_or_insert((0, first, last));
        s.0 += count;
        s.1 = s.1.min(first);
        s.2 = s.2.max(last);
    }

    /// The events to send now: what was not sent last time first, then the oldest pending
    /// denials up to the limit; everything beyond the limit is counted as suppressed.
    pub fn flush(&mut self) -> Vec<DeviceEvent> {
        let mut out = std::mem::take(&mut self.unsent);
        let room = self.max_per_flush.saturating_sub(out.len());
        let order = std::mem::take(&mut self.order);
        for (i, key) in order.into_iter().enumerate() {
            let Some(d) = self.pending.remove(&key) else {
                continue;
            };
            if i < room {
                out.push(DeviceEvent::ExecDenied(d));
            } else {
                self.suppress(u64::from(d.count), d.first_at_ms, d.last_at_ms);
            }
        }
        if let Some((count, first_at_ms, last_at_ms)) = self.suppressed.take() {
            out.push(DeviceEvent::Suppressed {
                count,
                first_at_ms,
                last_at_ms,
            });
        }
        out
    }

    /// Events that could not be sent (no session): kept for the next flush, the newest
    /// dropped beyond `max_unsent`.
    pub fn requeue(&mut self, mut events: Vec<DeviceEvent>) {
        let mut lost = 0u64;
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        while events.len() > self.max_unsent {
            match events.pop() {
                Some(DeviceEvent::ExecDenied(d)) => {
                    lost += u64::from(d.count);
                    first = first.min(d.first_at_ms);
                    last = last.max(d.last_at_ms);
                }
                Some(DeviceEvent::Suppressed {
                    count,
                    first_at_ms,
                    last_at_ms,
                }) => {
                    lost += count;
                    first = first.min(first_at_ms);
                    last = last.max(last_at_ms);
                }
                // Rare and each one matters: never dropped for room.
                Some(tamper @ DeviceEvent::NetTamper { .. }) => {
                    events.insert(0, tamper);
                    if events
                        .iter()
                        .all(|e| matches!(e, DeviceEvent::NetTamper { .. }))
                    {
                        break;
                    }
                }
                None => break,
            }
        }
        self.unsent = events;
        if lost > 0 {
            self.suppress(lost, first, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(path: &str, uid: u32, pid: u32, at: i64) -> ExecDenial {
        ExecDenial {
            path: path.into(),
            sha256: Some([1; 32]),
            pid,
            ppid: 1,
            uid,
            user: uid.to_string(),
            count: 1,
            first_at_ms: at,
            last_at_ms: at,
        }
    }

    #[test]
    fn repeated_denials_become_one_event_with_a_count() {
        let mut a = Aggregator::new(10, 100);
        a.add(
            (0..50)
                .map(|i| denial("/tmp/x", 1000, 100 + i, i as i64))
                .collect(),
            0,
            0,
        );
        a.add(vec![denial("/tmp/y", 1000, 7, 60)], 0, 60);
        let out = a.flush();
        assert_eq!(out.len(), 2);
        let DeviceEvent::ExecDenied(x) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (x.count, x.first_at_ms, x.last_at_ms, x.pid),
            (50, 0, 49, 149)
        );
        assert!(a.flush().is_empty(), "a flush empties the aggregator");
    }

    #[test]
    fn beyond_the_limit_denials_are_counted_not_listed() {
        let mut a = Aggregator::new(3, 100);
        a.add(
            (0..10)
                .map(|i| denial(&format!("/tmp/{i}"), 0, i, 5))
                .collect(),
            4,
            9,
        );
        let out = a.flush();
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[0], DeviceEvent::ExecDenied(d) if d.path == "/tmp/0"));
        assert_eq!(
            out[3],
            DeviceEvent::Suppressed {
                count: 7 + 4,
                first_at_ms: 5,
                last_at_ms: 9
            }
        );
    }

    #[test]
    fn unsent_events_go_first_next_time_within_a_bound() {
        let mut a = Aggregator::new(5, 2);
        a.add(
            (0..3).map(|i| denial(&format!("/x{i}"), 0, i, 1)).collect(),
            0,
            1,
        );
        let out = a.flush();
        a.requeue(out);
        a.add(vec![denial("/late", 0, 9, 2)], 0, 2);
        let out = a.flush();
        let paths: Vec<String> = out
            .iter()
            .filter_map(|e| match e {
                DeviceEvent::ExecDenied(d) => Some(d.path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["/x0", "/x1", "/late"]);
        assert!(matches!(
            out.last(),
            Some(DeviceEvent::Suppressed { count: 1, .. })
        ));
    }
}
