//! Safe retries of POST, PATCH and DELETE with an `Idempotency-Key` header.
//!
//! The first response to a key (status, headers, body up to a cap) is stored, scoped to
//! the tenant with row-level security, together with a fingerprint of the request. Then:
//!
//! | the retry | answer |
//! |---|---|
//! | same key, same request, first one finished | the stored response, with `Idempotent-Replayed: true` |
//! | same key while the first is still running | 409 `idempotency-in-flight` with `Retry-After` |
//! | same key, different request | 422 `idempotency-key-reused` |
//! | after the key expired (24 h by default) | runs again |
//!
//! Keys are scoped to the tenant **and the principal** (the `Principal` in the request
//! extensions): a key learned by someone else replays nothing to them, it is simply a new
//! key of theirs. A stored response is only ever replayed to the principal that caused it.
//!
//! Responses that carry secrets (API keys, webhook secrets) are marked `Cache-Control:
//! no-store` by their handlers. With a keyring ([`IdempotencyLayer::keyring`]) every
//! stored body is sealed (AAD: tenant, principal and key); without one, a `no-store`
//! response is not kept at all and its replay answers 409 `idempotent-response-withheld`
//! (the request succeeded; read the resource). Stored responses never go into a tenant's
//! export.
//!
//! 5xx responses and service errors are not stored, so the client can retry them. A
//! request whose first attempt died mid-flight is taken over once its lease (60 s)
//! lapses; only the attempt holding the lease records its answer, so a stale first
//! attempt that finishes late cannot overwrite the one that took over. Requests without a
//! tenant (`TenantId`, put there by the tenant layer) or a principal in the extensions, or
//! without the header, pass through untouched. Expired keys are removed by
//! [`prune_expired`], run by a platform job.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tower::{Layer, Service};

use crate::clock::{Clock, SystemClock};
use crate::crypto::{Aad, Keyring};
use crate::id::TenantId;
use crate::principal::{AuthMethod, Principal};
use crate::problem::Problem;

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking a replay.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers that are stored and replayed (others, such as `Set-Cookie`, are not).
const REPLAYED_HEADERS: &[&str] = &["content-type", "location", "etag", "last-modified", "content-language"];

/// Stores first responses for retries. See the module docs.
#[derive(Clone)]
pub struct IdempotencyLayer {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    lease: Duration,
    max_body: usize,
    keyring: Option<Arc<Keyring>>,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("ttl", &self.ttl)
            .field("max_body", &self.max_body)
            .field("sealed", &self.keyring.is_some())
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Stores responses through the application `pool` for 24 h, bodies up to 1 MiB.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            clock: Arc::new(SystemClock),
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            max_body: 1024 * 1024,
            keyring: None,
        }
    }
    /// Seals every stored body with `keyring` (AAD: tenant, principal and key), so that
    /// responses carrying secrets can be replayed without being kept in clear.
    pub fn keyring(mut self, keyring: impl Into<Arc<Keyring>>) -> Self {
        self.keyring = Some(keyring.into());
        self
    }
    /// How long a key is remembered.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// How long a first attempt may run before a retry takes over.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// The largest request (and stored response) body; larger requests answer 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
    /// The clock deciding expiry (a `ManualClock` in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: self.clone(),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    config: IdempotencyLayer,
}

fn valid_key(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    ((1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_owned())
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

enum Claim {
    /// This request runs the operation, holding the lease `lease_id`.
    Run(uuid::Uuid),
    /// Replay a stored response.
    Replay(u16, serde_json::Value, Option<Vec<u8>>),
    /// Refuse with a problem.
    Refuse(Problem),
}

/// Who a key belongs to within its tenant.
fn scope_of(p: &Principal) -> String {
    match p.method {
        AuthMethod::ApiKey(k) | AuthMethod::ServiceAccount(k) => format!("api_key:{k}"),
        AuthMethod::SupportSession(s) => format!("support:{s}:{}", p.user_id),
        _ => format!("user:{}", p.user_id),
    }
}

/// One stored key: the tenant, the principal's scope and the client's key.
struct Slot<'a> {
    tenant: TenantId,
    principal: &'a str,
    key: &'a str,
}

impl Slot<'_> {
    fn aad(&self) -> Aad {
        Aad::new(self.tenant, "idempotency_keys.sealed_body").row(format_args!("{}/{}", self.principal, self.key))
    }
}

fn no_store(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CACHE_CONTROL).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-store")))
    })
}

