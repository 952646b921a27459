//! The words people read for the action model's identifiers: one label per kind, status,
//! source and timeline hop, and what an action is aimed at. The web page (through
//! `GET /api/v1/labels`), `palisadectl`'s tables and the CSV export all take them from here;
//! `--json` and the API keep the identifiers.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::action::{ActionKind, ActionParams, ActionSource, ActionStatus};
use crate::ids::DeviceId;

impl ActionKind {
    /// What the action does, as the Action center names it.
    pub fn label(self) -> &'static str {
        match self {
            ActionKind::Isolate => "Isolate device",
            ActionKind::ReleaseIsolation => "Release from isolation",
            ActionKind::Contain => "Contain device",
            ActionKind::Uncontain => "Release from containment",
            ActionKind::Quarantine => "Stop and quarantine file",
            ActionKind::ReleaseQuarantine => "Restore file from quarantine",
            ActionKind::Scan => "Run antivirus scan",
            ActionKind::RestrictExecution => "Restrict app execution",
            ActionKind::ReleaseExecution => "Remove app restriction",
            ActionKind::CollectPackage => "Collect investigation package",
            ActionKind::RequestSample => "Collect file sample",
            ActionKind::Offboard => "Offboard device",
        }
    }
}

impl ActionStatus {
    pub fn label(self) -> &'static str {
        match self {
            ActionStatus::PendingApproval => "Pending approval",
            ActionStatus::Approved => "Approved",
            ActionStatus::Delivered => "Sent to device",
            ActionStatus::Acknowledged => "Received by device",
            ActionStatus::InProgress => "In progress",
            ActionStatus::Succeeded => "Succeeded",
            ActionStatus::Failed => "Failed",
            ActionStatus::Rejected => "Rejected",
            ActionStatus::Cancelled => "Cancelled",
            ActionStatus::Expired => "Expired before approval",
            ActionStatus::TimedOut => "Timed out",
            ActionStatus::Undone => "Undone",
        }
    }
}

impl ActionSource {
    pub fn label(self) -> &'static str {
        match self {
            ActionSource::ManualDeviceAction => "Manual device action",
            ActionSource::AutomatedDeviceAction => "Automated device action",
            ActionSource::ManualLiveResponseAction => "Manual live response action",
            ActionSource::LiveResponseActionViaApi => "Live response action via API",
            ActionSource::ApiAction => "API action",
        }
    }
}

/// A step of an action's timeline (`GET /api/v1/actions/{id}`'s `timeline[].hop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    Created,
    Approved,
    Rejected,
    Delivered,
    Acknowledged,
    Started,
    Finished,
}

impl Hop {
    pub const ALL: [Hop; 7] = [
        Hop::Created,
        Hop::Approved,
        Hop::Rejected,
        Hop::Delivered,
        Hop::Acknowledged,
        Hop::Started,
        Hop::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Created => "created",
            Hop::Approved => "approved",
            Hop::Rejected => "rejected",
            Hop::Delivered => "delivered",
            Hop::Acknowledged => "acknowledged",
            Hop::Started => "started",
            Hop::Finished => "finished",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Hop::Created => "Requested",
            Hop::Approved => "Approved",
            Hop::Rejected => "Rejected",
            Hop::Delivered => "Sent to device",
            Hop::Acknowledged => "Received by device",
            Hop::Started => "Started on device",
            Hop::Finished => "Finished",
        }
    }
}

impl std::str::FromStr for Hop {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hop::ALL.into_iter().find(|h| h.as_str() == s).ok_or(())
    }
}

/// One identifier and its label, as `GET /api/v1/labels` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: String,
    pub label: String,
}

/// Every label of the action model, in the order the identifiers are declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub kinds: Vec<Label>,
    pub statuses: Vec<Label>,
    pub sources: Vec<Label>,
    pub hops: Vec<Label>,
}

