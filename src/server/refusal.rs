//! A request refused: what every handler and the body reader answer with when they will not
//! go on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A request refused: a status and a one-line reason (small, unlike a whole `Response`).
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    reason: String,
    /// A 401 asks for basic authentication (the module proxy) instead of a bearer token.
    basic: bool,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            basic: false,
        }
    }

    /// The same refusal, asking for basic authentication if it is a 401.
    pub(super) fn basic(self) -> Self {
        Self {
            basic: true,
            ..self
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.reason)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if self.basic {
                    "Basic realm=\"goremotecache\""
                } else {
                    "Bearer"
                }),
            );
        }
        response
    }
}
