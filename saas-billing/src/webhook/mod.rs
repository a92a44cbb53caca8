//! The Stripe webhook endpoint: verify, store, enqueue, answer.
//!
//! A delivery is checked against the endpoint's signing secrets before anything else is
//! read; a bad one gets a 400 problem and leaves no trace but a log line without
//! secrets. A good one is stored in `saas.billing_inbox` under its event id, and the
//! inbox's trigger publishes its processing job through saas-events
//! (`saas.publish_job`) **in the same statement**, so an event is either stored and
//! queued or neither (Stripe then retries) — in one round trip. A repeated event id is
//! a no-op that still answers 200, and so is an event type nobody handles: Stripe only
//! needs to know the event arrived.

mod inbox;
mod retention;
mod signature;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use saas_core::clock::{Clock, SystemClock};
use saas_core::{IntoProblem, Problem};
use saas_events::Event;
use saas_tenancy::PlatformPool;
use serde::{Deserialize, Serialize};

pub use retention::{DEFAULT_RETENTION_DAYS, PruneInbox, prune_inbox, schedule_pruning};
pub use signature::{HEADER, SecretError, SignatureError, TOLERANCE_SECS, WebhookSecrets, sign};

/// The largest delivery accepted by default (Stripe's events are a few kilobytes; lists
/// inside them are truncated).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// The job that processes a stored event (published in the transaction that stores it).
///
/// It is a platform job (no tenant): a handler must ignore one that carries a tenant,
/// since the application role may publish any event kind for its own tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeEventReceived {
    /// The event's id (`evt_…`), the inbox's key.
    pub event_id: String,
}

impl Event for StripeEventReceived {
    const KIND: &'static str = "billing.stripe_event";
}

/// What became of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored and queued for processing.
    New,
    /// Already stored (Stripe delivers at least once): nothing done.
    Duplicate,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// Only `POST` is accepted.
    #[error("webhooks are delivered with POST")]
    Method,
    /// The body is larger than the endpoint accepts.
    #[error("the delivery is larger than {0} bytes")]
    TooLarge(usize),
    /// The signature does not verify.
    #[error("the delivery's signature does not verify: {0}")]
    Signature(#[from] SignatureError),
    /// Signed, but not a Stripe event (not JSON, or no id, type or creation time).
    #[error("the delivery is not a Stripe event: {0}")]
    Payload(String),
    /// Storing or queueing failed; nothing was stored and Stripe will retry.
    #[error("the event could not be stored: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl IntoProblem for WebhookError {
    fn to_problem(&self) -> Problem {
        match self {
            WebhookError::Method => Problem::new(StatusCode::METHOD_NOT_ALLOWED)
                .with_type("method-not-allowed")
                .with_detail("Webhooks are delivered with POST.")
                .with_header(http::header::ALLOW, http::HeaderValue::from_static("POST")),
            WebhookError::TooLarge(max) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
                .with_type("webhook-too-large")
                .with_detail(format!("The delivery is larger than {max} bytes.")),
            // One answer for every signature failure: the reason goes to the log only.
            WebhookError::Signature(_) => Problem::bad_request("The Stripe-Signature header does not verify.")
                .with_type("webhook-signature-invalid")
                .with_internal(self),
            WebhookError::Payload(_) => Problem::bad_request("The delivery is not a Stripe event.")
                .with_type("webhook-payload-invalid")
                .with_internal(self),
            WebhookError::Store(_) => Problem::unavailable()
                .with_type("webhook-not-stored")
                .with_detail("The event could not be stored; deliver it again.")
                .with_internal(self),
        }
    }
}

/// The fields of an event the inbox keeps beside the raw body.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    created: i64,
    #[serde(default)]
    livemode: bool,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    object: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    id: Option<String>,
}

struct Config {
    inbox: inbox::Inbox,
    secrets: WebhookSecrets,
    clock: Arc<dyn Clock>,
    max_body: usize,
}

