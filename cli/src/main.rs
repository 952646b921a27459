//! `palisadectl`: the operator CLI. Everything it does is a call to the controller's JSON API,
//! so it has exactly the powers of the web UI and of scripts.

mod client;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use palisade_common::action::{
    ContainParams, IsolateParams, QuarantineParams, ReleaseQuarantineParams, RequestSampleParams,
    ScanParams,
};
use palisade_common::{ActionKind, ActionParams, ActionSource, ActionStatus};
use serde_json::{Value, json};

use crate::client::Client;
use crate::table::{Table, ts};

#[derive(Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Palisade operator CLI: request, approve and follow response actions"
)]
struct Cli {
    /// The controller's API, e.g. http://127.0.0.1:7480.
    #[arg(
        long,
        global = true,
        env = "PALISADE_URL",
        default_value = "http://127.0.0.1:7480"
    )]
    url: String,
    /// Your API token.
    #[arg(long, global = true, env = "PALISADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrolled devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCmd,
    },
    /// Request an action on one or more devices.
    Action(ActionArgs),
    /// List, inspect and decide actions.
    Actions {
        #[command(subcommand)]
        command: ActionsCmd,
    },
    /// Files uploaded by agents (samples, packages).
    Artifacts {
        #[command(subcommand)]
        command: ArtifactsCmd,
    },
    /// Enrolment tokens for new agents.
    EnrollToken {
        #[command(subcommand)]
        command: EnrollTokenCmd,
    },
    /// Operators and their roles.
    Users {
        #[command(subcommand)]
        command: UsersCmd,
    },
    /// Approval policy per device group and action kind.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// What may run on a device group's devices while execution is restricted, beyond the
    /// trusted system binaries.
    ExecAllowlist {
        #[command(subcommand)]
        command: AllowlistCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Who the token belongs to.
    Whoami,
}

#[derive(Subcommand)]
enum DevicesCmd {
    List,
    /// One device and its queue of approved, unfinished actions.
    Show {
        device: String,
    },
    /// The files in a device's quarantine vault, as its agent last reported them.
    Vault {
        device: String,
    },
    /// What the device reported on its own (denied executions …), newest first.
    Events {
        device: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum AllowlistCmd {
    /// Replace a group's allowlist (with no --sha256 and no --path: empty it).
    Set {
        #[arg(long = "group", default_value = "default")]
        device_group: String,
        /// SHA-256 of an allowed file (64 hex digits). Repeatable.
        #[arg(long)]
        sha256: Vec<String>,
        /// Absolute path of an allowed file. Repeatable.
        #[arg(long)]
        path: Vec<String>,
    },
    List,
}

#[derive(Args)]
struct ActionArgs {
    #[command(subcommand)]
    kind: KindCmd,
}

/// Options every action request takes.
#[derive(Args, Clone)]
struct Common {
    /// Device ids or hostnames (with --fleet: optional, default every device in scope).
    #[arg(required_unless_present = "fleet")]
    devices: Vec<String>,
    /// One fleet-wide action with a child per device: the devices named, or every active
    /// device you may act on that implements the kind (a release by --sha256: that holds it).
    #[arg(long)]
    fleet: bool,
    /// Why: required, and kept in the history.
    #[arg(long)]
    comment: String,
    /// Action source (default manual_device_action).
    #[arg(long)]
    source: Option<ActionSource>,
    /// Your ticket or case id.
    #[arg(long)]
    external_id: Option<String>,
}

#[derive(Subcommand)]
enum KindCmd {
    /// Cut the device off the network (except the controller).
    Isolate {
        #[command(flatten)]
        common: Common,
        /// Selective isolation: allow the exceptions given with --except.
        #[arg(long)]
        selective: bool,
        /// An allowed flow, e.g. `198.51.100.0/24 tcp 443 out`.
        #[arg(long = "except")]
        exceptions: Vec<String>,
        /// Release by itself after this long (e.g. 4h).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_: Option<Duration>,
    },
    ReleaseIsolation {
        #[command(flatten)]
        common: Common,
    },
    /// Have the other agents block a device or address.
    Contain {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: ContainTarget,
    },
    Uncontain {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: ContainTarget,
    },
    /// Stop the processes using a file and move it into the agent's vault.
    Quarantine {
        #[command(flatten)]
        common: Common,
        /// Absolute path of the file (with --sha256: only if it has that hash).
        #[arg(long, required_unless_present = "sha256")]
        path: Option<String>,
        /// Quarantine every file with this hash under the --root directories.
        #[arg(long)]
        sha256: Option<String>,
        /// A directory to search for --sha256 (repeatable).
        #[arg(long = "root")]
        roots: Vec<String>,
    },
    /// Put a quarantined file back (the undo of quarantine).
    ReleaseQuarantine {
        #[command(flatten)]
        common: Common,
        /// The vault entry id (see `devices vault`).
        #[arg(long, required_unless_present = "sha256")]
        entry: Option<String>,
        /// Release every entry with this hash (with --fleet: on every device that holds it).
        #[arg(long)]
        sha256: Option<String>,
        /// Restore to this path instead of the original one.
        #[arg(long)]
        restore_path: Option<String>,
        /// Replace a different file at the destination.
        #[arg(long)]
        overwrite: bool,
    },
    /// Run an antivirus scan.
    Scan {
        #[command(flatten)]
        common: Common,
        /// quick, full or custom.
        #[arg(long, default_value = "quick")]
        mode: String,
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long = "exclude")]
        exclusions: Vec<String>,
    },
    RestrictExecution {
        #[command(flatten)]
        common: Common,
    },
    ReleaseExecution {
        #[command(flatten)]
        common: Common,
    },
    CollectPackage {
        #[command(flatten)]
        common: Common,
    },
    /// Upload a file from the device.
    RequestSample {
        #[command(flatten)]
        common: Common,
        /// Absolute path on the device.
        #[arg(long)]
        path: String,
    },
    /// Erase the agent's identity and revoke its certificate.
    Offboard {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
struct ContainTarget {
    /// A managed device id.
    #[arg(long = "target-device")]
    device: Option<String>,
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    #[arg(long)]
    mac: Option<String>,
}

#[derive(Subcommand)]
enum ActionsCmd {
    List(ListArgs),
    /// One action with its hop timeline and history.
    Show {
        id: String,
    },
    Approve(DecideArgs),
    /// Reject pending actions (a comment is required).
    Reject(DecideArgs),
    /// Cancel actions not yet delivered.
    Cancel(DecideArgs),
    /// Undo succeeded lasting actions (creates linked actions).
    Undo(DecideArgs),
}

#[derive(Args)]
struct ListArgs {
    /// Only actions awaiting approval.
    #[arg(long, conflicts_with = "history")]
    pending: bool,
    /// Everything but actions awaiting approval.
    #[arg(long)]
    history: bool,
    /// Only actions created in this window, e.g. 1d, 7d, 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    #[arg(long)]
    kind: Option<ActionKind>,
    #[arg(long)]
    status: Option<ActionStatus>,
    #[arg(long)]
    source: Option<ActionSource>,
    /// Device id or hostname.
    #[arg(long)]
    device: Option<String>,
    #[arg(long = "group")]
    device_group: Option<String>,
    #[arg(long)]
    requested_by: Option<String>,
    /// Column to sort by (id, kind, status, source, requested_by, created_at, decided_at, finished_at, hostname).
    #[arg(long, default_value = "id")]
    sort: String,
    /// Ascending (default descending).
    #[arg(long)]
    asc: bool,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, default_value_t = 0)]
    offset: u32,
}

