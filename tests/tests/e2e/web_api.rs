//! The web layer over plain HTTP(S), without a browser: password logins and their rate limit,
//! the session cookie's attributes, CSRF on state changes, logout and expiry, API tokens
//! alongside sessions, the OpenAPI document, and HTTPS with the controller's CA.

use std::sync::Arc;
use std::time::Duration;

use palisade_tests::{Controller, sqlite3};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    /// The body as sent (a CSV export is not JSON).
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `name=value` part of the Set-Cookie header.
    fn cookie(&self) -> String {
        self.header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a Set-Cookie header")
            .to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn call(
    http: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<Reply, ureq::Error> {
    macro_rules! with_headers {
        ($req:expr) => {{
            let mut req = $req;
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req
        }};
    }
    let resp = match method {
        "GET" => with_headers!(http.get(url)).call(),
        "DELETE" => with_headers!(http.delete(url)).call(),
        "POST" => with_headers!(http.post(url)).send_json(body.unwrap_or(Value::Null)),
        "PUT" => with_headers!(http.put(url)).send_json(body.unwrap_or(Value::Null)),
        m => panic!("no method {m}"),
    };
    let mut resp = resp?;
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Reply {
        status: resp.status().as_u16(),
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}

fn login(http: &ureq::Agent, base: &str, name: &str, password: &str) -> Reply {
    call(
        http,
        "POST",
        &format!("{base}/api/v1/session"),
        &[],
        Some(json!({"name": name, "password": password})),
    )
    .unwrap()
}

fn add_user(ctl: &Controller, name: &str, role: &str) {
    let (status, v) = ctl.api(
        "POST",
        "/api/v1/users",
        Some(&ctl.admin_token),
        Some(json!({"name": name, "role": role, "password": PASSWORD})),
    );
    assert_eq!(status, 201, "{v}");
}

#[test]
fn sessions_need_csrf_to_change_anything_and_end_at_logout_or_expiry() {
    let ctl = Controller::start_with(&["--session-ttl", "3s"]);
    let base = ctl.url();
    let http = agent();
    add_user(&ctl, "olga", "approver");

    let r = login(&http, &base, "olga", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let set = r.header("set-cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let cookie = r.cookie();
    let csrf = r.body["csrf"].as_str().unwrap().to_owned();
    assert_eq!(r.body["user"]["name"], "olga");

    let url = |p: &str| format!("{base}{p}");
    let r = call(
        &http,
        "GET",
        &url("/api/v1/actions"),
        &[("Cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "reading needs no CSRF token: {}", r.body);

    // Every state change needs the session's CSRF token.
    let decide = Some(json!({"ids": [], "comment": "x"}));
    let r = call(
        &http,
        "POST",
        &url("/api/v1/actions/approve"),
        &[("Cookie", &cookie)],
        decide.clone(),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (403, json!("csrf"))
    );
    // Refused before its body was read: the connection is not reused for the next request,
    // which would otherwise meet the server closing it.
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    let r = call(
        &http,
        "POST",
        &url("/api/v1/actions/approve"),
        &[("Cookie", &cookie), ("X-CSRF-Token", "0000")],
        decide.clone(),
    )
    .unwrap();
    assert_eq!(r.status, 403);
    let r = call(
        &http,
        "POST",
        &url("/api/v1/actions/approve"),
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        decide,
    )
    .unwrap();
    assert_eq!(
        r.status, 400,
        "past authentication, refused for the empty list: {}",
        r.body
    );
    let r = call(
        &http,
        "PUT",
        &url("/api/v1/ui-prefs/history"),
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        Some(json!({"page_size": 25})),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // Logout ends the session; API tokens work on.
    let r = call(
        &http,
        "DELETE",
        &url("/api/v1/session"),
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = call(
        &http,
        "GET",
        &url("/api/v1/session"),
        &[("Cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {}", ctl.admin_token);
    let r = call(
        &http,
        "GET",
        &url("/api/v1/whoami"),
        &[("Authorization", &bearer)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);

    // A session expires.
    let cookie = login(&http, &base, "olga", PASSWORD).cookie();
    let r = call(
        &http,
        "GET",
        &url("/api/v1/session"),
        &[("Cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(3500));
    let r = call(
        &http,
        "GET",
        &url("/api/v1/session"),
        &[("Cookie", &cookie)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        r.body
    );
}

#[test]
fn palisadectl_sets_a_password_that_logs_in_and_ends_the_old_sessions() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let ctl = Controller::start();
    let http = agent();
    add_user(&ctl, "tess", "viewer");
    let old = login(&http, &ctl.url(), "tess", PASSWORD).cookie();
    let mut child = Command::new(palisade_tests::bin("palisadectl"))
        .args(["users", "set-password", "tess"])
        .env("PALISADE_URL", ctl.url())
        .env("PALISADE_TOKEN", &ctl.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a new long password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(login(&http, &ctl.url(), "tess", PASSWORD).status, 401);
    assert_eq!(
        login(&http, &ctl.url(), "tess", "a new long password").status,
        200
    );
    let r = call(
        &http,
        "GET",
        &format!("{}/api/v1/session", ctl.url()),
        &[("Cookie", &old)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401, "the old session ended");

    // Too short: one clear line, non-zero exit.
    let mut child = Command::new(palisade_tests::bin("palisadectl"))
        .args(["users", "set-password", "tess"])
        .env("PALISADE_URL", ctl.url())
        .env("PALISADE_TOKEN", &ctl.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at least 10 characters") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn failed_logins_are_rate_limited_per_user() {
    let ctl = Controller::start();
    let base = ctl.url();
    let http = agent();
    add_user(&ctl, "paul", "viewer");
    add_user(&ctl, "rita", "viewer");
    for _ in 0..5 {
        let r = login(&http, &base, "paul", "guess guess guess");
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.body["error"]["message"], "wrong user name or password");
    }
    // Now even the right password waits; unknown users are answered like known ones.
    let r = login(&http, &base, "paul", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.body["error"]["code"], "rate_limited");
    let r = login(&http, &base, "nobody", PASSWORD);
    assert_eq!(r.status, 401);
    assert_eq!(
        login(&http, &base, "rita", PASSWORD).status,
        200,
        "another user logs in"
    );
}

#[test]
fn the_openapi_document_describes_the_routes_the_ui_uses() {
    let ctl = Controller::start();
    let r = call(
        &agent(),
        "GET",
        &format!("{}/api/v1/openapi.json", ctl.url()),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/actions",
        "/api/v1/actions/approve",
        "/api/v1/actions/undo",
        "/api/v1/actions/export.csv",
        "/api/v1/session",
        "/api/v1/ui-prefs/{view}",
        "/api/v1/users/{name}/password",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert_eq!(
        r.body["paths"]["/api/v1/actions/approve"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Decision"
    );
    let request = &r.body["components"]["schemas"]["ActionRequest"];
    assert_eq!(
        request["required"],
        json!(["params", "comment"]),
        "devices may be left out of a fleet-wide request: {request}"
    );
    assert_eq!(
        request["properties"]["devices"]["type"], "array",
        "{request}"
    );
    let params: Vec<&str> = r.body["paths"]["/api/v1/actions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "view",
        "kind",
        "status",
        "source",
        "device_group",
        "window",
        "sort",
        "order",
        "limit",
        "offset",
    ] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }
}

#[test]
fn the_api_speaks_https_with_a_certificate_from_the_controller_ca() {
    let ctl = Controller::start_with(&["--api-tls", "always"]);
    let listening: Value =
        serde_json::from_slice(&std::fs::read(ctl.data_dir().join("listening.json")).unwrap())
            .unwrap();
    assert_eq!(listening["api_tls"], true);
    let pem = std::fs::read(ctl.data_dir().join("ca.pem")).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    let https: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into();
    let base = format!("https://{}", ctl.api);
    let bearer = format!("Bearer {}", ctl.admin_token);
    let r = call(
        &https,
        "GET",
        &format!("{base}/api/v1/whoami"),
        &[("Authorization", &bearer)],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("strict-transport-security").is_some());
    let r = call(
        &https,
        "POST",
        &format!("{base}/api/v1/users"),
        &[("Authorization", &bearer)],
        Some(json!({"name": "sam", "role": "viewer", "password": PASSWORD})),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = login(&https, &base, "sam", PASSWORD);
    assert!(r.header("set-cookie").unwrap().contains("Secure"));

    // palisadectl trusts the controller's CA when told to.
    let out = std::process::Command::new(palisade_tests::bin("palisadectl"))
        .args([
            "actions",
            "export",
            "--pending",
            "--columns",
            "id,kind,status",
        ])
        .env("PALISADE_URL", &base)
        .env("PALISADE_TOKEN", &ctl.admin_token)
        .env("PALISADE_CA_CERT", ctl.data_dir().join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "\u{feff}Id,Action,Status\r\n"
    );
    let out = std::process::Command::new(palisade_tests::bin("palisadectl"))
        .args(["users", "list"])
        .env("PALISADE_URL", &base)
        .env("PALISADE_TOKEN", &ctl.admin_token)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown CA is refused");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);

    // Plain HTTP gets no answer on the TLS port.
    let plain = call(
        &agent(),
        "GET",
        &format!("http://{}/api/v1/whoami", ctl.api),
        &[],
        None,
    );
    assert!(plain.is_err() || plain.unwrap().status >= 400);
}

#[test]
fn the_api_serves_the_certificate_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let ctl = Controller::start_with(&[
        "--api-tls",
        "always",
        "--api-cert",
        cert_path.to_str().unwrap(),
        "--api-key",
        key_path.to_str().unwrap(),
    ]);
    let root = ureq::tls::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let https: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![root])))
                .build(),
        )
        .build()
        .into();
    let r = call(&https, "GET", &format!("https://{}/", ctl.api), &[], None).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
}

/// A valid body for each operation that takes one: a refusal must come from the permission
/// check, not from a malformed request. A new POST or PUT route fails the test until it has one
/// here, and then its check is tested like the others'.
fn body_for(method: &str, path: &str, device: &str, action: u64) -> Option<Value> {
    let decision = json!({"ids": [action], "comment": "walk"});
    let body = match (method, path) {
        ("get" | "delete", _) => return None,
        ("post", "/api/v1/session") => json!({"name": "nobody", "password": "x"}),
        ("post", "/api/v1/devices/{id}/break-glass") => json!({"valid_secs": 600}),
        ("put", "/api/v1/exec-allowlist") => {
            json!({"device_group": "default", "paths": ["/usr/local/bin/tool"]})
        }
        ("post", "/api/v1/actions") => json!({
            "devices": [device],
            "params": {"kind": "request_sample", "path": "/etc/hosts"},
            "comment": "walk"
        }),
        ("post", "/api/v1/actions/approve" | "/api/v1/actions/reject")
        | ("post", "/api/v1/actions/cancel" | "/api/v1/actions/undo") => decision,
        ("post", "/api/v1/enroll-tokens") => json!({"uses": 1, "expires_in": "1h"}),
        ("post", "/api/v1/users") => json!({"name": "walker", "role": "admin"}),
        ("put", "/api/v1/users/{name}/password") => json!({"password": "a brand new passphrase"}),
        ("put", "/api/v1/policies") => {
            json!({"require_approval": false, "distinct_approver": false})
        }
        ("post", "/api/v1/rules") => {
            json!({"files": [{"name": "x.yar", "content": "rule x { condition: false }"}]})
        }
        ("put", "/api/v1/automation") => json!({"level": "full"}),
        ("put", "/api/v1/realtime") => json!({"device_group": "*", "enabled": false}),
        ("put", "/api/v1/ui-prefs/{view}") => json!({"page_size": 25}),
        ("put", "/api/v1/devices/{id}/group") => json!({"device_group": "walked"}),
        ("put", "/api/v1/group-rules") => {
            json!({"rules": [{"hostname": "*", "device_group": "walked"}]})
        }
        (m, p) => panic!("{m} {p}: give it a valid body in body_for"),
    };
    Some(body)
}

/// The concrete URL of a documented path.
fn concrete(path: &str, device: &str, action: u64) -> String {
    let path = if path.starts_with("/api/v1/devices/") {
        path.replace("{id}", device)
    } else {
        path.replace("{id}", &action.to_string())
    };
    path.replace("/artifacts/{name}", "/artifacts/sample")
        .replace("/users/{name}", "/users/admin")
        .replace("{view}", "history")
}

const ROLES: [(&str, &[&str]); 4] = [
    ("viewer", &["view"]),
    ("responder", &["view", "respond"]),
    ("approver", &["view", "respond", "approve"]),
    ("investigator", &["view", "respond", "investigate"]),
];

/// A refusal: the status, and the JSON error body every refusal carries.
fn assert_refused(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.body["error"]["status"], status,
        "{what}: not a JSON error: {}",
        r.body
    );
}

/// Walks every operation of the OpenAPI document the controller serves (a unit test keeps
/// every route in it, with the permission it needs), and calls each one as everyone who must
/// be refused: nobody, an unknown token, a forged session cookie, every role that lacks the
/// permission (with a token and with a session), an admin of another device group, and a
/// session without its CSRF token. A new route without a check fails here.
#[test]
fn every_route_refuses_the_unauthenticated_the_underprivileged_and_other_groups() {
    let ctl = Controller::start();
    let http = agent();
    let base = ctl.url();
    let device = ctl.enroll_agent().device_id();
    let marker = "walk-marker-3f9c";
    let action = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        marker,
    ]);
    // The device in a group of its own, contained, with a policy, an automation level and a
    // real-time setting of its group: a listing that ignored the caller's groups would show
    // another group's admin its id or its group.
    let group = "walk-group-7d1e";
    let admin_api = |method: &str, path: &str, body: Value| {
        let (status, v) = ctl.api(method, path, Some(&ctl.admin_token), Some(body));
        assert!(status < 300, "{method} {path}: {status} {v}");
        v
    };
    let v = admin_api(
        "PUT",
        &format!("/api/v1/devices/{device}/group"),
        json!({"device_group": group}),
    );
    assert_eq!(v["device"]["device_group"], group);
    admin_api(
        "PUT",
        "/api/v1/policies",
        json!({"device_group": group, "kind": "scan", "require_approval": true, "distinct_approver": true}),
    );
    admin_api(
        "PUT",
        "/api/v1/automation",
        json!({"device_group": group, "level": "full"}),
    );
    admin_api(
        "PUT",
        "/api/v1/realtime",
        json!({"device_group": group, "enabled": true}),
    );
    let v = admin_api(
        "POST",
        "/api/v1/actions",
        json!({"devices": [device], "params": {"kind": "contain"}, "comment": "walk"}),
    );
    let contain = v["actions"][0]["id"].as_u64().unwrap();
    admin_api(
        "POST",
        "/api/v1/actions/approve",
        json!({"ids": [contain], "comment": "walk"}),
    );
    let v = admin_api("GET", "/api/v1/containments", Value::Null);
    assert_eq!(v["containments"][0]["device_id"], device.as_str(), "{v}");
    let bearer = |t: &str| format!("Bearer {t}");
    let mut tokens = vec![];
    let mut sessions = vec![];
    let mut users: Vec<(&str, &str, &[&str])> = ROLES.iter().map(|(r, p)| (*r, *r, *p)).collect();
    users.push((
        "outsider",
        "admin",
        &["view", "respond", "approve", "investigate", "admin"][..],
    ));
    for (name, role, _) in &users {
        let groups: &[&str] = if *name == "outsider" {
            &["elsewhere"]
        } else {
            &[]
        };
        let (status, v) = ctl.api(
            "POST",
            "/api/v1/users",
            Some(&ctl.admin_token),
            Some(
                json!({"name": name, "role": role, "device_groups": groups, "password": PASSWORD}),
            ),
        );
        assert_eq!(status, 201, "{v}");
        tokens.push(v["token"].as_str().unwrap().to_owned());
        let r = login(&http, &base, name, PASSWORD);
        assert_eq!(r.status, 200, "{}", r.body);
        sessions.push((r.cookie(), r.body["csrf"].as_str().unwrap().to_owned()));
    }
    let (status, v) = ctl.api(
        "PUT",
        "/api/v1/users/admin/password",
        Some(&ctl.admin_token),
        Some(json!({"password": PASSWORD})),
    );
    assert_eq!(status, 200, "{v}");
    let admin = login(&http, &base, "admin", PASSWORD);
    let admin_cookie = admin.cookie();

    let doc = call(
        &http,
        "GET",
        &format!("{base}/api/v1/openapi.json"),
        &[],
        None,
    )
    .unwrap();
    let paths = doc.body["paths"].as_object().unwrap().clone();
    let mut walked = 0;
    for (path, item) in &paths {
        for (method, op) in item.as_object().unwrap() {
            let url = format!("{base}{}", concrete(path, &device, action));
            let body = body_for(method, path, &device, action);
            let m = method.to_uppercase();
            let what = |who: &str| format!("{m} {path} as {who}");
            let send = |headers: &[(&str, &str)]| {
                // A fresh connection each time: a refusal before the body is read may close
                // a pooled one.
                call(&agent(), &m, &url, headers, body.clone())
                    .unwrap_or_else(|e| panic!("{m} {url}: {e}"))
            };
            walked += 1;
            let Some(security) = op["security"].as_array() else {
                // Public: only logging in and the document itself.
                assert!(
                    matches!(
                        (method.as_str(), path.as_str()),
                        ("post", "/api/v1/session") | ("get", "/api/v1/openapi.json")
                    ),
                    "{m} {path} declares no security: only the login and the document are public"
                );
                continue;
            };
            let scopes: Vec<&str> = security[0]["bearer"]
                .as_array()
                .unwrap_or_else(|| panic!("{m} {path}: {security:?}"))
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let needs = scopes.iter().find(|s| **s != "unscoped").copied();
            let unscoped_only = scopes.contains(&"unscoped");

            assert_refused(&send(&[]), 401, &what("nobody"));
            assert_refused(
                &send(&[("Authorization", "Bearer pal_forged")]),
                401,
                &what("an unknown token"),
            );
            let forged = format!("{}={}", "palisade_session", "ab".repeat(32));
            assert_refused(
                &send(&[("Cookie", &forged), ("X-CSRF-Token", "x")]),
                401,
                &what("a forged session cookie"),
            );
            if m != "GET" {
                // Even an admin's live session changes nothing without its CSRF token.
                let r = send(&[("Cookie", &admin_cookie)]);
                assert_refused(&r, 403, &what("a session without CSRF token"));
                assert_eq!(r.body["error"]["code"], "csrf", "{}", r.body);
            }
            for (i, (name, _, grants)) in users.iter().enumerate() {
                let lacks = needs.is_some_and(|p| !grants.contains(&p));
                let outsider = *name == "outsider";
                if !lacks && !outsider {
                    continue; // allowed: calling it would change what the others are refused
                }
                let token = bearer(&tokens[i]);
                let (cookie, csrf) = &sessions[i];
                for (how, headers) in [
                    ("token", vec![("Authorization", token.as_str())]),
                    (
                        "session",
                        vec![("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
                    ),
                ] {
                    if how == "session"
                        && (method.as_str(), path.as_str()) == ("delete", "/api/v1/session")
                    {
                        continue; // a logout: the session is needed for the other routes
                    }
                    let who = what(&format!("{name} ({how})"));
                    let r = send(&headers);
                    if lacks || (outsider && unscoped_only) {
                        assert_refused(&r, 403, &who);
                    } else if outsider {
                        // Another group's admin may call it, but learns nothing of this group
                        // and changes nothing in it.
                        let text = &r.text;
                        if r.status < 400 {
                            assert!(
                                !text.contains(&device)
                                    && !text.contains(marker)
                                    && !text.contains(group),
                                "{who}: another group's data in {text}"
                            );
                        } else {
                            assert_refused(&r, r.status, &who);
                            assert!(
                                r.status != 401
                                    && r.status < 500
                                    && !text.contains(marker)
                                    && !text.contains(group),
                                "{who}: {text}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(walked >= 35, "walked only {walked} operations");
    // Nothing the refused calls asked for happened.
    assert_eq!(ctl.status(action), "pending_approval");
    assert_eq!(ctl.json(&["actions", "list"])["total"], 2);
    assert_eq!(
        ctl.json(&["devices", "show", &device])["device"]["device_group"],
        group
    );
}

/// Session fixation: the controller never adopts a session id it was sent, not even a live one;
/// every login mints a fresh id.
#[test]
fn a_login_mints_a_new_session_id_and_never_adopts_one_it_was_sent() {
    let ctl = Controller::start();
    let base = ctl.url();
    let http = agent();
    add_user(&ctl, "olga", "approver");
    add_user(&ctl, "mallory", "viewer");
    let whoami = |cookie: &str| {
        call(
            &http,
            "GET",
            &format!("{base}/api/v1/session"),
            &[("Cookie", cookie)],
            None,
        )
        .unwrap()
    };
    let login_with = |cookie: &str, name: &str| {
        call(
            &http,
            "POST",
            &format!("{base}/api/v1/session"),
            &[("Cookie", cookie)],
            Some(json!({"name": name, "password": PASSWORD})),
        )
        .unwrap()
    };

    // An id the attacker made up and planted.
    let planted = format!("palisade_session={}", "ab".repeat(32));
    let r = login_with(&planted, "olga");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(r.cookie(), planted);
    assert_eq!(
        whoami(&planted).status,
        401,
        "the planted id became a session"
    );
    assert_eq!(whoami(&r.cookie()).body["user"]["name"], "olga");

    // The attacker's own live session, planted in the victim's browser.
    let mallory = login(&http, &base, "mallory", PASSWORD).cookie();
    let r = login_with(&mallory, "olga");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(r.cookie(), mallory);
    assert_eq!(whoami(&r.cookie()).body["user"]["name"], "olga");
    assert_eq!(
        whoami(&mallory).body["user"]["name"],
        "mallory",
        "the attacker's session must not turn into the victim's"
    );

    // Two logins, two ids.
    let again = login(&http, &base, "olga", PASSWORD).cookie();
    assert_ne!(again, r.cookie());
}

/// Device groups managed by an admin: a membership rule places an enrolled device, a manual
/// assignment wins over it, clearing it hands the device back to the rules; group-scoped
/// permissions follow every move at once; only admins of every group may change any of it,
/// and every change is audited. palisadectl does the same.
#[test]
fn admins_move_devices_by_rule_and_by_hand_and_scoped_approvers_follow_at_once() {
    let ctl = Controller::start();
    let device = ctl.enroll_agent().device_id();
    let admin = Some(ctl.admin_token.as_str());
    let (_, v) = ctl.api("GET", &format!("/api/v1/devices/{device}"), admin, None);
    assert_eq!(
        (&v["device"]["device_group"], &v["device"]["group_source"]),
        (&json!("default"), &json!("enrolment")),
        "{v}"
    );
    let addr = v["device"]["addresses"][0].as_str().unwrap().to_owned();
    let sample = ctl.request(&[
        "request-sample",
        &device,
        "--path",
        "/etc/hostname",
        "--comment",
        "look",
    ]);
    let web = ctl.add_user("wendy", "approver", &["web"]);
    let web_admin = ctl.add_user("wade", "admin", &["web"]);
    let responder = ctl.add_user("rex", "responder", &[]);
    let sees = |token: &str| {
        let (status, _) = ctl.api(
            "GET",
            &format!("/api/v1/actions/{sample}"),
            Some(token),
            None,
        );
        status == 200
    };
    assert!(!sees(&web), "not yet in web");

    // Only admins of every group change groups or rules.
    let rules = json!({"rules": [
        {"hostname": "no-such-host-*", "device_group": "never"},
        {"cidr": format!("{addr}/32"), "device_group": "web"},
    ]});
    for token in [&web_admin, &responder] {
        let (status, v) = ctl.api(
            "PUT",
            "/api/v1/group-rules",
            Some(token),
            Some(rules.clone()),
        );
        assert_eq!(status, 403, "{v}");
        let (status, v) = ctl.api(
            "PUT",
            &format!("/api/v1/devices/{device}/group"),
            Some(token),
            Some(json!({"device_group": "web"})),
        );
        assert_eq!(status, 403, "{v}");
    }
    let (status, v) = ctl.api(
        "PUT",
        "/api/v1/group-rules",
        admin,
        Some(json!({"rules": [{"device_group": "web"}]})),
    );
    assert_eq!(status, 400, "a rule with no condition: {v}");

    // A rule on the device's address moves it: the web approver sees and approves its action.
    let (status, v) = ctl.api("PUT", "/api/v1/group-rules", admin, Some(rules));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["moved"][0]["device"], device.as_str(), "{v}");
    assert_eq!(v["moved"][0]["source"], "rule 2");
    assert!(sees(&web), "the web approver follows the move at once");
    let (status, v) = ctl.api(
        "POST",
        "/api/v1/actions/approve",
        Some(&web),
        Some(json!({"ids": [sample]})),
    );
    assert_eq!(status, 200, "{v}");

    // By hand (palisadectl): wins over the rule; the web approver loses sight of it.
    let v = ctl.json(&["devices", "set-group", &device, "db"]);
    assert_eq!(
        (&v["device"]["device_group"], &v["device"]["group_source"]),
        (&json!("db"), &json!("manual"))
    );
    assert!(!sees(&web));
    let (_, v) = ctl.api("GET", "/api/v1/devices", Some(&web), None);
    assert_eq!(v["devices"], json!([]), "{v}");

    // Cleared: the rules decide again.
    let v = ctl.json(&["devices", "set-group", &device, "--clear"]);
    assert_eq!(v["device"]["device_group"], "web");
    assert_eq!(v["device"]["group_source"], "rule 2");
    let v = ctl.json(&["group-rules", "list"]);
    assert_eq!(v["rules"][1]["cidr"], format!("{addr}/32"));
    let v = ctl.json(&["group-rules", "set"]);
    assert_eq!(v["moved"][0]["to"], "default", "{v}");

    // Every change is in the audit log, with who made it.
    let (_, v) = ctl.api("GET", "/api/v1/audit?limit=1000", admin, None);
    let events: Vec<(String, String)> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().into(),
                r["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (event, actor) in [
        ("group_rules_set", "admin"),
        ("device_group_assigned", "admin"),
        ("device_group_changed", "admin"),
    ] {
        assert!(
            events.iter().any(|(e, a)| e == event && a == actor),
            "{event} by {actor} not audited: {events:?}"
        );
    }
    let moves = events
        .iter()
        .filter(|(e, _)| e == "device_group_changed")
        .count();
    assert_eq!(moves, 4, "web, db, web, default: {events:?}");
}

/// An export never silently stops at its cap: a view of more rows than one export holds is
/// refused whole, with the count and what to do; a narrower view exports.
#[test]
fn an_export_over_the_cap_is_refused_whole_and_a_narrower_view_exports() {
    let ctl = Controller::start();
    let dev = "00000000-0000-4000-8000-0000000000e1";
    sqlite3(
        &ctl.db(),
        &format!(
            "INSERT INTO devices (id, hostname, device_group, agent_version, capabilities, inventory, cert_serial, enrolled_at)
               VALUES ('{dev}', 'bulk-1', 'default', '0.1.0', '[]', '{{}}', 's', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100001)
             INSERT INTO actions (kind, params, device_id, source, status, requested_by, comment, created_at, expires_at)
               SELECT 'request_sample', '{{\"kind\":\"request_sample\",\"path\":\"/x\"}}', '{dev}',
                 'manual_device_action', 'succeeded', CASE WHEN i <= 7 THEN 'carol' ELSE 'admin' END, 'bulk', i, i
               FROM n;"
        ),
    );
    let bearer = format!("Bearer {}", ctl.admin_token);
    let get = |q: &str| {
        call(
            &agent(),
            "GET",
            &format!("{}/api/v1/actions/export.csv?{q}", ctl.url()),
            &[("Authorization", &bearer)],
            None,
        )
        .unwrap()
    };
    let r = get("view=history");
    assert_refused(&r, 400, "an export of 100,001 actions");
    assert_eq!(r.body["error"]["code"], "too_many_rows");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("100001") && message.contains("100000") && message.contains("narrow"),
        "{message}"
    );
    let r = get("view=history&requested_by=carol&columns=id");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text.lines().count(),
        8,
        "a header and carol's 7: {}",
        r.text
    );
}
