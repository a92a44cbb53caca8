//! RFC 9457 problem details (`application/problem+json`).
//!
//! Every error that reaches the HTTP edge becomes a [`Problem`]: a stable `type`, a
//! `title`, the `status`, an optional human `detail`, and extension members such as
//! `request_id`. Each crate's error enums implement [`IntoProblem`]; `?` in a handler
//! returning `Result<_, Problem>` converts them.
//!
//! Internal details never reach the body. A problem with a 5xx status renders only its
//! type, title, status and the request id, whatever detail was attached; the internal
//! cause given with [`Problem::with_internal`] goes to the log, never to the client.
//!
//! ```
//! use http::StatusCode;
//! use saas_core::problem::Problem;
//!
//! let p = Problem::new(StatusCode::FORBIDDEN)
//!     .with_type("permission-denied")
//!     .with_detail("You need project:delete to do this.")
//!     .with_extension("permission", "project:delete");
//! let res: http::Response<http_body_util::Full<bytes::Bytes>> = p.into_http();
//! assert_eq!(res.status(), 403);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! let hidden = Problem::internal().with_detail("connection to 10.0.0.7 refused");
//! let body = String::from_utf8(hidden.to_json()).unwrap();
//! assert!(!body.contains("10.0.0.7"));
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

use crate::request_id::RequestId;

/// The media type of a problem body.
pub const CONTENT_TYPE_PROBLEM: &str = "application/problem+json";

/// The prefix that turns a short problem slug into a `type` URI.
pub const TYPE_PREFIX: &str = "urn:saas-kit:problem:";

const INTERNAL_DETAIL: &str = "The request could not be completed. Quote the request id if you contact support.";

/// An RFC 9457 problem: the error body of every saas-kit HTTP response.
///
/// One pointer wide, so that `Result<T, Problem>` stays small on the happy path.
#[derive(Clone, PartialEq)]
pub struct Problem(Box<inner::ProblemInner>);

mod inner {
    use super::*;

    #[derive(Clone, PartialEq)]
    pub struct ProblemInner {
        pub(super) type_uri: Cow<'static, str>,
        pub(super) title: Cow<'static, str>,
        pub(super) status: StatusCode,
        pub(super) detail: Option<String>,
        pub(super) instance: Option<String>,
        pub(super) extensions: Map<String, Value>,
        pub(super) headers: HeaderMap,
        pub(super) internal: Option<String>,
    }
}

impl std::ops::Deref for Problem {
    type Target = inner::ProblemInner;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A status given for a problem is not a client or server error (400–599).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemError {
    /// The status is outside 400–599.
    #[error("status {0} is not an error status; a problem needs 400-599")]
    NotAnErrorStatus(u16),
    /// A body could not be read as a problem.
    #[error("not a problem+json body: {0}")]
    Malformed(String),
}

/// Maps an error to the problem a client sees.
///
/// Implemented by every error enum in saas-kit. Implementations choose the status, a
/// stable type slug and a detail that is safe to show; anything internal goes into
/// [`Problem::with_internal`].
pub trait IntoProblem {
    /// The problem describing this error.
    fn to_problem(&self) -> Problem;
}

impl<E: IntoProblem> From<E> for Problem {
    fn from(err: E) -> Self {
        err.to_problem()
    }
}

fn slug_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad-request",
        401 => "unauthenticated",
        402 => "payment-required",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        406 => "not-acceptable",
        408 => "request-timeout",
        409 => "conflict",
        410 => "gone",
        413 => "payload-too-large",
        415 => "unsupported-media-type",
        422 => "unprocessable",
        423 => "locked",
        428 => "precondition-required",
        429 => "rate-limited",
        503 => "unavailable",
        504 => "timeout",
        s if s >= 500 => "internal",
        _ => "client-error",
    }
}

impl Problem {
    /// A problem for `status`, typed after it (`not-found`, `conflict`, …) and titled with
    /// its reason phrase. A status outside 400–599 is replaced by 500 and the mistake is
    /// kept as the internal cause; use [`Problem::try_from_status`] to get an error instead.
    pub fn new(status: StatusCode) -> Self {
        match Self::try_from_status(status.as_u16()) {
            Ok(p) => p,
            Err(e) => Self::internal().with_internal(e.to_string()),
        }
    }

