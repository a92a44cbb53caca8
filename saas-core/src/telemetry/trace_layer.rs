//! One span per request, RED metrics, and error reporting.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use metrics::{Label, SharedString};
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
    /// A random trace id (from a per-thread generator seeded by the OS: trace ids need
    /// to be unique, not secret, and a system call per request is measurable).
    pub fn random() -> Self {
        thread_local! {
            static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
                let mut seed = [0u8; 8];
                if getrandom::fill(&mut seed).is_err() {
                    seed.copy_from_slice(&crate::id::new_v7().as_bytes()[8..]);
                }
                u64::from_le_bytes(seed)
            });
        }
        // SplitMix64: two outputs per id.
        let next = || {
            STATE.with(|s| {
                let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
                s.set(z);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&next().to_le_bytes());
        b[8..].copy_from_slice(&next().to_le_bytes());
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
/// `telemetry::sentry_layer` (feature `sentry`) outside this layer so that panics carry the tags too).
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

/// The route template as a metric label, interned so that a request costs no allocation.
fn route_of<B>(req: &Request<B>) -> Option<SharedString> {
    #[cfg(feature = "axum")]
    if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock, PoisonError};
        static ROUTES: OnceLock<Mutex<HashMap<Box<str>, Arc<str>>>> = OnceLock::new();
        let mut routes = ROUTES
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let arc = match routes.get(p.as_str()) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(p.as_str());
                routes.insert(p.as_str().into(), a.clone());
                a
            }
        };
        return Some(SharedString::from(arc));
    }
    let _ = req;
    None
}

fn method_label(m: &http::Method) -> SharedString {
    let s = match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => return SharedString::from(m.as_str().to_owned()),
    };
    SharedString::const_str(s)
}

fn status_label(code: u16) -> SharedString {
    use std::sync::OnceLock;
    // 500 short strings, made once, so that labels never allocate.
    static CODES: OnceLock<Vec<&'static str>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (100u16..600)
            .map(|c| &*Box::leak(c.to_string().into_boxed_str()))
            .collect()
    });
    match codes.get(usize::from(code.saturating_sub(100))) {
        Some(s) if (100..600).contains(&code) => SharedString::const_str(s),
        _ => SharedString::from(code.to_string()),
    }
}

const UNMATCHED: SharedString = SharedString::const_str("unmatched");

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
            route = route.as_deref().map_or("", |r: &str| r),
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
    route: Option<SharedString>,
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
        let labels = vec![
            Label::new("method", method_label(&self.method)),
            Label::new("route", self.route.unwrap_or(UNMATCHED)),
        ];
        metrics::counter!("http_requests_cancelled_total", labels).increment(1);
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
        let method = method_label(&self.method);
        let route = self.route.unwrap_or(UNMATCHED);
        let labels = vec![
            Label::new("method", method.clone()),
            Label::new("route", route.clone()),
            Label::new("status", status_label(code)),
        ];
        metrics::counter!("http_requests_total", labels.clone()).increment(1);
        metrics::histogram!("http_request_duration_seconds", labels).record(elapsed.as_secs_f64());
        if code >= 500 {
            let labels = vec![Label::new("method", method), Label::new("route", route.clone())];
            metrics::counter!("http_server_errors_total", labels).increment(1);
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
