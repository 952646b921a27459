//! What starts by itself: enabled systemd units, cron tables, rc.local, login profile scripts
//! and ld.so.preload. Each item is listed with its hash and copied raw.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Ctx, Out};

/// Largest file copied raw.
const MAX_COPY: u64 = 1 << 20;

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

pub fn autoruns(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let mut items = Vec::new();
    let mut vendor = Vec::new();
    let mut item = |out: &mut Out, kind: &str, path: &Path, extra: serde_json::Value| {
        let meta = std::fs::symlink_metadata(path).ok();
        let copied = out.raw(path, MAX_COPY.min(ctx.max_bytes / 16));
        items.push(json!({
            "kind": kind,
            "path": path,
            "sha256": ctx.hash_file(path, 64 << 20).or_else(|| std::fs::canonicalize(path).ok().and_then(|p| ctx.hash_file(&p, 64 << 20))),
            "size": meta.as_ref().map(|m| m.len()),
            "symlink_to": std::fs::read_link(path).ok(),
            "copied": copied,
            "detail": extra,
        }));
    };

    // systemd: a unit is enabled by a link in a target's .wants/.requires directory.
    for root in [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/etc/systemd/user",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        for dir in sorted_entries(Path::new(root)) {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(target) = name
                .strip_suffix(".wants")
                .or_else(|| name.strip_suffix(".requires"))
            else {
                if root == "/etc/systemd/system" && dir.is_file() && !dir.is_symlink() {
                    // A unit file an admin (or intruder) put in /etc: copy it.
                    item(&mut out, "systemd_unit_file", &dir, json!({}));
                }
                continue;
            };
            if !root.starts_with("/etc") && !root.starts_with("/run") {
                // Vendor defaults: listed, not copied (the package manager owns them).
                for link in sorted_entries(&dir) {
                    vendor.push(json!({
                        "unit": link.file_name().map(|n| n.to_string_lossy().into_owned()),
                        "wanted_by": target,
                    }));
                }
                continue;
            }
            for link in sorted_entries(&dir) {
                let unit = link.file_name().map(|n| n.to_string_lossy().into_owned());
                item(
                    &mut out,
                    "systemd_enabled_unit",
                    &link,
                    json!({"unit": unit, "wanted_by": target}),
                );
            }
        }
    }
    // cron
    for f in ["/etc/crontab", "/etc/anacrontab"] {
        if Path::new(f).exists() {
            item(&mut out, "cron_table", Path::new(f), json!({}));
        }
    }
    for dir in ["/etc/cron.d", "/var/spool/cron/crontabs", "/var/spool/cron"] {
        for f in sorted_entries(Path::new(dir)) {
            if f.is_file() {
                item(&mut out, "cron_table", &f, json!({}));
            }
        }
    }
    for dir in [
        "/etc/cron.hourly",
        "/etc/cron.daily",
        "/etc/cron.weekly",
        "/etc/cron.monthly",
    ] {
        for f in sorted_entries(Path::new(dir)) {
            item(&mut out, "cron_script", &f, json!({}));
        }
    }
    // boot and login scripts, preloaded libraries
    for f in [
        "/etc/rc.local",
        "/etc/profile",
        "/etc/bash.bashrc",
        "/etc/environment",
        "/etc/ld.so.preload",
    ] {
        if Path::new(f).exists() {
            let kind = match f {
                "/etc/rc.local" => "rc_local",
                "/etc/ld.so.preload" => "ld_so_preload",
                _ => "profile_script",
            };
            item(&mut out, kind, Path::new(f), json!({}));
        }
    }
    for f in sorted_entries(Path::new("/etc/profile.d")) {
        item(&mut out, "profile_script", &f, json!({}));
    }
    let preload = Path::new("/etc/ld.so.preload").exists();
    out.json(
        "autoruns.json",
        &json!({"ld_so_preload_present": preload, "items": items, "vendor_enabled_units": vendor}),
    );
    Ok(out)
}
