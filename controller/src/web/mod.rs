//! The web Action center, served by the controller itself: the static page (HTML, CSS and
//! JavaScript embedded in the binary, no build step), browser sessions (password login,
//! cookies, CSRF, rate limits), the CSV export, per-user UI preferences, the OpenAPI
//! document, and the HTTP server (time limits, connection caps, HTTPS).
//!
//! The page is only a client of the JSON API: every button is an API call that checks the
//! caller's permissions itself, so the UI merely hides what the API would refuse anyway.

pub mod export;
pub mod gate;
pub mod openapi;
pub mod password;
pub mod prefs;
pub mod serve;
pub mod session;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::service::Controller;

/// In-memory state of the web layer.
#[derive(Default)]
pub struct WebState {
    pub limiter: session::LoginLimiter,
}

/// The whole HTTP application: the JSON API, the web routes and the page.
pub fn app(ctl: Arc<Controller>) -> Router {
    let tls = ctl.config.api_uses_tls();
    crate::api::router(ctl.clone())
        .merge(router(ctl.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            ctl,
            gate::permission_first,
        ))
        .layer(axum::middleware::map_response(
            move |r: Response| async move { security_headers(r, tls) },
        ))
        .layer(axum::middleware::from_fn(close_after_refused_body))
}

/// A refusal before the request's body was read (no credentials, no CSRF token) leaves the
/// body on the connection. hyper then drains it if it has already arrived, and otherwise
/// closes the connection after the response, at a moment the client cannot know: a client
/// that reuses the connection sees its next request fail ("peer disconnected"). So an error
/// answer to a request that has a body says `Connection: close` (HTTP/1; HTTP/2 streams do not
/// share a body).
async fn close_after_refused_body(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|n| n != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let http1 = req.version() <= axum::http::Version::HTTP_11;
    let mut r = next.run(req).await;
    if has_body && http1 && (r.status().is_client_error() || r.status().is_server_error()) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The web routes, without the API's fallback (they are merged into its router).
fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route(
            "/api/v1/session",
            get(session::current)
                .post(session::login)
                .delete(session::logout),
        )
        .route(
            "/api/v1/users/{name}/password",
            axum::routing::put(session::set_password),
        )
        .route(
            "/api/v1/ui-prefs/{view}",
            get(prefs::get_prefs).put(prefs::put_prefs),
        )
        .route("/api/v1/actions/export.csv", get(export::export_csv))
        .route("/api/v1/openapi.json", get(openapi::document))
        .with_state(ctl)
}

const INDEX: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const APP_CSS: &str = include_str!("static/app.css");

async fn index() -> Response {
    static_file(INDEX, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    static_file(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    static_file(APP_CSS, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Headers on every response: no framing, no sniffing, no referrer, and a content security
/// policy that runs only our own script, so that even a string that escaped escaping could
/// not execute.
fn security_headers(mut r: Response, tls: bool) -> Response {
    let h = r.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}
