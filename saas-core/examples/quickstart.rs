//! The edge of a saas-kit service, runnable: request ids, one JSON log line per request,
//! problem+json errors, validated JSON, safe defaults and a rate limit per client address.
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
use axum::routing::{get, post};
use saas_core::TenantId;
use saas_core::defaults::{SafeDefaults, SecurityHeadersLayer};
use saas_core::health;
use saas_core::problem::Problem;
use saas_core::problem_layer::ProblemLayer;
use saas_core::ratelimit::{self, ClientIp, MemoryStore, Quota, RateLimitLayer};
use saas_core::request_id::{RequestId, RequestIdLayer};
use saas_core::telemetry::{self, RequestSpan, TelemetryConfig, TraceLayer};
use saas_core::validate::Valid;
use serde::Deserialize;
use tower::ServiceBuilder;
use validator::Validate;

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

#[derive(Deserialize, Validate)]
struct NewProject {
    #[validate(length(min = 1, max = 40))]
    name: String,
}

/// Validated JSON: malformed bodies are 400s, invalid fields 422s, with JSON pointers.
async fn create_project(Valid(p): Valid<NewProject>) -> String {
    format!("created {}\n", p.name)
}

/// The quickstart has no proxy in front, so the peer address is the client.
async fn client_ip(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut().insert(ClientIp(peer.ip()));
    next.run(req).await
}

async fn boom() -> Result<String, Problem> {
    Err(Problem::internal().with_internal("the database said: password authentication failed"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = telemetry::init(TelemetryConfig::from_env().service_name("quickstart"))?;

    let routes = Router::new()
        .route("/", get(hello))
        .route("/tenants/{id}", get(tenant))
        .route("/projects", post(create_project))
        .route("/boom", get(boom))
        .route("/healthz", get(|| async { health::liveness::<axum::body::Body>() }));
    // Innermost first: the rate limit sees the client address, the safe defaults wrap
    // both (so 429s carry the security headers too), and the edge layers wrap it all.
    let limited = routes
        .layer(RateLimitLayer::new(
            ratelimit::by_ip(),
            Quota::per_second(5),
            MemoryStore::new(),
        ))
        .layer(axum::middleware::from_fn(client_ip));
    let app = SafeDefaults::new()
        .security_headers(SecurityHeadersLayer::new().without_hsts())
        .apply(limited)
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
    println!(
        "  curl -i {base}/projects -H 'content-type: application/json' -d '{{\"name\": \"\"}}'   # 422 with a JSON pointer"
    );
    println!("  curl -i {base}/boom                    # 500, internals stay in the log");
    println!("  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/; done   # 429 after 5");
    println!("  curl -i {base}/nowhere                 # 404 problem+json");

    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
