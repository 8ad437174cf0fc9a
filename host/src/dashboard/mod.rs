//! The operator dashboard at `/dashboard/`: static pages compiled into the binary
//! (`include_bytes!`), so there is nothing to build or install on the user's machine. The
//! pages are plain JavaScript modules that read the JSON API (`/overview`, `/plugins`,
//! `/learning/*`, `/experiments/*`, `/users/*`, `/recommend`) and draw their charts as SVG
//! (`assets/charts.js`); the server renders nothing.
//!
//! The pages run under a strict Content-Security-Policy (scripts, styles and requests from
//! this origin only, no inline code), so that a title or an ID shown on a page can never run
//! as script even if an escaping bug slipped in.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::api::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "pages.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/pages.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/charts.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/` and `/dashboard` lead to the dashboard; `/dashboard/{file}` serves its files.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

/// A strong ETag per asset, computed once: browsers revalidate (`Cache-Control: no-cache`)
/// and get a 304 until the binary changes.
fn etag(index: usize) -> &'static str {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    &ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })[index]
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found("not_found", format!("the dashboard has no file {name:?}"))
            .into_response();
    };
    let asset = &ASSETS[index];
    let etag = etag(index);
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    let revalidated = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    if revalidated {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_links_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for asset in ASSETS.iter().skip(1) {
            let linked = ASSETS
                .iter()
                .any(|a| std::str::from_utf8(a.body).is_ok_and(|text| text.contains(asset.name)));
            assert!(linked, "{} is embedded but nothing links it", asset.name);
        }
        for reference in ["app.js", "style.css", "favicon.svg"] {
            assert!(
                index.contains(reference),
                "index.html does not link {reference}"
            );
        }
    }

    #[test]
    fn a_revalidation_with_the_current_etag_gets_304() {
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static(etag(1)));
        assert_eq!(serve("app.js", &request).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("app.js", &HeaderMap::new()).status(), StatusCode::OK);
        assert_eq!(
            serve("../recohost.db", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
