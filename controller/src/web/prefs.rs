//! Per-user UI preferences (column choice, page size, sort …), one JSON object per view.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use crate::api::{ApiError, ApiResult, Body, require};
use crate::auth::{Permission, Principal};
use crate::service::Controller;
use crate::store::sessions;

/// The views that keep preferences.
pub const VIEWS: [&str; 3] = ["pending", "history", "devices"];

fn check_view(view: &str) -> ApiResult<()> {
    if VIEWS.contains(&view) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "view {view:?} is not one of {}",
            VIEWS.join(", ")
        )))
    }
}

/// The caller's preferences for a view (`{}` when none were saved).
#[utoipa::path(get, path = "/api/v1/ui-prefs/{view}", tag = "ui",
    params(("view" = String, Path, description = "pending, history or devices")),
    responses((status = 200, description = "the saved preferences")))]
pub async fn get_prefs(
    State(ctl): State<Arc<Controller>>,
    who: Principal,
    Path(view): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    check_view(&view)?;
    let name = who.name.clone();
    Ok(Json(
        ctl.store
            .read(move |c| sessions::prefs(c, &name, &view))
            .await?,
    ))
}

/// Replaces the caller's preferences for a view (a JSON object of at most 8 KiB).
#[utoipa::path(put, path = "/api/v1/ui-prefs/{view}", tag = "ui",
    params(("view" = String, Path, description = "pending, history or devices")),
    request_body(content = Object, description = "e.g. {\"columns\": [\"id\", \"kind\"], \"page_size\": 50}"),
    responses((status = 200, description = "the saved preferences")))]
pub async fn put_prefs(
    State(ctl): State<Arc<Controller>>,
    who: Principal,
    Path(view): Path<String>,
    Body(prefs): Body<serde_json::Value>,
) -> ApiResult<Json<serde_json::Value>> {
    require(&who, Permission::View)?;
    check_view(&view)?;
    let name = who.name.clone();
    let saved = prefs.clone();
    ctl.store
        .write(move |c| sessions::set_prefs(c, &name, &view, &saved))
        .await?;
    Ok(Json(prefs))
}
