//! A JSON extractor that validates (feature `axum`).
//!
//! [`Valid<T>`] deserialises the body as JSON and validates it with the `validator`
//! crate. Malformed JSON answers 400 `malformed-json`, a failed validation 422
//! `validation-failed`; both list each error with a JSON pointer to the field:
//!
//! ```json
//! {"type": "urn:saas-kit:problem:validation-failed", "status": 422,
//!  "errors": [{"pointer": "/members/0/email", "code": "email", "detail": "must be an email address"}]}
//! ```
//!
//! ```
//! use saas_core::validate::Valid;
//! use serde::Deserialize;
//! use validator::Validate;
//!
//! #[derive(Deserialize, Validate)]
//! struct NewProject {
//!     #[validate(length(min = 1, max = 100))]
//!     name: String,
//! }
//!
//! async fn create(Valid(p): Valid<NewProject>) -> String {
//!     p.name
//! }
//! let app: axum::Router = axum::Router::new().route("/projects", axum::routing::post(create));
//! # let _ = app;
//! ```

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use crate::problem::Problem;

/// A JSON body that deserialised and passed validation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Valid<T>(pub T);

/// Escapes one JSON-pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Flattens validation errors into `{pointer, code, detail}` entries.
pub fn field_errors(errors: &ValidationErrors) -> Vec<Value> {
    let mut out = Vec::new();
    collect(errors, String::new(), &mut out);
    out
}

fn collect(errors: &ValidationErrors, prefix: String, out: &mut Vec<Value>) {
    let mut fields: Vec<_> = errors.errors().iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (field, kind) in fields {
        let pointer = if field == "__all__" {
            prefix.clone()
        } else {
            format!("{prefix}/{}", escape(field))
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let detail = e
                        .message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| describe(&e.code));
                    out.push(json!({"pointer": pointer, "code": e.code, "detail": detail}));
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, pointer, out),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    collect(inner, format!("{pointer}/{i}"), out);
                }
            }
        }
    }
}

fn describe(code: &str) -> String {
    match code {
        "email" => "must be an email address".into(),
        "url" => "must be a URL".into(),
        "length" => "has the wrong length".into(),
        "range" => "is out of range".into(),
        "required" => "is required".into(),
        "regex" => "has the wrong format".into(),
        other => format!("is invalid ({other})"),
    }
}

/// The 400 problem for a body that is not the expected JSON, pointing at the place.
fn malformed(pointer: String, detail: String) -> Problem {
    Problem::bad_request("The request body is not valid JSON for this endpoint.")
        .with_type("malformed-json")
        .with_extension(
            "errors",
            json!([{"pointer": pointer, "code": "malformed", "detail": detail}]),
        )
}

/// Deserialises `bytes` as `T`, with errors located by JSON pointer.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let pointer: String = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                serde_path_to_error::Segment::Map { key } => Some(format!("/{}", escape(key))),
                serde_path_to_error::Segment::Enum { variant } => Some(format!("/{}", escape(variant))),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        malformed(pointer, e.inner().to_string())
    })
}

/// Validates `value`, answering 422 with every field error.
pub fn check<T: Validate>(value: &T) -> Result<(), Problem> {
    value.validate().map_err(|errors| {
        Problem::unprocessable("Some fields are invalid.")
            .with_type("validation-failed")
            .with_extension("errors", Value::Array(field_errors(&errors)))
    })
}

impl<S, T> FromRequest<S> for Valid<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !json {
            return Err(Problem::new(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .with_detail("Send the body as application/json."));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            Problem::try_from_status(status.as_u16()).unwrap_or_else(|_| Problem::bad_request("unreadable body"))
        })?;
        let value: T = parse_json(&bytes)?;
        check(&value)?;
        Ok(Valid(value))
    }
}