    /// A problem for a numeric status, refusing anything that is not 400–599.
    pub fn try_from_status(status: u16) -> Result<Self, ProblemError> {
        if !(400..=599).contains(&status) {
            return Err(ProblemError::NotAnErrorStatus(status));
        }
        let status = StatusCode::from_u16(status).map_err(|_| ProblemError::NotAnErrorStatus(status))?;
        Ok(Self(Box::new(inner::ProblemInner {
            type_uri: Cow::Borrowed(slug_for(status)),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            status,
            detail: None,
            instance: None,
            extensions: Map::new(),
            headers: HeaderMap::new(),
            internal: None,
        })))
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST).with_detail(detail)
    }
    /// 401: no valid credentials.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED).with_title("Authentication required")
    }
    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN).with_detail(detail)
    }
    /// 404: nothing here (also used where existence must not be revealed).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND)
    }
    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT).with_detail(detail)
    }
    /// 422: well-formed but invalid.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY).with_detail(detail)
    }
    /// 500: something failed on our side. Attach the cause with [`Problem::with_internal`].
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR).with_title("Internal error")
    }
    /// 503: a dependency is unavailable; the client may retry.
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// Sets the type: a short slug (`permission-denied`, rendered as
    /// `urn:saas-kit:problem:permission-denied`) or a full URI (anything containing `:`).
    pub fn with_type(mut self, type_: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = type_.into();
        self
    }
    /// Sets the short, human-readable summary of the problem type.
    pub fn with_title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }
    /// Sets the explanation specific to this occurrence. Not rendered for 5xx statuses.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    /// Sets the URI reference identifying this occurrence.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }
    /// Adds an extension member. Reserved member names (`type`, `title`, `status`,
    /// `detail`, `instance`) are ignored. Not rendered for 5xx statuses.
    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        if !matches!(key.as_str(), "type" | "title" | "status" | "detail" | "instance") {
            self.extensions.insert(key, value.into());
        }
        self
    }
    /// Adds a response header (for example `Retry-After` or `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
    /// Attaches the internal cause: logged with the request's ids, never sent to the client.
    pub fn with_internal(mut self, cause: impl fmt::Display) -> Self {
        self.internal = Some(cause.to_string());
        self
    }
    /// Sets the `request_id` member.
    pub fn with_request_id(self, id: &RequestId) -> Self {
        self.with_extension("request_id", id.as_str())
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The type as rendered (`urn:saas-kit:problem:…` for slugs).
    pub fn type_uri(&self) -> Cow<'_, str> {
        if self.type_uri.contains(':') {
            Cow::Borrowed(&self.type_uri)
        } else {
            Cow::Owned(format!("{TYPE_PREFIX}{}", self.type_uri))
        }
    }
    /// The short type slug when the type is one of ours (`permission-denied`).
    pub fn type_slug(&self) -> &str {
        self.type_uri.strip_prefix(TYPE_PREFIX).unwrap_or(&self.type_uri)
    }
    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }
    /// The detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    /// The instance, if any.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }
    /// An extension member.
    pub fn extension(&self, key: &str) -> Option<&Value> {
        self.extensions.get(key)
    }
    /// The internal cause, if any (never rendered).
    pub fn internal_cause(&self) -> Option<&str> {
        self.internal.as_deref()
    }
    /// Extra response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether the body hides detail and extensions (5xx).
    fn is_opaque(&self) -> bool {
        self.status.is_server_error()
    }

    /// The JSON body as sent to the client.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a map of strings and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Parses a problem+json body (for clients and tests).
    pub fn from_json(body: &[u8]) -> Result<Self, ProblemError> {
        let mut obj: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| ProblemError::Malformed(e.to_string()))?;
        let status = obj
            .remove("status")
            .and_then(|v| v.as_u64())
            .and_then(|s| u16::try_from(s).ok())
            .ok_or_else(|| ProblemError::Malformed("missing numeric status".into()))?;
        let mut p = Self::try_from_status(status)?;
        let take = |obj: &mut Map<String, Value>, k: &str| match obj.remove(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        if let Some(t) = take(&mut obj, "type") {
            p = p.with_type(t);
        }
        if let Some(t) = take(&mut obj, "title") {
            p = p.with_title(t);
        }
        p.detail = take(&mut obj, "detail");
        p.instance = take(&mut obj, "instance");
        p.extensions = obj;
        Ok(p)
    }

    /// Logs this problem in the current span: 5xx at error level with the internal cause,
    /// 4xx at debug level.
    pub fn log(&self) {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                problem = self.type_slug(),
                cause = self.internal.as_deref().unwrap_or(""),
                "request failed"
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                problem = self.type_slug(),
                detail = self.detail.as_deref().unwrap_or(""),
                "request rejected"
            );
        }
    }

    /// Renders the problem as an HTTP response with an `application/problem+json` body.
    ///
    /// The problem itself travels in the response extensions, so that
    /// [`ProblemLayer`](crate::problem_layer::ProblemLayer) can add the request id.
    pub fn into_http<B: From<Bytes>>(self) -> http::Response<B> {
        self.log();
        let body = Bytes::from(self.to_json());
        let mut res = http::Response::new(B::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PROBLEM));
        res.extensions_mut().insert(RenderedProblem(self));
        res
    }
}

/// The problem behind a rendered response, kept in the response extensions.
#[derive(Clone, Debug)]
pub struct RenderedProblem(pub Problem);

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Problem")
            .field("type", &self.type_uri())
            .field("status", &self.status.as_u16())
            .field("title", &self.title)
            .field("detail", &self.detail)
            .field("extensions", &self.extensions)
            .field("internal", &self.internal)
            .finish()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl serde::Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let opaque = self.is_opaque();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &self.type_uri())?;
        m.serialize_entry("title", &self.title)?;
        m.serialize_entry("status", &self.status.as_u16())?;
        if opaque {
            m.serialize_entry("detail", INTERNAL_DETAIL)?;
        } else if let Some(d) = &self.detail {
            m.serialize_entry("detail", d)?;
        }
        if let Some(i) = &self.instance {
            m.serialize_entry("instance", i)?;
        }
        for (k, v) in &self.extensions {
            if !opaque || k == "request_id" {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        self.into_http()
    }
}

