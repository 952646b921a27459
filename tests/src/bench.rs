//! What the benchmarks share: the JSON API over one kept-alive connection, percentiles, knobs.

use std::time::Duration;

use serde_json::Value;

use crate::Controller;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this benchmark binary runs as a smoke test. `cargo bench` passes `--bench`: measure
/// with the full knobs and release binaries. Under `cargo test` each benchmark's `main` runs from
/// its tier's test binary (`bench_smoke` in `tests/e2e` and `tests/lab`) without it: a short run
/// with small knobs and the debug binaries, which checks that the benchmark still works and
/// measures nothing.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A numeric knob from the environment, or its default: `full` under `cargo bench`, `smoke`
/// under `cargo test`.
pub fn knob(name: &str, full: usize, smoke: usize) -> usize {
    env_usize(name, if self::smoke() { smoke } else { full })
}

/// A numeric knob from the environment, or its default.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The operators' JSON API with the admin token, over one kept-alive connection.
pub struct Api {
    base: String,
    auth: String,
    http: ureq::Agent,
}

impl Api {
    pub fn new(ctl: &Controller) -> Api {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Api {
            base: ctl.url(),
            auth: format!("Bearer {}", ctl.admin_token),
            http,
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Api::json(resp, "GET", path, 200)
    }

    pub fn post(&self, path: &str, body: &Value, expect: u16) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Api::json(resp, "POST", path, expect)
    }

    fn json(
        mut resp: ureq::http::Response<ureq::Body>,
        method: &str,
        path: &str,
        expect: u16,
    ) -> Value {
        let status = resp.status().as_u16();
        let body: Value = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap_or_else(|e| panic!("{method} {path}: HTTP {status} without JSON: {e}"));
        assert_eq!(status, expect, "{method} {path}: {body}");
        body
    }
}

/// p50, p99, max and mean of values in milliseconds.
pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn stats(mut v: Vec<f64>) -> Stats {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[(((p / 100.0) * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        p50: at(50.0),
        p99: at(99.0),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}
