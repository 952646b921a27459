//! Smoke test of the fleet simulator (the scale benchmark's tool, so it cannot rot): a small
//! fleet enrolls, connects, takes one fleet-wide action, and comes back after a controller
//! restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_tests::fleet::{self, Stats};
use palisade_tests::{Controller, eventually};

const N: usize = 40;

#[test]
fn a_simulated_fleet_connects_acts_and_reconnects() {
    let mut ctl = Controller::start();
    let token = ctl.enroll_token(N as u32, "1h");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let quic = ctl.quic.to_string();
    let identities = rt
        .block_on(fleet::enroll_many(&quic, &ctl.ca_sha256, &token, N, 8))
        .unwrap();
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    for (n, id) in identities.into_iter().enumerate() {
        rt.spawn(fleet::run(id, n, stats.clone(), stop.clone()));
    }
    eventually(Duration::from_secs(60), "the whole fleet online", || {
        (stats.connected.load(Ordering::Relaxed) as usize == N).then_some(())
    });
    let devices: Vec<String> = ctl.json(&["devices", "list"])["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(devices.len(), N);

    // One fleet-wide action: one request for every device, approved at once.
    let mut args = vec!["action", "request-sample"];
    args.extend(devices.iter().map(String::as_str));
    args.extend(["--path", "/etc/hostname", "--comment", "fleet-wide"]);
    let created = ctl.json(&args);
    let ids: Vec<String> = created["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].to_string())
        .collect();
    let mut approve = vec!["actions", "approve"];
    approve.extend(ids.iter().map(String::as_str));
    approve.extend(["--comment", "all"]);
    ctl.json(&approve);
    eventually(Duration::from_secs(60), "every result in", || {
        let v = ctl.json(&[
            "actions",
            "list",
            "--status",
            "succeeded",
            "--limit",
            "1000",
        ]);
        (v["total"] == N).then_some(())
    });

    ctl.kill9();
    ctl.restart();
    eventually(
        Duration::from_secs(60),
        "the fleet back after a controller restart",
        || {
            let v = ctl.json(&["devices", "list"]);
            let online = v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["online"] == true)
                .count();
            (online == N).then_some(())
        },
    );
    stop_tx.send(true).unwrap();
}
