//! A JSON body extractor whose rejections speak the contract: a body over
//! the size limit is `payload_too_large`, anything unreadable is
//! `invalid_payload` with the reason.

use axum::{
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(ErrorCode::PayloadTooLarge, "body exceeds the size limit"))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::invalid("body: Content-Type must be application/json"))
            }
            Err(e) => Err(ApiError::invalid(format!("body: {}", e.body_text()))),
        }
    }
}
