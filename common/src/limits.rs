//! How much an operator may send and how much an agent's report keeps: every bound on
//! free text, paths and lists, in one place. The API refuses a request over a limit with a
//! message naming the field and the limit; what agents report is cut to fit (with
//! [`crate::text::CUT_MARKER`]), never refused. `docs/operations.md` lists them.

use crate::action::{ActionReport, Progress};
use crate::text::truncate;
use crate::wire::{Detection, DeviceEvent, ObservedState};

/// An operator's comment on a request, decision, cancel or undo (characters).
pub const MAX_COMMENT_CHARS: usize = 2_000;
/// A path on a device: sample, quarantine, roots, restore path, scan paths and exclusions,
/// allowlisted paths (bytes; Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4_096;
/// Paths in one list: scan paths, exclusions, quarantine search roots.
pub const MAX_PATHS: usize = 64;
/// One isolation exception (characters).
pub const MAX_EXCEPTION_CHARS: usize = 256;
/// Exceptions of one selective isolation.
pub const MAX_EXCEPTIONS: usize = 64;
/// An external id (a ticket or case number) on a request (characters).
pub const MAX_EXTERNAL_ID_CHARS: usize = 256;
/// A name: a device reference in a request, a device group (characters).
pub const MAX_NAME_CHARS: usize = 256;
/// Devices named in one request; fleet-wide requests reach more.
pub const MAX_REQUEST_DEVICES: usize = 1_000;
/// The longest time-boxed isolation: 90 days (seconds).
pub const MAX_ISOLATION_SECS: u64 = 90 * 24 * 3600;

/// What the controller keeps of a result's summary or a progress message (characters).
pub const MAX_REPORTED_SUMMARY_CHARS: usize = 1_000;
/// What the controller keeps of a path, command line, user name or other text an agent
/// reports (characters).
pub const MAX_REPORTED_TEXT_CHARS: usize = 4_096;
/// Rule names kept per detection.
pub const MAX_REPORTED_MATCHES: usize = 64;

/// Refuses `value` of `field` if it is longer than `max` characters.
pub fn check_chars(field: &str, value: &str, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n > max {
        return Err(format!(
            "{field} is {n} characters long; the limit is {max}"
        ));
    }
    Ok(())
}

/// Refuses a path of `field` longer than [`MAX_PATH_BYTES`].
pub fn check_path_len(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_PATH_BYTES {
        return Err(format!(
            "{field} is {} bytes long; the limit is {MAX_PATH_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// Refuses a list of `field` with more than `max` entries.
pub fn check_count(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{field} has {n} entries; the limit is {max}"));
    }
    Ok(())
}

/// Refuses a comment over [`MAX_COMMENT_CHARS`].
pub fn check_comment(comment: &str) -> Result<(), String> {
    check_chars("comment", comment, MAX_COMMENT_CHARS)
}

fn cut(s: &mut String) {
    truncate(s, MAX_REPORTED_TEXT_CHARS);
}

fn cut_detection(d: &mut Detection) {
    cut(&mut d.path);
    d.sha256.truncate(64);
    d.matches.truncate(MAX_REPORTED_MATCHES);
    d.matches.iter_mut().for_each(cut);
}

/// Cuts a result's summary to fit. (The detail is bounded by the frame it came in.)
pub fn bound_report(r: &mut ActionReport) {
    truncate(&mut r.summary, MAX_REPORTED_SUMMARY_CHARS);
}

/// Cuts a progress message to fit.
pub fn bound_progress(p: &mut Progress) {
    truncate(&mut p.message, MAX_REPORTED_SUMMARY_CHARS);
}

/// Cuts what real-time protection reports to fit.
pub fn bound_detections(found: &mut [Detection]) {
    found.iter_mut().for_each(cut_detection);
}

/// Cuts a device's events to fit.
pub fn bound_events(events: &mut [DeviceEvent]) {
    for e in events {
        match e {
            DeviceEvent::ExecDenied(d) => {
                cut(&mut d.path);
                cut(&mut d.user);
            }
            DeviceEvent::NetTamper { found, .. } => cut(found),
            DeviceEvent::Suppressed { .. } => {}
        }
    }
}

/// Cuts the text of an observed state to fit.
pub fn bound_observed(o: &mut ObservedState) {
    if let Some(d) = &mut o.drift {
        cut(d);
    }
    for r in &mut o.local_releases {
        cut(&mut r.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Outcome;
    use crate::text::CUT_MARKER;

    #[test]
    fn checks_name_the_field_and_the_limit() {
        assert!(check_comment(&"x".repeat(MAX_COMMENT_CHARS)).is_ok());
        let e = check_comment(&"x".repeat(1 << 20)).unwrap_err();
        assert_eq!(e, "comment is 1048576 characters long; the limit is 2000");
        let e = check_path_len("path", &format!("/{}", "a".repeat(100_000))).unwrap_err();
        assert_eq!(e, "path is 100001 bytes long; the limit is 4096");
        assert!(check_path_len("path", &"/".repeat(MAX_PATH_BYTES)).is_ok());
        assert_eq!(
            check_count("devices", 1001, MAX_REQUEST_DEVICES).unwrap_err(),
            "devices has 1001 entries; the limit is 1000"
        );
    }

    #[test]
    fn agent_reports_are_cut_never_refused() {
        let mut r = ActionReport {
            id: crate::ids::ActionId(1),
            outcome: Outcome::Succeeded,
            summary: format!("scanned /{}", "a".repeat(100_000)),
            detail: "{}".into(),
            artifacts: vec![],
        };
        bound_report(&mut r);
        assert_eq!(r.summary.chars().count(), MAX_REPORTED_SUMMARY_CHARS);
        assert!(r.summary.starts_with("scanned /a") && r.summary.ends_with(CUT_MARKER));
        let mut events = vec![DeviceEvent::NetTamper {
            found: "t".repeat(MAX_REPORTED_TEXT_CHARS + 1),
            at_ms: 0,
        }];
        bound_events(&mut events);
        let DeviceEvent::NetTamper { found, .. } = &events[0] else {
            unreachable!()
        };
        assert_eq!(found.chars().count(), MAX_REPORTED_TEXT_CHARS);
        let mut d = vec![Detection {
            path: "/ok".into(),
            sha256: "0".repeat(64),
            size: 1,
            matches: vec!["yara:R".into(); 1000],
            at_ms: 0,
        }];
        bound_detections(&mut d);
        assert_eq!(d[0].path, "/ok");
        assert_eq!(d[0].matches.len(), MAX_REPORTED_MATCHES);
    }
}
