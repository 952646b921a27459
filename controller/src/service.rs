//! The controller's domain operations, shared by the API and the transport: request, decide,
//! cancel and undo actions, and hand approved actions to connected devices.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_common::action::ActionSpec;
use palisade_common::limits;
use palisade_common::wire::{DesiredState, RulesInfo};
use palisade_common::{ActionId, ActionKind, ActionParams, ActionSource, ActionStatus, DeviceId};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::Config;
use crate::artifacts::Artifacts;
use crate::auth::{Permission, Principal};
use crate::pki::Ca;
use crate::store::actions::{self, ActionRecord, Deadlines, NewAction, NewFleetAction};
use crate::store::{self, Store, StoreError, desired, devices};

/// What the rest of the controller can ask of a device's live connection.
#[derive(Debug)]
pub enum SessionCommand {
    /// Record the action as delivered, then send it.
    Deliver(ActionSpec),
    /// Send an action already recorded as delivered.
    Send(ActionSpec),
    /// The device's desired state changed: send it.
    Desired(DesiredState),
    /// A new rule set (sent on to agents with the scan capability).
    Rules(RulesInfo),
    /// Stop a running action (a scan).
    Cancel(ActionId),
    Close(String),
}

/// A live connection's commands. Boxed: a channel allocates room for 32 messages up front, and
/// at 20,000 idle connections 32 unboxed commands each were 118 MB.
pub type Commands = mpsc::UnboundedSender<Box<SessionCommand>>;

/// The live connections, by device. A newer connection of the same device replaces the older.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    sessions: Mutex<HashMap<DeviceId, (u64, Commands)>>,
    /// The controller's local addresses seen on agent connections.
    local_ips: Mutex<std::collections::BTreeSet<std::net::IpAddr>>,
}

