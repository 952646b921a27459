//! The operators' JSON API. Every route authenticates with a bearer token and checks a
//! permission before doing anything; every error is a JSON body with a 4xx or 5xx status.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use palisade_common::{ActionId, ActionKind};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::auth::{Permission, Principal, Role};
use crate::service::{ActionRequest, Controller, ServiceError};
use crate::store::{
    StoreError, actions, audit, auth as store_auth, blobs, desired, devices,
    events as store_events, scan as store_scan,
};

type Ctl = State<Arc<Controller>>;

pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/status", get(status))
        .route("/api/v1/ca", get(ca))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(show_device))
        .route("/api/v1/devices/{id}/vault", get(device_vault))
        .route("/api/v1/devices/{id}/events", get(device_events))
        .route("/api/v1/devices/{id}/break-glass", post(break_glass))
        .route("/api/v1/devices/{id}/group", put(assign_group))
        .route(
            "/api/v1/group-rules",
            get(list_group_rules).put(set_group_rules),
        )
        .route("/api/v1/containments", get(list_containments))
        .route(
            "/api/v1/exec-allowlist",
            get(list_exec_allowlists).put(set_exec_allowlist),
        )
        .route("/api/v1/actions", get(list_actions).post(request_actions))
        .route("/api/v1/actions/approve", post(approve))
        .route("/api/v1/actions/reject", post(reject))
        .route("/api/v1/actions/cancel", post(cancel))
        .route("/api/v1/actions/undo", post(undo))
        .route("/api/v1/actions/{id}", get(show_action))
        .route(
            "/api/v1/actions/{id}/artifacts/{name}",
            get(download_artifact),
        )
        .route("/api/v1/enroll-tokens", post(create_enroll_token))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}", axum::routing::delete(remove_user))
        .route("/api/v1/users/{name}/disabled", put(set_user_disabled))
        .route("/api/v1/users/{name}/tokens", post(create_api_token))
        .route("/api/v1/tokens", get(list_api_tokens))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_api_token))
        .route("/api/v1/tokens/{id}/rotate", post(rotate_api_token))
        .route("/api/v1/policies", get(list_policies).put(set_policy))
        .route(
            "/api/v1/rules",
            get(list_rules)
                .post(upload_rules)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_RULES_UPLOAD)),
        )
        .route(
            "/api/v1/automation",
            get(list_automation).put(set_automation),
        )
        .route("/api/v1/realtime", get(list_realtime).put(set_realtime))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/audit/verify", get(verify_audit))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(ctl)
}

/// An API error: `{"error": {"code": …, "message": …}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(message = %self.message, "api error");
        }
        let body = json!({"error": {"status": self.status.as_u16(), "code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Forbidden(m) => ApiError::forbidden(m),
            ServiceError::Invalid(m) => ApiError::bad_request(m),
            ServiceError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ServiceError::Internal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
            ServiceError::Full(m) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ServiceError::from(e).into()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// `Json<T>` whose rejections are JSON errors too.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `Query<T>` with JSON rejections.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

impl FromRequestParts<Arc<Controller>> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        ctl: &Arc<Controller>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let Some(header) = parts.headers.get(header::AUTHORIZATION) else {
            // Browsers: the session cookie (and, to change anything, its CSRF token).
            return crate::web::session::principal(parts, ctl).await;
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?
            .trim()
            .to_owned();
        ctl.store
            .read(move |c| store_auth::authenticate(c, &token))
            .await?
            .ok_or_else(|| unauthorized("unknown API token"))
    }
}

pub(crate) fn require(who: &Principal, p: Permission) -> ApiResult<()> {
    // Group-scoped principals pass here if they hold `p` somewhere; the service checks the
    // group of each object.
    if who.role.grants(p) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} ({}) lacks the {p} permission",
            who.name, who.role
        )))
    }
}

pub(crate) fn require_global(who: &Principal, p: Permission) -> ApiResult<()> {
    if who.can(p, None) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} ({}) lacks the {p} permission for all device groups",
            who.name, who.role
        )))
    }
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "session",
    responses((status = 200, description = "the caller: name, role, device groups")))]
async fn whoami(who: Principal) -> Json<Principal> {
    Json(who)
}

/// The controller's own state: what an admin watching a large fleet (or a connect storm)
/// asks first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    /// Agents with a live session now.
    pub connected: usize,
    /// The connection layer: handshakes, the line waiting for one, refusals.
    pub connections: crate::admission::Counts,
    /// The store's writer thread: `running`, or `stopped` when it has ended and every write
    /// (approvals, agents' results, logins, audit) fails while reads still answer; restart
    /// the controller then.
    #[schema(example = "running")]
    pub store_writer: &'static str,
}

