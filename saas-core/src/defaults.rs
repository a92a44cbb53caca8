//! Safe defaults every route gets: panics become 500 problems, API security headers,
//! and (with the `axum` feature) a body size limit, a request timeout and CORS in one call.
//!
//! The layers keep the inner response body type, so they stack freely with
//! [`ProblemLayer`](crate::problem_layer::ProblemLayer) and the other saas-kit layers.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::problem::Problem;

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a non-string payload")
}

/// Turns a panic in the inner service into a 500 problem (the panic is logged in the
/// request's span), so that one bad request never takes the connection or the server
/// down with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer {
    _priv: (),
}

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

fn panic_response<B: From<Bytes>>(payload: &(dyn Any + Send)) -> Response<B> {
    let message = panic_message(payload);
    tracing::error!(panic = message, "handler panicked");
    metrics::counter!("http_panics_total").increment(1);
    Problem::internal()
        .with_internal(format!("panic: {message}"))
        .into_http()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanic<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = crate::service::BoxResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => Box::pin(async move {
                match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(res) => res,
                    Err(payload) => Ok(panic_response(&*payload)),
                }
            }),
            Err(payload) => {
                let res = panic_response(&*payload);
                Box::pin(async move { Ok(res) })
            }
        }
    }
}

/// Security headers for an API: `Strict-Transport-Security`, `X-Content-Type-Options:
/// nosniff`, `Referrer-Policy: no-referrer`, and `Cache-Control: no-store` on responses
/// to authenticated requests (an `Authorization` or `Cookie` header). Headers the handler
/// set are kept.
#[derive(Clone, Debug)]
pub struct SecurityHeadersLayer {
    hsts: Option<HeaderValue>,
}

impl Default for SecurityHeadersLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SecurityHeadersLayer {
    /// HSTS for two years, including subdomains.
    pub fn new() -> Self {
        Self {
            hsts: Some(HeaderValue::from_static("max-age=63072000; includeSubDomains")),
        }
    }
    /// Without HSTS (a service only reachable over plain HTTP behind a proxy that sets it).
    pub fn without_hsts(mut self) -> Self {
        self.hsts = None;
        self
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders {
            inner,
            hsts: self.hsts.clone(),
        }
    }
}

/// The service made by [`SecurityHeadersLayer`].
#[derive(Clone, Debug)]
pub struct SecurityHeaders<S> {
    inner: S,
    hsts: Option<HeaderValue>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SecurityHeaders<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = security_headers::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let authenticated =
            req.headers().contains_key(header::AUTHORIZATION) || req.headers().contains_key(header::COOKIE);
        security_headers::ResponseFuture {
            inner: self.inner.call(req),
            hsts: self.hsts.clone(),
            authenticated,
        }
    }
}

mod security_headers {
    use super::*;

    pin_project_lite::pin_project! {
        /// The response future of [`SecurityHeaders`](super::SecurityHeaders).
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) inner: F,
            pub(super) hsts: Option<HeaderValue>,
            pub(super) authenticated: bool,
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
            let h = res.headers_mut();
            if let Some(hsts) = this.hsts.take() {
                h.entry(header::STRICT_TRANSPORT_SECURITY).or_insert(hsts);
            }
            h.entry(header::X_CONTENT_TYPE_OPTIONS)
                .or_insert(HeaderValue::from_static("nosniff"));
            h.entry(header::REFERRER_POLICY)
                .or_insert(HeaderValue::from_static("no-referrer"));
            if *this.authenticated {
                h.entry(header::CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-store"));
            }
            Poll::Ready(Ok(res))
        }
    }
}

/// The whole set for an axum router (feature `axum`): body limit, timeout, catch-panic,
/// security headers and optional CORS.
#[cfg(feature = "axum")]
#[derive(Clone, Debug)]
pub struct SafeDefaults {
    body_limit: usize,
    timeout: std::time::Duration,
    timeout_status: http::StatusCode,
    security: SecurityHeadersLayer,
    cors: Option<tower_http::cors::CorsLayer>,
}

#[cfg(feature = "axum")]
impl Default for SafeDefaults {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "axum")]
impl SafeDefaults {
    /// 1 MiB bodies, 30 s per request (answered with 408), security headers, no CORS.
    pub fn new() -> Self {
        Self {
            body_limit: 1024 * 1024,
            timeout: std::time::Duration::from_secs(30),
            timeout_status: http::StatusCode::REQUEST_TIMEOUT,
            security: SecurityHeadersLayer::new(),
            cors: None,
        }
    }
    /// The largest request body accepted (413 problem above it).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
    /// How long a request may take, and the status it gets when it takes longer
    /// (408 by default; 503 or 504 for services that prefer them).
    pub fn timeout(mut self, timeout: std::time::Duration, status: http::StatusCode) -> Self {
        self.timeout = timeout;
        self.timeout_status = status;
        self
    }
    /// The security headers (for example without HSTS).
    pub fn security_headers(mut self, layer: SecurityHeadersLayer) -> Self {
        self.security = layer;
        self
    }
    /// Cross-origin rules, for APIs called from browsers on other origins.
    pub fn cors(mut self, cors: tower_http::cors::CorsLayer) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Applies the set to every route of `router` (add it after the routes, before the
    /// request-id, trace and problem layers).
    pub fn apply<St: Clone + Send + Sync + 'static>(self, router: axum::Router<St>) -> axum::Router<St> {
        let router = router
            .layer(axum::extract::DefaultBodyLimit::max(self.body_limit))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                self.timeout_status,
                self.timeout,
            ))
            .layer(CatchPanicLayer::new());
        let router = match self.cors {
            Some(cors) => router.layer(cors),
            None => router,
        };
        router.layer(self.security)
    }
}
