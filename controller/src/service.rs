//! The controller's domain operations, shared by the API and the transport: request, decide,
//! cancel and undo actions, and hand approved actions to connected devices.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_common::action::ActionSpec;
use palisade_common::wire::DesiredState;
use palisade_common::{ActionId, ActionParams, ActionSource, ActionStatus, DeviceId};
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
    Deliver(ActionSpec),
    /// The device's desired state changed: send it.
    Desired(DesiredState),
    Close(String),
}

/// The live connections, by device. A newer connection of the same device replaces the older.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    sessions: Mutex<HashMap<DeviceId, (u64, mpsc::UnboundedSender<SessionCommand>)>>,
}

impl Registry {
    /// Registers a connection and returns its generation; an older one of the device is told
    /// to close.
    pub fn register(&self, device: &DeviceId, tx: mpsc::UnboundedSender<SessionCommand>) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self
            .sessions
            .lock()
            .expect("registry lock")
            .insert(device.clone(), (generation, tx));
        if let Some((_, old)) = old {
            let _ = old.send(SessionCommand::Close(
                "replaced by a newer connection".into(),
            ));
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

    pub fn online_count(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    /// Sends to the device's connection, if it has one.
    pub fn send(&self, device: &DeviceId, cmd: SessionCommand) -> bool {
        let sessions = self.sessions.lock().expect("registry lock");
        sessions
            .get(device)
            .is_some_and(|(_, tx)| tx.send(cmd).is_ok())
    }
}

pub struct Controller {
    pub store: Store,
    pub artifacts: Artifacts,
    pub ca: Ca,
    pub config: Config,
    pub registry: Registry,
    /// The web Action center's in-memory state (login rate limits).
    pub web: crate::web::WebState,
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
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ServiceError::NotFound(m),
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::Invalid(m) => ServiceError::Invalid(m),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An operator's request for one action on one or more devices.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub devices: Vec<String>,
    /// `{"kind": "<action kind>", …the kind's parameters}`.
    #[schema(value_type = Object)]
    pub params: ActionParams,
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
            config,
            registry: Registry::default(),
            web: crate::web::WebState::default(),
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
        if req.devices.is_empty() && !req.fleet {
            return Err(ServiceError::Invalid(
                "name at least one device, or ask for a fleet-wide action".into(),
            ));
        }
        let source = req.source.unwrap_or(ActionSource::ManualDeviceAction);
        if source == ActionSource::AutomatedDeviceAction {
            return Err(ServiceError::Invalid(
                "source automated_device_action is reserved for the controller's own detections"
                    .into(),
            ));
        }
        req.params.validate().map_err(ServiceError::Invalid)?;
        if req.fleet {
            return self.request_fleet(who, req, source).await;
        }
        let kind = req.params.kind();
        let refs = req.devices.clone();
        let resolved = self
            .store
            .read(move |c| {
                refs.iter()
                    .map(|r| devices::resolve(c, r))
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
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
                                device: d.id,
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
        self.dispatch(&records);
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
        let (candidates, holders) = self
            .store
            .read(move |c| {
                let devs = if refs.is_empty() {
                    devices::list(c)?
                } else {
                    refs.iter()
                        .map(|r| devices::resolve(c, r))
                        .collect::<store::Result<Vec<_>>>()?
                };
                let holders = match &holding {
                    Some(sha) => Some(devices::holding(c, sha)?),
                    None => None,
                };
                Ok((devs, holders))
            })
            .await?;
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
        self.dispatch(&records);
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
            .filter(|r| r.device_id.is_none())
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
            if r.device_id.is_none() {
                continue; // checked through its children
            }
            let group = r.device_group.as_deref().unwrap_or("default");
            if !who.sees_group(group) {
                return Err(ServiceError::NotFound(format!("no action {}", r.id)));
            }
            if !who.can(perm, Some(group)) {
                return Err(ServiceError::Forbidden(format!(
                    "{} ({}) lacks the {perm} permission for action {} (device group {group})",
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
        if !approve && comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "a comment is required to reject".into(),
            ));
        }
        let deadlines = self.deadlines();
        let actor = who.name.clone();
        let records = self
            .store
            .write(move |c| actions::decide(c, &ids, &actor, approve, &comment, deadlines))
            .await?;
        self.dispatch(&records);
        Ok(records)
    }

    pub async fn cancel(
        &self,
        who: &Principal,
        ids: Vec<ActionId>,
        comment: String,
    ) -> Result<Vec<ActionRecord>> {
        let records = self.guarded(who, &ids, Permission::Respond).await?;
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
        if comment.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "a comment is required to undo".into(),
            ));
        }
        let mut new = Vec::new();
        for r in &records {
            if r.device_id.is_none() {
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
        let refs: Vec<String> = records
            .iter()
            .filter_map(|r| r.device_id.as_ref().map(|d| d.to_string()))
            .collect();
        let devs = self
            .store
            .read(move |c| {
                refs.iter()
                    .map(|r| devices::resolve(c, r))
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        for (d, (_, params)) in devs.iter().zip(&new) {
            can_run(d, params.kind())?;
        }
        let deadlines = self.deadlines();
        let actor = who.name.clone();
        let created = self
            .store
            .write(move |c| {
                new.into_iter()
                    .zip(devs)
                    .map(|((orig, params), d)| {
                        actions::create(
                            c,
                            NewAction {
                                params,
                                device: d.id,
                                device_group: d.device_group,
                                source: orig.source,
                                requested_by: actor.clone(),
                                comment: comment.clone(),
                                external_id: None,
                                undo_of: Some(orig.id),
                                parent: None,
                            },
                            deadlines,
                        )
                    })
                    .collect::<store::Result<Vec<_>>>()
            })
            .await?;
        self.dispatch(&created);
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

    /// Hands approved actions to their devices' live connections; offline devices get them
    /// when they connect.
    pub fn dispatch(&self, records: &[ActionRecord]) {
        for r in records
            .iter()
            .filter(|r| r.status == ActionStatus::Approved)
        {
            if let Some(device) = &r.device_id {
                self.registry
                    .send(device, SessionCommand::Deliver(r.spec()));
            }
        }
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

/// Moves overdue actions to `Expired` / `TimedOut`, once a second.
pub async fn sweeper(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
    }
}