impl Labels {
    pub fn all() -> Labels {
        fn each<T: Copy>(
            all: &[T],
            id: fn(T) -> &'static str,
            label: fn(T) -> &'static str,
        ) -> Vec<Label> {
            all.iter()
                .map(|&v| Label {
                    id: id(v).to_owned(),
                    label: label(v).to_owned(),
                })
                .collect()
        }
        Labels {
            kinds: each(&ActionKind::ALL, ActionKind::as_str, ActionKind::label),
            statuses: each(
                &ActionStatus::ALL,
                ActionStatus::as_str,
                ActionStatus::label,
            ),
            sources: each(
                &ActionSource::ALL,
                ActionSource::as_str,
                ActionSource::label,
            ),
            hops: each(&Hop::ALL, Hop::as_str, Hop::label),
        }
    }
}

/// A duration in seconds the way people say it: `90s`, `15m`, `2h`, `3d`, `1d 6h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

impl ActionParams {
    /// What the action is aimed at, in one line: the file, the scan's paths, the isolation's
    /// exceptions and time box, the contained address. Empty when the device is all there is
    /// to say (release isolation, offboard …). The Pending and History lists show it, so that
    /// nobody approves blind.
    pub fn entity(&self) -> String {
        self.entity_naming(|_| None)
    }

    /// Most characters of [`ActionParams::entity`]; a longer one ends in `…`. The whole
    /// values are in the parameters (a scan of 64 paths of 4 KiB would otherwise double the
    /// size of every list that holds it).
    pub const ENTITY_MAX_CHARS: usize = 1_000;

    /// [`ActionParams::entity`], with a device target named by `name` (its hostname) where
    /// it knows one.
    pub fn entity_naming(&self, name: impl Fn(&DeviceId) -> Option<String>) -> String {
        let whole = self.whole_entity(name);
        if whole.chars().count() <= Self::ENTITY_MAX_CHARS {
            return whole;
        }
        let mut cut: String = whole.chars().take(Self::ENTITY_MAX_CHARS - 1).collect();
        cut.push('…');
        cut
    }

