//! Permission before the body: for the routes that take a body, the caller is authenticated
//! and its role checked from the headers alone, so that a caller who may not use the route
//! is refused (401/403, `Connection: close`) before the controller reads or parses a byte of
//! what it sent. The handlers check again (and per device group); this only refuses early
//! what they would refuse anyway.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{require, require_global};
use crate::auth::{Permission, Principal};
use crate::service::Controller;

/// The permission a body-taking route's handler checks first: `(method, route, permission,
/// for all device groups)`. Routes not named here (the login, a user's own password, UI
/// preferences) decide from the body or need no permission.
const ROUTES: &[(Method, &str, Permission, bool)] = &[
    (
        Method::POST,
        "/api/v1/devices/{id}/break-glass",
        Permission::Approve,
        false,
    ),
    (
        Method::PUT,
        "/api/v1/devices/{id}/group",
        Permission::Admin,
        true,
    ),
    (Method::PUT, "/api/v1/group-rules", Permission::Admin, true),
    (
        Method::PUT,
        "/api/v1/exec-allowlist",
        Permission::Admin,
        true,
    ),
    (Method::POST, "/api/v1/actions", Permission::Respond, false),
    (
        Method::POST,
        "/api/v1/actions/approve",
        Permission::Approve,
        false,
    ),
    (
        Method::POST,
        "/api/v1/actions/reject",
        Permission::Approve,
        false,
    ),
    (
        Method::POST,
        "/api/v1/actions/cancel",
        Permission::Respond,
        false,
    ),
    (
        Method::POST,
        "/api/v1/actions/undo",
        Permission::Approve,
        false,
    ),
    (
        Method::POST,
        "/api/v1/enroll-tokens",
        Permission::Admin,
        true,
    ),
    (Method::POST, "/api/v1/users", Permission::Admin, true),
    (Method::PUT, "/api/v1/policies", Permission::Admin, true),
    (Method::POST, "/api/v1/rules", Permission::Admin, true),
    (Method::PUT, "/api/v1/automation", Permission::Admin, true),
    (Method::PUT, "/api/v1/realtime", Permission::Admin, true),
];

/// The route layer: authenticates and checks the route's permission before the body is
/// read; the principal is handed on to the handler's extractor.
pub async fn permission_first(
    State(ctl): State<Arc<Controller>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(&(_, _, permission, global)) = req.extensions().get::<MatchedPath>().and_then(|m| {
        ROUTES
            .iter()
            .find(|(method, path, _, _)| method == req.method() && *path == m.as_str())
    }) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let who = match Principal::from_request_parts(&mut parts, &ctl).await {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    let allowed = if global {
        require_global(&who, permission)
    } else {
        require(&who, permission)
    };
    if let Err(e) = allowed {
        return e.into_response();
    }
    parts.extensions.insert(who);
    next.run(Request::from_parts(parts, body)).await
}
