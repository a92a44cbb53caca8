//! Small pieces shared by saas-kit's tower middleware.

use std::future::Future;
use std::pin::Pin;

/// The boxed response future of a middleware whose work is asynchronous on both sides of
/// the inner call (rate limits, idempotency, tenant resolution, catch-panic).
pub type BoxResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Takes the service that `poll_ready` just readied, leaving a fresh clone in its place:
/// tower's pattern for a middleware whose future owns the inner service.
pub fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

/// A list of path prefixes that match whole segments only: `/health` matches `/health`
/// and `/health/db`, never `/healthz-admin`; `/billing/` matches `/billing/…` but not
/// `/billing` itself. Used for the routes a layer lets through (anonymous routes, routes a
/// suspended tenant may still use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPrefixes(std::sync::Arc<[String]>);

impl PathPrefixes {
    /// The prefixes. An empty prefix or `/` matches every path.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(prefixes: I) -> Self {
        Self(prefixes.into_iter().map(Into::into).collect())
    }

    /// Whether `path` equals a prefix or continues it with a new segment.
    pub fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|p| path_within(path, p))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `path` is `prefix` or lies below it, segment-wise (`/a` covers `/a` and
/// `/a/b`, not `/ab`).
pub fn path_within(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

/// A middleware that decides, asynchronously and from the request head alone, whether a
/// request goes on: it may add to the extensions, or answer with a problem instead.
/// Authentication, the tenant layer and permission checks are gates; [`GateLayer`] turns
/// one into a tower layer.
pub trait Gate: Clone + Send + Sync + 'static {
    /// Admits the request (possibly after adding extensions) or refuses it with a problem.
    fn admit(&self, parts: &mut http::request::Parts) -> impl Future<Output = Result<(), crate::Problem>> + Send;
}

/// The layer of a [`Gate`].
#[derive(Debug, Clone)]
pub struct GateLayer<G> {
    gate: G,
}

impl<G> GateLayer<G> {
    /// A layer applying `gate`.
    pub fn new(gate: G) -> Self {
        Self { gate }
    }
}

impl<S, G: Clone> tower::Layer<S> for GateLayer<G> {
    type Service = GateService<S, G>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// The service of a [`GateLayer`]: runs the gate, then the inner service or the problem.
#[derive(Debug, Clone)]
pub struct GateService<S, G> {
    inner: S,
    gate: G,
}

impl<S, G, ReqB, ResB> tower::Service<http::Request<ReqB>> for GateService<S, G>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    G: Gate,
    ReqB: Send + 'static,
    ResB: From<bytes::Bytes> + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = BoxResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let gate = self.gate.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match gate.admit(&mut parts).await {
                Ok(()) => inner.call(http::Request::from_parts(parts, body)).await,
                Err(problem) => Ok(problem.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        let list = PathPrefixes::new(["/health", "/billing/", "/public/docs"]);
        for yes in ["/health", "/health/db", "/billing/x", "/public/docs", "/public/docs/a"] {
            assert!(list.matches(yes), "{yes}");
        }
        for no in [
            "/healthz-admin",
            "/healthz",
            "/billing",
            "/billing-export",
            "/public/docsx",
            "/",
            "",
        ] {
            assert!(!list.matches(no), "{no}");
        }
        assert!(PathPrefixes::new(["/"]).matches("/anything"));
        assert!(!PathPrefixes::default().matches("/x"));
    }
}
