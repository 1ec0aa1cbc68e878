//! The live map page and its one script, compiled into the binary so the
//! demo works offline and the image needs no asset files.

use axum::{
    Router,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};

const INDEX: &str = include_str!("../../static/index.html");
const SOCKET_IO_CLIENT: &str = include_str!("../../static/vendor/socket.io.min.js");

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/vendor/socket.io.min.js", get(client_script))
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn client_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=86400")],
        SOCKET_IO_CLIENT,
    )
}
