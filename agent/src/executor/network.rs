//! Network enforcement on the agent: isolation and containment as desired state, applied
//! through the planner (`host::net_plan`) and the host's nftables applier, verified over the
//! live link, watched for tamper, ended by its time box or a break-glass code.
//!
//! Who decides what is enforced: the journaled desired state, minus the isolations ended
//! here (`NetLocal::local_releases`) and those past their time box. Every path — reconcile at
//! start, a `Desired` from the controller, an action, the tamper check, a break-glass release
//! from the command line — computes the same plan from those, so they cannot disagree.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use palisade_common::action::{ActionReport, ActionSpec, IsolateParams, Outcome};
use palisade_common::breakglass::Code;
use palisade_common::net::Exception;
use palisade_common::wire::{DesiredState, Isolation, LocalRelease};
use palisade_common::{ActionKind, DeviceId};
use serde_json::json;

use super::{Executor, report};
use crate::clock::now_ms;
use crate::host::net_plan::{self, NetPlan};
use crate::host::{Host, NetStatus};
use crate::journal::{Journal, NetLocal};

/// Asks the runtime to prove the controller answers over the live connection; the runtime
/// answers on the channel it is given when the controller does.
pub type ProbeRequest = std_mpsc::SyncSender<()>;

/// The executor's network state besides the journal: where the controller is, how to prove
/// it still answers, and when the tamper check last read our table back.
pub struct Network {
    /// `HOST:PORT` of the controller, as enrolled: resolved and pinned before isolating.
    pub controller: Option<String>,
    /// The address of the live connection to the controller, set by the runtime.
    pub(crate) live_controller: Mutex<Option<SocketAddr>>,
    /// How the executor asks the runtime to verify the live link.
    pub(crate) prober: Mutex<Option<tokio::sync::mpsc::UnboundedSender<ProbeRequest>>>,
    /// How long an isolation may take to prove the controller is still reachable.
    pub verify_within: Duration,
    /// When the tamper check last read our table back.
    pub(crate) last_net_check: Mutex<Option<Instant>>,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            controller: None,
            live_controller: Mutex::new(None),
            prober: Mutex::new(None),
            verify_within: Duration::from_secs(5),
            last_net_check: Mutex::new(None),
        }
    }
}

/// Longest time between two readings of our table by the tamper check.
const FULL_NET_CHECK: Duration = Duration::from_secs(30);

/// The kinds whose unacknowledged result makes the local isolation win over the controller's
/// older copy.
pub const ISOLATION_KINDS: [ActionKind; 2] = [ActionKind::Isolate, ActionKind::ReleaseIsolation];

/// The isolation to enforce: the desired one unless it ended here or its time is up.
pub fn effective_isolation<'a>(
    d: &'a DesiredState,
    local: &NetLocal,
    now_ms: i64,
) -> Option<&'a Isolation> {
    d.isolation.as_ref().filter(|iso| {
        !local.local_releases.iter().any(|r| r.action == iso.action)
            && iso.until_ms.is_none_or(|until| now_ms < until)
    })
}

/// The plan for `d`: the controller is never contained, whatever the list says.
pub fn plan(d: &DesiredState, local: &NetLocal, now_ms: i64) -> NetPlan {
    let isolation = effective_isolation(d, local, now_ms).map(|iso| {
        iso.params
            .exceptions
            .iter()
            .filter_map(|e| Exception::parse(e).ok())
            .collect()
    });
    let contained = d
        .contained
        .iter()
        .filter(|a| !local.controller.iter().any(|c| c.ip() == **a))
        .copied()
        .collect();
    NetPlan {
        controller: local.controller.clone(),
        isolation,
        contained,
        contained_macs: d.contained_macs.clone(),
    }
}

fn needs_table(p: &NetPlan) -> bool {
    p.isolation.is_some() || !p.contained.is_empty() || !p.contained_macs.is_empty()
}

