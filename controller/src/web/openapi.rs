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
        crate::api::ca,
        crate::api::list_devices,
        crate::api::show_device,
        crate::api::device_vault,
        crate::api::device_events,
        crate::api::break_glass,
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

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(super::session::COOKIE))),
        );
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
