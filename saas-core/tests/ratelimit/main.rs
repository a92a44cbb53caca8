//! Rate limits through a real axum stack, in memory and in the local Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use saas_core::TenantId;
use saas_core::problem_layer::ProblemLayer;
use saas_core::ratelimit::{self, FailurePolicy, KeyExtractor, MemoryStore, Quota, RateKey, RateLimitLayer, RateStore};
use tower::{ServiceBuilder, ServiceExt};

/// The plan of the tenant, as billing would put it in the extensions.
#[derive(Clone, Copy)]
struct Plan(&'static str);

fn app<K: KeyExtractor, S: RateStore>(keys: K, quota: Quota, store: S, policy: FailurePolicy) -> Router {
    Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(ProblemLayer::new())
            .layer(RateLimitLayer::new(keys, quota, store).on_store_failure(policy)),
    )
}

fn req(tenant: Option<TenantId>, key: Option<&str>) -> Request<Body> {
    let mut r = Request::get("/").body(Body::empty()).unwrap();
    if let Some(t) = tenant {
        r.extensions_mut().insert(t);
    }
    if let Some(k) = key {
        r.headers_mut().insert("x-client", k.parse().unwrap());
    }
    r
}

fn by_header() -> impl KeyExtractor {
    |p: &http::request::Parts| {
        p.headers
            .get("x-client")
            .and_then(|v| v.to_str().ok())
            .map(|s| RateKey::Custom(s.into()))
    }
}

async fn status(app: &Router, r: Request<Body>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let res = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

#[tokio::test]
async fn burst_then_429_with_headers_and_retry_after() {
    let app = app(
        ratelimit::by_tenant(),
        Quota::per(3, Duration::from_secs(60)),
        MemoryStore::new(),
        FailurePolicy::FailOpen,
    );
    let t = TenantId::new();
    for remaining in [2, 1, 0] {
        let (s, h, _) = status(&app, req(Some(t), None)).await;
        assert_eq!(s, 200);
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], remaining.to_string());
        assert!(h["ratelimit-reset"].to_str().unwrap().parse::<u64>().unwrap() <= 60);
    }
    let (s, h, body) = status(&app, req(Some(t), None)).await;
    assert_eq!(s, 429);
    assert_eq!(body["type"], "urn:saas-kit:problem:rate-limited");
    assert_eq!(h["retry-after"], "20");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["content-type"], "application/problem+json");
}

#[test]
fn steady_state_admits_one_per_interval() {
    // Deterministic time: 40 requests, one every 25 ms, against 2 per 200 ms.
    let store = MemoryStore::new();
    let key = RateKey::Custom("c1".into());
    let quota = Quota::per(2, Duration::from_millis(200));
    let admitted = (0..40u64)
        .filter(|i| store.check_at(&key, quota, 1_000_000_000 + i * 25_000_000).allowed)
        .count();
    // A burst of 2, then one per 100 ms over the remaining 975 ms.
    assert_eq!(admitted, 2 + 9);
}

#[tokio::test]
async fn keys_and_tenants_are_independent() {
    let store = MemoryStore::new();
    let app = app(
        ratelimit::by_tenant(),
        Quota::per(1, Duration::from_secs(60)),
        store.clone(),
        FailurePolicy::FailOpen,
    );
    let (a, b) = (TenantId::new(), TenantId::new());
    assert_eq!(status(&app, req(Some(a), None)).await.0, 200);
    assert_eq!(status(&app, req(Some(a), None)).await.0, 429);
    assert_eq!(status(&app, req(Some(b), None)).await.0, 200);
    // No key: this layer does not limit the request.
    for _ in 0..5 {
        assert_eq!(status(&app, req(None, None)).await.0, 200);
    }
    let by_client = self::app(
        by_header(),
        Quota::per(1, Duration::from_secs(60)),
        store,
        FailurePolicy::FailOpen,
    );
    assert_eq!(status(&by_client, req(None, Some("k1"))).await.0, 200);
    assert_eq!(status(&by_client, req(None, Some("k1"))).await.0, 429);
    assert_eq!(status(&by_client, req(None, Some("k2"))).await.0, 200);
}

