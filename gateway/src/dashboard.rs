//! The web dashboard: `GET /` and `GET /dashboard/{file}`, served from assets embedded in the
//! binary at build time (`assets/dashboard/`, see `build.rs`). A request names an entry of that
//! table or gets a 404; nothing is read from disk. The page itself holds no secret: it asks for
//! a token and calls the same API as every other client, so these routes need none.

use warp::http::{StatusCode, header};
use warp::reply::{Reply, Response};

use crate::problem::Problem;

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(path, _, _)| *path == name) {
        Some((_, content_type, bytes)) => {
            let mut response = Response::new(bytes.to_vec().into());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            // The page may only talk to this node, and runs no script from elsewhere.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                     style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                ),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            response
        }
        None => Problem::new(StatusCode::NOT_FOUND, format!("no dashboard file `{name}`"))
            .into_response(),
    }
}

pub async fn index() -> Result<Response, warp::Rejection> {
    Ok(asset("index.html"))
}

/// `file` is the rest of the path after `/dashboard/` (`vendor/uPlot.min.css`).
pub async fn file(file: String) -> Result<Response, warp::Rejection> {
    Ok(asset(&file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_and_its_assets_are_embedded_and_nothing_else_is_served() {
        let page = asset("index.html");
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert!(ASSETS.iter().any(|(name, _, _)| name.ends_with(".js")));
        for outside in ["../Cargo.toml", "/etc/passwd", "", "index.html/"] {
            assert_eq!(asset(outside).status(), 404, "{outside}");
        }
    }
}