/// The webhook endpoint, as a tower service for `POST` deliveries (with axum:
/// `.route("/webhooks/stripe", post_service(endpoint))`). Cheap to clone.
#[derive(Clone)]
pub struct WebhookEndpoint {
    config: Arc<Config>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("secrets", &self.config.secrets)
            .field("max_body", &self.config.max_body)
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// An endpoint storing into `pool` (the platform role: the inbox belongs to no
    /// tenant until its event is processed) and verifying with `secrets`.
    pub fn new(pool: PlatformPool, secrets: WebhookSecrets) -> Self {
        Self {
            config: Arc::new(Config {
                inbox: inbox::Inbox::new(pool.as_pool().clone()),
                secrets,
                clock: Arc::new(SystemClock),
                max_body: DEFAULT_MAX_BODY,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::try_unwrap(self.config).unwrap_or_else(|shared| Config {
            inbox: inbox::Inbox::new(shared.inbox.pool().clone()),
            secrets: shared.secrets.clone(),
            clock: Arc::clone(&shared.clock),
            max_body: shared.max_body,
        });
        f(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// The clock the signed timestamp is checked against.
    pub fn clock(self, clock: impl Clock) -> Self {
        self.map(|c| c.clock = Arc::new(clock))
    }

    /// The largest body accepted (default [`DEFAULT_MAX_BODY`]); larger ones get 413.
    pub fn max_body(self, bytes: usize) -> Self {
        self.map(|c| c.max_body = bytes)
    }

    /// Verifies, stores and enqueues one delivery (what the service does with a `POST`).
    pub async fn ingest(&self, headers: &HeaderMap, body: &[u8]) -> Result<Ingested, WebhookError> {
        let c = &self.config;
        if body.len() > c.max_body {
            return Err(WebhookError::TooLarge(c.max_body));
        }
        let header = headers.get(HEADER).map(http::HeaderValue::as_bytes);
        c.secrets.verify(header, body, c.clock.now().timestamp())?;
        let raw = std::str::from_utf8(body).map_err(|_| WebhookError::Payload("the body is not UTF-8".into()))?;
        let event: Envelope<'_> = serde_json::from_str(raw).map_err(|e| WebhookError::Payload(e.to_string()))?;
        if event.id.is_empty() || event.id.len() > 255 || event.kind.is_empty() || event.kind.len() > 255 {
            return Err(WebhookError::Payload(
                "the event's id or type is empty or too long".into(),
            ));
        }
        let created = DateTime::<Utc>::from_timestamp(event.created, 0)
            .ok_or_else(|| WebhookError::Payload("the event's creation time is out of range".into()))?;
        let object_id = event.data.and_then(|d| d.object).and_then(|o| o.id);
        // The inbox row and (its trigger, through `saas.publish_job`) the processing job
        // commit together or not at all, in a batch with the deliveries arriving at the
        // same time. Statements on the platform role touching no tenant's rows, so no
        // `SystemTx` is needed.
        let stored = inbox::Stored {
            event_id: event.id.clone().into_owned(),
            kind: event.kind.clone().into_owned(),
            livemode: event.livemode,
            created,
            object_id,
            raw: raw.to_owned(),
        };
        let ingested = c
            .inbox
            .store(stored)
            .await
            .map_err(|e| WebhookError::Store(Box::new(ArcError(e))))?;
        if ingested == Ingested::Duplicate {
            tracing::debug!(event_id = %event.id, "duplicate Stripe event ignored");
            return Ok(Ingested::Duplicate);
        }
        tracing::info!(event_id = %event.id, event_type = %event.kind, "Stripe event stored");
        Ok(Ingested::New)
    }

    async fn respond<B>(self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let result = async {
            if req.method() != Method::POST {
                return Err(WebhookError::Method);
            }
            let (parts, body) = req.into_parts();
            let max = self.config.max_body;
            let bytes = Limited::new(body, max)
                .collect()
                .await
                .map_err(|_| WebhookError::TooLarge(max))?
                .to_bytes();
            self.ingest(&parts.headers, &bytes).await
        }
        .await;
        match result {
            Ok(ingested) => {
                let body = serde_json::json!({"received": true, "duplicate": ingested == Ingested::Duplicate});
                let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                res
            }
            Err(e) => e.to_problem().into_http(),
        }
    }
}

/// A database error shared by the deliveries of a batch.
#[derive(Debug)]
struct ArcError(Arc<sqlx::Error>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl<B> tower::Service<Request<B>> for WebhookEndpoint
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = saas_core::service::BoxResponseFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.respond(req).await) })
    }
}