#[utoipa::path(get, path = "/api/v1/status", tag = "session",
    responses((status = 200, description = "the controller's version, uptime and connection counts", body = Status)))]
async fn status(State(ctl): Ctl, who: Principal) -> ApiResult<Json<Status>> {
    // The whole fleet's counts: for those who see every device group.
    require_global(&who, Permission::View)?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: ctl.started.elapsed().as_secs(),
        connected: ctl.registry.online_count(),
        connections: ctl.admission.counts(),
        store_writer: if ctl.store.writer_running() {
            "running"
        } else {
            "stopped"
        },
    }))
}

#[utoipa::path(get, path = "/api/v1/ca", tag = "devices",
    responses((status = 200, description = "the CA fingerprint agents pin")))]
async fn ca(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    Ok(Json(json!({"ca_sha256": ctl.ca.fingerprint()})))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    responses((status = 200, description = "devices the caller sees, with online state")))]
async fn list_devices(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let mut list = ctl.store.read(devices::list).await?;
    list.retain(|d| who.sees_group(&d.device_group));
    for d in &mut list {
        d.online = ctl.registry.is_online(&d.id);
    }
    Ok(Json(json!({"devices": list})))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path)),
    responses((status = 200, description = "one device, its outstanding actions and desired state")))]
async fn show_device(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let scope = who.group_scope();
    let (mut device, queue, want) = ctl
        .store
        .read(move |c| {
            let d = devices::resolve(c, &id, scope.as_deref())?;
            let filter = actions::Filter {
                device: Some(d.id.to_string()),
                view: Some("history".into()),
                sort: Some("id".into()),
                order: Some("asc".into()),
                limit: Some(1000),
                ..Default::default()
            };
            let (all, _) = actions::list(c, &filter, None)?;
            let queue: Vec<_> = all
                .into_iter()
                .filter(|a| a.status.is_outstanding())
                .collect();
            let want = desired::to_json(&desired::get(c, &d.id)?);
            Ok((d, queue, want))
        })
        .await?;
    device.online = ctl.registry.is_online(&device.id);
    Ok(Json(
        json!({"device": device, "queue": queue, "desired": want}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    limit: Option<u32>,
}

/// The device's own reports (denied executions …), newest first: its "automated device
/// action" history.
#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "devices",
    params(("id" = String, Path)),
    responses((status = 200, description = "what the device reported on its own (denied executions)")))]
async fn device_events(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<EventsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let scope = who.group_scope();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let (device, list) = ctl
        .store
        .read(move |c| {
            let d = devices::resolve(c, &id, scope.as_deref())?;
            let list = store_events::list(c, &d.id, limit)?;
            Ok((d, list))
        })
        .await?;
    Ok(Json(json!({"device": device.id, "events": list})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllowlistUpdate {
    device_group: String,
    #[serde(default)]
    sha256: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/exec-allowlist", tag = "policy",
    request_body = AllowlistUpdate,
    responses((status = 200, description = "replace a group's exec allowlist (admin)")))]
async fn set_exec_allowlist(
    State(ctl): Ctl,
    who: Principal,
    Body(u): Body<AllowlistUpdate>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let list = ctl
        .set_exec_allowlist(&who, u.device_group, u.sha256, u.paths)
        .await?;
    Ok(Json(json!({"allowlist": list})))
}

#[utoipa::path(get, path = "/api/v1/exec-allowlist", tag = "policy",
    responses((status = 200, description = "exec allowlists of the groups the caller sees")))]
async fn list_exec_allowlists(
    State(ctl): Ctl,
    who: Principal,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let mut list = ctl.store.read(desired::list_allowlists).await?;
    list.retain(|a| who.sees_group(&a.device_group));
    Ok(Json(json!({"allowlists": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassRequest {
    valid_secs: u64,
}

/// An offline release code for an isolated device (approve permission on its group).
#[utoipa::path(post, path = "/api/v1/devices/{id}/break-glass", tag = "devices",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, description = "{\"valid_secs\": seconds, at most 30 days}"),
    responses((status = 200, description = "the code, its serial and expiry")))]
async fn break_glass(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
    Body(r): Body<BreakGlassRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::Approve)?;
    let (device, serial, not_after, code) = ctl
        .breakglass(&who, id, std::time::Duration::from_secs(r.valid_secs))
        .await?;
    Ok(Json(json!({
        "device_id": device,
        "serial": serial,
        "not_after_ms": (not_after as i64).saturating_mul(1000),
        "code": code,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupAssignment {
    /// The group, or null to hand the device back to the membership rules (and, if none
    /// matches, its enrolment token's group).
    device_group: Option<String>,
}

/// Assigns a device to a device group by hand; a manual assignment wins over every
/// membership rule. Admins of every group only; audited.
#[utoipa::path(put, path = "/api/v1/devices/{id}/group", tag = "devices",
    params(("id" = String, Path)),
    request_body = GroupAssignment,
    responses((status = 200, description = "the device in its new group")))]
async fn assign_group(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
    Body(b): Body<GroupAssignment>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let mut device = ctl.assign_group(&who, id, b.device_group).await?;
    device.online = ctl.registry.is_online(&device.id);
    Ok(Json(json!({"device": device})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupRules {
    /// Tried in this order; the first a device matches places it (unless it is assigned by
    /// hand).
    rules: Vec<crate::store::groups::GroupRule>,
}

/// The device-group membership rules, in order (admin).
#[utoipa::path(get, path = "/api/v1/group-rules", tag = "admin",
    responses((status = 200, description = "the membership rules in order")))]
async fn list_group_rules(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    Ok(Json(
        json!({"rules": ctl.store.read(crate::store::groups::rules).await?}),
    ))
}

/// Replaces the membership rules; every device is placed again at once (admin; audited).
#[utoipa::path(put, path = "/api/v1/group-rules", tag = "admin",
    request_body = GroupRules,
    responses((status = 200, description = "the rules, and the devices that changed group")))]
async fn set_group_rules(
    State(ctl): Ctl,
    who: Principal,
    Body(b): Body<GroupRules>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let moved = ctl.set_group_rules(&who, b.rules).await?;
    Ok(Json(json!({
        "rules": ctl.store.read(crate::store::groups::rules).await?,
        "moved": moved,
    })))
}

/// The containment targets in force.
#[utoipa::path(get, path = "/api/v1/containments", tag = "devices",
    responses((status = 200, description = "targets every other device in scope drops")))]
async fn list_containments(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let list = ctl
        .store
        .read(|c| {
            crate::store::containment::list(c)?
                .into_iter()
                .map(|t| {
                    let group = match &t.device_id {
                        Some(d) => devices::identity(c, d)?.map(|i| i.device_group),
                        None => None,
                    };
                    Ok((t, group))
                })
                .collect::<crate::store::Result<Vec<_>>>()
        })
        .await?;
    // A managed target belongs to its device's group; an unmanaged address to no group, so
    // only callers of every group see it (as they alone may contain one).
    let list: Vec<_> = list
        .into_iter()
        .filter(|(_, group)| match group {
            Some(g) => who.sees_group(g),
            None => who.device_groups.is_empty(),
        })
        .map(|(t, _)| t)
        .collect();
    Ok(Json(json!({"containments": list})))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/vault", tag = "devices",
    params(("id" = String, Path)),
    responses((status = 200, description = "the device's quarantine vault as last reported")))]
async fn device_vault(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let scope = who.group_scope();
    let (device, (entries, reported_at)) = ctl
        .store
        .read(move |c| {
            let d = devices::resolve(c, &id, scope.as_deref())?;
            let v = devices::vault(c, &d.id)?;
            Ok((d, v))
        })
        .await?;
    Ok(Json(json!({
        "device": device.id,
        "hostname": device.hostname,
        "reported_at": reported_at,
        "entries": entries,
    })))
}

#[utoipa::path(post, path = "/api/v1/actions", tag = "actions",
    request_body = crate::service::ActionRequest,
    responses((status = 200, description = "request an action on one or more devices, or fleet-wide")))]
