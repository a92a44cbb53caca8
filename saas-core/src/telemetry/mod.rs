//! Logs, traces, metrics and error reports.
//!
//! [`init`] installs a `tracing` subscriber: JSON lines in production, pretty output in
//! development, filtered by `RUST_LOG`. With [`TraceLayer`] in the stack every line of a
//! request carries `request_id`, `trace_id`, `span_id`, and `tenant_id`/`user_id` once a
//! later layer records them through [`RequestSpan`].
//!
//! Optional parts, each behind a feature: OTLP trace export (`otlp`), a Prometheus
//! exporter for the `metrics` facade (`prometheus`), and Sentry reports of 5xx
//! responses and panics (`sentry`).
//!
//! ```no_run
//! use saas_core::telemetry::{self, TelemetryConfig};
//! let _guard = telemetry::init(TelemetryConfig::from_env()).expect("telemetry");
//! tracing::info!("ready");
//! ```

mod json;
mod redact;
mod trace_layer;

#[cfg(feature = "prometheus")]
pub mod prometheus;

pub use json::JsonLayer;
pub use redact::{
    Redacted, RedactedHeaders, SECRET_PREFIXES, SENSITIVE_FIELDS, SENSITIVE_HEADERS, is_sensitive_field,
    is_sensitive_header, is_sensitive_header_str, scrub_secrets,
};
pub use trace_layer::{RequestSpan, ResponseFuture, TraceId, TraceLayer, TraceService};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-friendly multi-line output (development).
    Pretty,
}

/// What [`init`] installs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// The service name reported to OTLP and Sentry.
    pub service_name: String,
    /// Log line format.
    pub format: LogFormat,
    /// The filter used when `RUST_LOG` is not set.
    pub default_filter: String,
    /// The deployment environment (`production`, `staging`, `development`).
    pub environment: String,
    /// OTLP/HTTP endpoint (`http://collector:4318`); export is off when `None`.
    pub otlp_endpoint: Option<String>,
    /// Sentry DSN; reporting is off when `None`.
    pub sentry_dsn: Option<Redacted<String>>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "saas-app".into(),
            format: LogFormat::Json,
            default_filter: "info".into(),
            environment: "development".into(),
            otlp_endpoint: None,
            sentry_dsn: None,
        }
    }
}

impl TelemetryConfig {
    /// Reads `LOG_FORMAT` (`json` or `pretty`), `APP_ENV`, `OTEL_SERVICE_NAME`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and `SENTRY_DSN`. `RUST_LOG` is read by [`init`].
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut c = Self::default();
        if let Some(f) = var("LOG_FORMAT") {
            c.format = if f.eq_ignore_ascii_case("pretty") {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            };
        }
        if let Some(e) = var("APP_ENV") {
            c.environment = e;
        }
        if let Some(n) = var("OTEL_SERVICE_NAME") {
            c.service_name = n;
        }
        c.otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        c.sentry_dsn = var("SENTRY_DSN").map(Redacted::new);
        c
    }

    /// Sets the service name.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }
    /// Sets the log format.
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }
    /// Sets the filter used when `RUST_LOG` is not set.
    pub fn default_filter(mut self, filter: impl Into<String>) -> Self {
        self.default_filter = filter.into();
        self
    }
}

/// Telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed; call telemetry::init once, at start-up")]
    AlreadyInstalled,
    /// The filter does not parse.
    #[error("log filter {filter:?} is invalid: {reason}")]
    InvalidFilter {
        /// The filter text.
        filter: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// The Sentry DSN is invalid.
    #[error("Sentry DSN is invalid: {0}")]
    Sentry(String),
    /// The Prometheus recorder could not be installed.
    #[error("Prometheus recorder: {0}")]
    Prometheus(String),
}

/// Keeps exporters alive; dropping it flushes pending spans and reports.
#[must_use = "dropping the guard stops and flushes the exporters"]
#[derive(Default)]
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    otel: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    #[cfg(feature = "sentry")]
    sentry: Option<sentry::ClientInitGuard>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").finish_non_exhaustive()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.otel.take() {
            let _ = p.shutdown();
        }
    }
}

