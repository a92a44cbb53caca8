//! Per-request cost of each edge layer around a no-op service.
//!
//! ```text
//! cargo bench -p saas-core --bench layers
//! ```
//!
//! Each function drives one request through `layer(no-op)`; subtract `bare` for the
//! layer's own cost. No tracing subscriber is installed, as in a service whose log level
//! filters the request span out.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use saas_core::TenantId;
use saas_core::defaults::{CatchPanicLayer, SecurityHeadersLayer};
use saas_core::problem_layer::ProblemLayer;
use saas_core::ratelimit::{self, MemoryStore, Quota, RateLimitLayer};
use saas_core::request_id::RequestIdLayer;
use saas_core::telemetry::TraceLayer;
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let tenant = TenantId::new();
    let request = move || {
        let mut r = Request::get("/v1/projects")
            .header("x-request-id", "bench-1")
            .body(())
            .unwrap();
        r.extensions_mut().insert(tenant);
        r
    };
    let mut g = c.benchmark_group("edge_layers");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            g.bench_function($name, |b| {
                b.to_async(&rt).iter(|| {
                    let svc = svc.clone();
                    let req = request();
                    async move { svc.oneshot(req).await.unwrap() }
                })
            });
        }};
    }
    case!("bare", Noop);
    case!("request_id", RequestIdLayer::new().layer(Noop));
    case!("problem", ProblemLayer::new().layer(Noop));
    case!("trace", TraceLayer::new().layer(Noop));
    case!("security_headers", SecurityHeadersLayer::new().layer(Noop));
    case!("catch_panic", CatchPanicLayer::new().layer(Noop));
    // A quota no benchmark loop can exhaust: the allowed path, which every request takes.
    let store = MemoryStore::new();
    case!(
        "rate_limit_memory",
        RateLimitLayer::new(
            ratelimit::by_tenant(),
            Quota::per(u32::MAX, Duration::from_secs(1)),
            store.clone()
        )
        .layer(Noop)
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