async fn request_actions(
    State(ctl): Ctl,
    who: Principal,
    Body(req): Body<ActionRequest>,
) -> ApiResult<(StatusCode, Json<Actions>)> {
    require(&who, Permission::Respond)?;
    let records = ctl.request(&who, req).await?;
    Ok((StatusCode::CREATED, Json(Actions { actions: records })))
}

/// `{"actions": [...]}`, serialized straight from the records. A fleet-wide action's answer
/// holds every child: built as a `serde_json::Value` first, that was a tree of 30 allocations
/// per child, 20,000 children, on an async thread, inside the approval that starts the
/// action.
#[derive(Serialize)]
pub(crate) struct Actions {
    actions: Vec<actions::ActionRecord>,
}

#[utoipa::path(get, path = "/api/v1/actions", tag = "actions",
    params(actions::Filter),
    responses((status = 200, description = "actions, filtered, sorted and paged by the server")))]
async fn list_actions(
    State(ctl): Ctl,
    who: Principal,
    Params(filter): Params<actions::Filter>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let groups = who.group_scope();
    let (list, total) = ctl
        .store
        .read(move |c| actions::list(c, &filter, groups.as_deref()))
        .await?;
    Ok(Json(json!({"total": total, "actions": list})))
}

#[derive(Serialize)]
struct Hop {
    hop: &'static str,
    at: Option<i64>,
    actor: Option<String>,
}

/// Children of a fleet-wide action shown in its detail.
const DETAIL_CHILDREN: u32 = 100;

