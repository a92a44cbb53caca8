//! The edge of a saas-kit service, runnable: request ids, one JSON log line per request,
//! and problem+json errors.
//!
//! ```text
//! cargo run -p saas-core --example quickstart
//! ```
//!
//! Then try the curl commands it prints. `PORT` picks the port (default 3000);
//! `LOG_FORMAT=pretty` switches to human-friendly logs.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use saas_core::TenantId;
use saas_core::problem::Problem;
use saas_core::problem_layer::ProblemLayer;
use saas_core::request_id::{RequestId, RequestIdLayer};
use saas_core::telemetry::{self, RequestSpan, TelemetryConfig, TraceLayer};
use tower::ServiceBuilder;

async fn hello(id: RequestId) -> String {
    format!("hello from saas-kit; your request id is {id}\n")
}

/// Parses a typed id; a malformed one becomes a 400 problem through `?`.
async fn tenant(Path(raw): Path<String>, span: axum::Extension<RequestSpan>) -> Result<String, Problem> {
    let tenant: TenantId = raw.parse()?;
    span.record_tenant(tenant);
    tracing::info!("looked up a tenant");
    Ok(format!("tenant {tenant}\n"))
}

async fn boom() -> Result<String, Problem> {
    Err(Problem::internal().with_internal("the database said: password authentication failed"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = telemetry::init(TelemetryConfig::from_env().service_name("quickstart"))?;

    let app = Router::new()
        .route("/", get(hello))
        .route("/tenants/{id}", get(tenant))
        .route("/boom", get(boom))
        .layer(
            ServiceBuilder::new()
                .layer(RequestIdLayer::new())
                .layer(TraceLayer::new())
                .layer(ProblemLayer::new()),
        );

    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("saas-core quickstart listening on {base}  (Ctrl-C to stop)");
    println!("  curl -i {base}/ -H 'x-request-id: my-first-request'");
    println!("  curl -i {base}/tenants/{}", TenantId::new());
    println!("  curl -i {base}/tenants/not-a-uuid      # 400 problem+json");
    println!("  curl -i {base}/boom                    # 500, internals stay in the log");
    println!("  curl -i {base}/nowhere                 # 404 problem+json");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
