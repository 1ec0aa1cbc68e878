//! Counts and times every HTTP request by method, matched route and status,
//! and runs it in a span (method and path, never the query, which may hold
//! a device token), so its log lines say whose they are. The route is the
//! router's pattern (`/api/v1/fleets/{fleet}/vehicles`), never the raw
//! path, so ids never become labels.

use std::time::Instant;

use tracing::Instrument;

use crate::metrics::names;

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::Response,
};

pub async fn track(route: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned());
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let response = next.run(req).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(names::HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// Extension methods are free text: they all count as `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
