//! Outbound webhooks to our tenants' customers.
//!
//! Tenants register endpoints (URL, event types, a `whsec_` secret generated per endpoint
//! and stored encrypted with saas-core's [`Keyring`]). [`send`] queues one delivery job
//! per subscribed endpoint in the caller's transaction; the worker signs each attempt
//! with the Standard Webhooks scheme and retries on the schedule *immediately, 5 s,
//! 5 min, 30 min, 2 h, 5 h, 10 h, 10 h* ([`SCHEDULE`]), honouring `Retry-After`. A `410
//! Gone` disables the endpoint; so do five days of failures; either way an
//! [`EndpointDisabled`] event is published. Every attempt is logged (status, latency,
//! the first 1 KiB of the response). Rotating a secret signs with both for an overlap.
//! Addresses inside our network are refused at registration and at every delivery
//! ([`ssrf`]).

pub mod sign;
pub mod ssrf;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use saas_core::clock::{Clock, SystemClock};
use saas_core::crypto::{Aad, Keyring};
use saas_core::problem::{IntoProblem, Problem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::event::{Event, Publish, publish, publish_with};
use crate::job::{Handler, JobContext, JobError};
use ssrf::{GuardedResolver, SsrfPolicy};

/// Delays before attempts 2 to 8 (attempt 1 is immediate).
pub const SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Attempts per delivery.
pub const MAX_ATTEMPTS: i32 = SCHEDULE.len() as i32 + 1;

/// An endpoint failing for this long is disabled.
pub const DISABLE_AFTER: chrono::Duration = chrono::Duration::days(5);

/// The queue delivery jobs go to.
pub const QUEUE: &str = "webhooks";

const RESPONSE_LOG: usize = 1024;

saas_core::define_id!(
    /// A webhook endpoint.
    pub struct EndpointId("webhook_endpoint");
);

/// A registered endpoint (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Endpoint {
    /// Its id.
    pub id: EndpointId,
    /// Where deliveries go.
    pub url: String,
    /// Event types it receives; empty: all.
    pub event_types: Vec<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Since when deliveries have been failing.
    pub failing_since: Option<DateTime<Utc>>,
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryLog {
    /// The message (`webhook-id`).
    pub message_id: String,
    /// Its event type.
    pub event_type: String,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// HTTP status, when a response came.
    pub status: Option<i32>,
    /// Milliseconds until the response (or the failure).
    pub latency_ms: Option<i32>,
    /// The first 1 KiB of the response body.
    pub response: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// When.
    pub attempted_at: DateTime<Utc>,
}

/// Published (in the endpoint's tenant) when an endpoint is disabled automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDisabled {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its URL.
    pub url: String,
    /// Why: `gone` (410), `failing` (five days of failures) or `forbidden-address`.
    pub reason: String,
}

impl Event for EndpointDisabled {
    const KIND: &'static str = "webhook.endpoint_disabled";
}

/// A delivery job: one message to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// `webhook-id`, the same for every attempt and endpoint of one message.
    pub message_id: String,
    /// The event type.
    pub event_type: String,
    /// The body, serialised once.
    pub body: String,
}

impl Event for Deliver {
    const KIND: &'static str = "webhook.deliver";
    const QUEUE: &'static str = QUEUE;
}