#[utoipa::path(get, path = "/api/v1/actions/{id}", tag = "actions",
    params(("id" = String, Path)),
    responses((status = 200, description = "one action: hops, audit history, children")))]
async fn show_action(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let id: ActionId = id
        .parse()
        .map_err(|e: palisade_common::ids::IdError| ApiError::bad_request(e.to_string()))?;
    let groups = who.group_scope();
    let (rec, history, (children, children_total), undo_requests) = ctl
        .store
        .read(move |c| {
            let rec = actions::get(c, id)?;
            // The first of the children the caller may see; the rest page through the list
            // (`?parent=`): a fleet-wide action can have tens of thousands.
            let children = if rec.is_fleet_parent() {
                let filter = actions::Filter {
                    parent: Some(id.0),
                    sort: Some("id".into()),
                    order: Some("asc".into()),
                    limit: Some(DETAIL_CHILDREN),
                    ..Default::default()
                };
                actions::list(c, &filter, groups.as_deref())?
            } else {
                (vec![], 0)
            };
            let undos = actions::undo_requests(c, id)?;
            Ok((rec, audit::list(c, Some(id), 1000)?, children, undos))
        })
        .await?;
    // A fleet-wide parent is visible to whoever sees one of its children.
    let visible = if rec.is_fleet_parent() {
        children_total > 0
    } else if rec.device_id.is_none() {
        // An unmanaged target belongs to no group: only the unscoped see it.
        who.can(Permission::View, None)
    } else {
        who.sees_group(rec.device_group.as_deref().unwrap_or("default"))
    };
    if !visible {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action {id}"),
        ));
    }
    let device = rec.device_id.as_ref().map(|d| d.to_string());
    let timeline = vec![
        Hop {
            hop: "created",
            at: Some(rec.created_at),
            actor: Some(rec.requested_by.clone()),
        },
        Hop {
            hop: if rec.status == palisade_common::ActionStatus::Rejected {
                "rejected"
            } else {
                "approved"
            },
            at: rec.decided_at,
            actor: rec.decided_by.clone(),
        },
        Hop {
            hop: "delivered",
            at: rec.delivered_at,
            actor: device.clone(),
        },
        Hop {
            hop: "acknowledged",
            at: rec.acknowledged_at,
            actor: device.clone(),
        },
        Hop {
            hop: "started",
            at: rec.started_at,
            actor: device.clone(),
        },
        Hop {
            hop: "finished",
            at: rec.finished_at,
            actor: device.clone(),
        },
    ];
    let mut history = history;
    history.reverse();
    let undo_requests: Vec<_> = undo_requests
        .into_iter()
        .map(|(id, status)| json!({"id": id, "status": status}))
        .collect();
    Ok(Json(
        json!({"action": rec, "timeline": timeline, "history": history,
        "children": children, "children_total": children_total, "undo_requests": undo_requests}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    /// Each id once: an id given twice is refused with a 400 naming it.
    #[schema(value_type = Vec<u64>)]
    ids: Vec<ActionId>,
    #[serde(default)]
    comment: String,
}

impl Decision {
    /// Refuses an id given twice: each would be decided, and audited, twice.
    fn distinct(&self) -> ApiResult<()> {
        let mut seen = std::collections::HashSet::with_capacity(self.ids.len());
        match self.ids.iter().find(|id| !seen.insert(**id)) {
            Some(id) => Err(ApiError::bad_request(format!(
                "ids: action {id} is given more than once"
            ))),
            None => Ok(()),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/actions/approve", tag = "actions",
    request_body = Decision,
    responses((status = 200, description = "approve pending actions, all of one kind")))]
async fn approve(
    State(ctl): Ctl,
    who: Principal,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Actions>> {
    require(&who, Permission::Approve)?;
    d.distinct()?;
    Ok(Json(Actions {
        actions: ctl.decide(&who, d.ids, true, d.comment).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/actions/reject", tag = "actions",
    request_body = Decision,
    responses((status = 200, description = "reject pending actions, all of one kind, with a comment")))]
async fn reject(
    State(ctl): Ctl,
    who: Principal,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Actions>> {
    require(&who, Permission::Approve)?;
    d.distinct()?;
    Ok(Json(Actions {
        actions: ctl.decide(&who, d.ids, false, d.comment).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/actions/cancel", tag = "actions",
    request_body = Decision,
    responses((status = 200, description = "cancel outstanding actions")))]
async fn cancel(
    State(ctl): Ctl,
    who: Principal,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Actions>> {
    require(&who, Permission::Respond)?;
    d.distinct()?;
    Ok(Json(Actions {
        actions: ctl.cancel(&who, d.ids, d.comment).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/actions/undo", tag = "actions",
    request_body = Decision,
    responses((status = 200, description = "undo succeeded lasting actions of one kind")))]
async fn undo(
    State(ctl): Ctl,
    who: Principal,
    Body(d): Body<Decision>,
) -> ApiResult<(StatusCode, Json<Actions>)> {
    require(&who, Permission::Approve)?;
    d.distinct()?;
    Ok((
        StatusCode::CREATED,
        Json(Actions {
            actions: ctl.undo(&who, d.ids, d.comment).await?,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/actions/{id}/artifacts/{name}", tag = "actions",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "download an artifact (investigate)")))]
async fn download_artifact(
    State(ctl): Ctl,
    who: Principal,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    require(&who, Permission::Investigate)?;
    let id: ActionId = id
        .parse()
        .map_err(|e: palisade_common::ids::IdError| ApiError::bad_request(e.to_string()))?;
    let rec = ctl.store.read(move |c| actions::get(c, id)).await?;
    let group = rec.device_group.as_deref().unwrap_or("default");
    if !who.sees_group(group) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action {id}"),
        ));
    }
    if !who.can(Permission::Investigate, Some(group)) {
        return Err(ApiError::forbidden(format!(
            "{} lacks the investigate permission for group {group}",
            who.name
        )));
    }
    let artifact = rec
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("action {id} has no artifact {name:?}"),
            )
        })?;
    let sha = artifact.sha256.clone();
    let body = match ctl.store.read(move |c| blobs::get(c, &sha)).await? {
        Some(bytes) => axum::body::Body::from(bytes),
        None => {
            let path = ctl.artifacts.path_of(&artifact.sha256).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            let file = tokio::fs::File::open(&path).await.map_err(|e| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("artifact content missing: {e}"),
                )
            })?;
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file))
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("static header"),
    );
    headers.insert(header::CONTENT_LENGTH, artifact.size.into());
    headers.insert(
        "x-content-sha256",
        artifact
            .sha256
            .parse()
            .map_err(|_| ApiError::bad_request("bad hash"))?,
    );
    let disposition = format!(
        "attachment; filename=\"{}-{}\"",
        id,
        name.replace(['"', '\\'], "_")
    );
    if let Ok(v) = disposition.parse() {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok((headers, body).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEnrollToken {
    /// 1 to 1,000,000 enrolments.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    uses: u32,
    /// e.g. "24h", "7d"; at most 365 days.
    #[serde(default = "day")]
    expires_in: String,
    #[serde(default = "default_group")]
    device_group: String,
}

fn one() -> u32 {
    1
}
fn day() -> String {
    "24h".into()
}
fn default_group() -> String {
    "default".into()
}

#[utoipa::path(post, path = "/api/v1/enroll-tokens", tag = "admin",
    request_body = NewEnrollToken,
    responses((status = 200, description = "create an enrolment token (admin)")))]
async fn create_enroll_token(
    State(ctl): Ctl,
    who: Principal,
    Body(b): Body<NewEnrollToken>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_global(&who, Permission::Admin)?;
    let ttl = humantime::parse_duration(&b.expires_in)
        .map_err(|e| ApiError::bad_request(format!("expires_in {:?}: {e}", b.expires_in)))?;
    // Checked here, before the millisecond count is narrowed to i64 (and again in the store).
    let ttl_ms = i64::try_from(ttl.as_millis())
        .ok()
        .filter(|ms| *ms <= store_auth::MAX_ENROLL_TTL_MS)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "expires_in {:?} is longer than the limit of {} days",
                b.expires_in,
                store_auth::MAX_ENROLL_TTL_MS / 86_400_000
            ))
        })?;
    let actor = who.name.clone();
    let token = ctl
        .store
        .write(move |c| store_auth::create_enroll_token(c, &actor, b.uses, ttl_ms, &b.device_group))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "ca_sha256": ctl.ca.fingerprint()})),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    name: String,
    role: String,
    #[serde(default)]
    device_groups: Vec<String>,
    /// For logging in to the web Action center (argon2-hashed).
    #[serde(default)]
    password: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "admin",
    request_body = NewUser,
    responses((status = 200, description = "add a user; returns its first API token (admin)")))]
async fn add_user(
    State(ctl): Ctl,
    who: Principal,
    Body(u): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_global(&who, Permission::Admin)?;
    let role: Role = u.role.parse().map_err(ApiError::bad_request)?;
    let hash = match u.password.clone() {
        Some(p) => Some(crate::web::session::hash_new_password(p).await?),
        None => None,
    };
    let actor = who.name.clone();
    let name = u.name.clone();
    let token = ctl
        .store
        .write(move |c| {
            let token = store_auth::add_user(c, &actor, &u.name, role, &u.device_groups)?;
            if let Some(hash) = hash {
                crate::store::sessions::set_password_hash(c, &actor, &u.name, &hash)?;
            }
            Ok(token)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": name, "role": role, "token": token})),
    ))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "admin",
    responses((status = 200, description = "users and roles (admin)")))]
