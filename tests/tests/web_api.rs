//! The web layer over plain HTTP(S), without a browser: password logins and their rate limit,
//! the session cookie's attributes, CSRF on state changes, logout and expiry, API tokens
//! alongside sessions, the OpenAPI document, and HTTPS with the controller's CA.

use std::sync::Arc;
use std::time::Duration;

use palisade_tests::Controller;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
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
        json!(["devices", "params", "comment"]),
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