impl IdempotencyLayer {
    async fn begin(&self, tenant: TenantId) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        crate::db::begin_scoped(&self.pool, "BEGIN", tenant, None).await
    }

    async fn claim(&self, slot: &Slot<'_>, fingerprint: &[u8]) -> Result<Claim, sqlx::Error> {
        let now = self.clock.now();
        let lease_until = now + chrono_of(self.lease);
        let expires_at = now + chrono_of(self.ttl);
        let lease_id = uuid::Uuid::now_v7();
        let mut tx = self.begin(slot.tenant).await?;
        // Insert the key, or take it over when it expired or its first attempt was
        // abandoned (lease lapsed); a live key is left alone and read below.
        let claimed = sqlx::query(
            "INSERT INTO saas.idempotency_keys AS k (tenant_id, principal, key, fingerprint, state, lease_until, lease_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'in_flight', $5, $6, $7, $8) \
             ON CONFLICT (tenant_id, principal, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight', \
               lease_until = EXCLUDED.lease_until, lease_id = EXCLUDED.lease_id, status = NULL, headers = NULL, body = NULL, \
               sealed_body = NULL, withheld = false, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at \
             WHERE k.expires_at <= $7 OR (k.state = 'in_flight' AND k.lease_until <= $7)",
        )
        .bind(slot.tenant)
        .bind(slot.principal)
        .bind(slot.key)
        .bind(fingerprint)
        .bind(lease_until)
        .bind(lease_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 1 {
            tx.commit().await?;
            return Ok(Claim::Run(lease_id));
        }
        let row = sqlx::query(
            "SELECT fingerprint, state, status, headers, body, sealed_body, withheld \
             FROM saas.idempotency_keys WHERE tenant_id = $1 AND principal = $2 AND key = $3",
        )
        .bind(slot.tenant)
        .bind(slot.principal)
        .bind(slot.key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if row.try_get::<Vec<u8>, _>("fingerprint")? != fingerprint {
            return Ok(Claim::Refuse(
                Problem::unprocessable("This Idempotency-Key was used for a different request.")
                    .with_type("idempotency-key-reused"),
            ));
        }
        if row.try_get::<String, _>("state")? == "in_flight" {
            return Ok(Claim::Refuse(
                Problem::conflict("A request with this Idempotency-Key is still being processed.")
                    .with_type("idempotency-in-flight")
                    .with_header(RETRY_AFTER, HeaderValue::from_static("1")),
            ));
        }
        let status: i16 = row.try_get::<Option<i16>, _>("status")?.unwrap_or(500);
        if row.try_get::<bool, _>("withheld")? {
            return Ok(Claim::Refuse(
                Problem::conflict(format!(
                    "This request already succeeded (status {status}); its response held a secret and was not kept. \
                     Read the resource instead of retrying."
                ))
                .with_type("idempotent-response-withheld")
                .with_header(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
            ));
        }
        let headers: serde_json::Value = row
            .try_get::<Option<serde_json::Value>, _>("headers")?
            .unwrap_or_default();
        let body: Option<Vec<u8>> = match row.try_get::<Option<String>, _>("sealed_body")? {
            Some(sealed) => {
                let Some(keyring) = &self.keyring else {
                    return Ok(Claim::Refuse(
                        Problem::internal().with_internal("a sealed idempotent response but no keyring"),
                    ));
                };
                match keyring.decrypt(&sealed, &slot.aad()) {
                    Ok(plain) => Some(plain.expose().clone()),
                    Err(e) => return Ok(Claim::Refuse(Problem::internal().with_internal(e))),
                }
            }
            None => row.try_get("body")?,
        };
        Ok(Claim::Replay(u16::try_from(status).unwrap_or(500), headers, body))
    }

    async fn finish(
        &self,
        slot: &Slot<'_>,
        lease_id: uuid::Uuid,
        status: StatusCode,
        headers: &http::HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin(slot.tenant).await?;
        if status.is_server_error() {
            sqlx::query("DELETE FROM saas.idempotency_keys WHERE tenant_id = $1 AND principal = $2 AND key = $3 AND lease_id = $4")
                .bind(slot.tenant)
                .bind(slot.principal)
                .bind(slot.key)
                .bind(lease_id)
                .execute(&mut *tx)
                .await?;
        } else {
            let stored: serde_json::Map<String, serde_json::Value> = REPLAYED_HEADERS
                .iter()
                .filter_map(|h| {
                    headers
                        .get(*h)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| ((*h).to_owned(), serde_json::Value::from(v)))
                })
                .collect();
            let (clear, sealed, withheld) = match (&self.keyring, body) {
                (Some(keyring), Some(body)) => {
                    let sealed = keyring
                        .encrypt(body, &slot.aad())
                        .map_err(|e| sqlx::Error::Protocol(format!("sealing the stored response failed: {e}")))?;
                    (None, Some(sealed), false)
                }
                (None, Some(_)) if no_store(headers) => (None, None, true),
                (_, body) => (body, None, false),
            };
            // Only the attempt holding the lease records its answer.
            let updated = sqlx::query(
                "UPDATE saas.idempotency_keys SET state = 'done', status = $5, headers = $6, body = $7, \
                 sealed_body = $8, withheld = $9 \
                 WHERE tenant_id = $1 AND principal = $2 AND key = $3 AND lease_id = $4 AND state = 'in_flight'",
            )
            .bind(slot.tenant)
            .bind(slot.principal)
            .bind(slot.key)
            .bind(lease_id)
            .bind(status.as_u16() as i16)
            .bind(serde_json::Value::Object(stored))
            .bind(clear)
            .bind(sealed)
            .bind(withheld)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                tracing::warn!(
                    key = slot.key,
                    "an idempotent request finished after another attempt took over its key; its response is not stored"
                );
            }
        }
        tx.commit().await
    }

    async fn release(&self, slot: &Slot<'_>, lease_id: uuid::Uuid) {
        if let Ok(mut tx) = self.begin(slot.tenant).await {
            let _ = sqlx::query(
                "DELETE FROM saas.idempotency_keys WHERE tenant_id = $1 AND principal = $2 AND key = $3 AND lease_id = $4",
            )
            .bind(slot.tenant)
            .bind(slot.principal)
            .bind(slot.key)
            .bind(lease_id)
            .execute(&mut *tx)
            .await;
            let _ = tx.commit().await;
        }
    }
}