async fn list_users(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    Ok(Json(
        json!({"users": ctl.store.read(store_auth::list_users).await?}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserDisabled {
    /// true disables the user (its tokens and sessions stop working), false enables it again.
    disabled: bool,
}

#[utoipa::path(put, path = "/api/v1/users/{name}/disabled", tag = "admin",
    params(("name" = String, Path, description = "user name")),
    request_body = UserDisabled,
    responses((status = 200, description = "user disabled or enabled (admin)"),
        (status = 404, description = "no such user"),
        (status = 409, description = "the last enabled admin")))]
pub(crate) async fn set_user_disabled(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    Body(b): Body<UserDisabled>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let actor = who.name.clone();
    let n = name.clone();
    ctl.store
        .write(move |c| store_auth::set_user_disabled(c, &actor, &n, b.disabled))
        .await?;
    Ok(Json(json!({"user": name, "disabled": b.disabled})))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, description = "user removed with its tokens and sessions (admin)"),
        (status = 404, description = "no such user"),
        (status = 409, description = "the last enabled admin")))]
pub(crate) async fn remove_user(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let actor = who.name.clone();
    let n = name.clone();
    ctl.store
        .write(move |c| store_auth::remove_user(c, &actor, &n))
        .await?;
    Ok(Json(json!({"removed": name})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiToken {
    /// How long the token lives ("90d", "12h"); absent: until revoked.
    #[serde(default)]
    expires_in: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", tag = "admin",
    params(("name" = String, Path, description = "user name")),
    request_body = NewApiToken,
    responses((status = 201, description = "a new API token of the user, shown once: {\"id\", \"token\", \"expires_at\"} (admin)"),
        (status = 404, description = "no such user")))]
pub(crate) async fn create_api_token(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    Body(b): Body<NewApiToken>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_global(&who, Permission::Admin)?;
    let ttl_ms = match &b.expires_in {
        None => None,
        Some(e) => {
            let d = humantime::parse_duration(e)
                .map_err(|err| ApiError::bad_request(format!("expires_in {e:?}: {err}")))?;
            Some(
                i64::try_from(d.as_millis())
                    .ok()
                    .filter(|ms| *ms <= store_auth::MAX_API_TOKEN_TTL_MS)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "expires_in {e:?} is longer than the limit of {} days",
                            store_auth::MAX_API_TOKEN_TTL_MS / 86_400_000
                        ))
                    })?,
            )
        }
    };
    let actor = who.name.clone();
    let (id, token, listed) = ctl
        .store
        .write(move |c| {
            let (id, token) = store_auth::create_token(c, &actor, &name, ttl_ms)?;
            let listed = store_auth::list_tokens(c, Some(&name))?;
            Ok((id, token, listed))
        })
        .await?;
    let expires_at = listed
        .iter()
        .find(|t| t.id == id)
        .and_then(|t| t.expires_at);
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "token": token, "expires_at": expires_at})),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenQuery {
    /// Only this user's tokens.
    user: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "admin",
    params(TokenQuery),
    responses((status = 200, description = "API tokens (never their secrets), revoked ones included (admin)",
        body = Vec<store_auth::ApiToken>)))]