    fn whole_entity(&self, name: impl Fn(&DeviceId) -> Option<String>) -> String {
        match self {
            ActionParams::Isolate(p) => {
                let mut s = if p.selective && !p.exceptions.is_empty() {
                    format!("Selective, allowing {}", p.exceptions.join(", "))
                } else if p.selective {
                    "Selective, no exceptions".to_owned()
                } else {
                    "Full isolation".to_owned()
                };
                match p.for_secs {
                    Some(secs) => {
                        let _ = write!(s, "; ends by itself after {}", duration(secs));
                    }
                    None => s.push_str("; until released"),
                }
                s
            }
            ActionParams::Contain(p) | ActionParams::Uncontain(p) => {
                let mut parts = vec![];
                if let Some(d) = &p.device {
                    parts.push(name(d).unwrap_or_else(|| format!("device {d}")));
                }
                if let Some(ip) = &p.ip {
                    parts.push(format!("address {ip}"));
                }
                if let Some(mac) = &p.mac {
                    parts.push(format!("MAC {mac}"));
                }
                if parts.is_empty() {
                    parts.push("this device".to_owned());
                }
                let mut s = parts.join(", ");
                if p.force {
                    s.push_str(" (forced)");
                }
                s
            }
            ActionParams::Quarantine(p) => {
                let mut s = match (&p.path, &p.sha256) {
                    (Some(path), Some(sha)) => format!("{path} (sha256 {sha})"),
                    (Some(path), None) => path.clone(),
                    (None, Some(sha)) => format!("files with sha256 {sha}"),
                    (None, None) => String::new(),
                };
                if !p.roots.is_empty() {
                    let _ = write!(s, " under {}", p.roots.join(", "));
                }
                s
            }
            ActionParams::ReleaseQuarantine(p) => {
                let mut s = match (&p.entry, &p.sha256) {
                    (Some(e), _) => format!("vault entry {e}"),
                    (None, Some(sha)) => format!("files with sha256 {sha}"),
                    (None, None) => String::new(),
                };
                if let Some(to) = &p.restore_path {
                    let _ = write!(s, " to {to}");
                }
                if p.overwrite {
                    s.push_str(" (overwrite)");
                }
                s
            }
            ActionParams::Scan(p) => {
                let mut s = match p.mode.as_str() {
                    "quick" => "Quick scan".to_owned(),
                    "full" => "Full scan".to_owned(),
                    _ => format!("Custom scan of {}", p.paths.join(", ")),
                };
                if !p.exclusions.is_empty() {
                    let _ = write!(s, "; excluding {}", p.exclusions.join(", "));
                }
                s
            }
            ActionParams::RequestSample(p) => p.path.clone(),
            ActionParams::ReleaseIsolation {}
            | ActionParams::RestrictExecution {}
            | ActionParams::ReleaseExecution {}
            | ActionParams::CollectPackage {}
            | ActionParams::Offboard {} => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::action::{IsolateParams, ScanParams};

    /// Every identifier has one label of its own: two kinds that read the same would be
    /// told apart by nobody. (A new variant without a label does not compile.)
    #[test]
    fn every_identifier_has_one_label_of_its_own() {
        let labels = Labels::all();
        for (what, list, n) in [
            ("kind", &labels.kinds, ActionKind::ALL.len()),
            ("status", &labels.statuses, ActionStatus::ALL.len()),
            ("source", &labels.sources, ActionSource::ALL.len()),
            ("hop", &labels.hops, Hop::ALL.len()),
        ] {
            assert_eq!(list.len(), n, "{what}");
            let ids: HashSet<_> = list.iter().map(|l| &l.id).collect();
            let words: HashSet<_> = list.iter().map(|l| &l.label).collect();
            assert_eq!(ids.len(), n, "{what}: an identifier twice");
            assert_eq!(words.len(), n, "{what}: two identifiers with one label");
            for l in list {
                assert!(!l.label.is_empty(), "{what} {}", l.id);
                assert_ne!(
                    l.label, l.id,
                    "{what} {}: the label is the identifier",
                    l.id
                );
                assert!(
                    l.label.starts_with(|c: char| c.is_uppercase()),
                    "{what} {}: {:?}",
                    l.id,
                    l.label
                );
            }
        }
        assert_eq!(
            ActionKind::CollectPackage.label(),
            "Collect investigation package"
        );
        assert_eq!(ActionKind::Quarantine.label(), "Stop and quarantine file");
        assert_eq!(ActionStatus::PendingApproval.label(), "Pending approval");
        for h in Hop::ALL {
            assert_eq!(
                serde_json::to_string(&h).unwrap(),
                format!("\"{}\"", h.as_str())
            );
        }
    }

    #[test]
    fn the_entity_says_what_is_aimed_at() {
        let iso = |selective, exceptions: &[&str], for_secs| {
            ActionParams::Isolate(IsolateParams {
                selective,
                exceptions: exceptions.iter().map(|s| s.to_string()).collect(),
                for_secs,
            })
            .entity()
        };
        assert_eq!(iso(false, &[], None), "Full isolation; until released");
        assert_eq!(
            iso(true, &["10.0.0.0/8", "dns"], Some(7_200)),
            "Selective, allowing 10.0.0.0/8, dns; ends by itself after 2h"
        );
        let scan = ActionParams::Scan(ScanParams {
            mode: "custom".into(),
            paths: vec!["/srv".into(), "/home".into()],
            exclusions: vec!["*.iso".into()],
        });
        assert_eq!(scan.entity(), "Custom scan of /srv, /home; excluding *.iso");
        assert_eq!(ActionParams::Offboard {}.entity(), "");
        let long = ActionParams::RequestSample(crate::action::RequestSampleParams {
            path: format!("/{}", "x".repeat(5_000)),
        })
        .entity();
        assert_eq!(long.chars().count(), ActionParams::ENTITY_MAX_CHARS);
        assert!(long.starts_with("/xxx") && long.ends_with('…'));
        assert_eq!(duration(90), "1m 30s");
        assert_eq!(duration(86_400 + 6 * 3_600), "1d 6h");
    }
}
