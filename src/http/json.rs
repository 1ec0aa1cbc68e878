//! A JSON body extractor whose rejections speak the contract: a body over
//! the size limit is `payload_too_large`, anything unreadable is
//! `invalid_payload` with the reason. The body is read as JSON whatever its
//! Content-Type, so `curl -d '{…}'` works without extra headers.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "body exceeds the size limit")
            } else {
                ApiError::invalid(format!("body: {}", e.body_text()))
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::invalid(format!("body: {e}")))
    }
}