fn filter(config: &TelemetryConfig) -> Result<EnvFilter, TelemetryError> {
    match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => EnvFilter::try_new(&f).map_err(|e| TelemetryError::InvalidFilter {
            filter: f,
            reason: e.to_string(),
        }),
        _ => EnvFilter::try_new(&config.default_filter).map_err(|e| TelemetryError::InvalidFilter {
            filter: config.default_filter.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Installs the global subscriber (and the exporters the config and features ask for).
pub fn init(config: TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    #[allow(unused_mut)]
    let mut guard = TelemetryGuard::default();
    let filter = filter(&config)?;

    #[cfg(feature = "otlp")]
    let otel_layer = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = otlp::layer(endpoint, &config.service_name)?;
            guard.otel = Some(provider);
            Some(layer)
        }
        None => None,
    };
    #[cfg(not(feature = "otlp"))]
    if config.otlp_endpoint.is_some() {
        eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT is set but saas-core was built without the `otlp` feature");
    }

    #[cfg(feature = "sentry")]
    if let Some(dsn) = &config.sentry_dsn {
        guard.sentry = Some(sentry_support::init(dsn.expose(), &config)?);
    }

    let (json, pretty) = match config.format {
        LogFormat::Json => (Some(JsonLayer::new(std::io::stdout)), None),
        LogFormat::Pretty => (None, Some(tracing_subscriber::fmt::layer().pretty())),
    };
    let registry = tracing_subscriber::registry().with(filter).with(json).with(pretty);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otel_layer);
    registry.try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(guard)
}

/// The trace id OpenTelemetry assigned to `span`, after adopting an incoming
/// `traceparent` as its parent. `None` without the `otlp` feature or an OTel layer.
#[cfg(feature = "otlp")]
fn otel_trace_id(span: &tracing::Span, headers: &http::HeaderMap) -> Option<TraceId> {
    otlp::trace_id(span, headers)
}

#[cfg(not(feature = "otlp"))]
fn otel_trace_id(_span: &tracing::Span, _headers: &http::HeaderMap) -> Option<TraceId> {
    None
}

#[cfg(feature = "sentry")]
fn report_server_error(handle: &RequestSpan, request_id: &crate::request_id::RequestId, route: &str, code: u16) {
    sentry_support::report(handle, request_id, route, code);
}

#[cfg(not(feature = "sentry"))]
fn report_server_error(_: &RequestSpan, _: &crate::request_id::RequestId, _: &str, _: u16) {}

/// OpenTelemetry export over OTLP/HTTP.
#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{TelemetryError, TraceId};

    /// The OpenTelemetry layer and its provider, exporting spans in batches to
    /// `endpoint` (`http://collector:4318`; `/v1/traces` is added when missing).
    /// [`init`](super::init) installs it when the config names an endpoint; keep the
    /// provider and shut it down to flush.
    pub fn layer<S>(
        endpoint: &str,
        service_name: &str,
    ) -> Result<
        (
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
            SdkTracerProvider,
        ),
        TelemetryError,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let endpoint = endpoint.trim_end_matches('/');
        let url = if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name.to_owned()).build())
            .build();
        let tracer = provider.tracer("saas-kit");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }

    struct Headers<'a>(&'a http::HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    pub(super) fn trace_id(span: &tracing::Span, headers: &http::HeaderMap) -> Option<TraceId> {
        if headers.contains_key("traceparent") {
            let parent = TraceContextPropagator::new().extract(&Headers(headers));
            let _ = span.set_parent(parent);
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceId(sc.trace_id().to_bytes()))
    }
}

#[cfg(feature = "sentry")]
mod sentry_support {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::{
        RequestSpan, TelemetryConfig, TelemetryError, is_sensitive_field, is_sensitive_header_str, scrub_secrets,
    };

    pub(super) fn init(dsn: &str, config: &TelemetryConfig) -> Result<sentry::ClientInitGuard, TelemetryError> {
        let dsn: sentry::types::Dsn = dsn
            .parse()
            .map_err(|e: sentry::types::ParseDsnError| TelemetryError::Sentry(e.to_string()))?;
        Ok(sentry::init(options(dsn, config)))
    }

    /// Sentry client options with redaction applied to everything sent.
    pub fn options(dsn: sentry::types::Dsn, config: &TelemetryConfig) -> sentry::ClientOptions {
        let mut o = sentry::ClientOptions::default();
        o.dsn = Some(dsn);
        o.environment = Some(Cow::Owned(config.environment.clone()));
        o.server_name = Some(Cow::Owned(config.service_name.clone()));
        o.send_default_pii = false;
        o.before_send = Some(Arc::new(|event| Some(redact_event(event))));
        o
    }