#[tokio::test]
async fn quotas_follow_the_plan() {
    let limits = |_: &RateKey, p: &http::request::Parts| match p.extensions.get::<Plan>() {
        Some(Plan("pro")) => Some(Quota::per_minute(5)),
        Some(Plan("enterprise")) => None,
        _ => Some(Quota::per_minute(1)),
    };
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(ratelimit::by_tenant(), limits, MemoryStore::new()));
    let count_ok = |plan: &'static str| {
        let app = app.clone();
        async move {
            let t = TenantId::new();
            let mut ok = 0;
            for _ in 0..8 {
                let mut r = req(Some(t), None);
                r.extensions_mut().insert(Plan(plan));
                if app.clone().oneshot(r).await.unwrap().status() == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    assert_eq!(count_ok("free").await, 1);
    assert_eq!(count_ok("pro").await, 5);
    assert_eq!(count_ok("enterprise").await, 8);
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn two_instances_share_one_budget_in_redis() {
    let prefix = format!("rl-test:{}:", uuid::Uuid::now_v7());
    let quota = Quota::per(3, Duration::from_secs(60));
    // Two instances, each with its own store and connection.
    let one = app(
        ratelimit::by_tenant(),
        quota,
        ratelimit::RedisStore::new(&redis_url(), &prefix).unwrap(),
        FailurePolicy::FailClosed,
    );
    let two = app(
        ratelimit::by_tenant(),
        quota,
        ratelimit::RedisStore::new(&redis_url(), &prefix).unwrap(),
        FailurePolicy::FailClosed,
    );
    let (t, other) = (TenantId::new(), TenantId::new());
    let (s, h, _) = status(&one, req(Some(t), None)).await;
    assert_eq!((s, h["ratelimit-remaining"].to_str().unwrap()), (StatusCode::OK, "2"));
    assert_eq!(status(&two, req(Some(t), None)).await.0, 200);
    let (s, h, _) = status(&one, req(Some(t), None)).await;
    assert_eq!((s, h["ratelimit-remaining"].to_str().unwrap()), (StatusCode::OK, "0"));
    let (s, h, _) = status(&two, req(Some(t), None)).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "20");
    assert_eq!(status(&two, req(Some(other), None)).await.0, 200);
}

#[tokio::test]
async fn redis_down_follows_the_failure_policy() {
    let down = || {
        ratelimit::RedisStore::new("redis://127.0.0.1:1", "rl:")
            .unwrap()
            .timeout(Duration::from_millis(200))
    };
    let quota = Quota::per(1, Duration::from_secs(60));
    let open = app(ratelimit::by_tenant(), quota, down(), FailurePolicy::FailOpen);
    let t = TenantId::new();
    for _ in 0..3 {
        let (s, h, _) = status(&open, req(Some(t), None)).await;
        assert_eq!(s, 200);
        assert!(h.get("ratelimit-limit").is_none());
    }
    let closed = app(ratelimit::by_tenant(), quota, down(), FailurePolicy::FailClosed);
    let (s, h, body) = status(&closed, req(Some(t), None)).await;
    assert_eq!(s, 503);
    assert_eq!(body["type"], "urn:saas-kit:problem:rate-limit-unavailable");
    assert_eq!(h["retry-after"], "1");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
}

fn from_ip(ip: &str) -> Request<Body> {
    let mut r = req(None, None);
    r.extensions_mut().insert(ratelimit::ClientIp(ip.parse().unwrap()));
    r
}

#[tokio::test]
async fn an_ipv6_client_cannot_escape_its_limit_by_rotating_through_its_64() {
    let app = app(
        ratelimit::by_ip(),
        Quota::per(2, Duration::from_secs(60)),
        MemoryStore::new(),
        FailurePolicy::FailOpen,
    );
    assert_eq!(status(&app, from_ip("2001:db8:1:2::1")).await.0, 200);
    assert_eq!(status(&app, from_ip("2001:db8:1:2::2")).await.0, 200);
    assert_eq!(
        status(&app, from_ip("2001:db8:1:2:ffff:1:2:3")).await.0,
        429,
        "a new address in the same /64 got a fresh allowance"
    );
    // Another /64 is another client; IPv4 addresses are whole.
    assert_eq!(status(&app, from_ip("2001:db8:1:3::1")).await.0, 200);
    assert_eq!(status(&app, from_ip("198.51.100.1")).await.0, 200);
    assert_eq!(status(&app, from_ip("198.51.100.2")).await.0, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit_and_others_cannot_forge_one() {
    use saas_core::ratelimit::{ClientIpLayer, PeerAddr};
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(ProblemLayer::new())
            .layer(ClientIpLayer::trusting(["10.0.0.0/8".parse().unwrap()]))
            .layer(RateLimitLayer::new(
                ratelimit::by_ip(),
                Quota::per(2, Duration::from_secs(60)),
                MemoryStore::new(),
            )),
    );
    let via = |peer: &str, xff: &str| {
        let mut r = req(None, None);
        r.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // Two clients behind the balancer do not share its address's allowance.
    for _ in 0..2 {
        assert_eq!(status(&app, via("10.0.0.1:443", "203.0.113.5")).await.0, 200);
    }
    assert_eq!(status(&app, via("10.0.0.1:443", "203.0.113.5")).await.0, 429);
    assert_eq!(status(&app, via("10.0.0.2:443", "203.0.113.6")).await.0, 200);
    // A client that is not the balancer cannot pick its address with the header.
    for (i, expected) in [(1, 200), (2, 200), (3, 429)] {
        let forged = format!("192.0.2.{i}");
        assert_eq!(status(&app, via("198.51.100.7:5000", &forged)).await.0, expected);
    }
}
