//! The live map page, its vendored scripts and styles, and the small
//! configuration it reads at start, all compiled into the binary so the
//! demo works offline and the image needs no asset files.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use serde::Serialize;

use super::HttpState;

const INDEX: &str = include_str!("../../static/index.html");
const SOCKET_IO_CLIENT: &str = include_str!("../../static/vendor/socket.io.min.js");
const LEAFLET_JS: &str = include_str!("../../static/vendor/leaflet.js");
const LEAFLET_CSS: &str = include_str!("../../static/vendor/leaflet.css");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
/// The vendored files change only with the binary.
const ASSET_CACHE: &str = "public, max-age=86400";

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(index))
        .route("/map-config.json", get(map_config))
        .route("/vendor/socket.io.min.js", get(|| asset(JAVASCRIPT, SOCKET_IO_CLIENT)))
        .route("/vendor/leaflet.js", get(|| asset(JAVASCRIPT, LEAFLET_JS)))
        .route("/vendor/leaflet.css", get(|| asset(CSS, LEAFLET_CSS)))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, ASSET_CACHE)], body)
}

/// What the page needs to know about its base map. Served as JSON rather
/// than written into the HTML, so no configured value is ever parsed as
/// markup or script.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MapConfig<'a> {
    /// `None`: tiles are off, the page draws its coordinate grid only.
    tile_url: Option<&'a str>,
    /// Plain text; the page inserts it as text.
    tile_attribution: &'a str,
}

async fn map_config(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let config = state.backend.config();
    let body = MapConfig { tile_url: config.map_tiles(), tile_attribution: &config.map_tile_attribution };
    // A restart with other settings must reach open pages' next load.
    ([(header::CACHE_CONTROL, "no-cache")], Json(body)).into_response()
}