    /// Replaces sensitive headers, cookies and secret-named extras in a Sentry event.
    pub fn redact_event(mut event: sentry::protocol::Event<'static>) -> sentry::protocol::Event<'static> {
        if let Some(req) = event.request.as_mut() {
            for (k, v) in req.headers.iter_mut() {
                if is_sensitive_header_str(k) {
                    *v = "[redacted]".into();
                }
            }
            req.cookies = None;
        }
        for (k, v) in event.extra.iter_mut() {
            if is_sensitive_field(k) {
                *v = "[redacted]".into();
            } else if let Some(text) = v.as_str()
                && let Cow::Owned(clean) = scrub_secrets(text)
            {
                *v = clean.into();
            }
        }
        if let Some(m) = event.message.as_mut()
            && let Cow::Owned(clean) = scrub_secrets(m)
        {
            *m = clean;
        }
        for e in event.exception.values.iter_mut() {
            if let Some(v) = e.value.as_mut()
                && let Cow::Owned(clean) = scrub_secrets(v)
            {
                *v = clean;
            }
        }
        event
    }

    /// The request's own hub, put in the request extensions by [`sentry_layer`].
    #[derive(Clone, Debug)]
    pub struct RequestHub(pub Arc<sentry::Hub>);

    /// Records the hub that [`sentry_tower::NewSentryLayer`] bound for this request.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct MarkHubLayer;

    impl<S> tower::Layer<S> for MarkHubLayer {
        type Service = MarkHub<S>;
        fn layer(&self, inner: S) -> Self::Service {
            MarkHub { inner }
        }
    }

    /// The service made by [`MarkHubLayer`].
    #[derive(Clone, Debug)]
    pub struct MarkHub<S> {
        inner: S,
    }

    impl<S, B> tower::Service<http::Request<B>> for MarkHub<S>
    where
        S: tower::Service<http::Request<B>>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;
        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
        fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
            req.extensions_mut().insert(RequestHub(sentry::Hub::current()));
            self.inner.call(req)
        }
    }

    /// The Sentry layers for a service: a hub per request (so that concurrent requests'
    /// tags never mix), request details on events, and the marker [`TraceLayer`](super::TraceLayer)
    /// uses to tag the hub with request, trace, tenant and user ids. Put it outside
    /// `TraceLayer`; panics inside the request are then reported with those tags.
    pub fn sentry_layer<B>() -> tower::layer::util::Stack<
        MarkHubLayer,
        tower::layer::util::Stack<sentry_tower::SentryHttpLayer, sentry_tower::NewSentryLayer<http::Request<B>>>,
    > {
        tower::layer::util::Stack::new(
            MarkHubLayer,
            tower::layer::util::Stack::new(
                sentry_tower::SentryHttpLayer::new(),
                sentry_tower::NewSentryLayer::new_from_top(),
            ),
        )
    }

    pub(super) fn request_hub<B>(
        req: &http::Request<B>,
        request_id: &crate::request_id::RequestId,
        trace_id: super::TraceId,
    ) -> Option<Arc<sentry::Hub>> {
        let hub = req.extensions().get::<RequestHub>()?.0.clone();
        hub.configure_scope(|scope| {
            scope.set_tag("request_id", request_id.as_str());
            scope.set_tag("trace_id", trace_id);
        });
        Some(hub)
    }

    pub(super) fn report(handle: &RequestSpan, request_id: &crate::request_id::RequestId, route: &str, code: u16) {
        let hub = handle.sentry_hub().cloned().unwrap_or_else(sentry::Hub::current);
        if hub.client().is_none() {
            return;
        }
        hub.with_scope(
            |scope| {
                scope.set_tag("request_id", request_id.as_str());
                scope.set_tag("status", code);
                scope.set_tag("route", route);
                if let Some(t) = handle.tenant_id() {
                    scope.set_tag("tenant_id", t);
                }
                if let Some(u) = handle.user_id() {
                    scope.set_tag("user_id", u);
                }
            },
            || hub.capture_message(&format!("{code} on {route}"), sentry::Level::Error),
        );
    }
}

#[cfg(feature = "sentry")]
pub use sentry_support::{
    MarkHub, MarkHubLayer, RequestHub, options as sentry_options, redact_event as sentry_redact_event, sentry_layer,
};

#[cfg(feature = "sentry")]
use sentry_support::request_hub;
