//! Carrying events to other services: an [`Envelope`], the [`Bus`] trait, a [`Relay`]
//! handler that forwards outbox events to a bus (so publishing stays transactional and
//! the bus gets each event at least once), and adapters for Redis Streams (feature
//! `redis`) and NATS JetStream (feature `nats`).
//!
//! Delivery is at least once end to end; the envelope's `id` (the outbox job id) is the
//! idempotency key. JetStream drops a duplicate publish itself (`Nats-Msg-Id`); Redis
//! Streams consumers deduplicate on `id`.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::job::{Handler, JobContext, JobError};

/// An event between services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Idempotency key: the outbox job's id.
    pub id: String,
    /// The event kind.
    pub kind: String,
    /// The tenant, for tenant events.
    pub tenant: Option<TenantId>,
    /// The event.
    pub payload: Value,
    /// When it was published into the outbox.
    pub published_at: DateTime<Utc>,
}

impl Envelope {
    /// The payload as `E`, when the kind matches.
    pub fn decode<E: Event>(&self) -> Option<Result<E, serde_json::Error>> {
        (self.kind == E::KIND).then(|| serde_json::from_value(self.payload.clone()))
    }
}

/// A bus failure.
#[derive(Debug, thiserror::Error)]
#[error("bus: {0}")]
pub struct BusError(pub String);

/// Somewhere envelopes can be published.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one envelope; returns once the bus has it.
    fn publish(&self, envelope: &Envelope) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Forwards outbox events of a kind to a bus: register it as that kind's handler.
///
/// ```no_run
/// use saas_events::bus::{Bus, BusError, Envelope, Relay};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct InvoicePaid { id: String }
/// # impl saas_events::Event for InvoicePaid { const KIND: &'static str = "invoice.paid"; }
/// struct Stdout;
/// impl Bus for Stdout {
///     async fn publish(&self, e: &Envelope) -> Result<(), BusError> {
///         println!("{} {}", e.kind, e.id);
///         Ok(())
///     }
/// }
/// # async fn demo(platform: saas_tenancy::PlatformPool) {
/// let workers = saas_events::Worker::builder(platform)
///     .handle::<InvoicePaid, _>(Relay::new(Stdout))   // or RedisStream / JetStream
///     .start()
///     .await
///     .unwrap();
/// # }
/// ```
pub struct Relay<B> {
    bus: Arc<B>,
}

impl<B> Relay<B> {
    /// Forwards to `bus`.
    pub fn new(bus: B) -> Self {
        Relay { bus: Arc::new(bus) }
    }
}

impl<B> Clone for Relay<B> {
    fn clone(&self) -> Self {
        Relay {
            bus: Arc::clone(&self.bus),
        }
    }
}

impl<E: Event, B: Bus> Handler<E> for Relay<B> {
    async fn handle(&self, ctx: JobContext, event: E) -> Result<(), JobError> {
        let envelope = Envelope {
            id: ctx.id().to_string(),
            kind: E::KIND.to_owned(),
            tenant: ctx.tenant(),
            payload: serde_json::to_value(&event).map_err(JobError::fatal)?,
            published_at: ctx.published_at(),
        };
        self.bus.publish(&envelope).await.map_err(JobError::retry)
    }
}

#[cfg(feature = "redis")]
pub mod redis_streams {
    //! Redis Streams: `XADD` to publish, consumer groups with `XREADGROUP`, `XACK`, and
    //! `XAUTOCLAIM` to take over messages a dead consumer left pending.

    use std::time::Duration;

    use redis::aio::ConnectionManager;
    use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

    use super::{Bus, BusError, Envelope};

    fn err(e: impl std::fmt::Display) -> BusError {
        BusError(e.to_string())
    }

    /// A stream to publish to.
    #[derive(Clone)]
    pub struct RedisStream {
        conn: ConnectionManager,
        stream: String,
        max_len: usize,
    }

