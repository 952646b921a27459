//! `palisadectl`'s tables with the longest values a store can hold: they never crash, they
//! cut long cells with '…', they are in words (`palisade_common::labels`), and `--json` keeps
//! the whole values and the identifiers.

use palisade_tests::{Controller, sqlite3};

const DEV: &str = "00000000-0000-4000-8000-0000000000c1";

/// Longer than any limit, and than the 65,535 characters beyond which padding a cell panicked
/// (`Formatting argument out of range`): rows stored before the limits, or written by hand.
const LONG: usize = 100_001;

fn stdout(ctl: &Controller, args: &[&str]) -> String {
    let out = ctl.ctl(args);
    assert!(
        out.status.success(),
        "palisadectl {args:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn tables_cut_the_longest_stored_values_in_words_and_json_keeps_them_whole() {
    let ctl = Controller::start();
    let path = format!("/srv/{}", "p".repeat(LONG));
    // Built by SQLite itself: one argument of the shell holds at most 128 KiB.
    let long = |c: char| format!("substr(replace(hex(zeroblob({LONG})), '0', '{c}'), 1, {LONG})");
    sqlite3(
        &ctl.db(),
        &format!(
            "INSERT INTO devices (id, hostname, device_group, agent_version, capabilities, inventory, cert_serial, enrolled_at)
               VALUES ('{DEV}', 'long-1', 'default', '0.1.0', '[]', '{{}}', 's', 0);
             INSERT INTO actions (id, kind, params, device_id, source, status, requested_by, comment, created_at, expires_at,
               decided_by, decided_at, decision_comment, finished_at, result_summary)
               VALUES (1, 'request_sample', '{{\"kind\":\"request_sample\",\"path\":\"/srv/' || {} || '\"}}', '{DEV}',
                 'manual_device_action', 'succeeded', 'admin', {}, 1, 1, 'admin', 1, {}, 1, {});
             INSERT INTO audit (seq, at, actor, event, action_id, device_id, detail, prev_hash, hash)
               VALUES (9000, 1, '{DEV}', 'delivered', 1, '{DEV}', '{{\"note\":\"' || {} || '\"}}', 'x', 'y');",
            long('p'),
            long('c'),
            long('d'),
            long('s'),
            long('n'),
        ),
    );
    let cut = |text: &str, what: &str| {
        assert!(text.contains('…'), "{what}: nothing cut");
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest < 4_000, "{what}: a line of {widest} characters");
    };

    let list = stdout(&ctl, &["actions", "list"]);
    cut(&list, "actions list");
    assert!(list.contains("TARGET"), "{list}");
    assert!(list.contains("Collect file sample"), "{list}");
    assert!(
        list.contains("Succeeded") && list.contains("Manual device action"),
        "{list}"
    );
    assert!(list.contains("/srv/ppp"), "the target: {list}");

    let show = stdout(&ctl, &["actions", "show", "1"]);
    cut(&show, "actions show");
    assert!(
        show.contains("Collect file sample") && show.contains("Succeeded"),
        "{show}"
    );

    let audit = stdout(&ctl, &["audit", "list", "--action", "1"]);
    cut(&audit, "audit list --action");
    assert!(
        audit.contains("long-1"),
        "the device by its hostname: {audit}"
    );

    // --json: the whole values and the identifiers.
    let v = ctl.json(&["actions", "show", "1"]);
    let a = &v["action"];
    assert_eq!(a["kind"], "request_sample");
    assert_eq!(a["status"], "succeeded");
    assert_eq!(a["comment"].as_str().unwrap().len(), LONG);
    assert_eq!(a["result_summary"].as_str().unwrap().len(), LONG);
    // The target in words is cut at 1,000 characters; the parameters hold the whole path.
    assert_eq!(a["params"]["path"], path.as_str());
    let entity = a["entity"].as_str().unwrap();
    assert!(
        entity.starts_with("/srv/ppp") && entity.ends_with('…'),
        "{entity}"
    );
    assert_eq!(entity.chars().count(), 1_000);
    let v = ctl.json(&["actions", "list"]);
    assert_eq!(v["actions"][0]["comment"].as_str().unwrap().len(), LONG);
    let v = ctl.json(&["audit", "list", "--action", "1"]);
    assert_eq!(v["records"][0]["actor"], DEV);
    assert_eq!(v["records"][0]["actor_name"], "long-1");
    assert!(v["records"][0]["detail"].as_str().unwrap().len() > LONG);
}
