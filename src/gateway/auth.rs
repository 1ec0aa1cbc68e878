//! Authentication on the socket (section 3): the handshake (`auth.token`
//! or `auth.session`), the `authenticate` event of the bus-app flow, the
//! auth timeout, and the end of a socket when its session expires.

use std::sync::Arc;

use serde::Deserialize;
use socketioxide::{adapter::Adapter, extract::SocketRef};

use super::{ClientEvent, Conn, Gateway, deadline::Deadline};
use crate::{
    error::{ApiError, ErrorCode},
    ids,
    metrics::{AuthStage, HandshakeOutcome, Limit, names},
    session::Session,
};

/// Credentials as clients send them, in the handshake or `authenticate`.
#[derive(Debug, Default, Deserialize)]
struct Credentials {
    token: Option<String>,
    session: Option<String>,
    fleet: Option<String>,
    /// The bus-app's name for the fleet.
    provider: Option<String>,
}

impl Credentials {
    fn from_json(v: Option<serde_json::Value>) -> Result<Self, ApiError> {
        match v {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v) => {
                serde_json::from_value(v).map_err(|_| ApiError::invalid("auth: expected { token } or { session }"))
            }
        }
    }

    fn fleet(&self) -> Result<Option<&str>, ApiError> {
        match (self.fleet.as_deref(), self.provider.as_deref()) {
            (Some(f), Some(p)) if f != p => Err(ApiError::invalid("fleet: differs from provider")),
            (f, p) => Ok(f.or(p)),
        }
    }
}

fn count_failure(stage: AuthStage, e: &ApiError) {
    metrics::counter!(names::AUTH_FAILURES, "stage" => stage, "code" => e.code.as_str()).increment(1);
}

/// Verifies a token and opens a session for it.
async fn open_session<A: Adapter>(gw: &Gateway<A>, token: &str, fleet: Option<&str>) -> Result<Session, ApiError> {
    let claims = gw.auth.authenticate(token).await?;
    if fleet.is_some_and(|f| f != claims.fleet) {
        return Err(ApiError::forbidden("the token belongs to another fleet"));
    }
    let now = crate::clock::now_ms();
    let session = Session::new(claims, gw.config.session_ttl_secs, now);
    if session.is_expired(now) {
        return Err(ApiError::new(ErrorCode::TokenExpired, "token has expired"));
    }
    gw.store.create_session(&session).await?;
    metrics::counter!(names::SESSIONS_CREATED, "role" => session.role.as_str()).increment(1);
    Ok(session)
}

async fn resume<A: Adapter>(gw: &Gateway<A>, id: &str) -> Result<Session, ApiError> {
    let expired = || ApiError::new(ErrorCode::SessionExpired, "unknown or expired session");
    if !ids::is_plausible_session_id(id) {
        return Err(expired());
    }
    let session = gw.store.session(id).await?;
    session.filter(|s| !s.is_expired(crate::clock::now_ms())).ok_or_else(expired)
}

/// Connect middleware: a refusal becomes the client's `connect_error`
/// whose message is the contract's code.
pub(super) async fn handshake<A: Adapter>(
    socket: &SocketRef<A>,
    auth: Option<serde_json::Value>,
    gw: &Gateway<A>,
) -> Result<Arc<Conn>, &'static str> {
    let result = async {
        let ip = gw.limits.client_ip(socket.req_parts());
        let slot = gw.limits.admit(ip).inspect_err(|e| {
            let limit = if e.code == ErrorCode::RateLimited { Limit::ConnectionsPerIp } else { Limit::Connections };
            metrics::counter!(names::RATE_LIMITED, "limit" => limit).increment(1);
        })?;
        let wants = super::recovery::Request::from_auth(auth.as_ref());
        let creds = Credentials::from_json(auth).map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.message))?;
        let fleet = creds.fleet()?;
        let session = match (&creds.token, &creds.session) {
            (Some(token), _) => Some(open_session(gw, token, fleet).await?),
            (None, Some(id)) => {
                let s = resume(gw, id).await?;
                if fleet.is_some_and(|f| f != s.fleet) {
                    return Err(ApiError::forbidden("the session belongs to another fleet"));
                }
                Some(s)
            }
            (None, None) => None,
        };
        let (session, recovery) = super::recovery::decide(gw, &wants, session).await;
        Ok::<_, ApiError>((session, slot, recovery))
    }
    .await;
    match result {
        Ok((session, slot, recovery)) => {
            metrics::counter!(names::HANDSHAKES, "outcome" => HandshakeOutcome::Ok).increment(1);
            let conn = Arc::new(Conn::new(gw.limits.event_limiter(), slot));
            if let Some(s) = session {
                // Joined before the connect packet, so a revocation can never miss it.
                socket.join(super::session_room(&s.session_id));
                conn.set_session(Arc::new(s));
            }
            super::recovery::on_handshake(socket, &conn, gw, recovery).await;
            Ok(conn)
        }
        Err(e) => {
            metrics::counter!(names::HANDSHAKES, "outcome" => HandshakeOutcome::Refused).increment(1);
            count_failure(AuthStage::Handshake, &e);
            tracing::debug!(sid = %socket.id, code = e.code.as_str(), reason = %e.message, "handshake refused");
            Err(e.code.as_str())
        }
    }
}