fn fingerprint(method: &Method, uri: &http::Uri, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().to_vec()
}

fn replay<B: From<Bytes>>(status: u16, headers: &serde_json::Value, body: Option<Vec<u8>>) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::from(body.unwrap_or_default())));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(map) = headers.as_object() {
        for (k, v) in map {
            if let (Ok(name), Some(Ok(value))) =
                (HeaderName::try_from(k.as_str()), v.as_str().map(HeaderValue::from_str))
            {
                res.headers_mut().insert(name, value);
            }
        }
    }
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}

fn unavailable<B: From<Bytes>>(e: impl std::fmt::Display) -> Response<B> {
    Problem::unavailable()
        .with_type("idempotency-unavailable")
        .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
        .with_internal(e)
        .into_http()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResB: Body + From<Bytes> + Send + 'static,
    ResB::Data: Send,
    ResB::Error: std::fmt::Display + Send,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = crate::service::BoxResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut inner = crate::service::take_ready(&mut self.inner);
        let config = self.config.clone();
        Box::pin(async move {
            let applies = matches!(*req.method(), Method::POST | Method::PATCH | Method::DELETE);
            let tenant = req.extensions().get::<TenantId>().copied();
            let principal = req.extensions().get::<Principal>().map(scope_of);
            let header = req.headers().get(IDEMPOTENCY_KEY);
            let (Some(tenant), Some(principal), Some(header), true) = (tenant, principal, header, applies) else {
                return inner.call(req).await;
            };
            let Some(key) = valid_key(header) else {
                return Ok(
                    Problem::bad_request("Idempotency-Key must be 1-255 visible ASCII characters.")
                        .with_type("invalid-idempotency-key")
                        .into_http(),
                );
            };
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, config.max_body).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                        .with_detail("The request body is too large.")
                        .into_http());
                }
            };
            let print = fingerprint(&parts.method, &parts.uri, &bytes);
            let slot = Slot {
                tenant,
                principal: &principal,
                key: &key,
            };
            let lease_id = match config.claim(&slot, &print).await {
                Err(e) => return Ok(unavailable(e)),
                Ok(Claim::Refuse(p)) => return Ok(p.into_http()),
                Ok(Claim::Replay(status, headers, body)) => return Ok(replay(status, &headers, body)),
                Ok(Claim::Run(lease_id)) => lease_id,
            };
            let res = match inner.call(Request::from_parts(parts, ReqB::from(bytes))).await {
                Ok(res) => res,
                Err(e) => {
                    config.release(&slot, lease_id).await;
                    return Err(e);
                }
            };
            let (res_parts, res_body) = res.into_parts();
            let collected = match res_body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    config.release(&slot, lease_id).await;
                    return Ok(Problem::internal()
                        .with_internal(format!("response body failed: {e}"))
                        .into_http());
                }
            };
            let stored_body = (collected.len() <= config.max_body).then_some(collected.as_ref());
            if let Err(e) = config
                .finish(&slot, lease_id, res_parts.status, &res_parts.headers, stored_body)
                .await
            {
                // The operation ran; the client still gets its answer. A retry after the
                // lease runs it again, so log loudly.
                tracing::error!(error = %e, "could not store the idempotent response");
            }
            Ok(Response::from_parts(res_parts, ResB::from(collected)))
        })
    }
}

/// Deletes expired keys of every tenant. Run it on a connection of the platform role
/// (row-level security hides other tenants' keys from the application role).
pub async fn prune_expired(
    conn: &mut sqlx::PgConnection,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM saas.idempotency_keys WHERE expires_at <= $1")
        .bind(now)
        .execute(conn)
        .await?
        .rows_affected())
}
