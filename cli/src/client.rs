//! The HTTP client: bearer token, JSON in and out, API errors turned into one-line messages.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", segment(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

impl Client {
    pub fn new(base: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Client> {
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--url {base:?} must start with http:// or https://");
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(600)));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                        cert,
                    ])))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            agent,
        })
    }

    fn auth(&self) -> Result<String> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("no API token: pass --token or set PALISADE_TOKEN"))?;
        Ok(format!("Bearer {}", token.trim()))
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow!("cannot reach the controller at {}: {e}", self.base)
    }

    pub fn get(&self, path: &str, q: &[(&str, String)]) -> Result<Value> {
        let resp = self
            .agent
            .get(format!("{}{path}{}", self.base, query(q)))
            .header("Authorization", self.auth()?)
            .call()
            .map_err(|e| self.unreachable(e))?;
        json_or_error(resp)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.auth()?)
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        json_or_error(resp)
    }

    /// A GET whose answer is not JSON (CSV): the body as text, or the API's error.
    pub fn get_text(&self, path: &str, q: &[(&str, String)]) -> Result<String> {
        let mut resp = self
            .agent
            .get(format!("{}{path}{}", self.base, query(q)))
            .header("Authorization", self.auth()?)
            .call()
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return json_or_error(resp).map(|_| String::new());
        }
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .context("cannot read the controller's answer")
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        let resp = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", self.auth()?)
            .call()
            .map_err(|e| self.unreachable(e))?;
        json_or_error(resp)
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", self.auth()?)
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        json_or_error(resp)
    }
}

fn json_or_error(mut resp: ureq::http::Response<ureq::Body>) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_json()
        .with_context(|| format!("the controller answered HTTP {status} without a JSON body"))?;
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no reason given");
    bail!("{message} (HTTP {})", status.as_u16())
}

/// Downloads an action's artifact to `output`, verifying size and sha256; the file appears
/// only once it is complete and checked.
pub fn download(
    client: &Client,
    action: u64,
    name: Option<&str>,
    output: &Path,
    progress: bool,
) -> Result<()> {
    let v = client.get(&format!("/api/v1/actions/{action}"), &[])?;
    let artifacts = v["action"]["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let artifact = match name {
        Some(n) => artifacts
            .iter()
            .find(|a| a["name"] == n)
            .ok_or_else(|| anyhow!("action {action} has no artifact {n:?}"))?,
        None => match artifacts.as_slice() {
            [one] => one,
            [] => bail!(
                "action {action} has no artifacts (status: {})",
                v["action"]["status"].as_str().unwrap_or("?")
            ),
            _ => bail!("action {action} has several artifacts; pick one with --name"),
        },
    };
    let name = artifact["name"].as_str().unwrap_or_default().to_owned();
    let size = artifact["size"].as_u64().unwrap_or(0);
    let expected = artifact["sha256"].as_str().unwrap_or_default().to_owned();
    let mut resp = client
        .agent
        .get(format!(
            "{}/api/v1/actions/{action}/artifacts/{}",
            client.base,
            segment(&name)
        ))
        .header("Authorization", client.auth()?)
        .call()
        .map_err(|e| client.unreachable(e))?;
    if !resp.status().is_success() {
        return json_or_error(resp).map(|_| ());
    }
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tmp = output.with_extension("part");
    let mut file =
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).context("download interrupted")?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    let actual = hex::encode(ctx.finish());
    if got != size || actual != expected {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "download corrupt: got {got} bytes with sha256 {actual}, expected {size} bytes with sha256 {expected}"
        );
    }
    std::fs::rename(&tmp, output)?;
    eprintln!(
        "{} ({got} bytes, sha256 {actual} verified)",
        output.display()
    );
    Ok(())
}
