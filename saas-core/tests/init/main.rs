//! `telemetry::init` installs one global subscriber and reports misuse as typed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use saas_core::telemetry::{self, LogFormat, TelemetryConfig, TelemetryError};

#[test]
fn init_installs_once_and_rejects_bad_filters() {
    if std::env::var_os("RUST_LOG").is_none() {
        let bad = telemetry::init(TelemetryConfig::default().default_filter("=[oops"));
        assert!(matches!(bad, Err(TelemetryError::InvalidFilter { .. })), "{bad:?}");
    }
    let _guard = telemetry::init(TelemetryConfig::default().format(LogFormat::Json)).unwrap();
    tracing::info!("installed");
    let again = telemetry::init(TelemetryConfig::default().format(LogFormat::Pretty));
    assert!(matches!(again, Err(TelemetryError::AlreadyInstalled)), "{again:?}");
}
