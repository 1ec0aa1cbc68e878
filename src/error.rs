//! The contract's error codes (section 4) and the one place where a failure
//! becomes a code, an HTTP status and a client-visible envelope.

use std::borrow::Cow;

use serde::Serialize;

/// The error codes of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthenticated,
    InvalidToken,
    TokenExpired,
    SessionExpired,
    Forbidden,
    InvalidPayload,
    PayloadTooLarge,
    NotFound,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    /// Every code, as the metrics pre-register them.
    pub const ALL: [ErrorCode; 10] = [
        Self::Unauthenticated,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::SessionExpired,
        Self::Forbidden,
        Self::InvalidPayload,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::RateLimited,
        Self::Unavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::SessionExpired => "session_expired",
            Self::Forbidden => "forbidden",
            Self::InvalidPayload => "invalid_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    pub const fn http_status(self) -> u16 {
        match self {
            Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired | Self::SessionExpired => 401,
            Self::Forbidden => 403,
            Self::InvalidPayload => 400,
            Self::PayloadTooLarge => 413,
            Self::NotFound => 404,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }

    /// Whether the failure is about who the client is (the only kind that
    /// may cost a socket its connection).
    pub const fn is_auth(self) -> bool {
        matches!(self, Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired | Self::SessionExpired)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A store call that failed is `unavailable` to the client, logged here
/// once (the socket's or request's span says whose it was).
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store call failed");
        ApiError::unavailable()
    }
}

impl From<crate::geofence::GeofenceError> for ApiError {
    fn from(e: crate::geofence::GeofenceError) -> Self {
        use crate::geofence::GeofenceError as E;
        match e {
            E::Invalid(fault) => ApiError::invalid(fault.to_string()),
            E::Full(max) => ApiError::new(ErrorCode::PayloadTooLarge, format!("at most {max} geofences per fleet")),
            E::NotFound => ApiError::new(ErrorCode::NotFound, "no such geofence"),
            E::Store(e) => e.into(),
        }
    }
}

impl From<crate::outputs::WebhookError> for ApiError {
    fn from(e: crate::outputs::WebhookError) -> Self {
        use crate::outputs::WebhookError as E;
        match e {
            E::Invalid(message) => ApiError::invalid(message),
            E::Full(max) => ApiError::new(ErrorCode::PayloadTooLarge, format!("at most {max} webhooks per fleet")),
            E::NotFound => ApiError::new(ErrorCode::NotFound, "no such webhook"),
            E::Disabled => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            E::Store(e) => e.into(),
        }
    }
}

/// A failure as a client sees it: a contract code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidPayload, message)
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthenticated() -> Self {
        Self::new(ErrorCode::Unauthenticated, "authenticate first")
    }

    pub fn unavailable() -> Self {
        Self::new(ErrorCode::Unavailable, "storage is unreachable, try again")
    }

    /// The `error` member of a failed envelope.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody { code: self.code, message: &self.message }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub code: ErrorCode,
    pub message: &'a str,
}

/// The reply envelope of section 4: `{ ok: true, data }` or `{ ok: false, error }`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Envelope<'a, T: Serialize> {
    Ok { ok: True, data: T },
    Err { ok: False, error: ErrorBody<'a> },
}

impl<'a, T: Serialize> Envelope<'a, T> {
    pub fn from_result(result: &'a Result<T, ApiError>) -> Envelope<'a, &'a T> {
        match result {
            Ok(data) => Envelope::Ok { ok: True, data },
            Err(e) => Envelope::Err { ok: False, error: e.body() },
        }
    }
}

/// Serialises as JSON `true`.
#[derive(Debug, Clone, Copy)]
pub struct True;
impl Serialize for True {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

/// Serialises as JSON `false`.
#[derive(Debug, Clone, Copy)]
pub struct False;
impl Serialize for False {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_match_the_contract() {
        let ok: Result<u8, ApiError> = Ok(1);
        assert_eq!(serde_json::to_string(&Envelope::from_result(&ok)).unwrap(), r#"{"ok":true,"data":1}"#);
        let err: Result<u8, ApiError> = Err(ApiError::invalid("lat: out of range"));
        assert_eq!(
            serde_json::to_string(&Envelope::from_result(&err)).unwrap(),
            r#"{"ok":false,"error":{"code":"invalid_payload","message":"lat: out of range"}}"#
        );
    }
}