impl IntoProblem for sqlx::Error {
    fn to_problem(&self) -> Problem {
        use sqlx::Error as E;
        match self {
            E::RowNotFound => Problem::not_found(),
            E::PoolTimedOut => Problem::unavailable()
                .with_type("database-busy")
                .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
                .with_internal(self),
            E::Database(db) => match db.code().as_deref() {
                Some("23505") => Problem::conflict("A record with these values already exists.")
                    .with_type("already-exists")
                    .with_internal(self),
                Some("23503") => Problem::conflict("The record refers to, or is referred to by, another record.")
                    .with_type("reference-conflict")
                    .with_internal(self),
                Some("23514" | "23502" | "22P02" | "22001" | "22003") => {
                    Problem::unprocessable("The values break a rule of the data model.")
                        .with_type("constraint-violated")
                        .with_internal(self)
                }
                // A NUL character (valid JSON, `\u0000`) or one the database's encoding
                // cannot hold: the client's input, not our failure.
                Some("22021" | "22P05") => Problem::unprocessable(
                    "Text may not contain NUL characters or characters the database cannot store.",
                )
                .with_type("invalid-text")
                .with_internal(self),
                _ => Problem::internal().with_internal(self),
            },
            _ => Problem::internal().with_internal(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(p: &Problem) -> Value {
        serde_json::from_slice(&p.to_json()).unwrap()
    }

    #[test]
    fn renders_rfc9457_members() {
        let p = Problem::new(StatusCode::NOT_FOUND)
            .with_detail("no such project")
            .with_instance("/v1/projects/1")
            .with_extension("request_id", "abc")
            .with_extension("status", 200);
        let v = body(&p);
        assert_eq!(v["type"], "urn:saas-kit:problem:not-found");
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["detail"], "no such project");
        assert_eq!(v["instance"], "/v1/projects/1");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(p.type_slug(), "not-found");
    }

    #[test]
    fn server_errors_hide_internals() {
        let p = Problem::internal()
            .with_detail("password authentication failed for user app")
            .with_extension("sql", "select secret")
            .with_extension("request_id", "r1")
            .with_internal("boom at db.rs:42");
        let text = String::from_utf8(p.to_json()).unwrap();
        assert!(!text.contains("password"));
        assert!(!text.contains("select secret"));
        assert!(!text.contains("db.rs"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["status"], 500);
        assert_eq!(p.internal_cause(), Some("boom at db.rs:42"));
    }

    #[test]
    fn invalid_statuses_are_typed_errors() {
        assert_eq!(
            Problem::try_from_status(200).unwrap_err(),
            ProblemError::NotAnErrorStatus(200)
        );
        assert_eq!(
            Problem::try_from_status(600).unwrap_err(),
            ProblemError::NotAnErrorStatus(600)
        );
        assert_eq!(
            Problem::try_from_status(0).unwrap_err(),
            ProblemError::NotAnErrorStatus(0)
        );
        let p = Problem::new(StatusCode::OK);
        assert_eq!(p.status(), 500);
        assert!(p.internal_cause().unwrap().contains("200"));
        assert!(Problem::from_json(b"{\"status\": 302}").is_err());
        assert!(Problem::from_json(b"not json").is_err());
    }

    #[test]
    fn into_http_sets_status_type_and_headers() {
        let res: http::Response<http_body_util::Full<Bytes>> = Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("3"))
            .into_http();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[CONTENT_TYPE], CONTENT_TYPE_PROBLEM);
        assert_eq!(res.headers()[http::header::RETRY_AFTER], "3");
        assert!(res.extensions().get::<RenderedProblem>().is_some());
    }

    #[test]
    fn round_trips_through_json() {
        let p = Problem::forbidden("no")
            .with_type("permission-denied")
            .with_extension("permission", "a:b");
        let back = Problem::from_json(&p.to_json()).unwrap();
        assert_eq!(back.status(), 403);
        assert_eq!(back.type_slug(), "permission-denied");
        assert_eq!(back.extension("permission"), Some(&Value::from("a:b")));
    }

    #[test]
    fn sqlx_errors_map_without_leaking() {
        let p = sqlx::Error::RowNotFound.to_problem();
        assert_eq!(p.status(), 404);
        let p = sqlx::Error::PoolTimedOut.to_problem();
        assert_eq!(p.status(), 503);
        assert_eq!(p.headers()[http::header::RETRY_AFTER], "1");
        let p: Problem = sqlx::Error::Protocol("secret protocol detail".into()).into();
        assert_eq!(p.status(), 500);
        assert!(!String::from_utf8(p.to_json()).unwrap().contains("secret"));
    }
}
