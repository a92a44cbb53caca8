//! One span per request, RED metrics, and error reporting.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use super::redact::RedactedHeaders;
use crate::request_id::RequestId;

/// The W3C trace id of a request: taken from a valid incoming `traceparent`, or minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// A random trace id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // Fall back to the time-ordered UUID generator, which never fails.
            b = crate::id::new_v7().into_bytes();
        }
        Self(b)
    }

    /// Parses the trace id out of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, chunk) in trace.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            b[i] = u8::from_str_radix(s, 16).ok()?;
        }
        (b != [0u8; 16]).then_some(Self(b))
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Identity {
    tenant_id: OnceLock<String>,
    user_id: OnceLock<String>,
}

/// A handle on the request's span, put in the request extensions by [`TraceLayer`].
///
/// Later layers record who the request is for: [`RequestSpan::record_tenant`] and
/// [`RequestSpan::record_user`] set the span fields that every log line of the request
/// carries, and the tags of an error report.
#[derive(Clone, Debug)]
pub struct RequestSpan {
    span: Span,
    identity: Arc<Identity>,
    #[cfg(feature = "sentry")]
    hub: Option<Arc<sentry::Hub>>,
}

impl RequestSpan {
    /// The span itself.
    pub fn span(&self) -> &Span {
        &self.span
    }
    /// Records the tenant id (the first value recorded wins).
    pub fn record_tenant(&self, tenant: impl std::fmt::Display) {
        let s = tenant.to_string();
        self.span.record("tenant_id", s.as_str());
        #[cfg(feature = "sentry")]
        if let Some(hub) = &self.hub {
            hub.configure_scope(|scope| scope.set_tag("tenant_id", &s));
        }
        let _ = self.identity.tenant_id.set(s);
    }
    /// Records the user id (the first value recorded wins).
    pub fn record_user(&self, user: impl std::fmt::Display) {
        let s = user.to_string();
        self.span.record("user_id", s.as_str());
        #[cfg(feature = "sentry")]
        if let Some(hub) = &self.hub {
            hub.configure_scope(|scope| scope.set_tag("user_id", &s));
        }
        let _ = self.identity.user_id.set(s);
    }
    /// The request's own Sentry hub, when [`sentry_layer`](super::sentry_layer) is in the stack.
    #[cfg(feature = "sentry")]
    pub fn sentry_hub(&self) -> Option<&Arc<sentry::Hub>> {
        self.hub.as_ref()
    }
    /// The recorded tenant id.
    pub fn tenant_id(&self) -> Option<&str> {
        self.identity.tenant_id.get().map(String::as_str)
    }
    /// The recorded user id.
    pub fn user_id(&self) -> Option<&str> {
        self.identity.user_id.get().map(String::as_str)
    }
}

/// Opens one `request` span per request and logs one line when it completes.
///
/// The span has `request_id`, `trace_id`, `method`, `path`, `route`, and, once known,
/// `status`, `latency_ms`, `tenant_id` and `user_id`. The completion line is at `info`
/// (`warn` for 5xx). Metrics through the `metrics` facade:
/// `http_requests_total{method,route,status}`,
/// `http_request_duration_seconds{method,route,status}` and
/// `http_server_errors_total{method,route}`. With the `sentry` feature, 5xx responses are
/// reported to Sentry, tagged with the request, tenant and user ids (put
/// [`sentry_layer`](super::sentry_layer) outside this layer so that panics carry the tags too).
///
/// `route` is axum's `MatchedPath` when the `axum` feature is on and the layer is added
/// with `Router::layer`; otherwise `unmatched` (raw paths would explode metric labels).
#[derive(Clone, Debug, Default)]
pub struct TraceLayer {
    log_headers: bool,
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
    /// Also logs the request headers at `debug` level, with the sensitive ones redacted.
    pub fn log_headers(mut self, on: bool) -> Self {
        self.log_headers = on;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            log_headers: self.log_headers,
        }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    log_headers: bool,
}