pub(crate) async fn list_api_tokens(
    State(ctl): Ctl,
    who: Principal,
    Params(q): Params<TokenQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let tokens = ctl
        .store
        .read(move |c| store_auth::list_tokens(c, q.user.as_deref()))
        .await?;
    Ok(Json(json!({"tokens": tokens})))
}

fn token_id(id: &str) -> ApiResult<i64> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("token id {id:?} is not a number")))
}

#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "admin",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 200, description = "token revoked (admin)"),
        (status = 404, description = "no such token"),
        (status = 409, description = "already revoked")))]
pub(crate) async fn revoke_api_token(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let id = token_id(&id)?;
    let actor = who.name.clone();
    let t = ctl
        .store
        .write(move |c| store_auth::revoke_token(c, &actor, id))
        .await?;
    Ok(Json(json!({"revoked": id, "user": t.user})))
}

#[utoipa::path(post, path = "/api/v1/tokens/{id}/rotate", tag = "admin",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 201, description = "token revoked and a new one made with the time it had left, shown once: {\"id\", \"token\"} (admin)"),
        (status = 404, description = "no such token"),
        (status = 409, description = "already revoked")))]
pub(crate) async fn rotate_api_token(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_global(&who, Permission::Admin)?;
    let id = token_id(&id)?;
    let actor = who.name.clone();
    let (new_id, token) = ctl
        .store
        .write(move |c| store_auth::rotate_token(c, &actor, id))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": new_id, "token": token, "replaces": id})),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyUpdate {
    #[serde(default = "star")]
    device_group: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    kind: Option<ActionKind>,
    require_approval: bool,
    distinct_approver: bool,
}