/// Webhook errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not an absolute `https` (or, when allowed, `http`) URL.
    #[error("invalid endpoint URL: {0}")]
    InvalidUrl(String),
    /// The URL's host is inside our network.
    #[error("endpoint refused: {0}")]
    Forbidden(String),
    /// No such endpoint in this tenant.
    #[error("no such webhook endpoint")]
    NotFound,
    /// The stored secret could not be decrypted (wrong keyring).
    #[error("the endpoint's secret could not be decrypted")]
    Secret,
    /// Publishing the delivery jobs failed.
    #[error(transparent)]
    Publish(#[from] crate::error::PublishError),
    /// The tenant transaction failed.
    #[error(transparent)]
    Tenancy(#[from] saas_tenancy::TenancyError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for WebhookError {
    fn to_problem(&self) -> Problem {
        match self {
            WebhookError::InvalidUrl(_) | WebhookError::Forbidden(_) => {
                Problem::unprocessable(self.to_string()).with_type("invalid-webhook-endpoint")
            }
            WebhookError::NotFound => Problem::not_found().with_type("webhook-endpoint-not-found"),
            WebhookError::Secret => Problem::internal().with_internal(self),
            WebhookError::Publish(e) => e.to_problem(),
            WebhookError::Tenancy(e) => e.to_problem(),
            WebhookError::Database(e) => e.to_problem(),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Failed; try again after `after` (unless it was the last attempt).
    Retry {
        /// The delay: `Retry-After` when the receiver sent one, else [`SCHEDULE`].
        after: Duration,
        /// What failed.
        reason: String,
    },
    /// The endpoint is now disabled (410, five days of failures, or a forbidden address).
    Disabled {
        /// Why.
        reason: String,
    },
    /// The endpoint is gone or disabled: nothing sent.
    Skipped,
}

/// Webhook endpoints and deliveries.
#[derive(Clone)]
pub struct Webhooks {
    keyring: Arc<Keyring>,
    policy: Arc<SsrfPolicy>,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    allow_http: bool,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn client(policy: &Arc<SsrfPolicy>, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: Arc::clone(policy),
        }))
        // The environment's proxy (HTTP_PROXY, ALL_PROXY) would resolve and connect on our
        // behalf: the guard would only ever see the proxy, and internal hosts would be
        // reachable through it.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .user_agent("saas-events-webhooks/0.1")
        .build()
        .unwrap_or_default()
}

impl Webhooks {
    /// Webhooks whose secrets `keyring` encrypts; public addresses only, HTTPS only,
    /// 10 s per attempt.
    pub fn new(keyring: impl Into<Arc<Keyring>>) -> Self {
        let policy = Arc::new(SsrfPolicy::public_only());
        Webhooks {
            http: client(&policy, Duration::from_secs(10)),
            keyring: keyring.into(),
            policy,
            clock: Arc::new(SystemClock),
            allow_http: false,
        }
    }

    /// Replaces the address policy (development: allow a local receiver) and allows
    /// plain `http` URLs when `allow_http`.
    pub fn policy(mut self, policy: SsrfPolicy, allow_http: bool) -> Self {
        self.policy = Arc::new(policy);
        self.http = client(&self.policy, Duration::from_secs(10));
        self.allow_http = allow_http;
        self
    }

    /// Uses `clock` for signatures, rotation and the five-day rule.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn aad(tenant: TenantId, id: EndpointId) -> Aad {
        Aad::new(tenant, "webhook_endpoints.secret").row(id)
    }

    async fn validate_url(&self, url: &str) -> Result<reqwest::Url, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(WebhookError::InvalidUrl(format!("scheme {other:?}; use https"))),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(WebhookError::InvalidUrl("credentials in the URL".into()));
        }
        ssrf::check_url(&self.policy, &parsed)
            .await
            .map_err(WebhookError::Forbidden)?;
        Ok(parsed)
    }

    /// Registers an endpoint in `tx`'s tenant; returns it and its secret (shown once).
    pub async fn create_endpoint(
        &self,
        tx: &mut PgConnection,
        tenant: TenantId,
        url: &str,
        event_types: &[&str],
    ) -> Result<(Endpoint, String), WebhookError> {
        let parsed = self.validate_url(url).await?;
        let id = EndpointId::new();
        let secret = sign::generate_secret();
        let sealed = self
            .keyring
            .encrypt(secret.as_bytes(), &Self::aad(tenant, id))
            .map_err(|_| WebhookError::Secret)?;
        let types: Vec<String> = event_types.iter().map(|s| (*s).to_owned()).collect();
        sqlx::query(
            "INSERT INTO saas.webhook_endpoints (tenant_id, id, url, event_types, secret, created_at) \
             VALUES (saas.current_tenant_id(), $1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(parsed.as_str())
        .bind(&types)
        .bind(&sealed)
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await?;
        let endpoint = Endpoint {
            id,
            url: parsed.to_string(),
            event_types: types,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
        };
        Ok((endpoint, secret))
    }

    /// A new secret for the endpoint; the old one keeps signing (second signature) for `overlap`.
    pub async fn rotate_secret(
        &self,
        tx: &mut PgConnection,
        tenant: TenantId,
        id: EndpointId,
        overlap: Duration,
    ) -> Result<String, WebhookError> {
        let secret = sign::generate_secret();
        let sealed = self
            .keyring
            .encrypt(secret.as_bytes(), &Self::aad(tenant, id))
            .map_err(|_| WebhookError::Secret)?;
        let until = self.clock.now() + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::days(1));
        let r = sqlx::query(
            "UPDATE saas.webhook_endpoints SET previous_secret = secret, previous_expires_at = $2, secret = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(until)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(WebhookError::NotFound);
        }
        Ok(secret)
    }

    /// Enables (clearing the failure record) or disables an endpoint.
    pub async fn set_enabled(&self, tx: &mut PgConnection, id: EndpointId, enabled: bool) -> Result<(), WebhookError> {
        let r = sqlx::query(
            "UPDATE saas.webhook_endpoints SET enabled = $2, disabled_reason = CASE WHEN $2 THEN NULL ELSE 'disabled by the tenant' END, \
             failing_since = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(enabled)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            Err(WebhookError::NotFound)
        } else {
            Ok(())
        }
    }

    /// Removes an endpoint and its delivery log.
    pub async fn delete_endpoint(&self, tx: &mut PgConnection, id: EndpointId) -> Result<(), WebhookError> {
        let r = sqlx::query("DELETE FROM saas.webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            Err(WebhookError::NotFound)
        } else {
            Ok(())
        }
    }

    /// The tenant's endpoints.
    pub async fn endpoints(&self, tx: &mut PgConnection) -> Result<Vec<Endpoint>, WebhookError> {
        Ok(sqlx::query_as(
            "SELECT id, url, event_types, enabled, disabled_reason, failing_since FROM saas.webhook_endpoints ORDER BY created_at, id",
        )
        .fetch_all(&mut *tx)
        .await?)
    }

    /// The endpoint's latest delivery attempts.
    pub async fn deliveries(
        &self,
        tx: &mut PgConnection,
        id: EndpointId,
        limit: i64,
    ) -> Result<Vec<DeliveryLog>, WebhookError> {
        Ok(sqlx::query_as(
            "SELECT message_id, event_type, attempt, status, latency_ms, response, error, attempted_at \
             FROM saas.webhook_deliveries WHERE endpoint_id = $1 ORDER BY attempted_at DESC, attempt DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?)
    }

    /// One attempt of `d` for `tenant` (what the worker runs; tests call it with a
    /// [`ManualClock`](saas_core::clock::ManualClock)). Reads the endpoint, sends, and
    /// records the attempt and the endpoint's state through `app` (the application role).
    pub async fn attempt(
        &self,
        app: &PgPool,
        tenant: TenantId,
        d: &Deliver,
        attempt: i32,
    ) -> Result<Attempt, WebhookError> {
        let mut tx = saas_tenancy::TenantTx::begin(app, tenant).await?;
        let row = sqlx::query(
            "SELECT url, secret, previous_secret, previous_expires_at, enabled FROM saas.webhook_endpoints WHERE id = $1",
        )
        .bind(d.endpoint_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(Attempt::Skipped) };
        if !row.try_get::<bool, _>("enabled")? {
            return Ok(Attempt::Skipped);
        }
        let url: String = row.try_get("url")?;
        let aad = Self::aad(tenant, d.endpoint_id);
        let now = self.clock.now();
        let mut secrets = vec![
            self.keyring
                .decrypt_string(&row.try_get::<String, _>("secret")?, &aad)
                .map_err(|_| WebhookError::Secret)?,
        ];
        if let (Some(prev), Some(until)) = (
            row.try_get::<Option<String>, _>("previous_secret")?,
            row.try_get::<Option<DateTime<Utc>>, _>("previous_expires_at")?,
        ) && until > now
        {
            secrets.push(
                self.keyring
                    .decrypt_string(&prev, &aad)
                    .map_err(|_| WebhookError::Secret)?,
            );
        }
        let ts = now.timestamp();
        let mut signatures = Vec::with_capacity(secrets.len());
        for s in &secrets {
            signatures
                .push(sign::sign(s.expose(), &d.message_id, ts, d.body.as_bytes()).map_err(|_| WebhookError::Secret)?);
        }

        // Literal IPs bypass the resolver: check them here. Names are checked by it.
        let parsed = reqwest::Url::parse(&url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
        let literal_forbidden = parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| !self.policy.permits(ip));
        let started = Instant::now();
        let sent = if literal_forbidden {
            Err(None)
        } else {
            self.http
                .post(parsed)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(sign::ID, &d.message_id)
                .header(sign::TIMESTAMP, ts.to_string())
                .header(sign::SIGNATURE, signatures.join(" "))
                .body(d.body.clone())
                .send()
                .await
                .map_err(Some)
        };
        let latency = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (status, response, error, retry_after, forbidden) = match sent {
            Ok(res) => {
                let status = res.status().as_u16();
                let retry_after = res
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now));
                let body = read_capped(res).await;
                (Some(status), Some(body), None, retry_after, false)
            }
            Err(e) => {
                let forbidden = literal_forbidden || e.as_ref().is_some_and(is_ssrf);
                let msg = match e {
                    Some(e) => error_chain(&e),
                    None => "the endpoint's address is one webhooks may not call".to_owned(),
                };
                (None, None, Some(msg), None, forbidden)
            }
        };

        let mut tx = saas_tenancy::TenantTx::begin(app, tenant).await?;
        sqlx::query(
            "INSERT INTO saas.webhook_deliveries (tenant_id, id, endpoint_id, message_id, event_type, attempt, status, latency_ms, response, error, attempted_at) \
             VALUES (saas.current_tenant_id(), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(Uuid::now_v7())
        .bind(d.endpoint_id)
        .bind(&d.message_id)
        .bind(&d.event_type)
        .bind(attempt)
        .bind(status.map(i32::from))
        .bind(latency)
        .bind(response.as_deref().map(|r| truncate(r, RESPONSE_LOG)))
        .bind(error.as_deref().map(|r| truncate(r, 2000)))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let outcome = match status {
            Some(s) if (200..300).contains(&s) => {
                sqlx::query("UPDATE saas.webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL")
                    .bind(d.endpoint_id)
                    .execute(&mut *tx)
                    .await?;
                Attempt::Delivered { status: s }
            }
            Some(410) => self.disable(&mut tx, d.endpoint_id, &url, "gone").await?,
            _ if forbidden => self.disable(&mut tx, d.endpoint_id, &url, "forbidden-address").await?,
            _ => {
                let since: DateTime<Utc> = sqlx::query_scalar(
                    "UPDATE saas.webhook_endpoints SET failing_since = coalesce(failing_since, $2) WHERE id = $1 RETURNING failing_since",
                )
                .bind(d.endpoint_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                if now - since >= DISABLE_AFTER {
                    self.disable(&mut tx, d.endpoint_id, &url, "failing").await?
                } else {
                    let scheduled = SCHEDULE
                        .get(usize::try_from(attempt - 1).unwrap_or(0))
                        .copied()
                        .unwrap_or(SCHEDULE[6]);
                    Attempt::Retry {
                        after: retry_after.unwrap_or(scheduled),
                        reason: match (status, error) {
                            (Some(s), _) => format!("HTTP {s}"),
                            (None, Some(e)) => e,
                            (None, None) => "no response".into(),
                        },
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn disable(
        &self,
        tx: &mut PgConnection,
        id: EndpointId,
        url: &str,
        reason: &str,
    ) -> Result<Attempt, WebhookError> {
        sqlx::query("UPDATE saas.webhook_endpoints SET enabled = false, disabled_reason = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        publish(
            &mut *tx,
            &EndpointDisabled {
                endpoint_id: id,
                url: url.to_owned(),
                reason: reason.to_owned(),
            },
        )
        .await?;
        tracing::warn!(endpoint = %id, reason, "webhook endpoint disabled");
        Ok(Attempt::Disabled {
            reason: reason.to_owned(),
        })
    }

    /// The delivery handler to register on a worker serving [`QUEUE`].
    pub fn handler(&self, app: PgPool) -> DeliverHandler {
        DeliverHandler {
            webhooks: self.clone(),
            app,
        }
    }
}

/// Runs delivery jobs: see [`Webhooks::handler`].
#[derive(Debug, Clone)]
pub struct DeliverHandler {
    webhooks: Webhooks,
    app: PgPool,
}

impl Handler<Deliver> for DeliverHandler {
    async fn handle(&self, ctx: JobContext, d: Deliver) -> Result<(), JobError> {
        let tenant = ctx
            .tenant()
            .ok_or_else(|| JobError::fatal("webhook deliveries belong to a tenant"))?;
        match self
            .webhooks
            .attempt(&self.app, tenant, &d, ctx.attempt())
            .await
            .map_err(JobError::retry)?
        {
            Attempt::Delivered { .. } | Attempt::Disabled { .. } | Attempt::Skipped => Ok(()),
            Attempt::Retry { reason, .. } if ctx.is_last_attempt() => Err(JobError::fatal(format!(
                "gave up after {} attempts: {reason}",
                ctx.attempt()
            ))),
            Attempt::Retry { after, reason } => Err(JobError::retry_after(reason, after)),
        }
    }
}

/// Queues `data` as an `event_type` webhook to every enabled endpoint of `tx`'s tenant
/// that takes that type, in the caller's transaction. Returns the message id (`webhook-id`)
/// and how many deliveries were queued.
pub async fn send(tx: &mut PgConnection, event_type: &str, data: &Value) -> Result<(String, usize), WebhookError> {
    let message_id = format!("msg_{}", Uuid::now_v7().simple());
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string();
    let endpoints: Vec<EndpointId> = sqlx::query_scalar(
        "SELECT id FROM saas.webhook_endpoints WHERE enabled AND (cardinality(event_types) = 0 OR $1 = ANY(event_types))",
    )
    .bind(event_type)
    .fetch_all(&mut *tx)
    .await?;
    for endpoint_id in &endpoints {
        let d = Deliver {
            endpoint_id: *endpoint_id,
            message_id: message_id.clone(),
            event_type: event_type.to_owned(),
            body: body.clone(),
        };
        publish_with(&mut *tx, &d, &Publish::new().max_attempts(MAX_ATTEMPTS)).await?;
    }
    Ok((message_id, endpoints.len()))
}

fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let cap = Duration::from_secs(24 * 3600);
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs).min(cap));
    }
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok().map(|d| d.min(cap))
}

async fn read_capped(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn is_ssrf(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<ssrf::SsrfError>().is_some() {
            return true;
        }
        src = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schedule_and_retry_after() {
        let secs: Vec<u64> = SCHEDULE.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 300, 1800, 7200, 18000, 36000, 36000]);
        assert_eq!(MAX_ATTEMPTS, 8);
        let now = Utc::now();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("999999", now), Some(Duration::from_secs(86400)));
        let later = (now + chrono::Duration::seconds(90)).to_rfc2822();
        let d = parse_retry_after(&later, now).unwrap();
        assert!((89..=90).contains(&d.as_secs()), "{d:?}");
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(truncate("héllo", 2), "h");
    }
}