    impl std::fmt::Debug for RedisStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisStream")
                .field("stream", &self.stream)
                .finish_non_exhaustive()
        }
    }

    impl RedisStream {
        /// Publishes to `stream`, trimming it to about `max_len` entries.
        pub fn new(conn: ConnectionManager, stream: impl Into<String>, max_len: usize) -> Self {
            RedisStream {
                conn,
                stream: stream.into(),
                max_len,
            }
        }
    }

    impl Bus for RedisStream {
        async fn publish(&self, e: &Envelope) -> Result<(), BusError> {
            let body = serde_json::to_string(e).map_err(err)?;
            let mut conn = self.conn.clone();
            redis::cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("id")
                .arg(&e.id)
                .arg("envelope")
                .arg(body)
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(err)
        }
    }

    /// A message read from the stream.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Delivery {
        /// The stream entry id (to acknowledge).
        pub entry: String,
        /// The event.
        pub envelope: Envelope,
    }

    /// One consumer of a consumer group.
    #[derive(Clone)]
    pub struct RedisConsumer {
        conn: ConnectionManager,
        stream: String,
        group: String,
        consumer: String,
    }

    impl std::fmt::Debug for RedisConsumer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisConsumer")
                .field("stream", &self.stream)
                .field("group", &self.group)
                .field("consumer", &self.consumer)
                .finish()
        }
    }

    fn parse(ids: Vec<StreamId>) -> Result<Vec<Delivery>, BusError> {
        ids.into_iter()
            .map(|s| {
                let raw: String = s
                    .get("envelope")
                    .ok_or_else(|| BusError(format!("entry {} has no envelope", s.id)))?;
                Ok(Delivery {
                    envelope: serde_json::from_str(&raw).map_err(err)?,
                    entry: s.id,
                })
            })
            .collect()
    }

    impl RedisConsumer {
        /// Consumer `consumer` of `group` on `stream`; creates the group (and stream) if needed.
        pub async fn new(conn: ConnectionManager, stream: &str, group: &str, consumer: &str) -> Result<Self, BusError> {
            let mut c = conn.clone();
            let created: Result<String, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(err(e));
            }
            Ok(RedisConsumer {
                conn,
                stream: stream.into(),
                group: group.into(),
                consumer: consumer.into(),
            })
        }

        /// New messages for this consumer (up to `count`, waiting up to `block`).
        pub async fn read(&self, count: usize, block: Duration) -> Result<Vec<Delivery>, BusError> {
            let mut c = self.conn.clone();
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut c)
                .await
                .map_err(err)?;
            parse(
                reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
            )
        }

        /// Acknowledges processed entries.
        pub async fn ack(&self, entries: &[String]) -> Result<(), BusError> {
            if entries.is_empty() {
                return Ok(());
            }
            let mut c = self.conn.clone();
            redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(entries)
                .query_async::<i64>(&mut c)
                .await
                .map(drop)
                .map_err(err)
        }

        /// Takes over up to `count` entries pending longer than `min_idle` with any
        /// consumer of the group (a consumer that died before acknowledging).
        pub async fn claim_stale(&self, min_idle: Duration, count: usize) -> Result<Vec<Delivery>, BusError> {
            let mut c = self.conn.clone();
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg("0-0")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            parse(reply.claimed)
        }

        /// Entries delivered to the group and not yet acknowledged.
        pub async fn pending(&self) -> Result<u64, BusError> {
            let mut c = self.conn.clone();
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(&self.group)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            match v {
                redis::Value::Array(items) => match items.first() {
                    Some(redis::Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
                    _ => Ok(0),
                },
                _ => Ok(0),
            }
        }
    }
}

#[cfg(feature = "nats")]
pub mod jetstream {
    //! NATS JetStream: publishes with `Nats-Msg-Id` (the server drops duplicates within
    //! the stream's window) and waits for the server's ack; durable pull consumers with
    //! explicit acks and redelivery after `ack_wait`.

    use std::time::Duration;

    use async_nats::jetstream::{self, consumer, stream};
    use futures_util::StreamExt;

    use super::{Bus, BusError, Envelope};

    fn err(e: impl std::fmt::Display) -> BusError {
        BusError(e.to_string())
    }

    /// A JetStream subject to publish to.
    #[derive(Clone, Debug)]
    pub struct JetStream {
        ctx: jetstream::Context,
        subject: String,
    }

    impl JetStream {
        /// Publishes to `subject` through `ctx`.
        pub fn new(ctx: jetstream::Context, subject: impl Into<String>) -> Self {
            JetStream {
                ctx,
                subject: subject.into(),
            }
        }

        /// Creates (or finds) stream `name` over `subjects`, deduplicating within `window`.
        pub async fn ensure_stream(
            ctx: &jetstream::Context,
            name: &str,
            subjects: Vec<String>,
            window: Duration,
        ) -> Result<stream::Stream, BusError> {
            ctx.get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects,
                duplicate_window: window,
                ..stream::Config::default()
            })
            .await
            .map_err(err)
        }
    }

    impl Bus for JetStream {
        async fn publish(&self, e: &Envelope) -> Result<(), BusError> {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            let body = serde_json::to_vec(e).map_err(err)?;
            let ack = self
                .ctx
                .publish_with_headers(self.subject.clone(), headers, body.into())
                .await
                .map_err(err)?;
            ack.await.map(drop).map_err(err)
        }
    }

    /// A message read from a durable consumer.
    pub struct Delivery {
        /// The event.
        pub envelope: Envelope,
        message: jetstream::Message,
    }

    impl std::fmt::Debug for Delivery {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Delivery")
                .field("envelope", &self.envelope)
                .finish_non_exhaustive()
        }
    }

    impl Delivery {
        /// Acknowledges it.
        pub async fn ack(&self) -> Result<(), BusError> {
            self.message.ack().await.map_err(|e| BusError(e.to_string()))
        }
    }

    /// A durable pull consumer.
    #[derive(Debug)]
    pub struct JetStreamConsumer {
        consumer: consumer::Consumer<consumer::pull::Config>,
    }

    impl JetStreamConsumer {
        /// Durable consumer `durable` on `stream`; unacknowledged messages come back after `ack_wait`.
        pub async fn new(stream: &stream::Stream, durable: &str, ack_wait: Duration) -> Result<Self, BusError> {
            let consumer = stream
                .get_or_create_consumer(
                    durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.to_owned()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait,
                        ..consumer::pull::Config::default()
                    },
                )
                .await
                .map_err(err)?;
            Ok(JetStreamConsumer { consumer })
        }

        /// Up to `max` messages, waiting up to `expires`.
        pub async fn fetch(&self, max: usize, expires: Duration) -> Result<Vec<Delivery>, BusError> {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(max)
                .expires(expires)
                .messages()
                .await
                .map_err(err)?;
            let mut out = Vec::new();
            while let Some(m) = batch.next().await {
                let message = m.map_err(err)?;
                let envelope: Envelope = serde_json::from_slice(&message.payload).map_err(err)?;
                out.push(Delivery { envelope, message });
            }
            Ok(out)
        }
    }
}
