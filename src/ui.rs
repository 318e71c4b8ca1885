//! The web console at `/ui/`: its files embedded in the binary (`ui/` in the repository),
//! served without a key — they hold no data; the page asks for a key and sends it as a bearer
//! token to the public APIs (`/v1/*`, `/admin/*`), which check it as for any client.
//!
//! Every answer carries a strict Content-Security-Policy (no inline script or style, nothing from
//! another origin, no framing), `nosniff` and `no-referrer`.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, PathId};

/// The console's policy: its own scripts, styles and API only; images also from `data:` and
/// `blob:` URLs (generated images, uploads).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// The path prefix the auth layer lets through without a key.
pub const PREFIX: &str = "/ui";

/// The embedded files: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../ui/index.html")),
    ("style.css", CSS, include_bytes!("../ui/style.css")),
    ("app.js", JS, include_bytes!("../ui/app.js")),
    ("core.js", JS, include_bytes!("../ui/core.js")),
    ("admin.js", JS, include_bytes!("../ui/admin.js")),
    ("member.js", JS, include_bytes!("../ui/member.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route(
            "/ui/{file}",
            get(|PathId(name): PathId| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    let Some((_, kind, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found(&format!("/ui/{name}")).into_response();
    };
    let mut res = (*bytes).into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Small files, changed with the binary: revalidated each time.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
