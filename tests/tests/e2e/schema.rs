//! The served OpenAPI document tells the truth: schemathesis generates requests for every
//! operation from `/api/v1/openapi.json` and sends them to a real controller with the admin
//! token, and the run fails on any 5xx, any status code the document does not list for the
//! operation, any response whose content type or body does not match what the document says.
//!
//! Checks: `not_a_server_error`, `status_code_conformance`, `content_type_conformance`,
//! `response_schema_conformance`. Not `positive_data_acceptance` and
//! `negative_data_rejection`: the schema cannot say everything the server checks (a device or
//! action that exists, a comment that reject needs and approve does not, a password's length
//! in bytes rather than characters, rules that compile), so requests valid by the schema are
//! refused with a documented 4xx by design; those answers are still checked against the
//! document.
//!
//! Why it is harmless: the controller runs on loopback with its own temporary data directory,
//! and no agent is enrolled against it, so no action it queues, approves or cancels reaches a
//! device. Every other operation only writes that controller's database and data directory
//! (rule uploads, enrolment tokens, users, policies, preferences, break-glass codes for
//! devices that do not exist); nothing in the API runs a program or touches a file outside the
//! data directory on the controller's own host.
//!
//! Bounded: a fixed seed, a few examples per operation, and a time budget, so the run takes a
//! few minutes at most on two cores. The binary comes from `PALISADE_SCHEMATHESIS`, the venv
//! `.ci/run` installs it into, or `PATH`; without it the test fails, it never skips.

use std::path::PathBuf;
use std::process::Command;

use palisade_tests::Controller;

/// Where `.ci/run` installs the pinned schemathesis.
const CI_VENV_BIN: &str = "/opt/palisade-schemathesis/bin/schemathesis";

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_SCHEMATHESIS") {
        return p.into();
    }
    if std::path::Path::new(CI_VENV_BIN).is_file() {
        return CI_VENV_BIN.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("schemathesis"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: run .ci/run (it installs the pinned version into \
             {CI_VENV_BIN}), put it on PATH or set PALISADE_SCHEMATHESIS"
        )
    })
}

#[test]
fn the_served_openapi_document_matches_what_the_api_answers() {
    let exe = schemathesis();
    let ctl = Controller::start();
    let (status, doc) = ctl.api("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .filter_map(|item| item.as_object())
        .flat_map(|item| item.keys())
        .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
        .count();
    assert!(operations > 40, "only {operations} operations documented");
    let reports = ctl.dir.path().join("schemathesis");
    let out = Command::new(&exe)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", ctl.url()))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {}", ctl.admin_token),
            "--max-examples",
            "10",
            "--seed",
            "27",
            // One worker: Debian 12's Python 3.11 can fail parsing source in two threads at once
            // ("AST constructor recursion depth mismatch"), an error of the tool, not the API.
            "--workers",
            "1",
            "--max-time",
            "240",
            "--request-timeout",
            "30",
            "--no-color",
            "--report-dir",
        ])
        .arg(&reports)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(ctl.dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}\ncontroller log:\n{}",
        out.status,
        ctl.log()
    );
    // It really tested the API: every operation, none skipped for want of a schema.
    assert!(
        stdout.contains(&format!("{operations} selected / {operations} total")),
        "not every operation was tested:\n{stdout}"
    );
    // No agent ever came: nothing it did could have reached a device.
    let devices = ctl.json(&["devices"]);
    assert_eq!(devices["devices"], serde_json::json!([]), "{devices}");
}

/// A body the API cannot read gets its own status, with the JSON error body: 413 over the
/// route's limit, 415 without `Content-Type: application/json`.
#[test]
fn an_oversized_body_is_413_and_a_wrong_content_type_415() {
    let ctl = Controller::start();
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/api/v1/enroll-tokens", ctl.url());
    let auth = format!("Bearer {}", ctl.admin_token);
    let answer = |resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        let mut resp = resp.expect("an answer");
        let status = resp.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap_or_default())
                .expect("a JSON error body");
        (status, body)
    };
    let (status, body) = answer(
        http.post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "text/plain")
            .send("{}"),
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
    let big = format!("{{\"device_group\": \"{}\"}}", "a".repeat(3 << 20));
    let (status, body) = answer(
        http.post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(big),
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // A body it can read but not parse is still a 400.
    let (status, body) = answer(
        http.post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send("{"),
    );
    assert_eq!(status, 400, "{body}");
}
