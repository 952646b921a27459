//! How `palisadectl` shows the API's answers to people: tables and the action detail.

use std::io::Write;

use serde_json::Value;

use palisade_common::labels::Hop;
use palisade_common::{ActionKind, ActionSource, ActionStatus};

use crate::table::{Table, ts};

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The label of an identifier (`palisade_common::labels`), or the identifier itself when this
/// build does not know it (a newer controller).
fn word<T: std::str::FromStr>(v: &Value, label: fn(T) -> &'static str) -> String {
    let id = text(v);
    id.parse::<T>().map(|t| label(t).to_owned()).unwrap_or(id)
}

pub(crate) fn kind(v: &Value) -> String {
    word(v, ActionKind::label)
}

pub(crate) fn status(v: &Value) -> String {
    word(v, ActionStatus::label)
}

pub(crate) fn source(v: &Value) -> String {
    word(v, ActionSource::label)
}

/// Who did something: a device's hostname where the API names one (`actor_name`), else the
/// actor (a user's name, or a device id).
pub(crate) fn actor(r: &Value) -> String {
    if r["actor_name"].is_string() {
        text(&r["actor_name"])
    } else {
        text(&r["actor"])
    }
}

pub(crate) fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

pub(crate) fn devices_table(devices: &Value) -> Table {
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

pub(crate) fn actions_table(actions: &Value) -> Table {
    let mut t = Table::new(&[
        "id",
        "action",
        "device",
        "target",
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
            kind(&a["kind"]),
            if !a["children"].is_null() {
                format!("fleet ({})", text(&a["children"]["total"]))
            } else if a["hostname"].is_null() {
                text(&a["device_id"])
            } else {
                text(&a["hostname"])
            },
            text(&a["entity"]),
            status(&a["status"]),
            source(&a["source"]),
            text(&a["requested_by"]),
            ts(&a["created_at"]),
            text(&a["comment"]),
            text(&a["result_summary"]),
        ]);
    }
    t
}

pub(crate) fn policy_table(policies: &Value) -> Table {
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

pub(crate) fn show_action(v: &Value) {
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
        if a[f].is_null() {
            continue;
        }
        let value = match f {
            "kind" => kind(&a[f]),
            "status" => status(&a[f]),
            "source" => source(&a[f]),
            _ => text(&a[f]),
        };
        t.row(vec![f.into(), value]);
        if f == "kind" && !text(&a["entity"]).is_empty() {
            t.row(vec!["target".into(), text(&a["entity"])]);
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
        // Stored as the agent's JSON (`{"message", "permille"}`); show its message.
        let raw = text(&a["progress"]);
        let message = serde_json::from_str::<Value>(&raw)
            .ok()
            .and_then(|p| p["message"].as_str().map(str::to_owned))
            .unwrap_or(raw);
        t.row(vec!["progress".into(), message]);
    }
    t.print();
    println!("\ntimeline:");
    let mut hops = Table::new(&["hop", "at", "by"]);
    for h in v["timeline"].as_array().into_iter().flatten() {
        hops.row(vec![word(&h["hop"], Hop::label), ts(&h["at"]), actor(h)]);
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
    } else if let Some(detections) = detail["detections"].as_array() {
        // A scan: what it covered and what it found.
        let c = &detail["counts"];
        println!(
            "\nscanned: {} files, {} bytes ({} unchanged since a clean scan), {} directories; skipped: {} too large, {} special, {} vanished, {} unreadable; {} excluded; rules v{}",
            text(&c["files"]),
            text(&c["bytes"]),
            text(&c["cached"]),
            text(&detail["directories"]),
            text(&c["too_large"]),
            text(&c["special"]),
            text(&c["vanished"]),
            text(&c["unreadable"]),
            text(&c["excluded"]),
            text(&detail["rules_version"]),
        );
        if !detections.is_empty() {
            println!("\ndetections:");
            let mut t = Table::new(&["path", "size", "sha256", "matched"]);
            for d in detections {
                t.row(vec![
                    text(&d["path"]),
                    text(&d["size"]),
                    text(&d["sha256"]),
                    list(&d["matches"]),
                ]);
            }
            t.print();
        }
    } else if !detail.is_null() {
        println!("\nresult detail: {detail}");
    }
    let _ = std::io::stdout().flush();
}

pub(crate) fn allowlist_table(lists: &[Value]) -> Table {
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
