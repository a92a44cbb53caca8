//! Rate limits per tenant, API key, user or client address, with quotas per plan.
//!
//! [`RateLimitLayer`] keys each request with a [`KeyExtractor`], asks a [`LimitSource`]
//! for the key's [`Quota`] (the plan's), and asks a [`RateStore`] whether the request
//! fits: [`MemoryStore`] in process, or the Redis store (feature `redis`) shared by every
//! instance. The algorithm is GCRA (a token bucket without a refill timer): `limit`
//! requests may come at once, then one per `period / limit`.
//!
//! Every response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset`; a rejection is a 429 problem `rate-limited` with `Retry-After`.
//!
//! ```
//! use std::time::Duration;
//! use saas_core::ratelimit::{self, MemoryStore, Quota, RateLimitLayer};
//!
//! let layer = RateLimitLayer::new(ratelimit::by_tenant(), Quota::per(100, Duration::from_secs(60)), MemoryStore::new());
//! # let _ = layer;
//! ```

mod client_ip;
mod memory;
#[cfg(feature = "redis")]
mod redis_store;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

pub use client_ip::{ClientIpLayer, ClientIpService, PeerAddr};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

use crate::id::{ApiKeyId, TenantId, UserId};
use crate::principal::{AuthMethod, Principal};
use crate::problem::Problem;

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset` (seconds until the allowance is full again).
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// How much a key may do: `limit` requests per `period`, all of them at once if it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Duration,
}

impl Quota {
    /// `limit` requests per `period` (a limit of 0 or a zero period is raised to 1 / 1 ns).
    pub const fn per(limit: u32, period: Duration) -> Self {
        let limit = if limit == 0 { 1 } else { limit };
        let period = if period.is_zero() {
            Duration::from_nanos(1)
        } else {
            period
        };
        Self { limit, period }
    }
    /// Requests per second.
    pub const fn per_second(limit: u32) -> Self {
        Self::per(limit, Duration::from_secs(1))
    }
    /// Requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::per(limit, Duration::from_secs(60))
    }
    /// The burst size.
    pub const fn limit(&self) -> u32 {
        self.limit
    }
    /// The period over which `limit` requests are allowed.
    pub const fn period(&self) -> Duration {
        self.period
    }
    /// Nanoseconds between requests in the steady state.
    pub(crate) fn interval_nanos(&self) -> u64 {
        (self.period.as_nanos() / u128::from(self.limit)).max(1) as u64
    }
}

/// Who a limit applies to. Cheap to copy; no allocation for the built-in kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateKey {
    /// A tenant.
    Tenant(TenantId),
    /// An API key.
    ApiKey(ApiKeyId),
    /// A user.
    User(UserId),
    /// A client address.
    Ip(IpAddr),
    /// Anything else an application keys on.
    Custom(Arc<str>),
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::Tenant(t) => write!(f, "t:{t}"),
            RateKey::ApiKey(k) => write!(f, "k:{k}"),
            RateKey::User(u) => write!(f, "u:{u}"),
            RateKey::Ip(ip) => write!(f, "ip:{ip}"),
            RateKey::Custom(s) => write!(f, "c:{s}"),
        }
    }
}

/// Picks the key of a request; `None` lets the request through unlimited by this layer.
/// Implemented for closures `Fn(&Parts) -> Option<RateKey>`.
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key, if this layer limits the request.
    fn key(&self, parts: &Parts) -> Option<RateKey>;
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<RateKey> + Clone + Send + Sync + 'static,
{
    fn key(&self, parts: &Parts) -> Option<RateKey> {
        self(parts)
    }
}

/// Keys by the tenant (the `TenantId` a tenant layer put in the extensions).
pub fn by_tenant() -> impl KeyExtractor {
    |p: &Parts| p.extensions.get::<TenantId>().copied().map(RateKey::Tenant)
}

/// Keys by the API key of the principal; requests not made with an API key are skipped.
pub fn by_api_key() -> impl KeyExtractor {
    |p: &Parts| match p.extensions.get::<Principal>().map(|pr| &pr.method) {
        Some(AuthMethod::ApiKey(k) | AuthMethod::ServiceAccount(k)) => Some(RateKey::ApiKey(*k)),
        _ => None,
    }
}

/// Keys by the authenticated user.
pub fn by_user() -> impl KeyExtractor {
    |p: &Parts| p.extensions.get::<Principal>().map(|pr| RateKey::User(pr.user_id))
}

/// The client's address, as a trusted layer (or the server) determined it: see
/// [`ClientIpLayer`], which takes it from `Forwarded`/`X-Forwarded-For` only when the peer
/// is a configured proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Keys by the client address: a [`ClientIp`] extension, else (with the `axum` feature)
/// the peer address from `ConnectInfo<SocketAddr>`. Never the raw `X-Forwarded-For`,
/// which any client can forge. IPv6 clients are bucketed by their /64 (one subscriber's
/// network, which rotates addresses freely); see [`by_ip_prefix`].
pub fn by_ip() -> impl KeyExtractor {
    by_ip_prefix(64)
}

/// [`by_ip`] with IPv6 addresses bucketed by their first `v6_prefix` bits (1–128; 64 is
/// a subscriber's network, 56 or 48 a whole site). IPv4 addresses are keyed whole.
pub fn by_ip_prefix(v6_prefix: u8) -> impl KeyExtractor {
    let v6_prefix = v6_prefix.clamp(1, 128);
    move |p: &Parts| client_address(p).map(|ip| RateKey::Ip(bucket(ip, v6_prefix)))
}

/// The address a request came from: [`ClientIp`], else the connection's peer.
pub(crate) fn client_address(p: &Parts) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = p.extensions.get::<ClientIp>() {
        return Some(*ip);
    }
    client_ip::peer(p)
}

/// `ip` with an IPv6 address cut to its first `v6_prefix` bits (IPv4-mapped addresses
/// count as IPv4).
fn bucket(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX.checked_shl(u32::from(128 - v6_prefix)).unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
        v4 => v4,
    }
}

/// Looks up the quota of a key, typically by the tenant's plan. Implemented for
/// [`Quota`] (one quota for everyone) and closures `Fn(&RateKey, &Parts) -> Option<Quota>`
/// (`None`: unlimited).
pub trait LimitSource: Clone + Send + Sync + 'static {
    /// The quota for this key and request.
    fn quota(&self, key: &RateKey, parts: &Parts) -> Option<Quota>;
}

impl LimitSource for Quota {
    fn quota(&self, _: &RateKey, _: &Parts) -> Option<Quota> {
        Some(*self)
    }
}

impl<F> LimitSource for F
where
    F: Fn(&RateKey, &Parts) -> Option<Quota> + Clone + Send + Sync + 'static,
{
    fn quota(&self, key: &RateKey, parts: &Parts) -> Option<Quota> {
        self(key, parts)
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The quota's burst size.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Until the allowance is full again.
    pub reset: Duration,
    /// When rejected: how long to wait before the next request can pass.
    pub retry_after: Duration,
}

/// The shared state of a rate limiter could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limit store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where allowances are kept.
pub trait RateStore: Clone + Send + Sync + 'static {
    /// Counts one request of `key` against `quota` and says whether it fits.
    fn check(&self, key: &RateKey, quota: Quota) -> impl Future<Output = Result<RateDecision, StoreError>> + Send;
}

/// What to do when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through and log a warning (availability over limits).
    #[default]
    FailOpen,
    /// Answer 503 (limits over availability).
    FailClosed,
}

/// GCRA on a theoretical arrival time `tat` (nanoseconds on any monotonic clock).
/// Returns the decision and the new `tat` to store when allowed.
pub(crate) fn gcra(now: u64, tat: Option<u64>, quota: Quota) -> (RateDecision, Option<u64>) {
    let interval = quota.interval_nanos();
    let burst = interval.saturating_mul(u64::from(quota.limit));
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(burst);
    if now < allow_at {
        let wait = allow_at - now;
        let decision = RateDecision {
            allowed: false,
            limit: quota.limit,
            remaining: 0,
            reset: Duration::from_nanos(tat - now),
            retry_after: Duration::from_nanos(wait),
        };
        return (decision, None);
    }
    let used = new_tat - now;
    let remaining = (burst.saturating_sub(used) / interval) as u32;
    let decision = RateDecision {
        allowed: true,
        limit: quota.limit,
        remaining,
        reset: Duration::from_nanos(used),
        retry_after: Duration::ZERO,
    };
    (decision, Some(new_tat))
}

/// Limits requests. See the module docs.
#[derive(Clone, Debug)]
pub struct RateLimitLayer<K, L, S> {
    keys: K,
    limits: L,
    store: S,
    on_failure: FailurePolicy,
}

impl<K: KeyExtractor, L: LimitSource, S: RateStore> RateLimitLayer<K, L, S> {
    /// Limits requests keyed by `keys` to the quota `limits` gives, counted in `store`.
    pub fn new(keys: K, limits: L, store: S) -> Self {
        Self {
            keys,
            limits,
            store,
            on_failure: FailurePolicy::FailOpen,
        }
    }
    /// What to do when the store is unreachable (default: fail open with a warning).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }
}

impl<Svc, K: Clone, L: Clone, S: Clone> Layer<Svc> for RateLimitLayer<K, L, S> {
    type Service = RateLimit<Svc, K, L, S>;
    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimit {
            inner,
            config: self.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<Svc, K, L, S> {
    inner: Svc,
    config: RateLimitLayer<K, L, S>,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn put_headers(headers: &mut http::HeaderMap, d: &RateDecision) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(secs_ceil(d.reset)));
}

/// The 429 problem for a rejected request.
pub fn rate_limited(d: &RateDecision) -> Problem {
    let retry = secs_ceil(d.retry_after).max(1);
    Problem::new(StatusCode::TOO_MANY_REQUESTS)
        .with_type("rate-limited")
        .with_detail(format!("Too many requests; retry in {retry} s."))
        .with_header(RETRY_AFTER, HeaderValue::from(retry))
}

impl<Svc, K, L, S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<Svc, K, L, S>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    K: KeyExtractor,
    L: LimitSource,
    S: RateStore,
    ReqB: Send + 'static,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Svc::Error;
    type Future = crate::service::BoxResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut inner = crate::service::take_ready(&mut self.inner);
        let (parts, body) = req.into_parts();
        let key = self.config.keys.key(&parts);
        let quota = key.as_ref().and_then(|k| self.config.limits.quota(k, &parts));
        let store = self.config.store.clone();
        let on_failure = self.config.on_failure;
        Box::pin(async move {
            let req = Request::from_parts(parts, body);
            let (Some(key), Some(quota)) = (key, quota) else {
                return inner.call(req).await;
            };
            let decision = match store.check(&key, quota).await {
                Ok(d) => d,
                Err(e) => match on_failure {
                    FailurePolicy::FailOpen => {
                        tracing::warn!(error = %e, "rate limit store unavailable; letting the request through");
                        return inner.call(req).await;
                    }
                    FailurePolicy::FailClosed => {
                        return Ok(Problem::unavailable()
                            .with_type("rate-limit-unavailable")
                            .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
                            .with_internal(e)
                            .into_http());
                    }
                },
            };
            if !decision.allowed {
                metrics::counter!("http_rate_limited_total").increment(1);
                let mut res: Response<ResB> = rate_limited(&decision).into_http();
                put_headers(res.headers_mut(), &decision);
                return Ok(res);
            }
            let mut res = inner.call(req).await?;
            put_headers(res.headers_mut(), &decision);
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn gcra_allows_a_burst_then_the_steady_rate() {
        let q = Quota::per(5, Duration::from_secs(1)); // one per 200 ms
        let mut tat = None;
        for i in 0..5 {
            let (d, t) = gcra(0, tat, q);
            assert!(d.allowed, "burst request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = t;
        }
        let (d, t) = gcra(0, tat, q);
        assert!(!d.allowed);
        assert_eq!(t, None);
        assert_eq!(d.retry_after, Duration::from_millis(200));
        let (d, t) = gcra(200 * MS, tat, q);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        tat = t;
        assert!(!gcra(300 * MS, tat, q).0.allowed);
        assert!(gcra(400 * MS, tat, q).0.allowed);
        // After a full period idle, the whole burst is back.
        let (d, _) = gcra(10_000 * MS, tat, q);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn quotas_never_divide_by_zero() {
        let q = Quota::per(0, Duration::ZERO);
        assert_eq!(q.limit(), 1);
        assert!(q.interval_nanos() >= 1);
        assert!(gcra(0, None, q).0.allowed);
    }
}