impl<H: Host> Executor<H> {
    /// Applies the network part of `d` and records what the kernel then holds. Returns it
    /// with the time (unix ms) the transaction was committed.
    pub(crate) fn enforce_net(
        &self,
        journal: &Journal,
        d: &DesiredState,
    ) -> Result<(NetStatus, i64)> {
        let mut local = journal.net()?;
        let p = plan(d, &local, now_ms());
        // Nothing to enforce, none applied and none there: no need to run nft again (hosts
        // without the nftables package run every other action).
        if !needs_table(&p) && local.digest.is_none() && self.host().net_status()?.digest.is_none()
        {
            return Ok((NetStatus::default(), now_ms()));
        }
        let script = net_plan::script(&p);
        let script_sha256 = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            script.as_bytes(),
        ));
        // The same plan as last applied, and the table as it was left: nothing to do (the
        // tamper check compares the table every second anyway).
        if local.script_sha256.as_deref() == Some(script_sha256.as_str()) {
            let now = self.host().net_status()?;
            if now.digest == local.digest {
                return Ok((now, now_ms()));
            }
        }
        let status = self.host().apply_net(&script)?;
        let at = status.committed_at_ms.unwrap_or_else(now_ms);
        if local.digest != status.digest || local.script_sha256.as_ref() != Some(&script_sha256) {
            local.digest = status.digest.clone();
            local.script_sha256 = Some(script_sha256);
            journal.set_net(&local)?;
        }
        Ok((status, at))
    }

    /// Pins the controller's addresses: what its name resolves to now (if it does), the
    /// address of the live connection, and those pinned before. Journaled.
    fn pin_controller(&self, journal: &Journal) -> Result<Vec<SocketAddr>> {
        let mut local = journal.net()?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        if let Some(name) = &self.net.controller
            && let Ok(resolved) = self.host().resolve(name)
        {
            addrs.extend(resolved);
        }
        if let Some(live) = *self.net.live_controller.lock().expect("live lock") {
            addrs.push(live);
        }
        if addrs.is_empty() {
            addrs = local.controller.clone();
        }
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            bail!("the controller's address is unknown (cannot resolve it, no live connection)");
        }
        if local.controller != addrs {
            local.controller = addrs.clone();
            journal.set_net(&local)?;
        }
        Ok(addrs)
    }

    /// Proves that the controller still answers over the live connection within the bound.
    fn verify_link(&self) -> Result<Duration, String> {
        let Some(prober) = self.net.prober.lock().expect("prober lock").clone() else {
            return Err("no connection to the controller to verify over".into());
        };
        let start = Instant::now();
        let (tx, rx) = std_mpsc::sync_channel(1);
        if prober.send(tx).is_err() {
            return Err("the agent's session driver is gone".into());
        }
        match rx.recv_timeout(self.net.verify_within) {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(format!(
                "the controller did not answer over the live connection within {} ms",
                self.net.verify_within.as_millis()
            )),
        }
    }

    /// Isolates the device now and journals it as desired; verifies over the live link and
    /// rolls back if the controller cannot be reached through the new rules.
    pub(crate) fn isolate(&self, spec: &ActionSpec, params: &IsolateParams) -> ActionReport {
        let fail = |why: String, detail| report(spec, Outcome::Failed, why, detail);
        let (journal, before, status, enforced_at, until) = {
            let _serial = self.desired.lock().expect("desired lock");
            let journal = match Journal::open(&self.journal) {
                Ok(j) => j,
                Err(e) => return fail(format!("cannot open the journal: {e:#}"), json!({})),
            };
            let before = match journal.desired() {
                Ok(d) => d.unwrap_or_default(),
                Err(e) => return fail(format!("cannot read the desired state: {e:#}"), json!({})),
            };
            let controller = match self.pin_controller(&journal) {
                Ok(c) => c,
                Err(e) => return fail(format!("cannot isolate: {e:#}"), json!({})),
            };
            tracing::info!(?controller, "isolating; the controller stays reachable");
            // A repeat after a restart keeps the time box it started with.
            let until = match &before.isolation {
                Some(iso) if iso.action == spec.id => iso.until_ms,
                _ => params
                    .for_secs
                    .map(|s| now_ms().saturating_add((s as i64).saturating_mul(1000))),
            };
            let mut next = before.clone();
            next.isolation = Some(Isolation {
                action: spec.id,
                params: params.clone(),
                until_ms: until,
            });
            let (status, enforced_at) = match self.enforce_net(&journal, &next) {
                Ok(s) => s,
                Err(e) => {
                    let _ = self.enforce_net(&journal, &before);
                    return fail(format!("cannot isolate: {e:#}"), json!({}));
                }
            };
            if let Err(e) = journal.set_desired(&next) {
                let _ = self.enforce_net(&journal, &before);
                return fail(format!("cannot journal the isolation: {e:#}"), json!({}));
            }
            (journal, before, status, enforced_at, until)
        };
        // Not under the lock: the runtime, which answers the probe, may need it meanwhile.
        match self.verify_link() {
            Ok(rtt) => {
                let digest = status.digest.clone().unwrap_or_default();
                let mode = if params.selective {
                    format!("selective, {} exception(s)", params.exceptions.len())
                } else {
                    "full".into()
                };
                let until_text = until
                    .map(|u| format!("; releases itself in {} s", (u - enforced_at).max(0) / 1000))
                    .unwrap_or_default();
                report(
                    spec,
                    Outcome::Succeeded,
                    format!(
                        "isolated ({mode}); controller verified reachable in {} ms; ruleset sha256 {digest}{until_text}",
                        rtt.as_millis()
                    ),
                    json!({"digest": digest, "enforced_at_ms": enforced_at, "until_ms": until,
                        "verified_in_ms": rtt.as_millis() as u64, "ruleset": status.listing}),
                )
            }
            Err(why) => {
                let _serial = self.desired.lock().expect("desired lock");
                let rolled = self
                    .enforce_net(&journal, &before)
                    .and_then(|_| journal.set_desired(&before));
                let rollback = match rolled {
                    Ok(()) => "rules rolled back".to_owned(),
                    Err(e) => format!("ROLLBACK FAILED: {e:#}"),
                };
                fail(
                    format!("isolation not kept: {why}; {rollback}"),
                    json!({"reason": why, "rolled_back": rolled_ok(&rollback)}),
                )
            }
        }
    }

    /// Releases the isolation now and journals it.
    pub(crate) fn release_isolation(&self, spec: &ActionSpec) -> ActionReport {
        let fail = |why: String| report(spec, Outcome::Failed, why, json!({}));
        let _serial = self.desired.lock().expect("desired lock");
        let journal = match Journal::open(&self.journal) {
            Ok(j) => j,
            Err(e) => return fail(format!("cannot open the journal: {e:#}")),
        };
        let mut next = match journal.desired() {
            Ok(d) => d.unwrap_or_default(),
            Err(e) => return fail(format!("cannot read the desired state: {e:#}")),
        };
        let was = next.isolation.take();
        let (status, enforced_at) = match self.enforce_net(&journal, &next) {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot release the isolation: {e:#}")),
        };
        if let Err(e) = journal.set_desired(&next) {
            return fail(format!("cannot journal the release: {e:#}"));
        }
        let remains = match &status.digest {
            Some(d) => format!("containment rules remain (sha256 {d})"),
            None => "our nftables table is gone".into(),
        };
        let summary = match was {
            Some(iso) => format!(
                "released from isolation (of action {}); {remains}",
                iso.action
            ),
            None => format!("was not isolated; {remains}"),
        };
        report(
            spec,
            Outcome::Succeeded,
            summary,
            json!({"digest": status.digest, "enforced_at_ms": enforced_at}),
        )
    }

    /// Ends an isolation whose time box is over. Returns whether it did.
    pub fn expire_isolation(&self, journal: &Journal) -> Result<bool> {
        let _serial = self.desired.lock().expect("desired lock");
        let (d, local) = journal.state()?;
        self.expire(journal, &d, &local)
    }

    /// [`Self::expire_isolation`] on a state read under the `desired` lock.
    pub(crate) fn expire(
        &self,
        journal: &Journal,
        d: &DesiredState,
        local: &NetLocal,
    ) -> Result<bool> {
        let now = now_ms();
        let Some(iso) = &d.isolation else {
            return Ok(false);
        };
        let expired = iso.until_ms.is_some_and(|u| now >= u);
        if !expired || local.local_releases.iter().any(|r| r.action == iso.action) {
            return Ok(false);
        }
        let mut local = local.clone();
        local.local_releases.push(LocalRelease {
            action: iso.action,
            reason: "time box expired".into(),
            at_ms: now,
        });
        journal.set_net(&local)?;
        self.enforce_net(journal, d)?;
        tracing::warn!(action = %iso.action, "isolation time box expired: released");
        Ok(true)
    }

    /// Re-checks our table against what was applied; puts it back if someone removed or
    /// changed it, and says what was found. On a state read under the `desired` lock.
    pub(crate) fn check_net(
        &self,
        journal: &Journal,
        d: &DesiredState,
        local: &NetLocal,
    ) -> Result<Option<String>> {
        let expected = needs_table(&plan(d, local, now_ms()));
        if !expected && local.digest.is_none() {
            return Ok(None);
        }
        // Read our table back only when the firewall changed, and at least every half minute
        // (in case a change notification was missed).
        {
            let mut last = self.net.last_net_check.lock().expect("net check lock");
            let changed = self.host().net_changed();
            if !changed && last.is_some_and(|t| t.elapsed() < FULL_NET_CHECK) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let now = self.host().net_status()?;
        let found = match (&now.digest, &local.digest) {
            (None, _) if expected => "our nftables table was removed",
            (Some(_), _) if !expected => return Ok(None),
            (Some(have), Some(want)) if have != want => "our nftables table was altered",
            _ => return Ok(None),
        };
        self.enforce_net(journal, d)?;
        Ok(Some(found.to_owned()))
    }

    /// Releases the isolation with an offline break-glass code: verified against the
    /// controller's key, bound to this device, unexpired, not used before.
    pub fn breakglass_release(&self, device: &DeviceId, key: &[u8], text: &str) -> Result<String> {
        let code = Code::parse(text).map_err(anyhow::Error::msg)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(
                &Code::message(device, code.serial, code.not_after),
                &code.signature,
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the code is not valid for this device ({device}): wrong device, mistyped, or not from this controller"
                )
            })?;
        let now = now_ms();
        if now / 1000 > code.not_after as i64 {
            bail!(
                "the code expired at {} (unix seconds {})",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(code.not_after)
                ),
                code.not_after
            );
        }
        let _serial = self.desired.lock().expect("desired lock");
        let journal = Journal::open(&self.journal)?;
        let d = journal.desired()?.unwrap_or_default();
        let mut local = journal.net()?;
        if local.used_codes.contains(&code.serial) {
            bail!("code {} was already used on this device", code.serial);
        }
        let Some(iso) = effective_isolation(&d, &local, now).cloned() else {
            bail!("this device is not isolated; nothing to release");
        };
        local.used_codes.push(code.serial);
        local.local_releases.push(LocalRelease {
            action: iso.action,
            reason: format!("break-glass code {}", code.serial),
            at_ms: now,
        });
        journal.set_net(&local)?;
        self.enforce_net(&journal, &d)
            .context("the code is accepted but the rules could not be changed")?;
        Ok(format!(
            "released from isolation (action {}) with break-glass code {}; the controller hears of it when the agent reconnects",
            iso.action, code.serial
        ))
    }
}

