//! The OpenAPI document of the JSON API, generated from the handlers' `#[utoipa::path]`
//! annotations and served at `/api/v1/openapi.json`. A unit test checks that every route the
//! routers declare is in it.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade controller API",
        description = "Every capability of the Action center, the CLI and scripts. Authenticate \
            with `Authorization: Bearer <API token>`, or with the browser session cookie from \
            `POST /api/v1/session` plus its CSRF token in `X-CSRF-Token` on every state change. \
            Errors are `{\"error\": {\"status\", \"code\", \"message\"}}`."
    ),
    paths(
        crate::api::whoami,
        crate::api::status,
        crate::api::ca,
        crate::api::list_devices,
        crate::api::show_device,
        crate::api::device_vault,
        crate::api::device_events,
        crate::api::break_glass,
        crate::api::assign_group,
        crate::api::list_group_rules,
        crate::api::set_group_rules,
        crate::api::list_containments,
        crate::api::upload_rules,
        crate::api::list_rules,
        crate::api::set_automation,
        crate::api::list_automation,
        crate::api::set_realtime,
        crate::api::list_realtime,
        crate::api::list_exec_allowlists,
        crate::api::set_exec_allowlist,
        crate::api::list_actions,
        crate::api::request_actions,
        crate::api::approve,
        crate::api::reject,
        crate::api::cancel,
        crate::api::undo,
        crate::api::show_action,
        crate::api::download_artifact,
        crate::api::create_enroll_token,
        crate::api::list_users,
        crate::api::add_user,
        crate::api::remove_user,
        crate::api::set_user_disabled,
        crate::api::create_api_token,
        crate::api::list_api_tokens,
        crate::api::revoke_api_token,
        crate::api::rotate_api_token,
        crate::api::list_policies,
        crate::api::set_policy,
        crate::api::list_audit,
        crate::api::verify_audit,
        super::session::login,
        super::session::current,
        super::session::logout,
        super::session::set_password,
        super::prefs::get_prefs,
        super::prefs::put_prefs,
        super::export::export_csv,
        document,
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

/// Who may call each operation, as the OpenAPI `security` of the operation: the scopes are the
/// permission the caller's role must grant (none: any authenticated caller), and `unscoped`
/// when only users of every device group may call it. Operations absent here are public (only
/// `PUBLIC`); a unit test checks that every documented operation is in exactly one of the
/// two, and `tests/tests/e2e/web_api.rs` checks that the API refuses everyone else.
pub const ACCESS: &[(&str, &str, &[&str])] = &[
    ("get", "/api/v1/whoami", &[]),
    ("get", "/api/v1/session", &[]),
    ("delete", "/api/v1/session", &[]),
    ("put", "/api/v1/users/{name}/password", &[]),
    ("get", "/api/v1/ui-prefs/{view}", &["view"]),
    ("put", "/api/v1/ui-prefs/{view}", &["view"]),
    ("get", "/api/v1/status", &["view", "unscoped"]),
    ("get", "/api/v1/ca", &["view"]),
    ("get", "/api/v1/devices", &["view"]),
    ("get", "/api/v1/devices/{id}", &["view"]),
    ("get", "/api/v1/devices/{id}/vault", &["view"]),
    ("get", "/api/v1/devices/{id}/events", &["view"]),
    ("post", "/api/v1/devices/{id}/break-glass", &["approve"]),
    ("put", "/api/v1/devices/{id}/group", &["admin", "unscoped"]),
    ("get", "/api/v1/group-rules", &["admin", "unscoped"]),
    ("put", "/api/v1/group-rules", &["admin", "unscoped"]),
    ("get", "/api/v1/containments", &["view"]),
    ("get", "/api/v1/exec-allowlist", &["view"]),
    ("put", "/api/v1/exec-allowlist", &["admin", "unscoped"]),
    ("get", "/api/v1/actions", &["view"]),
    ("post", "/api/v1/actions", &["respond"]),
    ("get", "/api/v1/actions/export.csv", &["view"]),
    ("post", "/api/v1/actions/approve", &["approve"]),
    ("post", "/api/v1/actions/reject", &["approve"]),
    ("post", "/api/v1/actions/cancel", &["respond"]),
    ("post", "/api/v1/actions/undo", &["approve"]),
    ("get", "/api/v1/actions/{id}", &["view"]),
    (
        "get",
        "/api/v1/actions/{id}/artifacts/{name}",
        &["investigate"],
    ),
    ("post", "/api/v1/enroll-tokens", &["admin", "unscoped"]),
    ("get", "/api/v1/users", &["admin", "unscoped"]),
    ("post", "/api/v1/users", &["admin", "unscoped"]),
    ("delete", "/api/v1/users/{name}", &["admin", "unscoped"]),
    (
        "put",
        "/api/v1/users/{name}/disabled",
        &["admin", "unscoped"],
    ),
    (
        "post",
        "/api/v1/users/{name}/tokens",
        &["admin", "unscoped"],
    ),
    ("get", "/api/v1/tokens", &["admin", "unscoped"]),
    ("post", "/api/v1/tokens/{id}/revoke", &["admin", "unscoped"]),
    ("post", "/api/v1/tokens/{id}/rotate", &["admin", "unscoped"]),
    ("get", "/api/v1/policies", &["view"]),
    ("put", "/api/v1/policies", &["admin", "unscoped"]),
    ("get", "/api/v1/rules", &["view"]),
    ("post", "/api/v1/rules", &["admin", "unscoped"]),
    ("get", "/api/v1/automation", &["view"]),
    ("put", "/api/v1/automation", &["admin", "unscoped"]),
    ("get", "/api/v1/realtime", &["view"]),
    ("put", "/api/v1/realtime", &["admin", "unscoped"]),
    ("get", "/api/v1/audit", &["view", "unscoped"]),
    ("get", "/api/v1/audit/verify", &["view", "unscoped"]),
];

/// The operations anyone may call: logging in, and this document.
pub const PUBLIC: &[(&str, &str)] = &[("post", "/api/v1/session"), ("get", "/api/v1/openapi.json")];

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(super::session::COOKIE))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("delete", &mut item.delete),
            ] {
                let (Some(op), Some((_, _, scopes))) = (
                    op.as_mut(),
                    ACCESS.iter().find(|(m, p, _)| *m == method && p == path),
                ) else {
                    continue;
                };
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", scopes.iter().copied()),
                    SecurityRequirement::new("session", scopes.iter().copied()),
                ]);
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route("…", method(…))` in the API and web routers is documented.
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc = ApiDoc::openapi();
        let sources = [include_str!("../api.rs"), include_str!("mod.rs")];
        let mut checked = 0;
        for src in sources {
            for part in src.split(".route(").skip(1) {
                let path = part.split('"').nth(1).expect("route path");
                if !path.starts_with("/api/") {
                    continue;
                }
                let item = doc
                    .paths
                    .paths
                    .get(path)
                    .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
                let handlers = part.split(')').next().unwrap_or_default().to_owned()
                    + part.split(".route(").next().unwrap_or_default();
                for (method, present) in [
                    ("get(", item.get.is_some()),
                    ("post(", item.post.is_some()),
                    ("put(", item.put.is_some()),
                    ("delete(", item.delete.is_some()),
                ] {
                    if handlers.contains(method) {
                        assert!(present, "{path}: {method}…) is not documented");
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 20, "found only {checked} routes");
    }

    /// Every documented operation says who may call it, or is one of the few public ones; and
    /// the access table names no operation that does not exist.
    #[test]
    fn every_operation_declares_who_may_call_it() {
        let doc = ApiDoc::openapi();
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("get", &item.get),
                ("post", &item.post),
                ("put", &item.put),
                ("delete", &item.delete),
            ] {
                let Some(op) = op else { continue };
                seen += 1;
                let public = PUBLIC.contains(&(method, path.as_str()));
                assert_eq!(
                    op.security.is_some(),
                    !public,
                    "{method} {path}: add it to ACCESS (its permission) or, if anyone may call it, to PUBLIC"
                );
            }
        }
        assert_eq!(
            seen,
            ACCESS.len() + PUBLIC.len(),
            "ACCESS or PUBLIC names an operation that is not documented"
        );
    }

    /// Every call that takes a body says what the body is.
    #[test]
    fn every_post_and_put_describes_its_body() {
        let doc = ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [("post", &item.post), ("put", &item.put)] {
                if let Some(op) = op {
                    assert!(
                        op.request_body.is_some(),
                        "{method} {path} has no request body in the document"
                    );
                }
            }
        }
    }
}