impl Registry {
    /// Registers a connection and returns its generation; an older one of the device is told
    /// to close.
    pub fn register(&self, device: &DeviceId, tx: Commands) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self
            .sessions
            .lock()
            .expect("registry lock")
            .insert(device.clone(), (generation, tx));
        if let Some((_, old)) = old {
            let _ = old.send(Box::new(SessionCommand::Close(
                "replaced by a newer connection".into(),
            )));
        }
        generation
    }

    pub fn unregister(&self, device: &DeviceId, generation: u64) {
        let mut sessions = self.sessions.lock().expect("registry lock");
        if sessions.get(device).is_some_and(|(g, _)| *g == generation) {
            sessions.remove(device);
        }
    }

    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.sessions
            .lock()
            .expect("registry lock")
            .contains_key(device)
    }

    /// Remembers an address an agent reached the controller at.
    pub fn saw_local_ip(&self, ip: std::net::IpAddr) {
        self.local_ips.lock().expect("registry lock").insert(ip);
    }

    pub fn local_ips(&self) -> Vec<std::net::IpAddr> {
        self.local_ips
            .lock()
            .expect("registry lock")
            .iter()
            .copied()
            .collect()
    }

    /// The devices with a live connection.
    pub fn online(&self) -> Vec<DeviceId> {
        self.sessions
            .lock()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn online_count(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    /// Sends to every live connection.
    pub fn broadcast(&self, cmd: impl Fn() -> SessionCommand) {
        let sessions = self.sessions.lock().expect("registry lock");
        for (_, tx) in sessions.values() {
            let _ = tx.send(Box::new(cmd()));
        }
    }

    /// Sends to the device's connection, if it has one.
    pub fn send(&self, device: &DeviceId, cmd: SessionCommand) -> bool {
        let sessions = self.sessions.lock().expect("registry lock");
        sessions
            .get(device)
            .is_some_and(|(_, tx)| tx.send(Box::new(cmd)).is_ok())
    }
}

pub struct Controller {
    pub store: Store,
    pub artifacts: Artifacts,
    pub ca: Ca,
    pub config: Config,
    pub registry: Arc<Registry>,
    /// Who gets a QUIC handshake (`transport::serve`), and its counts for the status.
    pub admission: Arc<crate::admission::Admission>,
    /// The web Action center's in-memory state (login rate limits).
    pub web: crate::web::WebState,
    pub started: std::time::Instant,
}

/// A refused or failed operation, as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// The data directory is full: retry once an admin has made room.
    #[error("{0}")]
    Full(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ServiceError::NotFound(m),
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::Invalid(m) => ServiceError::Invalid(m),
            full @ StoreError::Full(_) => ServiceError::Full(full.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An operator's request for one action on one or more devices.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Device ids or hostnames; may be left out of a fleet-wide request.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `{"kind": "<action kind>", …the kind's parameters}`.
    #[schema(value_type = Object)]
    pub params: ActionParams,
    /// Why: required, not blank.
    #[schema(min_length = 1, pattern = r"\S")]
    pub comment: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub source: Option<ActionSource>,
    #[serde(default)]
    pub external_id: Option<String>,
    /// One fleet-wide parent action with a child per device: the devices listed, or with none
    /// listed every active device the requester may act on that implements the kind (for a
    /// release by sha256: that holds the file).
    #[serde(default)]
    pub fleet: bool,
}

impl Controller {
    pub fn new(store: Store, artifacts: Artifacts, ca: Ca, config: Config) -> Controller {
        Controller {
            store,
            artifacts,
            ca,
            registry: Arc::default(),
            admission: crate::admission::Admission::new(crate::admission::Limits::of(&config)),
            web: crate::web::WebState::default(),
            started: std::time::Instant::now(),
            config,
        }
    }

    /// The bounds every containment is held to, now.
    pub fn contain_guard(&self) -> store::containment::Guard {
        store::containment::Guard {
            max: self.config.max_contained,
            own: self.own_addresses(),
        }
    }

    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            approval_ms: self.config.approval_expiry.as_millis() as i64,
            delivery_ms: self.config.delivery_timeout.as_millis() as i64,
        }
    }

    /// Creates one action per device, all or none.
    pub async fn request(&self, who: &Principal, req: ActionRequest) -> Result<Vec<ActionRecord>> {
        if req.comment.trim().is_empty() {
            return Err(ServiceError::Invalid("a comment is required".into()));
        }
        let mut req = req;
        check_request(&mut req).map_err(ServiceError::Invalid)?;
        let source = req.source.unwrap_or(ActionSource::ManualDeviceAction);
        if source == ActionSource::AutomatedDeviceAction {
            return Err(ServiceError::Invalid(
                "source automated_device_action is reserved for the controller's own detections"
                    .into(),
            ));
        }
        req.params.validate().map_err(ServiceError::Invalid)?;
        if req.params.kind().runs_on_controller() {
            return self.request_containment(who, req, source).await;
        }
        if req.devices.is_empty() && !req.fleet {
            return Err(ServiceError::Invalid(
                "name at least one device, or ask for a fleet-wide action".into(),
            ));
        }
        if req.fleet {
            return self.request_fleet(who, req, source).await;
        }
        let kind = req.params.kind();
        let refs = req.devices.clone();
        let scope = who.group_scope();
        let resolved = self
            .store
            .read(move |c| {
                refs.iter()
                    .map(|r| devices::resolve(c, r, scope.as_deref()))
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        // A device named by id and by hostname is still one action.
        let mut seen = HashSet::new();
        let mut resolved = resolved;
        resolved.retain(|d| seen.insert(d.id.clone()));
        for d in &resolved {
            if !who.can(Permission::Respond, Some(&d.device_group)) {
                return Err(ServiceError::Forbidden(format!(
                    "{} may not request actions on device {} (group {})",
                    who.name, d.id, d.device_group
                )));
            }
            can_run(d, kind)?;
        }
        let deadlines = self.deadlines();
        let who_name = who.name.clone();
        let records = self
            .store
            .write(move |c| {
                resolved
                    .into_iter()
                    .map(|d| {
                        actions::create(
                            c,
                            NewAction {
                                params: req.params.clone(),
                                device: Some(d.id),
                                device_group: d.device_group,
                                source,
                                requested_by: who_name.clone(),
                                comment: req.comment.clone(),
                                external_id: req.external_id.clone(),
                                undo_of: None,
                                parent: None,
                            },
                            deadlines,
                        )
                    })
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        self.dispatch(&records).await;
        Ok(records)
    }

    /// A fleet-wide request: the scope is resolved now, a child per device.
    async fn request_fleet(
        &self,
        who: &Principal,
        req: ActionRequest,
        source: ActionSource,
    ) -> Result<Vec<ActionRecord>> {
        let kind = req.params.kind();
        let holding = match &req.params {
            ActionParams::ReleaseQuarantine(p) if p.entry.is_none() => p.sha256.clone(),
            _ => None,
        };
        if matches!(&req.params, ActionParams::ReleaseQuarantine(p) if p.entry.is_some()) {
            return Err(ServiceError::Invalid(
                "a vault entry belongs to one device; release fleet-wide by sha256".into(),
            ));
        }
        let refs = req.devices.clone();
        let scope = who.group_scope();
        let (candidates, holders) = self
            .store
            .read(move |c| {
                let devs = if refs.is_empty() {
                    devices::list(c)?
                } else {
                    refs.iter()
                        .map(|r| devices::resolve(c, r, scope.as_deref()))
                        .collect::<store::Result<Vec<_>>>()?
                };
                let holders = match &holding {
                    Some(sha) => Some(devices::holding(c, sha)?),
                    None => None,
                };
                Ok((devs, holders))
            })
            .await?;
        let mut seen = HashSet::new();
        let mut candidates = candidates;
        candidates.retain(|d| seen.insert(d.id.clone()));
        let listed = !req.devices.is_empty();
        let mut scope = Vec::new();
        for d in candidates {
            let allowed = who.can(Permission::Respond, Some(&d.device_group));
            let usable = can_run(&d, kind);
            if listed {
                if !allowed {
                    return Err(ServiceError::Forbidden(format!(
                        "{} may not request actions on device {} (group {})",
                        who.name, d.id, d.device_group
                    )));
                }
                usable?;
            } else if !(allowed && usable.is_ok()) {
                continue;
            }
            if holders.as_ref().is_some_and(|h| !h.contains(&d.id)) {
                continue;
            }
            scope.push((d.id, d.device_group));
        }
        if scope.is_empty() {
            return Err(ServiceError::Invalid(match holders {
                Some(_) => "no device in scope holds a vault entry with that sha256".into(),
                None => format!("no active device in scope implements {kind}"),
            }));
        }
        let deadlines = self.deadlines();
        let new = NewFleetAction {
            params: req.params,
            source,
            requested_by: who.name.clone(),
            comment: req.comment,
            external_id: req.external_id,
            devices: scope,
        };
        let records = self
            .store
            .write(move |c| actions::create_fleet(c, new, deadlines))
            .await?;
        self.dispatch(&records).await;
        Ok(records)
    }

    /// Fetches actions and checks that `who` holds `perm` on every one's device group.
    async fn guarded(
        &self,
        who: &Principal,
        ids: &[ActionId],
        perm: Permission,
    ) -> Result<Vec<ActionRecord>> {
        if ids.is_empty() {
            return Err(ServiceError::Invalid("no action ids given".into()));
        }
        let ids_owned = ids.to_vec();
        let records = self
            .store
            .read(move |c| {
                ids_owned
                    .iter()
                    .map(|&id| actions::get(c, id))
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        let parents: Vec<ActionId> = records
            .iter()
            .filter(|r| r.is_fleet_parent())
            .map(|r| r.id)
            .collect();
        let children = self
            .store
            .read(move |c| {
                let mut all = Vec::new();
                for p in parents {
                    all.extend(actions::children(c, p)?);
                }
                Ok(all)
            })
            .await?;
        for r in records.iter().chain(&children) {
            if r.is_fleet_parent() {
                continue; // checked through its children
            }
            // An action without a device (containment of an unmanaged address) belongs to no
            // group: only a permission over every group covers it.
            let group = r.device_group.as_deref();
            if group.is_some_and(|g| !who.sees_group(g))
                || (group.is_none() && !who.can(Permission::View, None))
            {
                return Err(ServiceError::NotFound(format!("no action {}", r.id)));
            }
            let group_name = group.unwrap_or("all groups");
            if !who.can(perm, group) {
                return Err(ServiceError::Forbidden(format!(
                    "{} ({}) lacks the {perm} permission for action {} (device group {group_name})",
                    who.name, who.role, r.id
                )));
            }
        }
        Ok(records)
    }

    pub async fn decide(
        &self,
        who: &Principal,
        ids: Vec<ActionId>,
        approve: bool,
        comment: String,
    ) -> Result<Vec<ActionRecord>> {
        self.guarded(who, &ids, Permission::Approve).await?;
        limits::check_comment(&comment).map_err(ServiceError::Invalid)?;
        if !approve && comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "a comment is required to reject".into(),
            ));
        }
        let deadlines = self.deadlines();
        let guard = self.contain_guard();
        let actor = who.name.clone();
        let records = self
            .store
            .write(move |c| {
                let records = actions::decide(c, &ids, &actor, approve, &comment, deadlines)?;
                store::containment::run_approved(c, records, &guard)
            })
            .await?;
        self.dispatch(&records).await;
        self.containment_changed(&records).await;
        Ok(records)
    }

    /// A contain or uncontain: resolved, checked for safety, created, and — once approved —
    /// carried out here (see `store::containment`).
    async fn request_containment(
        &self,
        who: &Principal,
        req: ActionRequest,
        source: ActionSource,
    ) -> Result<Vec<ActionRecord>> {
        let kind = req.params.kind();
        let (ActionParams::Contain(mut p) | ActionParams::Uncontain(mut p)) = req.params else {
            unreachable!("runs_on_controller kinds are contain and uncontain");
        };
        if req.fleet {
            return Err(ServiceError::Invalid(format!(
                "{kind} is not fleet-wide: it already applies on every other device"
            )));
        }
        let target_ref = match (req.devices.as_slice(), &p.device) {
            ([], None) => None,
            ([one], None) => Some(one.clone()),
            ([], Some(d)) => Some(d.to_string()),
            _ => {
                return Err(ServiceError::Invalid(format!(
                    "name one target for {kind}: a device, or --ip/--mac"
                )));
            }
        };
        if target_ref.is_some() && (p.ip.is_some() || p.mac.is_some()) {
            return Err(ServiceError::Invalid(
                "name a managed device or an unmanaged address, not both".into(),
            ));
        }
        if target_ref.is_none() && p.ip.is_none() {
            return Err(ServiceError::Invalid(format!(
                "{kind} of an unmanaged target needs its --ip (a MAC alone cannot be blocked across routers)"
            )));
        }
        let own: Vec<std::net::IpAddr> = self.own_addresses();
        let scope = who.group_scope();
        let max = self.config.max_contained;
        let (target, in_force, shared, addrs) = self
            .store
            .read(move |c| {
                let target = target_ref
                    .map(|r| devices::resolve(c, &r, scope.as_deref()))
                    .transpose()?;
                let addrs = match (&target, p.ip) {
                    (Some(d), _) => store::containment::device_addresses(c, &d.id)?,
                    (None, ip) => ip.into_iter().collect(),
                };
                let in_force = store::containment::list(c)?;
                let shared = store::containment::shared(c, &addrs, target.as_ref().map(|d| &d.id))?;
                Ok((target, in_force, shared, addrs))
            })
            .await?;
        let group = target.as_ref().map(|d| d.device_group.clone());
        if !who.can(Permission::Respond, group.as_deref()) {
            return Err(ServiceError::Forbidden(match &group {
                Some(g) => format!("{} may not contain devices of group {g}", who.name),
                None => format!(
                    "{} may not contain an unmanaged address: that needs the respond permission for every group",
                    who.name
                ),
            }));
        }
        p.device = target.as_ref().map(|d| d.id.clone());
        let existing = in_force.iter().find(|c| match &p.device {
            Some(d) => c.device_id.as_ref() == Some(d),
            None => c.device_id.is_none() && c.ip == p.ip,
        });
        if kind == ActionKind::Contain {
            if let Some(c) = existing {
                return Err(ServiceError::Conflict(format!(
                    "already contained by action {}",
                    c.action_id
                )));
            }
            if in_force.len() as u64 >= max {
                return Err(ServiceError::Conflict(format!(
                    "{} targets are contained already, the most allowed (max_contained = {max})",
                    in_force.len()
                )));
            }
            if addrs.is_empty() {
                return Err(ServiceError::Invalid(
                    "the device reports no address to contain".into(),
                ));
            }
            if let Some(a) = addrs.iter().find(|a| own.contains(a)) {
                return Err(ServiceError::Invalid(format!(
                    "{a} is the controller's own address: containing it would cut every agent off"
                )));
            }
            if !shared.is_empty() && !p.force {
                let list: Vec<String> = shared
                    .iter()
                    .map(|(id, host, what, a)| match *what {
                        "gateway" => format!("{a} is the default gateway of {host} ({id})"),
                        _ => format!("{a} is also an address of {host} ({id})"),
                    })
                    .collect();
                return Err(ServiceError::Conflict(format!(
                    "{}; add --force to contain it anyway",
                    list.join("; ")
                )));
            }
        } else if existing.is_none() {
            return Err(ServiceError::Conflict(
                "that target is not contained".into(),
            ));
        }
        let params = if kind == ActionKind::Contain {
            ActionParams::Contain(p)
        } else {
            ActionParams::Uncontain(p)
        };
        let deadlines = self.deadlines();
        let guard = self.contain_guard();
        let new = NewAction {
            params,
            device_group: group.unwrap_or_else(|| "default".into()),
            device: target.map(|d| d.id),
            source,
            requested_by: who.name.clone(),
            comment: req.comment,
            external_id: req.external_id,
            undo_of: None,
            parent: None,
        };
        let rec = self
            .store
            .write(move |c| {
                let rec = actions::create_any(c, new, deadlines)?;
                Ok(store::containment::run_approved(c, vec![rec], &guard)?.remove(0))
            })
            .await?;
        self.containment_changed(std::slice::from_ref(&rec)).await;
        Ok(vec![rec])
    }

    /// The controller's own addresses as agents see them: its configured listen address and
    /// the local address of every agent connection.
    pub fn own_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut out: Vec<std::net::IpAddr> = self.registry.local_ips();
        if !self.config.listen.ip().is_unspecified() {
            out.push(self.config.listen.ip());
        }
        out.extend(
            self.config
                .server_names
                .iter()
                .filter_map(|n| n.parse::<std::net::IpAddr>().ok()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// After contain/uncontain actions ran: every online device hears its new desired state.
    pub async fn containment_changed(&self, records: &[ActionRecord]) {
        if !records
            .iter()
            .any(|r| r.kind.runs_on_controller() && r.status == ActionStatus::Succeeded)
        {
            return;
        }
        self.push_desired_to_all().await;
    }

    /// Sends every online device its stored desired state.
    pub async fn push_desired_to_all(&self) {
        for device in self.registry.online() {
            let d = device.clone();
            match self.store.read(move |c| desired::get(c, &d)).await {
                Ok(state) => {
                    self.registry.send(&device, SessionCommand::Desired(state));
                }
                Err(e) => tracing::error!(%device, error = %e, "cannot read the desired state"),
            }
        }
    }

    /// Issues a break-glass release code for one device, valid for `valid`.
    pub async fn breakglass(
        &self,
        who: &Principal,
        device: String,
        valid: std::time::Duration,
    ) -> Result<(DeviceId, u32, u64, String)> {
        if valid.is_zero() || valid > std::time::Duration::from_secs(30 * 24 * 3600) {
            return Err(ServiceError::Invalid(
                "a release code must be valid for more than 0 and at most 30 days".into(),
            ));
        }
        let reference = device.clone();
        let scope = who.group_scope();
        let d = self
            .store
            .read(move |c| devices::resolve(c, &reference, scope.as_deref()))
            .await?;
        if !who.can(Permission::Approve, Some(&d.device_group)) {
            return Err(ServiceError::Forbidden(format!(
                "{} ({}) lacks the approve permission for device group {}: release codes need it",
                who.name, who.role, d.device_group
            )));
        }
        let not_after = (store::now_ms() / 1000) as u64 + valid.as_secs();
        let (id, actor) = (d.id.clone(), who.name.clone());
        let serial = self
            .store
            .write(move |c| devices::issue_breakglass(c, &id, &actor, not_after as i64))
            .await?;
        let code = self.ca.breakglass_code(&d.id, serial, not_after);
        Ok((d.id, serial, not_after, code.to_text()))
    }

    pub async fn cancel(
        &self,
        who: &Principal,
        ids: Vec<ActionId>,
        comment: String,
    ) -> Result<Vec<ActionRecord>> {
        let records = self.guarded(who, &ids, Permission::Respond).await?;
        limits::check_comment(&comment).map_err(ServiceError::Invalid)?;
        if comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "a comment is required to cancel".into(),
            ));
        }
        let any = records.iter().all(|r| {
            who.can(
                Permission::Approve,
                Some(r.device_group.as_deref().unwrap_or("default")),
            )
        });
        let actor = who.name.clone();
        // A scan already on its device is stopped there: the agent ends it at once and reports
        // what it scanned (the result is recorded cancelled).
        let running = |r: &ActionRecord| {
            r.kind == palisade_common::ActionKind::Scan
                && matches!(
                    r.status,
                    ActionStatus::Delivered | ActionStatus::Acknowledged | ActionStatus::InProgress
                )
        };
        if records.iter().any(running) {
            if !records.iter().all(running) {
                return Err(ServiceError::Invalid(
                    "stop running scans in a request of their own".into(),
                ));
            }
            if let Some(r) = records.iter().find(|r| !any && r.requested_by != who.name) {
                return Err(ServiceError::Conflict(format!(
                    "action {} was requested by {}; cancelling others' actions needs the approve permission",
                    r.id, r.requested_by
                )));
            }
            let list = records.clone();
            self.store
                .write(move |c| store::scan::stop_requested(c, &list, &actor, &comment))
                .await?;
            for r in &records {
                if let Some(device) = &r.device_id {
                    self.registry.send(device, SessionCommand::Cancel(r.id));
                }
            }
            return Ok(records);
        }
        Ok(self
            .store
            .write(move |c| actions::cancel(c, &ids, &actor, &comment, any))
            .await?)
    }

    /// Requests the undo of succeeded lasting actions: one new linked action each, all of one
    /// kind, subject to approval like any other request.
    pub async fn undo(
        &self,
        who: &Principal,
        ids: Vec<ActionId>,
        comment: String,
    ) -> Result<Vec<ActionRecord>> {
        let records = self.guarded(who, &ids, Permission::Approve).await?;
        limits::check_comment(&comment).map_err(ServiceError::Invalid)?;
        if comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "a comment is required to undo".into(),
            ));
        }
        one_kind(&records, "undone")?;
        let mut new = Vec::new();
        for r in &records {
            if r.is_fleet_parent() {
                return Err(ServiceError::Invalid(format!(
                    "action {} is fleet-wide: undo its children, or release by sha256 fleet-wide",
                    r.id
                )));
            }
            let Some(undo_kind) = r.kind.undo() else {
                return Err(ServiceError::Invalid(format!(
                    "{} actions cannot be undone",
                    r.kind
                )));
            };
            if r.status != ActionStatus::Succeeded {
                return Err(ServiceError::Conflict(format!(
                    "action {} is {}; only succeeded actions can be undone",
                    r.id, r.status
                )));
            }
            let params = match (&r.params, undo_kind) {
                (ActionParams::Contain(p), _) => ActionParams::Uncontain(p.clone()),
                (_, palisade_common::ActionKind::ReleaseIsolation) => {
                    ActionParams::ReleaseIsolation {}
                }
                (_, palisade_common::ActionKind::ReleaseExecution) => {
                    ActionParams::ReleaseExecution {}
                }
                (ActionParams::Quarantine(_), _) => {
                    let detail = |k: &str| {
                        r.result_detail
                            .as_ref()
                            .and_then(|d| d[k].as_str())
                            .map(str::to_owned)
                    };
                    // One file: its entry; several (by hash): every entry with the hash.
                    let entry = detail("vault_entry");
                    let sha256 = if entry.is_none() {
                        detail("sha256")
                    } else {
                        None
                    };
                    if entry.is_none() && sha256.is_none() {
                        return Err(ServiceError::Conflict(format!(
                            "action {} reported no vault entry to release",
                            r.id
                        )));
                    }
                    ActionParams::ReleaseQuarantine(
                        palisade_common::action::ReleaseQuarantineParams {
                            entry,
                            sha256,
                            restore_path: None,
                            overwrite: false,
                        },
                    )
                }
                _ => {
                    return Err(ServiceError::Invalid(format!(
                        "{} actions cannot be undone",
                        r.kind
                    )));
                }
            };
            new.push((r.clone(), params));
        }
        // Each undo goes to its original's device; one that runs on the controller needs no
        // agent (and an uncontain must work even for a device offboarded since).
        let refs: Vec<Option<String>> = new
            .iter()
            .map(|(r, _)| r.device_id.as_ref().map(|d| d.to_string()))
            .collect();
        let devs = self
            .store
            .read(move |c| {
                refs.iter()
                    .map(|r| {
                        r.as_deref()
                            .map(|r| devices::resolve(c, r, None))
                            .transpose()
                    })
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        for (d, (_, params)) in devs.iter().zip(&new) {
            if let Some(d) = d.as_ref().filter(|_| !params.kind().runs_on_controller()) {
                can_run(d, params.kind())?;
            }
        }
        let deadlines = self.deadlines();
        let guard = self.contain_guard();
        let actor = who.name.clone();
        let created = self
            .store
            .write(move |c| {
                new.into_iter()
                    .zip(devs)
                    .map(|((orig, params), d)| {
                        let (device, device_group) = match d {
                            Some(d) => (Some(d.id), d.device_group),
                            None => (None, "default".to_owned()),
                        };
                        // An undo may be an uncontain, which runs here when approved.
                        let rec = actions::create_any(
                            c,
                            NewAction {
                                params,
                                device,
                                device_group,
                                source: orig.source,
                                requested_by: actor.clone(),
                                comment: comment.clone(),
                                external_id: None,
                                undo_of: Some(orig.id),
                                parent: None,
                            },
                            deadlines,
                        )?;
                        Ok(store::containment::run_approved(c, vec![rec], &guard)?.remove(0))
                    })
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        self.containment_changed(&created).await;
        self.dispatch(&created).await;
        Ok(created)
    }

    /// Replaces a device group's exec allowlist and sends the new desired state to the
    /// group's online devices (the others get it when they connect).
    pub async fn set_exec_allowlist(
        &self,
        who: &Principal,
        group: String,
        sha256: Vec<String>,
        paths: Vec<String>,
    ) -> Result<desired::Allowlist> {
        if !who.can(Permission::Admin, None) {
            return Err(ServiceError::Forbidden(format!(
                "{} ({}) lacks the admin permission for all device groups",
                who.name, who.role
            )));
        }
        let actor = who.name.clone();
        let g = group.clone();
        let (list, changed) = self
            .store
            .write(move |c| {
                let changed = desired::set_allowlist(c, &actor, &g, &sha256, &paths)?;
                Ok((desired::allowlist(c, &g)?, changed))
            })
            .await?;
        for (device, state) in changed {
            self.registry.send(&device, SessionCommand::Desired(state));
        }
        Ok(list)
    }

    /// Assigns a device to a device group by hand (`None`: back to the membership rules and
    /// its enrolment group); admins of every group only. The device gets its new desired state
    /// at once if it is online.
    pub async fn assign_group(
        &self,
        who: &Principal,
        device: String,
        group: Option<String>,
    ) -> Result<devices::Device> {
        self.require_unscoped_admin(who)?;
        let actor = who.name.clone();
        let (d, moved) = self
            .store
            .write(move |c| {
                let d = devices::resolve(c, &device, None)?;
                let moved = store::groups::assign(c, &actor, &d.id, group.as_deref())?;
                Ok((devices::get(c, &d.id)?, moved))
            })
            .await?;
        self.regrouped(moved.into_iter().collect()).await;
        Ok(d)
    }

    /// Replaces the membership rules and moves every device they now place elsewhere.
    pub async fn set_group_rules(
        &self,
        who: &Principal,
        rules: Vec<store::groups::GroupRule>,
    ) -> Result<Vec<store::groups::Moved>> {
        self.require_unscoped_admin(who)?;
        let actor = who.name.clone();
        let moved = self
            .store
            .write(move |c| store::groups::set_rules(c, &actor, &rules))
            .await?;
        self.regrouped(moved.clone()).await;
        Ok(moved)
    }

    /// Sends moved devices their new group's desired state (allowlist, real-time setting,
    /// containments in scope).
    async fn regrouped(&self, moved: Vec<store::groups::Moved>) {
        for m in moved {
            tracing::info!(device = %m.device, from = %m.from, to = %m.to, source = %m.source, "device changed group");
            if !self.registry.is_online(&m.device) {
                continue;
            }
            let d = m.device.clone();
            match self.store.read(move |c| desired::get(c, &d)).await {
                Ok(state) => {
                    self.registry
                        .send(&m.device, SessionCommand::Desired(state));
                }
                Err(e) => {
                    tracing::error!(device = %m.device, error = %e, "cannot read the desired state")
                }
            }
        }
    }

    fn require_unscoped_admin(&self, who: &Principal) -> Result<()> {
        if who.can(Permission::Admin, None) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "{} ({}) lacks the admin permission for all device groups",
                who.name, who.role
            )))
        }
    }

    /// Turns real-time protection on or off for a device group (`*`: the default) and sends
    /// the new desired state to the online devices it may change.
    pub async fn set_realtime(&self, who: &Principal, group: String, enabled: bool) -> Result<()> {
        if !who.can(Permission::Admin, None) {
            return Err(ServiceError::Forbidden(format!(
                "{} ({}) lacks the admin permission for all device groups",
                who.name, who.role
            )));
        }
        let actor = who.name.clone();
        let changed = self
            .store
            .write(move |c| store::desired::set_realtime(c, &actor, &group, enabled))
            .await?;
        for (device, state) in changed {
            self.registry.send(&device, SessionCommand::Desired(state));
        }
        Ok(())
    }

    /// Compiles an upload into a new rule-set version, stores it and announces it to every
    /// online agent (the others hear of it when they connect).
    pub async fn upload_rules(
        &self,
        who: &Principal,
        files: Vec<crate::rules::RuleFile>,
        comment: String,
    ) -> Result<store::scan::RuleSet> {
        if !who.can(Permission::Admin, None) {
            return Err(ServiceError::Forbidden(format!(
                "{} ({}) lacks the admin permission for all device groups",
                who.name, who.role
            )));
        }
        let compiled = tokio::task::spawn_blocking(move || crate::rules::compile(&files))
            .await
            .map_err(|e| ServiceError::Internal(format!("rule compiler crashed: {e}")))?
            .map_err(|errors| {
                ServiceError::Invalid(format!(
                    "rules refused ({} problem{}): {}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" },
                    errors.join("; ")
                ))
            })?;
        let new = store::scan::NewRuleSet {
            created_by: who.name.clone(),
            comment,
            files: compiled.files.clone(),
            yara_rules: compiled.yara_rules,
            hash_entries: compiled.hashes.len() as u64,
        };
        let set = self
            .store
            .write(move |c| store::scan::insert(c, new, |v| compiled.bundle(v)))
            .await?;
        let info = rules_info(&set)?;
        tracing::info!(
            version = set.version,
            yara_rules = set.yara_rules,
            hash_entries = set.hash_entries,
            "rule set uploaded"
        );
        self.registry
            .broadcast(|| SessionCommand::Rules(info.clone()));
        Ok(set)
    }

    /// Hands approved actions to their devices' live connections; offline devices get them
    /// when they connect. The deliveries are recorded first, in one write for all: a
    /// fleet-wide approval is one job for the store, not one per device.
    pub async fn dispatch(&self, records: &[ActionRecord]) {
        let live: Vec<(DeviceId, ActionSpec)> = records
            .iter()
            .filter(|r| r.status == ActionStatus::Approved)
            .filter_map(|r| Some((r.device_id.clone()?, r.spec())))
            .filter(|(device, _)| self.registry.is_online(device))
            .collect();
        if live.is_empty() {
            return;
        }
        let ids: Vec<(DeviceId, ActionId)> = live.iter().map(|(d, s)| (d.clone(), s.id)).collect();
        let (store, registry) = (self.store.clone(), self.registry.clone());
        // On a task of its own: a request whose caller goes away mid-way must not leave
        // deliveries recorded but never sent.
        let sent = tokio::spawn(async move {
            match store.write(move |c| actions::delivered_all(c, &ids)).await {
                Ok(send) => {
                    let send: HashSet<ActionId> = send.into_iter().collect();
                    for (device, spec) in live.into_iter().filter(|(_, s)| send.contains(&s.id)) {
                        registry.send(&device, SessionCommand::Send(spec));
                    }
                }
                // Each connection then records its own, as for what it finds outstanding.
                Err(e) => {
                    tracing::warn!(error = %e, actions = live.len(), "recording deliveries failed; each connection tries its own");
                    for (device, spec) in live {
                        registry.send(&device, SessionCommand::Deliver(spec));
                    }
                }
            }
        });
        let _ = sent.await;
    }
}

/// The announcement of a stored rule set.
pub fn rules_info(set: &store::scan::RuleSet) -> Result<RulesInfo> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(&set.sha256, &mut sha256)
        .map_err(|e| ServiceError::Internal(format!("stored rule-set hash: {e}")))?;
    Ok(RulesInfo {
        version: set.version,
        size: set.size,
        sha256,
    })
}

/// Several actions are approved, rejected or undone together only when they are all of one
/// kind (product rule): otherwise a conflict naming two that differ.
/// Holds a request to the limits of `palisade_common::limits` and names each device once:
/// the same device twice is one action.
fn check_request(req: &mut ActionRequest) -> std::result::Result<(), String> {
    limits::check_comment(&req.comment)?;
    if let Some(id) = &req.external_id {
        limits::check_chars("external_id", id, limits::MAX_EXTERNAL_ID_CHARS)?;
    }
    let mut seen = HashSet::new();
    req.devices.retain(|d| seen.insert(d.clone()));
    if req.devices.len() > limits::MAX_REQUEST_DEVICES {
        return Err(format!(
            "devices names {} devices; the limit is {} (ask for a fleet-wide action to reach more)",
            req.devices.len(),
            limits::MAX_REQUEST_DEVICES
        ));
    }
    req.devices
        .iter()
        .try_for_each(|d| limits::check_chars("devices", d, limits::MAX_NAME_CHARS))
}

fn one_kind(records: &[ActionRecord], verb: &str) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    match records.iter().find(|r| r.kind != first.kind) {
        Some(other) => Err(ServiceError::Conflict(format!(
            "actions of different kinds cannot be {verb} together: {} is {}, {} is {}",
            first.id, first.kind, other.id, other.kind
        ))),
        None => Ok(()),
    }
}

/// Whether `device` can be given an action of `kind` now: it is active and its agent
/// implements the kind. The controller never queues what no agent would carry out.
fn can_run(d: &devices::Device, kind: palisade_common::ActionKind) -> Result<()> {
    if d.status != "active" {
        return Err(ServiceError::Conflict(format!(
            "device {} is {}",
            d.id, d.status
        )));
    }
    if !d.capabilities.contains(&kind) {
        return Err(ServiceError::Invalid(format!(
            "{kind} is not implemented by the agent on device {} ({}, agent {}); it implements: {}",
            d.id,
            d.hostname,
            d.agent_version,
            d.capabilities
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Seconds between two looks for isolations whose time box is over.
const ISOLATION_SWEEP_TICKS: u64 = 5;

/// Moves overdue actions to `Expired` / `TimedOut`, once a second; ends isolations whose time
/// box is over (the agent does too, on its own clock).
pub async fn sweeper(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let now = store::now_ms();
        match ctl.store.write(move |c| actions::sweep(c, now)).await {
            Ok(changed) => {
                for r in changed {
                    tracing::info!(action = %r.id, status = %r.status, "action overdue");
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
        // Time boxes: looked for on a reader every few seconds, written only when one is due.
        ticks += 1;
        if !ticks.is_multiple_of(ISOLATION_SWEEP_TICKS)
            || ctl
                .store
                .read(move |c| desired::isolations_due(c, now))
                .await
                .is_ok_and(|due| due.is_empty())
        {
            continue;
        }
        match ctl
            .store
            .write(move |c| desired::expire_isolations(c, now))
            .await
        {
            Ok(ended) => {
                for (device, state) in ended {
                    tracing::info!(%device, "isolation time box ended");
                    ctl.registry.send(&device, SessionCommand::Desired(state));
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, "isolation expiry failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::action::QuarantineParams;

    #[test]
    fn several_actions_are_undone_together_only_when_of_one_kind() {
        let q = |id| {
            ActionRecord::for_test(
                id,
                ActionParams::Quarantine(QuarantineParams {
                    path: Some("/tmp/x".into()),
                    sha256: None,
                    roots: vec![],
                }),
            )
        };
        let iso = ActionRecord::for_test(3, ActionParams::RestrictExecution {});
        assert!(one_kind(&[q(1), q(2)], "undone").is_ok());
        let err = one_kind(&[q(1), q(2), iso], "undone").unwrap_err();
        assert!(
            matches!(&err, ServiceError::Conflict(m) if m.contains("different kinds") && m.contains("restrict_execution")),
            "{err}"
        );
    }
}
