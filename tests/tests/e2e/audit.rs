//! The audit chain against someone with write access to the controller's database but not to
//! its audit key: a truncated tail and a rewrite with every later hash recomputed, made with the
//! `sqlite3` shell on the live database, are found by `palisadectl audit verify`.

use palisade_tests::{Controller, sqlite3};

/// A controller with an enrolled agent and a handful of audit records.
fn with_records() -> (Controller, palisade_tests::Agent) {
    let ctl = Controller::start();
    let agent = ctl.enroll_agent();
    let device = agent.device_id();
    for _ in 0..2 {
        let id = ctl.request(&[
            "request-sample",
            &device,
            "--path",
            "/etc/hostname",
            "--comment",
            "x",
        ]);
        ctl.json(&["actions", "reject", &id.to_string(), "--comment", "no"]);
    }
    let ok = ctl.ctl(&["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout).into_owned();
    let records = last_seq(&ctl);
    assert!(
        out.contains(&format!("signed up to record {records}")),
        "{out}"
    );
    (ctl, agent)
}

fn last_seq(ctl: &Controller) -> i64 {
    sqlite3(&ctl.db(), "SELECT MAX(seq) FROM audit")
        .trim()
        .parse()
        .unwrap()
}

/// `palisadectl audit verify` fails; its one line of error.
fn verify_fails(ctl: &Controller) -> String {
    let out = ctl.ctl(&["audit", "verify"]);
    assert!(!out.status.success(), "the tampering went unnoticed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn a_tail_truncated_with_the_sqlite3_shell_is_found_by_the_audit_key() {
    let (ctl, _agent) = with_records();
    let last = last_seq(&ctl);
    sqlite3(
        &ctl.db(),
        &format!(
            "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq >= {}",
            last - 1
        ),
    );
    let err = verify_fails(&ctl);
    assert!(
        err.contains(&format!("broken at record {}", last - 1)),
        "{err}"
    );
    assert!(err.contains("deleted from its end"), "{err}");
}

#[test]
fn a_rewrite_with_every_later_hash_recomputed_is_found_by_the_audit_key() {
    let (ctl, _agent) = with_records();
    let victim: i64 = sqlite3(
        &ctl.db(),
        "SELECT seq FROM audit WHERE event = 'rejected' LIMIT 1",
    )
    .trim()
    .parse()
    .unwrap();
    sqlite3(
        &ctl.db(),
        &format!(
            "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'someone-else' WHERE seq = {victim}"
        ),
    );
    // Every hash from the edited record on, recomputed the way the controller computes them
    // (the unkeyed chain is public knowledge).
    let rows: serde_json::Value = serde_json::from_str(&sqlite3(
        &ctl.db(),
        "SELECT json_group_array(json_array(seq, at, actor, event, action_id, device_id, detail,
         prev_hash)) FROM (SELECT * FROM audit ORDER BY seq)",
    ))
    .unwrap();
    let mut prev: Option<String> = None;
    let mut sql = String::new();
    for r in rows.as_array().unwrap() {
        let seq = r[0].as_i64().unwrap();
        if seq < victim {
            continue;
        }
        // The edited record keeps its link to the untouched one before it.
        let prev_hash = prev
            .take()
            .unwrap_or_else(|| r[7].as_str().unwrap().to_owned());
        let content = serde_json::json!([prev_hash, r[0], r[1], r[2], r[3], r[4], r[5], r[6]]);
        let hash = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            content.to_string().as_bytes(),
        ));
        sql.push_str(&format!(
            "UPDATE audit SET prev_hash = '{prev_hash}', hash = '{hash}' WHERE seq = {seq};"
        ));
        prev = Some(hash);
    }
    sqlite3(&ctl.db(), &sql);
    let err = verify_fails(&ctl);
    assert!(err.contains(&format!("broken at record {victim}")), "{err}");
    assert!(err.contains("rewritten"), "{err}");

    // Removing the checkpoints that give the rewrite away leaves records no checkpoint covers.
    sqlite3(
        &ctl.db(),
        "DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints",
    );
    let err = verify_fails(&ctl);
    assert!(err.contains("not written by the controller"), "{err}");
}

#[test]
fn every_checkpoint_goes_to_the_controllers_log() {
    let (ctl, _agent) = with_records();
    let (seq, head) = {
        let row = sqlite3(
            &ctl.db(),
            "SELECT seq || ' ' || head_hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        );
        let (seq, head) = row.trim().split_once(' ').unwrap();
        (seq.to_owned(), head.to_owned())
    };
    assert_eq!(seq, last_seq(&ctl).to_string());
    let log = ctl.log();
    assert!(
        log.lines().any(|l| l.contains("audit checkpoint")
            && l.contains(&format!("seq={seq}"))
            && l.contains(&format!("head={head}"))
            && l.contains("signature=")),
        "{log}"
    );
}