/// Right after the connect packet: greet a handshake-authenticated socket
/// with its session, or start the clock on one that still has to authenticate.
pub(super) fn on_connected<A: Adapter>(socket: &SocketRef<A>, conn: &Arc<Conn>, gw: &Arc<Gateway<A>>) {
    match conn.session() {
        Some(session) => {
            if let Err(e) = socket.emit("session", &*session) {
                tracing::debug!(error = %e, "session event not sent");
            }
            arm_expiry(gw, socket, conn, &session);
            track_presence(conn, gw, &session);
        }
        None => {
            gw.deadlines.set(socket, conn, Deadline::AuthTimeout, gw.config.auth_timeout());
        }
    }
}

/// A vehicle session keeps its vehicle online while the socket lives.
fn track_presence<A: Adapter>(conn: &Arc<Conn>, gw: &Arc<Gateway<A>>, session: &Session) {
    let Some(vehicle) = session.vehicle.clone() else { return };
    if !conn.claim_presence(&session.fleet, &vehicle) {
        return;
    }
    gw.vehicle_socket_opened(&session.fleet, &vehicle);
}

/// Disconnects the socket when its session's lifetime ends.
fn arm_expiry<A: Adapter>(gw: &Gateway<A>, socket: &SocketRef<A>, conn: &Arc<Conn>, session: &Session) {
    let left =
        std::time::Duration::from_millis(u64::try_from(session.remaining_ms(crate::clock::now_ms())).unwrap_or(0));
    let deadline = Deadline::SessionEnd { session_id: session.session_id.clone() };
    gw.deadlines.set(socket, conn, deadline, left);
}

pub(super) async fn on_authenticate<A: Adapter>(req: ClientEvent<A>, conn: Arc<Conn>, gw: Arc<Gateway<A>>) {
    let result = async {
        let creds = Credentials::from_json(Some(req.payload.clone()))?;
        let token = creds.token.as_deref().ok_or_else(|| ApiError::invalid("token: required"))?;
        let session = open_session(&gw, token, creds.fleet()?).await?;
        if conn.session().is_some_and(|current| current.fleet != session.fleet) {
            return Err(ApiError::forbidden("this socket is bound to another fleet"));
        }
        Ok(Arc::new(session))
    }
    .await;
    match result {
        Ok(session) => {
            if let Some(old) = conn.session() {
                req.socket.leave(super::session_room(&old.session_id));
            }
            req.socket.join(super::session_room(&session.session_id));
            conn.set_session(session.clone());
            arm_expiry(&gw, &req.socket, &conn, &session);
            // The new token's scope applies from here: what the socket
            // watched outside it is dropped before the client hears back.
            super::viewer::narrow_to_session(&req.socket, &conn, &gw).await;
            super::rooms::leave_all_if_scoped(&req.socket, &conn, &gw).await;
            req.reply(Ok(&*session));
            track_presence(&conn, &gw, &session);
        }
        Err(e) => {
            count_failure(AuthStage::Authenticate, &e);
            req.reply::<()>(Err(e));
        }
    }
}

/// The session of an authenticated socket, or why there is none.
pub(super) fn require_session(conn: &Conn) -> Result<Arc<Session>, ApiError> {
    match conn.session() {
        Some(s) if !s.is_expired(crate::clock::now_ms()) => Ok(s),
        Some(_) => Err(ApiError::new(ErrorCode::SessionExpired, "the session has expired")),
        None => Err(ApiError::unauthenticated()),
    }
}
