//! The HTTP surface: health, readiness, metrics, and the one mapping from
//! an error's [`ErrorClass`] to a status and an `application/problem+json`
//! body that every endpoint shares.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use charter_commands::{EventStore, Position};
use charter_domain::{ErrorClass, ErrorCode};
use serde_json::json;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    /// How far the in-memory access index has applied the log, and the
    /// log's head when the process started: until the index is there, it
    /// would decide on stale facts, and the process is not ready.
    pub caught_up: Option<(tokio::sync::watch::Receiver<Position>, Position)>,
}

/// The status each class of error answers with.
pub fn status_for(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorClass::Malformed => StatusCode::BAD_REQUEST,
        ErrorClass::NotFound => StatusCode::NOT_FOUND,
        ErrorClass::AlreadyExists | ErrorClass::Conflict => StatusCode::CONFLICT,
        ErrorClass::FailedPrecondition => StatusCode::CONFLICT,
        ErrorClass::Forbidden => StatusCode::FORBIDDEN,
        ErrorClass::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An RFC 9457 problem document with a stable `code`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: std::borrow::Cow<'static, str>,
    pub detail: String,
    /// Machine-readable specifics (field paths, deciding policies, …).
    pub details: Option<Box<serde_json::Value>>,
}

impl From<crate::gateway::ApiError> for Problem {
    fn from(error: crate::gateway::ApiError) -> Self {
        Self {
            status: status_for(error.class),
            code: error.code,
            detail: error.message,
            details: error.details,
        }
    }
}

impl Problem {
    pub fn from_error(error: &(impl ErrorCode + std::fmt::Display)) -> Self {
        let class = error.class();
        let detail = if class == ErrorClass::Internal {
            // Internals stay in the logs.
            tracing::error!(code = error.code(), %error, "internal error");
            "internal error".to_owned()
        } else {
            error.to_string()
        };
        Self {
            status: status_for(class),
            code: error.code().into(),
            detail,
            details: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://charter.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let (Some(details), Some(map)) = (self.details, body.as_object_mut()) {
            map.insert("details".into(), *details);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Turns the framework's own plain-text errors (a path or query that does
/// not parse, a wrong method, a body too large) into problem documents, so
/// that every error a client sees has the same shape and a `code`.
pub async fn problem_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !is_plain {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        _ if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body)
        .chars()
        .take(500)
        .collect::<String>();
    Problem {
        status,
        code: code.into(),
        detail: if detail.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            detail
        },
        details: None,
    }
    .into_response()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.check_ready().await {
        Ok(()) => {
            if let Some((visible, head)) = &state.caught_up {
                let at = *visible.borrow();
                if at < *head {
                    return Problem {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        code: "catching_up".into(),
                        detail: format!(
                            "the access index is catching up with the log: at position {at}, \
                             the log was at {head} when the process started"
                        ),
                        details: Some(Box::new(json!({"at": at.0, "head": head.0}))),
                    }
                    .into_response();
                }
            }
            axum::Json(json!({"status": "ready", "store": state.store.backend()})).into_response()
        }
        Err(error) => {
            let mut problem = Problem::from_error(&error);
            // Not ready is always 503, whatever the cause, so that load
            // balancers and orchestrators read it the same way.
            problem.status = StatusCode::SERVICE_UNAVAILABLE;
            problem.detail = error.to_string();
            problem.into_response()
        }
    }
}

async fn metrics() -> Response {
    let handle = crate::telemetry::metrics();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    Problem {
        status: StatusCode::NOT_FOUND,
        code: "route_not_found".into(),
        detail: "no such endpoint".to_owned(),
        details: None,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_ready_until_the_access_index_reaches_the_head_at_start() {
        let file = charter_testkit::ScratchFile::new("readyz");
        let store = charter_commands::store::connect(&file.url(), Default::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let (index, visible) = tokio::sync::watch::channel(Position(5));
        let state = AppState {
            store,
            caught_up: Some((visible, Position(9))),
        };
        let response = readyz(State(state.clone())).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "catching_up", "{problem}");
        assert_eq!(problem["details"], json!({"at": 5, "head": 9}));
        index.send_replace(Position(9));
        assert_eq!(readyz(State(state)).await.status(), StatusCode::OK);
    }
}
