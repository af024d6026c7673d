//! The HTTP surface: health, readiness, metrics, and the one mapping from
//! an error's [`ErrorClass`] to a status and an `application/problem+json`
//! body that every endpoint shares.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use charter_commands::EventStore;
use charter_domain::{ErrorClass, ErrorCode};
use serde_json::json;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
}

/// The status each class of error answers with.
pub fn status_for(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
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
    pub code: &'static str,
    pub detail: String,
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
            code: error.code(),
            detail,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://charter.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
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
        code: "route_not_found",
        detail: "no such endpoint".to_owned(),
    }
    .into_response()
}
