//! Bus adapters against the local Redis and NATS JetStream servers.

use std::time::Duration;

use saas_core::TenantId;
use saas_events::bus::jetstream::{JetStream, JetStreamConsumer};
use saas_events::bus::redis_streams::{RedisConsumer, RedisStream};
use saas_events::bus::{Bus, Envelope, Relay};
use saas_events::{Jobs, Publish, Worker, publish_batch};
use saas_tenancy::TenantTx;

use crate::{Ping, db, platform, until};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

#[tokio::test]
async fn outbox_events_reach_redis_streams_and_a_dead_consumers_messages_are_claimed() {
    let db = db().await;
    let client = redis::Client::open(redis_url()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let stream = format!("saas-events-test-{}", uuid::Uuid::now_v7().simple());
    let t = TenantId::new();
    let mut tx = TenantTx::begin(db.app(), t).await.unwrap();
    let ids = publish_batch(
        &mut tx,
        &[1, 2, 3].map(|n| Ping { n, key: String::new() }),
        &Publish::new(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The relay forwards each outbox event once the transaction committed.
    let p = platform(&db, 4).await;
    let worker = Worker::builder(p.clone())
        .poll_interval(Duration::from_millis(50))
        .handle::<Ping, _>(Relay::new(RedisStream::new(conn.clone(), &stream, 10_000)))
        .start()
        .await
        .unwrap();
    let jobs = Jobs::new(p);
    assert!(until(Duration::from_secs(10), async || jobs.depth().await.unwrap().is_empty()).await);
    worker.shutdown(Duration::from_secs(1)).await;

    let a = RedisConsumer::new(conn.clone(), &stream, "billing", "a").await.unwrap();
    let got = a.read(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.len(), 3);
    let mut got_ids: Vec<String> = got.iter().map(|d| d.envelope.id.clone()).collect();
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    got_ids.sort();
    want.sort();
    assert_eq!(got_ids, want, "the envelope id is the outbox job id");
    assert!(
        got.iter()
            .all(|d| d.envelope.tenant == Some(t) && d.envelope.kind == "test.ping")
    );
    assert_eq!(got[0].envelope.decode::<Ping>().unwrap().unwrap().n, 1);
    // Consumer a acknowledges two and "dies" holding the third.
    a.ack(&[got[0].entry.clone(), got[1].entry.clone()]).await.unwrap();
    assert_eq!(a.pending().await.unwrap(), 1);
    let b = RedisConsumer::new(conn.clone(), &stream, "billing", "b").await.unwrap();
    assert!(
        b.claim_stale(Duration::from_secs(60), 10).await.unwrap().is_empty(),
        "not stale yet"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rescued = b.claim_stale(Duration::from_millis(100), 10).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].entry, got[2].entry);
    b.ack(&[rescued[0].entry.clone()]).await.unwrap();
    assert_eq!(b.pending().await.unwrap(), 0);
    // A second group sees everything again, independently.
    let other = RedisConsumer::new(conn.clone(), &stream, "analytics", "x")
        .await
        .unwrap();
    assert_eq!(other.read(10, Duration::from_millis(200)).await.unwrap().len(), 3);
    let mut c = conn.clone();
    let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut c).await.unwrap();
}

#[tokio::test]
async fn jetstream_drops_duplicate_publishes_and_redelivers_unacknowledged_messages() {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let ctx = async_nats::jetstream::new(client);
    let name = format!("SAAS_EVENTS_TEST_{}", uuid::Uuid::now_v7().simple());
    let subject = format!("saas.test.{}", uuid::Uuid::now_v7().simple());
    let mut stream = JetStream::ensure_stream(&ctx, &name, vec![subject.clone()], Duration::from_secs(120))
        .await
        .unwrap();
    let bus = JetStream::new(ctx.clone(), subject);
    let e = Envelope {
        id: saas_events::JobId::new().to_string(),
        kind: "test.ping".into(),
        tenant: Some(TenantId::new()),
        payload: serde_json::json!({"n": 7, "key": ""}),
        published_at: chrono::Utc::now(),
    };
    // At-least-once relays publish twice after a crash: the server keeps one.
    bus.publish(&e).await.unwrap();
    bus.publish(&e).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    let consumer = JetStreamConsumer::new(&stream, "worker", Duration::from_secs(1))
        .await
        .unwrap();
    let first = consumer.fetch(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].envelope, e);
    // Not acknowledged (the consumer died): it comes back after ack_wait.
    drop(first);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = consumer.fetch(10, Duration::from_millis(1000)).await.unwrap();
    assert_eq!(again.len(), 1);
    again[0].ack().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(consumer.fetch(10, Duration::from_millis(300)).await.unwrap().is_empty());
    ctx.delete_stream(&name).await.unwrap();
}