fn rolled_ok(text: &str) -> bool {
    !text.starts_with("ROLLBACK FAILED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use palisade_common::ActionParams;
    use palisade_common::ids::ActionId;

    fn executor(answer: bool) -> (tempfile::TempDir, Executor<FakeHost>) {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.sqlite");
        let mut ex = Executor::new(FakeHost::default(), dir.path().into(), 1 << 20, journal);
        ex.net.controller = Some("198.51.100.1:7443".into());
        ex.net.verify_within = Duration::from_millis(300);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProbeRequest>();
        ex.set_prober(tx);
        std::thread::spawn(move || {
            while let Some(reply) = rx.blocking_recv() {
                if answer {
                    let _ = reply.send(());
                }
            }
        });
        (dir, ex)
    }

    fn isolate(id: u64, for_secs: Option<u64>) -> ActionSpec {
        ActionSpec {
            id: ActionId(id),
            params: ActionParams::Isolate(IsolateParams {
                selective: true,
                exceptions: vec!["192.0.2.0/24 tcp 443 out".into()],
                for_secs,
            }),
        }
    }

    fn journal(ex: &Executor<FakeHost>) -> Journal {
        Journal::open(&ex.journal).unwrap()
    }

    #[test]
    fn isolation_is_applied_journaled_verified_and_reported_by_digest() {
        let (_d, ex) = executor(true);
        let (r, _) = ex.run(&isolate(1, Some(3600)), &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        let table = ex.host().net.lock().unwrap().clone().expect("a table");
        assert!(table.contains("policy drop"), "{table}");
        assert!(
            table.contains("ip daddr 198.51.100.1 udp dport 7443 accept"),
            "{table}"
        );
        assert!(table.contains("ip daddr 192.0.2.0/24 tcp dport 443 accept"));
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        let digest = ex.host().net_status().unwrap().digest.unwrap();
        assert_eq!(detail["digest"], digest.as_str());
        assert!(r.summary.contains(&digest));
        let until = detail["until_ms"].as_i64().unwrap();
        assert!(until > now_ms() + 3_500_000);
        let j = journal(&ex);
        let d = j.desired().unwrap().unwrap();
        assert_eq!(d.isolation.as_ref().unwrap().action, ActionId(1));
        assert_eq!(d.isolation.as_ref().unwrap().until_ms, Some(until));
        assert_eq!(j.net().unwrap().controller.len(), 1);
        let o = ex.observed(&j).unwrap();
        assert!(o.isolated && o.drift.is_none(), "{o:?}");
        assert_eq!(o.net_digest, Some(digest));
        // A repeat after a restart keeps its time box.
        let (again, _) = ex.run(&isolate(1, Some(3600)), &|_| {});
        let again: serde_json::Value = serde_json::from_str(&again.detail).unwrap();
        assert_eq!(again["until_ms"].as_i64(), Some(until));
        // Release removes our table.
        let release = ActionSpec {
            id: ActionId(2),
            params: ActionParams::ReleaseIsolation {},
        };
        let (r, _) = ex.run(&release, &|_| {});
        assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.summary);
        assert_eq!(*ex.host().net.lock().unwrap(), None);
        assert!(!ex.observed(&journal(&ex)).unwrap().isolated);
    }

    #[test]
    fn an_isolation_the_controller_cannot_answer_through_is_rolled_back() {
        let (_d, ex) = executor(false);
        let (r, _) = ex.run(&isolate(1, None), &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("did not answer"), "{}", r.summary);
        assert!(r.summary.contains("rules rolled back"), "{}", r.summary);
        assert_eq!(
            *ex.host().net.lock().unwrap(),
            None,
            "nothing left enforced"
        );
        assert_eq!(journal(&ex).desired().unwrap().unwrap().isolation, None);
    }

    #[test]
    fn nft_failure_fails_the_isolation_and_changes_nothing() {
        let (_d, ex) = executor(true);
        *ex.host().net_fails.lock().unwrap() = Some("nft: syntax error".into());
        let (r, _) = ex.run(&isolate(1, None), &|_| {});
        assert_eq!(r.outcome, Outcome::Failed);
        assert!(r.summary.contains("nft: syntax error"), "{}", r.summary);
        assert!(
            journal(&ex)
                .desired()
                .unwrap()
                .is_none_or(|d| d.isolation.is_none())
        );
    }

    #[test]
    fn tamper_is_found_and_undone() {
        let (_d, ex) = executor(true);
        ex.run(&isolate(1, None), &|_| {});
        let j = journal(&ex);
        assert_eq!(ex.watch(&j).unwrap().tampered, None, "untouched");
        let applied = ex.host().net.lock().unwrap().clone();
        *ex.host().net.lock().unwrap() = None; // nft flush ruleset
        assert!(ex.observed(&j).unwrap().drift.is_some());
        assert_eq!(
            ex.watch(&j).unwrap().tampered.as_deref(),
            Some("our nftables table was removed")
        );
        assert_eq!(*ex.host().net.lock().unwrap(), applied);
        *ex.host().net.lock().unwrap() = Some("table inet palisade { }".into());
        assert_eq!(
            ex.watch(&j).unwrap().tampered.as_deref(),
            Some("our nftables table was altered")
        );
        assert_eq!(*ex.host().net.lock().unwrap(), applied);
    }

    #[test]
    fn a_time_box_ends_the_isolation_locally_until_the_controller_has_heard() {
        let (_d, ex) = executor(true);
        ex.run(&isolate(1, Some(3600)), &|_| {});
        let j = journal(&ex);
        assert!(!ex.expire_isolation(&j).unwrap(), "not yet");
        let mut d = j.desired().unwrap().unwrap();
        d.isolation.as_mut().unwrap().until_ms = Some(now_ms() - 1);
        j.set_desired(&d).unwrap();
        let watched = ex.watch(&j).unwrap();
        assert_eq!(
            watched,
            crate::executor::Watched {
                expired: true,
                ..Default::default()
            },
            "the watch ends it"
        );
        assert!(!ex.expire_isolation(&j).unwrap(), "once");
        assert_eq!(*ex.host().net.lock().unwrap(), None);
        let o = ex.observed(&j).unwrap();
        assert!(!o.isolated);
        assert_eq!(o.local_releases.len(), 1);
        assert_eq!(o.local_releases[0].reason, "time box expired");
        // The controller's older copy still holds the isolation: it stays released.
        let mut stale = d.clone();
        stale.isolation.as_mut().unwrap().until_ms = None;
        stale.revision = 5;
        let o = ex.reconcile(&j, Some(stale)).unwrap();
        assert!(!o.isolated && o.local_releases.len() == 1, "{o:?}");
        assert_eq!(*ex.host().net.lock().unwrap(), None);
        // Once the controller has cleared it, the local release is forgotten.
        let mut cleared = d;
        cleared.isolation = None;
        cleared.revision = 6;
        let o = ex.reconcile(&j, Some(cleared)).unwrap();
        assert!(o.local_releases.is_empty());
    }

    #[test]
    fn break_glass_codes_work_offline_once_for_their_device_until_expiry() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = key.public_key().as_ref().to_vec();
        let me: DeviceId = "dev-a".parse().unwrap();
        let other: DeviceId = "dev-b".parse().unwrap();
        let code = |device: &DeviceId, serial: u32, not_after: u64| {
            let sig = key.sign(&Code::message(device, serial, not_after));
            Code {
                serial,
                not_after,
                signature: sig.as_ref().try_into().unwrap(),
            }
            .to_text()
        };
        let later = (now_ms() / 1000) as u64 + 3600;
        let (_d, ex) = executor(true);
        ex.run(&isolate(1, None), &|_| {});
        let err = |r: Result<String>| format!("{:#}", r.unwrap_err());
        assert!(
            err(ex.breakglass_release(&me, &public, &code(&other, 1, later)))
                .contains("not valid for this device")
        );
        assert!(err(ex.breakglass_release(&me, &public, &code(&me, 2, 1000))).contains("expired"));
        assert!(err(ex.breakglass_release(&me, &public, "AAAA")).contains("not a release code"));
        let ok = ex
            .breakglass_release(&me, &public, &code(&me, 3, later))
            .unwrap();
        assert!(ok.contains("break-glass code 3"), "{ok}");
        assert_eq!(*ex.host().net.lock().unwrap(), None, "released");
        let j = journal(&ex);
        assert_eq!(
            ex.observed(&j).unwrap().local_releases[0].reason,
            "break-glass code 3"
        );
        assert!(
            err(ex.breakglass_release(&me, &public, &code(&me, 3, later))).contains("already used")
        );
        // The daemon's tamper check does not mistake the release for tamper.
        assert_eq!(ex.watch(&j).unwrap().tampered, None);
    }

    #[test]
    fn the_plan_never_contains_the_controller() {
        let local = NetLocal {
            controller: vec!["198.51.100.1:7443".parse().unwrap()],
            ..Default::default()
        };
        let d = DesiredState {
            contained: vec![
                "198.51.100.1".parse().unwrap(),
                "198.51.100.9".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(
            plan(&d, &local, 0).contained,
            vec!["198.51.100.9".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