#[derive(Args)]
struct DecideArgs {
    #[arg(required = true)]
    ids: Vec<u64>,
    #[arg(long, default_value = "")]
    comment: String,
}

#[derive(Subcommand)]
enum ArtifactsCmd {
    /// Download an action's artifact, verifying its sha256.
    Download {
        action: u64,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Which artifact (default: the action's only one).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum EnrollTokenCmd {
    Create {
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "24h")]
        expires_in: String,
        #[arg(long = "group", default_value = "default")]
        device_group: String,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user; prints their API token once.
    Add {
        name: String,
        /// viewer, responder, approver, investigator or admin.
        #[arg(long)]
        role: String,
        /// Limit the role to these device groups (default: all).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Set the approval policy for a group (or * for all) and a kind (default: all kinds).
    Set {
        #[arg(long = "group", default_value = "*")]
        device_group: String,
        #[arg(long)]
        kind: Option<ActionKind>,
        #[arg(long, action = clap::ArgAction::Set)]
        require_approval: bool,
        #[arg(long, action = clap::ArgAction::Set)]
        distinct_approver: bool,
    },
    List,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; exits 1 and names the first broken record if it is broken.
    Verify,
    /// Recent audit records (optionally for one action).
    List {
        #[arg(long)]
        action: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

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
    let client = Client::new(&cli.url, cli.token.as_deref())?;
    let print = |v: &Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match cli.command {
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
            command: UsersCmd::List,
        } => {
            let v = client.get("/api/v1/users", &[])?;
            if json_out {
                print(&v)?;
            } else {
                let mut t = Table::new(&["name", "role", "groups", "created by", "created at"]);
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

fn actions(client: &Client, command: ActionsCmd, json_out: bool) -> Result<ExitCode> {
    let print = |v: &Value| -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match command {
        ActionsCmd::List(a) => {
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
            ];
            for (k, v) in opt {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
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
        KindCmd::Contain { common, target } => (common, ActionParams::Contain(contain(target)?)),
        KindCmd::Uncontain { common, target } => {
            (common, ActionParams::Uncontain(contain(target)?))
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

fn contain(t: ContainTarget) -> Result<ContainParams> {
    let device = t
        .device
        .map(|d| d.parse())
        .transpose()
        .context("--target-device")?;
    Ok(ContainParams {
        device,
        ip: t.ip,
        mac: t.mac,
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn devices_table(devices: &Value) -> Table {
    let mut t = Table::new(&[
        "id",
        "hostname",
        "group",
        "online",
        "last seen",
        "agent",
        "queued",
        "status",
    ]);
    for d in devices.as_array().into_iter().flatten() {
        t.row(vec![
            text(&d["id"]),
            text(&d["hostname"]),
            text(&d["device_group"]),
            if d["online"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            ts(&d["last_seen"]),
            text(&d["agent_version"]),
            text(&d["queued"]),
            text(&d["status"]),
        ]);
    }
    t
}

fn actions_table(actions: &Value) -> Table {
    let mut t = Table::new(&[
        "id",
        "action",
        "device",
        "status",
        "source",
        "requested by",
        "requested at",
        "comment",
        "result",
    ]);
    for a in actions.as_array().into_iter().flatten() {
        t.row(vec![
            text(&a["id"]),
            text(&a["kind"]),
            if !a["children"].is_null() {
                format!("fleet ({})", text(&a["children"]["total"]))
            } else if a["hostname"].is_null() {
                text(&a["device_id"])
            } else {
                text(&a["hostname"])
            },
            text(&a["status"]),
            text(&a["source"]),
            text(&a["requested_by"]),
            ts(&a["created_at"]),
            text(&a["comment"]),
            text(&a["result_summary"]),
        ]);
    }
    t
}

fn policy_table(policies: &Value) -> Table {
    let mut t = Table::new(&["group", "kind", "require approval", "distinct approver"]);
    for p in policies.as_array().into_iter().flatten() {
        t.row(vec![
            text(&p["device_group"]),
            text(&p["kind"]),
            text(&p["require_approval"]),
            text(&p["distinct_approver"]),
        ]);
    }
    t
}

fn show_action(v: &Value) {
    let a = &v["action"];
    let mut t = Table::new(&["field", "value"]);
    let fields = [
        "id",
        "kind",
        "status",
        "device_id",
        "hostname",
        "device_group",
        "source",
        "requested_by",
        "comment",
        "external_id",
        "decided_by",
        "decision_comment",
        "cancelled_by",
        "cancel_comment",
        "result_summary",
        "undo_of",
        "undone_by",
        "parent_id",
    ];
    for f in fields {
        if !a[f].is_null() {
            t.row(vec![f.into(), text(&a[f])]);
        }
    }
    t.row(vec!["params".into(), a["params"].to_string()]);
    if let Some(c) = a["children"].as_object() {
        let n = |k: &str| c.get(k).map(text).unwrap_or_default();
        t.row(vec![
            "devices".into(),
            format!(
                "{} total: {} succeeded, {} failed, {} pending, {} not run",
                n("total"),
                n("succeeded"),
                n("failed"),
                n("pending"),
                n("not_run")
            ),
        ]);
    }
    if !a["progress"].is_null() {
        t.row(vec!["progress".into(), text(&a["progress"])]);
    }
    t.print();
    println!("\ntimeline:");
    let mut hops = Table::new(&["hop", "at", "by"]);
    for h in v["timeline"].as_array().into_iter().flatten() {
        hops.row(vec![text(&h["hop"]), ts(&h["at"]), text(&h["actor"])]);
    }
    hops.print();
    if let Some(arts) = a["artifacts"].as_array().filter(|a| !a.is_empty()) {
        println!("\nartifacts:");
        let mut t = Table::new(&["name", "size", "sha256"]);
        for x in arts {
            t.row(vec![text(&x["name"]), text(&x["size"]), text(&x["sha256"])]);
        }
        t.print();
    }
    if let Some(children) = v["children"].as_array().filter(|c| !c.is_empty()) {
        println!("\nper device:");
        actions_table(&Value::Array(children.clone())).print();
    }
    let detail = &a["result_detail"];
    if let Some(collectors) = detail["collectors"].as_array() {
        // An investigation package: what each collector did.
        println!("\ncollectors:");
        let mut t = Table::new(&["collector", "status", "ms", "files", "bytes", "error"]);
        for c in collectors {
            t.row(vec![
                text(&c["name"]),
                text(&c["status"]),
                text(&c["duration_ms"]),
                text(&c["files"]),
                text(&c["bytes"]),
                text(&c["error"]),
            ]);
        }
        t.print();
        if detail["package"]["name"].is_string() {
            println!(
                "\ndownload: palisadectl artifacts download {} -o FILE",
                text(&a["id"])
            );
        }
    } else if !detail.is_null() {
        println!("\nresult detail: {detail}");
    }
    let _ = std::io::stdout().flush();
}

fn allowlist_table(lists: &[Value]) -> Table {
    let mut t = Table::new(&["group", "kind", "entry", "updated by", "updated at"]);
    for l in lists {
        let entries = l["sha256"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| ("sha256", h))
            .chain(
                l["paths"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| ("path", p)),
            );
        for (kind, entry) in entries {
            t.row(vec![
                text(&l["device_group"]),
                kind.into(),
                text(entry),
                text(&l["updated_by"]),
                ts(&l["updated_at"]),
            ]);
        }
    }
    t
}
