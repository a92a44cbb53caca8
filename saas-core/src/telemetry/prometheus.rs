//! A Prometheus exporter for the `metrics` facade.
//!
//! ```no_run
//! let handle = saas_core::telemetry::prometheus::install().unwrap();
//! metrics::counter!("jobs_total").increment(1);
//! let text = handle.render(); // serve this on /metrics
//! assert!(text.contains("jobs_total"));
//! ```

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::TelemetryError;

/// Latency buckets (seconds) used for every `*_seconds` histogram.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Builds a recorder (histograms as buckets) without installing it.
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusRecorder, TelemetryError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?
        .build_recorder())
}

/// Installs the recorder globally and returns the handle that renders the text format.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    let recorder = recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    Ok(handle)
}

/// An HTTP response with the rendered metrics in the Prometheus text format.
pub fn response<B: From<String>>(handle: &PrometheusHandle) -> http::Response<B> {
    let mut res = http::Response::new(B::from(handle.render()));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}
