//! A small W3C WebDriver client over HTTP (ureq) driving headless Chromium through
//! `chromedriver` (Debian's `chromium` and `chromium-driver`, installed by `.ci/run`): enough
//! to log in, click, type, read text, run a script and take screenshots.
//!
//! ```text
//! let browser = Browser::start();
//! browser.goto(&ctl.url());
//! browser.find("#login-name").send_keys("admin");
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{Proc, eventually};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long `wait_*` calls wait.
pub const WAIT: Duration = Duration::from_secs(15);

/// A headless Chromium with its chromedriver; both end on drop.
pub struct Browser {
    http: ureq::Agent,
    base: String,
    session: String,
    /// Where the browser saves downloads.
    pub downloads: TempDir,
    _driver: Proc,
    _logs: TempDir,
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    pub id: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!(
        "chromium is missing: apt-get install -y chromium chromium-driver (.ci/run installs them)"
    );
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a 1400×900 window.
    pub fn start() -> Browser {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect(
                "chromedriver is missing: apt-get install -y chromium-driver (.ci/run installs it)",
            );
        let logs = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let driver = Proc::start(
            Command::new(driver_bin).arg(format!("--port={port}")),
            logs.path().join("chromedriver.log"),
        );
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to be ready", || {
            let mut r = http.get(format!("{base}/status")).call().ok()?;
            let v: Value = r.body_mut().read_json().ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let downloads = tempfile::tempdir().expect("temp dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,900", "--lang=en-US", "--no-first-run"],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                    "safebrowsing.enabled": false,
                },
            },
        }}});
        let mut b = Browser {
            http,
            base,
            session: String::new(),
            downloads,
            _driver: driver,
            _logs: logs,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        b
    }

    /// One WebDriver command; panics with the driver's message if it fails.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = if self.session.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let resp = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            _ => self
                .http
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                v["value"]["error"],
                v["value"]["message"].as_str().unwrap_or_default()
            ))
        }
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn find_all_now(&self, css: &str) -> Vec<String> {
        self.try_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
        .collect()
    }

    /// The first element matching `css`, waiting for it to appear and be displayed.
    pub fn find(&self, css: &str) -> Element<'_> {
        let id = eventually(WAIT, &format!("an element {css:?}"), || {
            self.find_all_now(css)
                .into_iter()
                .find(|id| self.displayed(id))
        });
        Element { browser: self, id }
    }

    /// Every element matching `css` now.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.find_all_now(css)
            .into_iter()
            .map(|id| Element { browser: self, id })
            .collect()
    }

    /// Whether an element matching `css` is displayed now.
    pub fn is_shown(&self, css: &str) -> bool {
        self.find_all_now(css).iter().any(|id| self.displayed(id))
    }

    fn displayed(&self, id: &str) -> bool {
        self.try_call("GET", &format!("/element/{id}/displayed"), None)
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Clicks the first displayed element matching `css`, finding it again if the page
    /// re-rendered between finding and clicking (a stale element); other errors fail.
    pub fn click(&self, css: &str) {
        eventually(WAIT, &format!("a click on {css:?}"), || {
            let id = self
                .find_all_now(css)
                .into_iter()
                .find(|id| self.displayed(id))?;
            match self.try_call("POST", &format!("/element/{id}/click"), None) {
                Ok(_) => Some(()),
                Err(e) if e.contains("stale element") => None,
                Err(e) => panic!("webdriver click on {css:?}: {e}"),
            }
        });
    }

    /// Picks the `<option>` with this value in the first displayed `<select>` matching `css`,
    /// found and set in one script: a page that re-renders in between cannot leave a stale
    /// element in the test's hands.
    pub fn select(&self, css: &str, value: &str) {
        let script = format!(
            "const s = [...document.querySelectorAll({css})].find(e => e.offsetParent !== null); \
             if (!s || ![...s.options].some(o => o.value === {value})) return false; \
             s.value = {value}; s.dispatchEvent(new Event('change', {{bubbles: true}})); return true;",
            css = json!(css),
            value = json!(value),
        );
        self.wait_for(&format!("{css:?} to offer {value:?}"), &script);
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
        eventually(WAIT, what, || {
            let v = self.try_call(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": []})),
            );
            match v {
                Ok(Value::Null) | Ok(Value::Bool(false)) | Err(_) => None,
                Ok(Value::Array(a)) if a.is_empty() => None,
                Ok(Value::String(s)) if s.is_empty() => None,
                Ok(v) => Some(v),
            }
        })
    }

    /// Waits until the text of the first `css` element contains `text`.
    pub fn wait_text(&self, css: &str, text: &str) -> String {
        eventually(WAIT, &format!("{css:?} to show {text:?}"), || {
            let t = self
                .find_all_now(css)
                .first()
                .map(|id| self.text_of(id))
                .unwrap_or_default();
            t.contains(text).then_some(t)
        })
    }

    fn text_of(&self, id: &str) -> String {
        self.try_call("GET", &format!("/element/{id}/text"), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &Path) {
        use std::io::Write;
        let b64 = self.call("GET", "/screenshot", None);
        let bytes = base64_decode(b64.as_str().expect("screenshot data"));
        let mut f = std::fs::File::create(path).expect("screenshot file");
        f.write_all(&bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", "", None);
        }
    }
}

impl Element<'_> {
    pub fn click(&self) -> &Self {
        self.browser
            .call("POST", &format!("/element/{}/click", self.id), None);
        self
    }

    pub fn send_keys(&self, text: &str) -> &Self {
        self.browser.call(
            "POST",
            &format!("/element/{}/value", self.id),
            Some(json!({"text": text})),
        );
        self
    }

    pub fn clear(&self) -> &Self {
        self.browser
            .call("POST", &format!("/element/{}/clear", self.id), None);
        self
    }

    pub fn text(&self) -> String {
        self.browser.text_of(&self.id)
    }

    /// A DOM property (`value`, `checked`, `disabled`, `href` …).
    pub fn property(&self, name: &str) -> Value {
        self.browser.call(
            "GET",
            &format!("/element/{}/property/{name}", self.id),
            None,
        )
    }
}

/// Standard base64 (the screenshot encoding); no dependency for one use.
fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
