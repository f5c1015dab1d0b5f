//! Who may do what, where: the namespace a request's path names ([`Target`], one extractor
//! for `/v1/...` and `/v1/ns/<NAME>/...` alike), and the bearer-token check for that
//! namespace ([`ServerState::admit`]).
//!
//! The order is fixed, and the same for every route: the namespace name (400 for a bad one,
//! before anything else is looked at), then the token (401 without a known one; 403 for a
//! namespace outside its scope or a write with a read-only one), then the key, and only then
//! the storage. So a token outside its scope learns nothing of what a namespace holds: its
//! answer is the same whether the entry exists or not.

use std::convert::Infallible;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::refusal::Refusal;
use super::state::ServerState;
use super::tokens::{Access, Scope};
use crate::ids::Namespace;

/// What a request's path names: its namespace (`None` on the un-namespaced paths), checked
/// when the request is handled so that a bad name is answered and counted like every
/// refusal, and its key as given (empty where the path has none).
pub(super) struct Target {
    namespace: Result<Option<Namespace>, String>,
    pub key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let mut target = Target {
            namespace: Ok(None),
            key: String::new(),
        };
        // The values come percent-decoded: `a%2Fb` is the name `a/b`, and refused.
        let params = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => params,
            Err(RawPathParamsRejection::InvalidUtf8InPathParam(_)) => {
                target.namespace = Err("the path is not valid UTF-8".into());
                return Ok(target);
            }
            Err(_) => return Ok(target),
        };
        for (name, value) in &params {
            match name {
                "ns" => target.namespace = Namespace::parse(value).map(Some),
                "key" => target.key = value.to_string(),
                _ => {}
            }
        }
        Ok(target)
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is case-insensitive, as
/// every HTTP authentication scheme is (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The password of an `Authorization: Basic BASE64(USER:PASSWORD)` value, which is how the go
/// command sends the credentials of `.netrc` (or `GOAUTH`) to a module proxy: the module
/// proxy takes it as the token, whatever the user name.
fn basic_password(value: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, encoded) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_owned())
}

impl ServerState {
    /// Checks the namespace `target` names (400), then the request's bearer token for
    /// `needed` in that namespace (401, 403); returns the namespace.
    pub(super) fn admit(
        &self,
        target: &Target,
        headers: &HeaderMap,
        needed: Scope,
    ) -> Result<Option<Namespace>, Refusal> {
        let namespace = target
            .namespace
            .clone()
            .map_err(|reason| Refusal::new(StatusCode::BAD_REQUEST, reason))?;
        self.authorize(headers, needed, namespace.as_ref())?;
        Ok(namespace)
    }

    /// Checks a module proxy request (`/mod/...`): any known token may read modules, whatever
    /// its scope (modules are not in a namespace, and reveal nothing of any build), given as
    /// a bearer token or as the password of basic authentication; none is needed with
    /// `--allow-anonymous-read`. A refusal asks for basic authentication, which is what the
    /// go command can answer (from `.netrc` or `GOAUTH`).
    pub(super) fn admit_modules(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.anonymous_read {
            return Ok(());
        }
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = value.and_then(|value| {
            bearer_token(value)
                .map(|token| token.trim().to_owned())
                .or_else(|| basic_password(value))
        });
        let access = token.map_or(Access::Unknown, |token| {
            crate::sync::read(&self.tokens).access(token.as_bytes(), None)
        });
        match access {
            Access::Granted(_) | Access::Outside => Ok(()),
            Access::Unknown => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid token is needed: a bearer token, or the password of basic \
                 authentication (.netrc)",
            )
            .basic()),
        }
    }

    /// Checks the request's bearer token for `needed` in `namespace`.
    fn authorize(
        &self,
        headers: &HeaderMap,
        needed: Scope,
        namespace: Option<&Namespace>,
    ) -> Result<(), Refusal> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let access = match presented {
            None if needed == Scope::Read && self.anonymous_read => return Ok(()),
            None => Access::Unknown,
            Some(token) => {
                crate::sync::read(&self.tokens).access(token.trim().as_bytes(), namespace)
            }
        };
        match access {
            Access::Granted(scope) if scope >= needed => Ok(()),
            Access::Granted(_) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this token may only read",
            )),
            // The same answer for every request in the namespace, whatever it holds.
            Access::Outside => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                match namespace {
                    Some(namespace) => format!("this token may not use namespace {namespace}"),
                    None => "this token may only use namespaces (/v1/ns/<NAME>/...)".into(),
                },
            )),
            Access::Unknown => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is needed",
            )),
        }
    }
}