fn star() -> String {
    "*".into()
}

#[utoipa::path(put, path = "/api/v1/policies", tag = "policy",
    request_body = PolicyUpdate,
    responses((status = 200, description = "set a policy row (admin)")))]
async fn set_policy(
    State(ctl): Ctl,
    who: Principal,
    Body(p): Body<PolicyUpdate>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let actor = who.name.clone();
    let policy = store_auth::Policy {
        require_approval: p.require_approval,
        distinct_approver: p.distinct_approver,
    };
    ctl.store
        .write(move |c| store_auth::set_policy(c, &actor, &p.device_group, p.kind, policy))
        .await?;
    Ok(Json(
        json!({"policies": ctl.store.read(store_auth::list_policies).await?}),
    ))
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "policy",
    responses((status = 200, description = "approval policy per device group and kind")))]
async fn list_policies(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let mut list = ctl.store.read(store_auth::list_policies).await?;
    // `*` rows apply to every group, the caller's too.
    list.retain(|p| p.device_group == "*" || who.sees_group(&p.device_group));
    Ok(Json(json!({"policies": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    action: Option<ActionId>,
    #[serde(default)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    responses((status = 200, description = "audit records, newest first")))]
async fn list_audit(
    State(ctl): Ctl,
    who: Principal,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::View)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(
        json!({"records": ctl.store.read(move |c| audit::list(c, q.action, limit)).await?}),
    ))
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "verify the audit hash chain")))]
async fn verify_audit(State(ctl): Ctl, who: Principal) -> ApiResult<Json<audit::Verification>> {
    require_global(&who, Permission::View)?;
    Ok(Json(ctl.store.read(audit::verify).await?))
}

/// Largest rule upload accepted (all files of one request, as JSON).
const MAX_RULES_UPLOAD: usize = 128 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesUpload {
    files: Vec<crate::rules::RuleFile>,
    #[serde(default)]
    comment: String,
}

/// A new rule set (YARA sources, ClamAV hash lists), compiled here; admin only.
#[utoipa::path(post, path = "/api/v1/rules", tag = "scan",
    request_body(content = serde_json::Value, description = "{\"files\": [{\"name\", \"text\"}], \"comment\"}"),
    responses((status = 201, description = "the new rule-set version"),
        (status = 400, description = "every problem as file:line: message")))]
async fn upload_rules(
    State(ctl): Ctl,
    who: Principal,
    Body(u): Body<RulesUpload>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_global(&who, Permission::Admin)?;
    let set = ctl.upload_rules(&who, u.files, u.comment).await?;
    Ok((StatusCode::CREATED, Json(json!({"rule_set": set}))))
}

/// Rule-set versions, and the version each device enforces.
#[utoipa::path(get, path = "/api/v1/rules", tag = "scan",
    responses((status = 200, description = "rule sets and enforced versions")))]
async fn list_rules(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let sets = ctl.store.read(store_scan::list).await?;
    let mut devices = ctl.store.read(devices::list).await?;
    devices.retain(|d| who.sees_group(&d.device_group) && d.status == "active");
    let enforced: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| json!({"device": d.id, "hostname": d.hostname, "rules_version": d.rules_version}))
        .collect();
    Ok(Json(
        json!({"current": sets.first().map(|s| s.version), "rule_sets": sets, "devices": enforced}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutomationUpdate {
    #[serde(default = "star")]
    device_group: String,
    level: store_scan::AutomationLevel,
}

/// A device group's automation level for detections (full, semi, none); admin only.
#[utoipa::path(put, path = "/api/v1/automation", tag = "scan",
    request_body(content = serde_json::Value, description = "{\"device_group\": \"*\" or a group, \"level\": \"full\" | \"semi\" | \"none\"}"),
    responses((status = 200, description = "every group's level")))]
async fn set_automation(
    State(ctl): Ctl,
    who: Principal,
    Body(u): Body<AutomationUpdate>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    let actor = who.name.clone();
    ctl.store
        .write(move |c| store_scan::set_automation(c, &actor, &u.device_group, u.level))
        .await?;
    list_automation(State(ctl), who).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RealtimeUpdate {
    #[serde(default = "star")]
    device_group: String,
    enabled: bool,
}

/// Turns real-time protection on or off for a device group (`*`: every group without its
/// own setting); admin only. The group's devices get the new desired state at once.
#[utoipa::path(put, path = "/api/v1/realtime", tag = "scan",
    request_body(content = serde_json::Value, description = "{\"device_group\": \"*\" or a group, \"enabled\": true | false}"),
    responses((status = 200, description = "every group's setting")))]
