//! Request ids: accept a valid incoming `x-request-id` or mint a UUIDv7, keep it in the
//! request extensions, and echo it in the response.
//!
//! ```
//! use saas_core::request_id::{RequestId, RequestIdLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio_test_block_on(async {
//! let svc = ServiceBuilder::new().layer(RequestIdLayer::new()).service(service_fn(
//!     |req: http::Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().clone();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(id.to_string()))
//!     },
//! ));
//! let req = http::Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! assert_eq!(res.body(), "abc-123");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The header that carries the request id by default.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id accepted from a client.
pub const MAX_LEN: usize = 128;

/// The id of one request, as accepted from the client or minted here.
///
/// Valid ids are 1 to 128 characters of ASCII letters, digits and `-_.:`; anything else
/// is replaced by a fresh UUIDv7 at the edge.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

/// A string is not usable as a request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestIdError {
    /// Empty.
    #[error("request id is empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("request id is {0} bytes long; at most {MAX_LEN} are accepted")]
    TooLong(usize),
    /// Contains a character outside `A-Z a-z 0-9 - _ . :`.
    #[error("request id contains {0:?}; only ASCII letters, digits and -_.: are accepted")]
    InvalidChar(char),
}

impl RequestId {
    /// Mints a new request id (a UUIDv7).
    pub fn new() -> Self {
        Self(Arc::from(crate::id::new_v7().hyphenated().to_string()))
    }

    /// Validates a client-supplied id.
    pub fn parse(s: &str) -> Result<Self, RequestIdError> {
        if s.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(RequestIdError::TooLong(s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(RequestIdError::InvalidChar(c));
        }
        Ok(Self(Arc::from(s)))
    }

    /// Validates the bytes of a header value.
    pub fn from_header(value: &HeaderValue) -> Result<Self, RequestIdError> {
        if value.len() > MAX_LEN {
            return Err(RequestIdError::TooLong(value.len()));
        }
        match value.to_str() {
            Ok(s) => Self::parse(s),
            Err(_) => Err(RequestIdError::InvalidChar(char::REPLACEMENT_CHARACTER)),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn to_header(&self) -> Option<HeaderValue> {
        // Valid ids are visible ASCII, so this always succeeds.
        HeaderValue::from_str(&self.0).ok()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

impl std::str::FromStr for RequestId {
    type Err = RequestIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the layer a handler still gets a usable id.
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_default())
    }
}

/// Adds a [`RequestId`] to every request and echoes it in the response header.
#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    header: HeaderName,
}

impl RequestIdLayer {
    /// Uses the `x-request-id` header.
    pub fn new() -> Self {
        Self { header: X_REQUEST_ID }
    }

    /// Uses another header (for example `x-correlation-id`).
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            header: self.header.clone(),
        }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    header: HeaderName,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestIdService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&self.header).map(RequestId::from_header) {
            Some(Ok(id)) => id,
            Some(Err(err)) => {
                tracing::debug!(%err, "replacing the client's request id");
                RequestId::new()
            }
            None => RequestId::new(),
        };
        if let Some(v) = id.to_header() {
            req.headers_mut().insert(self.header.clone(), v);
        }
        req.extensions_mut().insert(id.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
            header: self.header.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`RequestIdService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
        header: HeaderName,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            if let Some(v) = id.to_header() {
                res.headers_mut().insert(this.header.clone(), v);
            }
            res.extensions_mut().insert(id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_common_forms() {
        for ok in [
            "a",
            "0190f3b2-7c4e-7d2a-9b1e-3f5a6c7d8e9f",
            "req_1.2:3",
            &"x".repeat(128),
        ] {
            assert_eq!(RequestId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn parse_rejects_bad_input_with_typed_errors() {
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        assert_eq!(RequestId::parse(&"x".repeat(129)), Err(RequestIdError::TooLong(129)));
        assert_eq!(RequestId::parse("a b"), Err(RequestIdError::InvalidChar(' ')));
        assert_eq!(RequestId::parse("a\nb"), Err(RequestIdError::InvalidChar('\n')));
        assert_eq!(RequestId::parse("\"}{"), Err(RequestIdError::InvalidChar('"')));
        let bin = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert!(RequestId::from_header(&bin).is_err());
    }

    #[test]
    fn minted_ids_are_valid() {
        let id = RequestId::new();
        assert_eq!(RequestId::parse(id.as_str()).unwrap(), id);
    }
}
