//! `palisadectl`: the operator CLI. Everything it does is a call to the controller's JSON API,
//! so it has exactly the powers of the web UI and of scripts.

mod args;
mod client;
mod render;
mod table;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use palisade_common::ActionParams;
use palisade_common::action::{
    ContainParams, IsolateParams, QuarantineParams, ReleaseQuarantineParams, RequestSampleParams,
    ScanParams,
};
use serde_json::{Value, json};

use crate::client::Client;
use crate::table::{Table, ts};

use crate::args::*;
use crate::render::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisadectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json_out = cli.json;
    let client = Client::new(&cli.url, cli.token.as_deref(), cli.ca_cert.as_deref())?;
    let print = |v: &Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match cli.command {
        Command::Rules {
            command: RulesCmd::Upload { files, comment },
        } => {
            let mut list = Vec::new();
            for path in &files {
                let content = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {} as text", path.display()))?;
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{} has no usable file name", path.display()))?;
                list.push(json!({"name": name, "content": content}));
            }
            let v = client.post("/api/v1/rules", &json!({"files": list, "comment": comment}))?;
            if json_out {
                print(&v)?;
            } else {
                let r = &v["rule_set"];
                println!(
                    "rule set version {}: {} YARA rules, {} hash entries, {} bytes compiled (sha256 {})",
                    text(&r["version"]),
                    text(&r["yara_rules"]),
                    text(&r["hash_entries"]),
                    text(&r["size"]),
                    text(&r["sha256"])
                );
            }
        }
        Command::Rules {
            command: RulesCmd::List,
        } => {
            let v = client.get("/api/v1/rules", &[])?;
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&[
                    "version",
                    "uploaded",
                    "by",
                    "yara rules",
                    "hash entries",
                    "files",
                ]);
                for r in v["rule_sets"].as_array().into_iter().flatten() {
                    let files: Vec<String> = r["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| text(&f["name"]))
                        .collect();
                    t.row(vec![
                        text(&r["version"]),
                        ts(&r["created_at"]),
                        text(&r["created_by"]),
                        text(&r["yara_rules"]),
                        text(&r["hash_entries"]),
                        files.join(" "),
                    ]);
                }
                t.print();
                let mut d = Table::new(&["device", "hostname", "enforces"]);
                for e in v["devices"].as_array().into_iter().flatten() {
                    d.row(vec![
                        text(&e["device"]),
                        text(&e["hostname"]),
                        text(&e["rules_version"]),
                    ]);
                }
                println!();
                d.print();
            }
        }
        Command::Automation {
            command:
                AutomationCmd::Set {
                    device_group,
                    level,
                },
        } => {
            let v = client.put(
                "/api/v1/automation",
                &json!({"device_group": device_group, "level": level}),
            )?;
            automation_out(&v, json_out)?;
        }
        Command::Automation {
            command: AutomationCmd::List,
        } => {
            let v = client.get("/api/v1/automation", &[])?;
            automation_out(&v, json_out)?;
        }
        Command::Realtime {
            command:
                RealtimeCmd::Set {
                    device_group,
                    state,
                },
        } => {
            let v = client.put(
                "/api/v1/realtime",
                &json!({"device_group": device_group, "enabled": state == "on"}),
            )?;
            realtime_out(&v, json_out)?;
        }
        Command::Realtime {
            command: RealtimeCmd::List,
        } => {
            let v = client.get("/api/v1/realtime", &[])?;
            realtime_out(&v, json_out)?;
        }
        Command::Whoami => {
            let v = client.get("/api/v1/whoami", &[])?;
            if json_out {
                print(&v)?;
            } else {
                println!(
                    "{} ({})",
                    v["name"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Status => {
            let v = client.get("/api/v1/status", &[])?;
            if json_out {
                print(&v)?;
            } else {
                let c = &v["connections"];
                println!(
                    "palisade-controller {}, up {} s\nstore writer: {}\nconnected agents: {}\nhandshakes in progress: {}, waiting for one: {}, refused since start: {}",
                    v["version"].as_str().unwrap_or("?"),
                    v["uptime_secs"],
                    v["store_writer"].as_str().unwrap_or("?"),
                    v["connected"],
                    c["handshaking"],
                    c["waiting"],
                    c["refused"]
                );
            }
        }
        Command::Devices {
            command: DevicesCmd::List,
        } => {
            let v = client.get("/api/v1/devices", &[])?;
            if json_out {
                print(&v)?;
            } else {
                devices_table(&v["devices"]).print();
            }
        }
        Command::Devices {
            command: DevicesCmd::Show { device },
        } => {
            let v = client.get(
                &format!("/api/v1/devices/{}", client::segment(&device)),
                &[],
            )?;
            if json_out {
                print(&v)?;
            } else {
                let d = &v["device"];
                let mut t = Table::new(&["field", "value"]);
                for key in [
                    "id",
                    "hostname",
                    "device_group",
                    "status",
                    "online",
                    "agent_version",
                    "os",
                    "kernel",
                ] {
                    t.row(vec![key.into(), text(&d[key])]);
                }
                t.row(vec!["addresses".into(), list(&d["addresses"])]);
                t.row(vec!["capabilities".into(), list(&d["capabilities"])]);
                t.row(vec!["enrolled_at".into(), ts(&d["enrolled_at"])]);
                t.row(vec!["last_seen".into(), ts(&d["last_seen"])]);
                let want = &v["desired"];
                let seen = &d["observed"];
                t.row(vec![
                    "isolation".into(),
                    format!(
                        "desired {}, observed {}",
                        if want["isolation"].is_null() {
                            "none".to_owned()
                        } else {
                            format!(
                                "isolated by action {}{}",
                                text(&want["isolation"]["action"]),
                                want["isolation"]["until_ms"]
                                    .as_i64()
                                    .map(|u| format!(" until {}", ts(&u.into())))
                                    .unwrap_or_default()
                            )
                        },
                        if seen["isolated"] == true {
                            "isolated"
                        } else {
                            "not isolated"
                        }
                    ),
                ]);
                t.row(vec![
                    "contained peers".into(),
                    format!(
                        "desired [{}], enforced [{}]",
                        list(&want["contained"]),
                        list(&seen["contained"])
                    ),
                ]);
                t.row(vec!["ruleset sha256".into(), text(&seen["net_digest"])]);
                t.row(vec![
                    "restrict_execution".into(),
                    format!(
                        "desired {} (revision {}), observed {} (revision {}){}",
                        text(&want["restrict_execution"]),
                        text(&want["revision"]),
                        text(&seen["restrict_execution"]),
                        text(&seen["desired_revision"]),
                        seen["drift"]
                            .as_str()
                            .map(|d| format!(", drift: {d}"))
                            .unwrap_or_default()
                    ),
                ]);
                t.print();
                println!("\nqueue (approved, not finished):");
                actions_table(&v["queue"]).print();
            }
        }
        Command::Devices {
            command: DevicesCmd::Events { device, limit },
        } => {
            let v = client.get(
                &format!("/api/v1/devices/{}/events", client::segment(&device)),
                &[("limit", limit.to_string())],
            )?;
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&["id", "last at", "source", "kind", "count", "summary"]);
                for e in v["events"].as_array().into_iter().flatten() {
                    t.row(vec![
                        text(&e["id"]),
                        ts(&e["last_at"]),
                        text(&e["source"]),
                        text(&e["kind"]),
                        text(&e["count"]),
                        text(&e["summary"]),
                    ]);
                }
                t.print();
            }
        }
        Command::ExecAllowlist {
            command:
                AllowlistCmd::Set {
                    device_group,
                    sha256,
                    path,
                },
        } => {
            let v = client.put(
                "/api/v1/exec-allowlist",
                &json!({"device_group": device_group, "sha256": sha256, "paths": path}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                allowlist_table(std::slice::from_ref(&v["allowlist"])).print();
            }
        }
        Command::ExecAllowlist {
            command: AllowlistCmd::List,
        } => {
            let v = client.get("/api/v1/exec-allowlist", &[])?;
            if json_out {
                print(&v)?;
            } else {
                allowlist_table(v["allowlists"].as_array().map(Vec::as_slice).unwrap_or(&[]))
                    .print();
            }
        }
        Command::Devices {
            command: DevicesCmd::Vault { device },
        } => {
            let v = client.get(
                &format!("/api/v1/devices/{}/vault", client::segment(&device)),
                &[],
            )?;
            if json_out {
                print(&v)?;
            } else {
                let mut t =
                    Table::new(&["entry", "path", "sha256", "size", "quarantined", "action"]);
                for e in v["entries"].as_array().into_iter().flatten() {
                    t.row(vec![
                        text(&e["id"]),
                        text(&e["path"]),
                        text(&e["sha256"]),
                        text(&e["size"]),
                        ts(&e["quarantined_at"]),
                        text(&e["action"]),
                    ]);
                }
                t.print();
                eprintln!(
                    "{} entries on {}, reported {}",
                    v["entries"].as_array().map_or(0, |a| a.len()),
                    text(&v["hostname"]),
                    ts(&v["reported_at"])
                );
            }
        }
        Command::Devices {
            command: DevicesCmd::BreakGlass { device, valid },
        } => {
            let v = client.post(
                &format!("/api/v1/devices/{}/break-glass", client::segment(&device)),
                &json!({"valid_secs": valid.as_secs()}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!("{}", text(&v["code"]));
                eprintln!(
                    "release code {} for device {}, valid until {}; on the device: palisade-agent release-isolation --code CODE",
                    text(&v["serial"]),
                    text(&v["device_id"]),
                    ts(&v["not_after_ms"])
                );
            }
        }
        Command::Devices {
            command: DevicesCmd::Contained,
        } => {
            let v = client.get("/api/v1/containments", &[])?;
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&["action", "device", "ip", "mac", "addresses", "since"]);
                for c in v["containments"].as_array().into_iter().flatten() {
                    t.row(vec![
                        text(&c["action_id"]),
                        text(&c["device_id"]),
                        text(&c["ip"]),
                        text(&c["mac"]),
                        list(&c["addresses"]),
                        ts(&c["created_at"]),
                    ]);
                }
                t.print();
            }
        }
        Command::Devices {
            command:
                DevicesCmd::SetGroup {
                    device,
                    group,
                    clear: _,
                },
        } => {
            let v = client.put(
                &format!("/api/v1/devices/{}/group", client::segment(&device)),
                &json!({"device_group": group}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                let d = &v["device"];
                println!(
                    "{} ({}) is in group {} ({})",
                    text(&d["hostname"]),
                    text(&d["id"]),
                    text(&d["device_group"]),
                    text(&d["group_source"])
                );
            }
        }
        Command::GroupRules { command } => {
            let v = match command {
                GroupRulesCmd::List => client.get("/api/v1/group-rules", &[])?,
                GroupRulesCmd::Set { rules } => {
                    let rules = rules
                        .iter()
                        .map(String::as_str)
                        .map(group_rule)
                        .collect::<Result<Vec<_>>>()?;
                    client.put("/api/v1/group-rules", &json!({"rules": rules}))?
                }
            };
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&["#", "group", "hostname", "cidr", "by", "at"]);
                for r in v["rules"].as_array().into_iter().flatten() {
                    t.row(vec![
                        text(&r["position"]),
                        text(&r["device_group"]),
                        text(&r["hostname"]),
                        text(&r["cidr"]),
                        text(&r["created_by"]),
                        ts(&r["created_at"]),
                    ]);
                }
                t.print();
                for m in v["moved"].as_array().into_iter().flatten() {
                    println!(
                        "moved {} from {} to {} ({})",
                        text(&m["device"]),
                        text(&m["from"]),
                        text(&m["to"]),
                        text(&m["source"])
                    );
                }
            }
        }
        Command::Action(args) => {
            let (common, params) = action_params(args.kind)?;
            let body = json!({
                "devices": common.devices,
                "params": params,
                "comment": common.comment,
                "source": common.source,
                "external_id": common.external_id,
                "fleet": common.fleet,
            });
            let v = client.post("/api/v1/actions", &body)?;
            if json_out {
                print(&v)?;
            } else {
                actions_table(&v["actions"]).print();
            }
        }
        Command::Actions { command } => return actions(&client, command, json_out),
        Command::Artifacts {
            command:
                ArtifactsCmd::Download {
                    action,
                    output,
                    name,
                },
        } => {
            client::download(&client, action, name.as_deref(), &output, !json_out)?;
        }
        Command::EnrollToken {
            command:
                EnrollTokenCmd::Create {
                    uses,
                    expires_in,
                    device_group,
                },
        } => {
            let v = client.post(
                "/api/v1/enroll-tokens",
                &json!({"uses": uses, "expires_in": expires_in, "device_group": device_group}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!("token:      {}", text(&v["token"]["token"]));
                println!("uses:       {}", text(&v["token"]["uses"]));
                println!("expires at: {}", ts(&v["token"]["expires_at"]));
                println!("group:      {}", text(&v["token"]["device_group"]));
                println!("ca sha256:  {}", text(&v["ca_sha256"]));
                println!(
                    "\nenroll with: palisade-agent enroll --controller HOST:PORT --token {} --ca-sha256 {}",
                    text(&v["token"]["token"]),
                    text(&v["ca_sha256"])
                );
            }
        }
        Command::Users {
            command: UsersCmd::Add { name, role, groups },
        } => {
            let v = client.post(
                "/api/v1/users",
                &json!({"name": name, "role": role, "device_groups": groups}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!(
                    "user {} ({}) added; API token (shown once):\n{}",
                    text(&v["name"]),
                    text(&v["role"]),
                    text(&v["token"])
                );
            }
        }
        Command::Users {
            command: UsersCmd::SetPassword { name },
        } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on standard input");
            }
            let v = client.put(
                &format!("/api/v1/users/{name}/password"),
                &json!({"password": password}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!(
                    "password of {} set; their web sessions ended",
                    text(&v["user"])
                );
            }
        }
        Command::Users {
            command: UsersCmd::Disable { name },
        } => {
            let v = client.put(
                &format!("/api/v1/users/{}/disabled", client::segment(&name)),
                &json!({"disabled": true}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!("user {name} disabled; their API tokens and web sessions no longer work");
            }
        }
        Command::Users {
            command: UsersCmd::Enable { name },
        } => {
            let v = client.put(
                &format!("/api/v1/users/{}/disabled", client::segment(&name)),
                &json!({"disabled": false}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!("user {name} enabled");
            }
        }
        Command::Users {
            command: UsersCmd::Remove { name },
        } => {
            let v = client.delete(&format!("/api/v1/users/{}", client::segment(&name)))?;
            if json_out {
                print(&v)?;
            } else {
                println!("user {name} removed with their API tokens and sessions");
            }
        }
        Command::Token {
            command: TokenCmd::List { user },
        } => {
            let q: Vec<(&str, String)> = user.into_iter().map(|u| ("user", u)).collect();
            let v = client.get("/api/v1/tokens", &q)?;
            if json_out {
                print(&v)?;
            } else {
                let tokens = v["tokens"].as_array().cloned().unwrap_or_default();
                if tokens.is_empty() {
                    println!("no API tokens");
                } else {
                    let mut t = Table::new(&[
                        "id",
                        "user",
                        "created at",
                        "created by",
                        "expires",
                        "revoked",
                    ]);
                    for k in &tokens {
                        t.row(vec![
                            text(&k["id"]),
                            text(&k["user"]),
                            ts(&k["created_at"]),
                            text(&k["created_by"]),
                            if k["expires_at"].is_null() {
                                "never".into()
                            } else {
                                ts(&k["expires_at"])
                            },
                            if k["revoked_at"].is_null() {
                                "-".into()
                            } else {
                                format!("{} by {}", ts(&k["revoked_at"]), text(&k["revoked_by"]))
                            },
                        ]);
                    }
                    t.print();
                }
            }
        }
        Command::Token {
            command: TokenCmd::Create { user, expires_in },
        } => {
            let v = client.post(
                &format!("/api/v1/users/{}/tokens", client::segment(&user)),
                &json!({"expires_in": expires_in}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                println!(
                    "API token {} of {user} (expires: {}; shown once):\n{}",
                    text(&v["id"]),
                    if v["expires_at"].is_null() {
                        "never".into()
                    } else {
                        ts(&v["expires_at"])
                    },
                    text(&v["token"])
                );
            }
        }
        Command::Token {
            command: TokenCmd::Revoke { id },
        } => {
            let v = client.post(&format!("/api/v1/tokens/{id}/revoke"), &json!({}))?;
            if json_out {
                print(&v)?;
            } else {
                println!("API token {id} of {} revoked", text(&v["user"]));
            }
        }
        Command::Token {
            command: TokenCmd::Rotate { id },
        } => {
            let v = client.post(&format!("/api/v1/tokens/{id}/rotate"), &json!({}))?;
            if json_out {
                print(&v)?;
            } else {
                println!(
                    "API token {id} revoked; its replacement {} (shown once):\n{}",
                    text(&v["id"]),
                    text(&v["token"])
                );
            }
        }
        Command::Users {
            command: UsersCmd::List,
        } => {
            let v = client.get("/api/v1/users", &[])?;
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&[
                    "name",
                    "role",
                    "groups",
                    "created by",
                    "created at",
                    "disabled",
                ]);
                for u in v["users"].as_array().into_iter().flatten() {
                    let groups = list(&u["device_groups"]);
                    t.row(vec![
                        text(&u["name"]),
                        text(&u["role"]),
                        if groups.is_empty() {
                            "all".into()
                        } else {
                            groups
                        },
                        text(&u["created_by"]),
                        ts(&u["created_at"]),
                        if u["disabled_at"].is_null() {
                            "-".into()
                        } else {
                            ts(&u["disabled_at"])
                        },
                    ]);
                }
                t.print();
            }
        }
        Command::Policy {
            command:
                PolicyCmd::Set {
                    device_group,
                    kind,
                    require_approval,
                    distinct_approver,
                },
        } => {
            let v = client.put(
                "/api/v1/policies",
                &json!({"device_group": device_group, "kind": kind, "require_approval": require_approval, "distinct_approver": distinct_approver}),
            )?;
            if json_out {
                print(&v)?;
            } else {
                policy_table(&v["policies"]).print();
            }
        }
        Command::Policy {
            command: PolicyCmd::List,
        } => {
            let v = client.get("/api/v1/policies", &[])?;
            if json_out {
                print(&v)?;
            } else {
                policy_table(&v["policies"]).print();
            }
        }
        Command::Audit {
            command: AuditCmd::Verify,
        } => {
            let v = client.get("/api/v1/audit/verify", &[])?;
            if json_out {
                print(&v)?;
            }
            let broken = &v["first_broken"];
            if broken.is_null() {
                if !json_out {
                    println!(
                        "audit chain intact: {} records verified",
                        text(&v["records"])
                    );
                }
            } else {
                eprintln!(
                    "palisadectl: audit chain broken at record {}: {}",
                    text(&broken["seq"]),
                    text(&broken["reason"])
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Audit {
            command: AuditCmd::List { action, limit },
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(a) = action {
                q.push(("action", a.to_string()));
            }
            let v = client.get("/api/v1/audit", &q)?;
            if json_out {
                print(&v)?;
            } else {
                let mut t =
                    Table::new(&["seq", "at", "actor", "event", "action", "device", "detail"]);
                for r in v["records"].as_array().into_iter().flatten() {
                    t.row(vec![
                        text(&r["seq"]),
                        ts(&r["at"]),
                        text(&r["actor"]),
                        text(&r["event"]),
                        text(&r["action_id"]),
                        text(&r["device_id"]),
                        text(&r["detail"]),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The list's query string: filters, sort and page.
fn list_query(a: ListArgs) -> Result<Vec<(&'static str, String)>> {
    let mut q: Vec<(&str, String)> = vec![
        ("sort", a.sort),
        ("order", if a.asc { "asc" } else { "desc" }.into()),
        ("limit", a.limit.to_string()),
        ("offset", a.offset.to_string()),
    ];
    if a.pending {
        q.push(("view", "pending".into()));
    }
    if a.history {
        q.push(("view", "history".into()));
    }
    if let Some(since) = a.since {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        q.push((
            "since",
            (now.saturating_sub(since).as_millis() as i64).to_string(),
        ));
    }
    let opt = [
        ("kind", a.kind.map(|k| k.to_string())),
        ("status", a.status.map(|s| s.to_string())),
        ("source", a.source.map(|s| s.to_string())),
        ("device", a.device),
        ("device_group", a.device_group),
        ("requested_by", a.requested_by),
        ("parent", a.parent.map(|p| p.to_string())),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    Ok(q)
}

fn actions(client: &Client, command: ActionsCmd, json_out: bool) -> Result<ExitCode> {
    let print = |v: &Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match command {
        ActionsCmd::Export(e) => {
            let mut q = list_query(e.list)?;
            q.retain(|(k, _)| *k != "limit" && *k != "offset");
            if let Some(c) = e.columns {
                q.push(("columns", c));
            }
            let csv = client.get_text("/api/v1/actions/export.csv", &q)?;
            match e.output {
                Some(path) => std::fs::write(&path, csv)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{csv}"),
            }
        }
        ActionsCmd::List(a) => {
            let q = list_query(a)?;
            let v = client.get("/api/v1/actions", &q)?;
            if json_out {
                print(&v)?;
            } else {
                actions_table(&v["actions"]).print();
                let shown = v["actions"].as_array().map_or(0, |a| a.len());
                eprintln!("{shown} of {} actions", text(&v["total"]));
            }
        }
        ActionsCmd::Show { id } => {
            let v = client.get(&format!("/api/v1/actions/{}", client::segment(&id)), &[])?;
            if json_out {
                print(&v)?;
            } else {
                show_action(&v);
            }
        }
        ActionsCmd::Approve(d) => decide(client, "approve", d, json_out)?,
        ActionsCmd::Reject(d) => {
            if d.comment.trim().is_empty() {
                bail!("a comment is required to reject (--comment)");
            }
            decide(client, "reject", d, json_out)?
        }
        ActionsCmd::Cancel(d) => decide(client, "cancel", d, json_out)?,
        ActionsCmd::Undo(d) => decide(client, "undo", d, json_out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn decide(client: &Client, verb: &str, d: DecideArgs, json_out: bool) -> Result<()> {
    let v = client.post(
        &format!("/api/v1/actions/{verb}"),
        &json!({"ids": d.ids, "comment": d.comment}),
    )?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        actions_table(&v["actions"]).print();
    }
    Ok(())
}

fn action_params(kind: KindCmd) -> Result<(Common, ActionParams)> {
    Ok(match kind {
        KindCmd::Isolate {
            common,
            selective,
            exceptions,
            for_,
        } => (
            common,
            ActionParams::Isolate(IsolateParams {
                selective,
                exceptions,
                for_secs: for_.map(|d| d.as_secs()),
            }),
        ),
        KindCmd::ReleaseIsolation { common } => (common, ActionParams::ReleaseIsolation {}),
        KindCmd::Contain { target, force } => {
            let (common, p) = contain(target, force);
            (common, ActionParams::Contain(p))
        }
        KindCmd::Uncontain { target } => {
            let (common, p) = contain(target, false);
            (common, ActionParams::Uncontain(p))
        }
        KindCmd::Quarantine {
            common,
            path,
            sha256,
            roots,
        } => (
            common,
            ActionParams::Quarantine(QuarantineParams {
                path,
                sha256,
                roots,
            }),
        ),
        KindCmd::ReleaseQuarantine {
            common,
            entry,
            sha256,
            restore_path,
            overwrite,
        } => (
            common,
            ActionParams::ReleaseQuarantine(ReleaseQuarantineParams {
                entry,
                sha256,
                restore_path,
                overwrite,
            }),
        ),
        KindCmd::Scan {
            common,
            mode,
            paths,
            exclusions,
        } => (
            common,
            ActionParams::Scan(ScanParams {
                mode,
                paths,
                exclusions,
            }),
        ),
        KindCmd::RestrictExecution { common } => (common, ActionParams::RestrictExecution {}),
        KindCmd::ReleaseExecution { common } => (common, ActionParams::ReleaseExecution {}),
        KindCmd::CollectPackage { common } => (common, ActionParams::CollectPackage {}),
        KindCmd::RequestSample { common, path } => (
            common,
            ActionParams::RequestSample(RequestSampleParams { path }),
        ),
        KindCmd::Offboard { common } => (common, ActionParams::Offboard {}),
    })
}

/// A containment request: the target device, if managed, goes as the request's device.
fn contain(t: ContainTarget, force: bool) -> (Common, ContainParams) {
    (
        Common {
            devices: t.device.into_iter().collect(),
            fleet: false,
            comment: t.comment,
            source: None,
            external_id: t.external_id,
        },
        ContainParams {
            device: None,
            ip: t.ip,
            mac: t.mac,
            force,
        },
    )
}

/// `GROUP [hostname=GLOB] [cidr=BLOCK]` as the API's rule object.
fn group_rule(spec: &str) -> Result<Value> {
    let mut words = spec.split_whitespace();
    let Some(group) = words.next() else {
        bail!("an empty --rule: give GROUP [hostname=GLOB] [cidr=BLOCK]");
    };
    let mut rule = json!({"device_group": group});
    for w in words {
        match w.split_once('=') {
            Some(("hostname", v)) => rule["hostname"] = v.into(),
            Some(("cidr", v)) => rule["cidr"] = v.into(),
            _ => bail!("--rule {spec:?}: {w:?} is not hostname=GLOB or cidr=BLOCK"),
        }
    }
    Ok(rule)
}

fn realtime_out(v: &Value, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let mut t = Table::new(&["group", "real-time", "set by", "at"]);
    for a in v["realtime"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&a["device_group"]),
            if a["enabled"] == true { "on" } else { "off" }.to_owned(),
            text(&a["updated_by"]),
            ts(&a["updated_at"]),
        ]);
    }
    t.print();
    println!("groups without a setting of their own (and no * row): off");
    let mut d = Table::new(&["device", "hostname", "group", "watching"]);
    for e in v["devices"].as_array().into_iter().flatten() {
        d.row(vec![
            text(&e["device"]),
            text(&e["hostname"]),
            text(&e["device_group"]),
            match e["active"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
            .to_owned(),
        ]);
    }
    println!();
    d.print();
    Ok(())
}

fn automation_out(v: &Value, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let mut t = Table::new(&["group", "level", "set by", "at"]);
    for a in v["automation"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&a["device_group"]),
            text(&a["level"]),
            text(&a["updated_by"]),
            ts(&a["updated_at"]),
        ]);
    }
    t.print();
    println!(
        "groups without a level of their own (and no * row): {}",
        text(&v["default"])
    );
    Ok(())
}