async fn set_realtime(
    State(ctl): Ctl,
    who: Principal,
    Body(u): Body<RealtimeUpdate>,
) -> ApiResult<Json<serde_json::Value>> {
    require_global(&who, Permission::Admin)?;
    ctl.set_realtime(&who, u.device_group, u.enabled).await?;
    list_realtime(State(ctl), who).await
}

/// The real-time protection setting of every group the caller sees (and `*`), and whether
/// each of its devices' is watching.
#[utoipa::path(get, path = "/api/v1/realtime", tag = "scan",
    responses((status = 200, description = "settings per group, the default, and each device's state")))]
async fn list_realtime(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let mut devices = ctl.store.read(devices::list).await?;
    devices.retain(|d| who.sees_group(&d.device_group) && d.status == "active");
    let states: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            json!({"device": d.id, "hostname": d.hostname, "device_group": d.device_group,
                "active": d.observed.get("realtime_protection").cloned()})
        })
        .collect();
    let mut settings = ctl.store.read(crate::store::desired::list_realtime).await?;
    settings.retain(|s| s.device_group == "*" || who.sees_group(&s.device_group));
    Ok(Json(json!({
        "default": false,
        "realtime": settings,
        "devices": states,
    })))
}

/// The automation level of every group the caller sees (and `*`).
#[utoipa::path(get, path = "/api/v1/automation", tag = "scan",
    responses((status = 200, description = "every group's level and the default")))]
async fn list_automation(State(ctl): Ctl, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    let mut levels = ctl.store.read(store_scan::list_automation).await?;
    levels.retain(|l| l.device_group == "*" || who.sees_group(&l.device_group));
    Ok(Json(json!({
        "default": store_scan::AutomationLevel::DEFAULT,
        "automation": levels,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (tempfile::TempDir, Arc<Controller>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::load_or_create(dir.path()).unwrap();
        let store = crate::store::Store::open(&dir.path().join("controller.sqlite")).unwrap();
        let artifacts = crate::artifacts::Artifacts::open(dir.path(), 1 << 20).unwrap();
        let config = crate::Config::with_data_dir(dir.path().to_owned());
        (dir, Arc::new(Controller::new(store, artifacts, ca, config)))
    }

    fn admin() -> Principal {
        Principal {
            name: "admin".into(),
            role: Role::Admin,
            device_groups: vec![],
        }
    }

    fn enroll_token(uses: u32, expires_in: &str) -> NewEnrollToken {
        NewEnrollToken {
            uses,
            expires_in: expires_in.into(),
            device_group: "default".into(),
        }
    }

    #[tokio::test]
    async fn an_enrolment_token_beyond_the_limits_is_refused_and_writes_go_on() {
        let (_dir, ctl) = controller();
        for (uses, expires_in, field) in [
            (1, "292271000y", "expires_in"),
            (1, "366d", "expires_in"),
            (MAX_USES_PLUS_ONE, "1h", "uses"),
        ] {
            let e = create_enroll_token(
                State(ctl.clone()),
                admin(),
                Body(enroll_token(uses, expires_in)),
            )
            .await
            .unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
            assert!(
                e.message.contains(field) && e.message.contains("limit"),
                "{e:?}"
            );
        }
        let (status, _) =
            create_enroll_token(State(ctl.clone()), admin(), Body(enroll_token(3, "365d")))
                .await
                .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(ctl.store.writer_running());
    }

    #[tokio::test]
    async fn a_decision_naming_an_id_twice_is_refused_with_the_id() {
        let (_dir, ctl) = controller();
        let d = || {
            Body(Decision {
                ids: vec![ActionId(7), ActionId(9), ActionId(7)],
                comment: "x".into(),
            })
        };
        let errors = [
            approve(State(ctl.clone()), admin(), d()).await.err(),
            reject(State(ctl.clone()), admin(), d()).await.err(),
            cancel(State(ctl.clone()), admin(), d()).await.err(),
            undo(State(ctl.clone()), admin(), d()).await.err(),
        ];
        for e in errors {
            let e = e.expect("a decision with a duplicate id went through");
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
            assert!(
                e.message.contains("action 7 is given more than once"),
                "{e:?}"
            );
        }
    }

    const MAX_USES_PLUS_ONE: u32 = store_auth::MAX_ENROLL_USES + 1;

    #[tokio::test]
    async fn the_status_reports_a_stopped_store_writer() {
        let (_dir, ctl) = controller();
        let Json(s) = status(State(ctl.clone()), admin()).await.unwrap();
        assert_eq!(s.store_writer, "running");
        ctl.store.halt_writer();
        let mut last = "running";
        for _ in 0..200 {
            let Json(s) = status(State(ctl.clone()), admin()).await.unwrap();
            last = s.store_writer;
            if last == "stopped" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(last, "stopped", "the writer's end is not in the status");
    }
}
