//! Installed packages: the dpkg database, or rpm's.

use std::path::Path;

use serde_json::json;

use super::{Ctx, Out, find_program, run_program};

pub fn packages(ctx: &Ctx) -> anyhow::Result<Out> {
    let mut out = Out::default();
    let dpkg = Path::new("/var/lib/dpkg/status");
    if dpkg.exists() {
        let text = std::fs::read_to_string(dpkg)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dpkg.display()))?;
        out.json(
            "packages.json",
            &json!({"manager": "dpkg", "packages": parse_dpkg_status(&text)}),
        );
        return Ok(out);
    }
    if let Some(rpm) = find_program("rpm") {
        let list = run_program(
            &rpm,
            &[
                "-qa",
                "--qf",
                "%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{INSTALLTIME}\\n",
            ],
            ctx,
        )?;
        let mut packages: Vec<_> = String::from_utf8_lossy(&list)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some(json!({"name": f.first()?, "version": f.get(1)?, "arch": f.get(2)?, "installed_unix": f.get(3)?.parse::<u64>().ok()}))
            })
            .collect();
        packages.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out.json(
            "packages.json",
            &json!({"manager": "rpm", "packages": packages}),
        );
        return Ok(out);
    }
    out.unavailable = Some("neither a dpkg database nor rpm on this host".into());
    Ok(out)
}

/// The installed packages of a dpkg status file (paragraphs of `Field: value`).
pub fn parse_dpkg_status(text: &str) -> Vec<serde_json::Value> {
    text.split("\n\n")
        .filter_map(|para| {
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            };
            let status = field("Status")?;
            if !status.ends_with(" installed") {
                return None;
            }
            Some(json!({
                "name": field("Package")?,
                "version": field("Version"),
                "arch": field("Architecture"),
                "status": status,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_dpkg_packages_are_listed() {
        let text = "Package: bash\nStatus: install ok installed\nVersion: 5.2-1\nArchitecture: amd64\nDescription: shell\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let p = parse_dpkg_status(text);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["name"], "bash");
        assert_eq!(p[0]["version"], "5.2-1");
    }
}