fn route_of<B>(req: &Request<B>) -> Option<String> {
    #[cfg(feature = "axum")]
    if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(p.as_str().to_owned());
    }
    let _ = req;
    None
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for TraceService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: std::fmt::Display,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned().unwrap_or_default();
        let incoming = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceId::from_traceparent);
        let route = route_of(&req);
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            trace_id = Empty,
            method = %req.method(),
            path = %req.uri().path(),
            route = route.as_deref().unwrap_or(""),
            status = Empty,
            latency_ms = Empty,
            tenant_id = Empty,
            user_id = Empty,
        );
        let trace_id = super::otel_trace_id(&span, req.headers())
            .or(incoming)
            .unwrap_or_else(TraceId::random);
        span.record("trace_id", tracing::field::display(trace_id));
        if self.log_headers {
            tracing::debug!(parent: &span, headers = ?RedactedHeaders(req.headers()), "request headers");
        }
        let handle = RequestSpan {
            span: span.clone(),
            identity: Arc::default(),
            #[cfg(feature = "sentry")]
            hub: super::request_hub(&req, &request_id, trace_id),
        };
        req.extensions_mut().insert(trace_id);
        req.extensions_mut().insert(handle.clone());
        let method = req.method().clone();
        let inner = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner,
            state: Some(Completion {
                handle,
                request_id,
                start: Instant::now(),
                method,
                route,
            }),
        }
    }
}

struct Completion {
    handle: RequestSpan,
    request_id: RequestId,
    start: Instant,
    method: http::Method,
    route: Option<String>,
}

impl Completion {
    fn cancelled(self) {
        let _enter = self.handle.span.enter();
        let elapsed = self.start.elapsed();
        self.handle.span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
        if std::thread::panicking() {
            tracing::error!("request aborted by a panic");
        } else {
            tracing::info!("request cancelled before a response");
        }
        let route = self.route.unwrap_or_else(|| "unmatched".to_owned());
        metrics::counter!(
            "http_requests_cancelled_total",
            "method" => self.method.as_str().to_owned(),
            "route" => route
        )
        .increment(1);
    }

    fn finish(self, status: Option<http::StatusCode>, error: Option<&dyn std::fmt::Display>) {
        let span = &self.handle.span;
        let _enter = span.enter();
        let elapsed = self.start.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        span.record("latency_ms", latency_ms);
        let code = status.map_or(500, |s| s.as_u16());
        span.record("status", code);
        match error {
            Some(e) => tracing::error!(error = %e, "request failed in a service"),
            None if code >= 500 => tracing::warn!("request completed"),
            None => tracing::info!("request completed"),
        }
        let route = self.route.unwrap_or_else(|| "unmatched".to_owned());
        let method = self.method.as_str().to_owned();
        let labels = [
            ("method", method.clone()),
            ("route", route.clone()),
            ("status", code.to_string()),
        ];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
        if code >= 500 {
            metrics::counter!("http_server_errors_total", "method" => method, "route" => route.clone()).increment(1);
            super::report_server_error(&self.handle, &self.request_id, &route, code);
        }
    }
}

pin_project! {
    /// The response future of [`TraceService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<Completion>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before completing: the client went away, a timeout fired, or the
            // handler panicked. Log it so that no request disappears from the record.
            if let Some(state) = this.project().state.take() {
                state.cancelled();
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _enter = this.state.as_ref().map(|s| s.handle.span.enter());
            std::task::ready!(this.inner.poll(cx))
        };
        if let Some(state) = this.state.take() {
            match &result {
                Ok(res) => state.finish(Some(res.status()), None),
                Err(e) => state.finish(None, Some(e)),
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let t = TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(TraceId::from_traceparent("garbage").is_none());
        assert!(TraceId::from_traceparent("00-zz-00f067aa0ba902b7-01").is_none());
        assert!(TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01").is_none());
        assert_ne!(TraceId::random(), TraceId::random());
    }
}
