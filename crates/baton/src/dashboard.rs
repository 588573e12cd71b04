//! The web dashboard: three files embedded in the binary (no Node or other
//! toolchain to build it), served at `/ui/`. The page asks for a token and then
//! uses only the public API and its live stream (`GET /v1/stream`).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../assets/dashboard/style.css");

/// Only the page's own files, and no framing by other sites.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new baton serves new files at the same paths.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui/`.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`, `GET /ui/style.css`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", APP_JS),
        "style.css" => file("text/css; charset=utf-8", STYLE_CSS),
        _ => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// The bytes of the page and its files, for the benchmark.
pub fn first_load() -> [(&'static str, &'static str); 3] {
    [
        ("index.html", INDEX),
        ("app.js", APP_JS),
        ("style.css", STYLE_CSS),
    ]
}
