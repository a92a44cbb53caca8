//! Webhook ingestion over HTTP: saas-billing's endpoint (verify the signature, store the
//! event in the inbox, publish its processing job, one transaction) against a bare axum
//! handler that only inserts the same row into a twin table, both served by one axum
//! server on loopback and driven by the same concurrent senders (keep-alive HTTP/1.1),
//! each side with a pool of the same size on the local PostgreSQL.
//!
//! ```text
//! cargo bench -p saas-billing --bench ingest
//! ```
//!
//! The two sides alternate in rounds (ours, bare, bare, ours, …) so both see the same
//! machine, and the line printed last is
//! `saas_billing_ingest_per_s=<x> bare_insert_per_s=<y> ratio=<x/y>` (medians over the
//! rounds), after one with the range of the per-round ratios.
//! `EVENTS=<n>` per round (default 8,000), `ROUNDS=<n>` (default 8), `SENDERS=<n>`
//! (default 32).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::routing::{post, post_service};
use bytes::Bytes;
use saas_billing::webhook::{WebhookEndpoint, WebhookSecrets, sign};
use saas_core::testkit::TestDb;
use saas_tenancy::PlatformPool;
use sqlx::postgres::PgPoolOptions;

const SECRET: &str = "whsec_bench_secret_0123456789";
const POOL: u32 = 8;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A realistic `customer.subscription.updated` delivery (about 800 bytes).
fn event(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","api_version":"2025-10-29.clover","created":1780315200,"livemode":false,"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"customer.subscription.updated","data":{{"object":{{"id":"sub_1QxYz2AbCdEfGh","object":"subscription","customer":"cus_QxYz2AbCdEf","status":"active","cancel_at_period_end":false,"current_period_end":1782907200,"items":{{"object":"list","data":[{{"id":"si_1","price":{{"id":"price_1","lookup_key":"pro_monthly"}},"quantity":1}}]}}}},"previous_attributes":{{"status":"trialing"}}}}}}"#
    )
}

/// Sends `events` deliveries from `senders` concurrent tasks to `url`; returns events
/// per second. Every delivery must be answered 200.
async fn drive(client: &reqwest::Client, url: &str, prefix: &str, events: usize, senders: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (client, url, next, prefix) = (client.clone(), url.to_owned(), Arc::clone(&next), prefix.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        break;
                    }
                    let body = event(&format!("evt_{prefix}_{i}"));
                    let now = chrono::Utc::now().timestamp();
                    let res = client
                        .post(&url)
                        .header("stripe-signature", sign(SECRET, now, body.as_bytes()))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = res.status();
                    let text = res.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "{text}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs benches without `--bench`: keep that to a smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (events, rounds, senders) = if quick {
        (200, 2, 8)
    } else {
        (env("EVENTS", 8_000), env("ROUNDS", 8), env("SENDERS", 32))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = TestDb::new(&[
            &saas_core::MIGRATOR,
            &saas_tenancy::MIGRATOR,
            &saas_events::MIGRATOR,
            &saas_billing::MIGRATOR,
        ])
        .await
        .unwrap();
        // The bare side's table: the inbox's twin (same columns, key and indexes).
        sqlx::raw_sql(
            "CREATE TABLE saas.bare_inbox (LIKE saas.billing_inbox INCLUDING ALL); \
             GRANT SELECT, INSERT ON saas.bare_inbox TO saas_platform;",
        )
        .execute(db.owner())
        .await
        .unwrap();
        let pool = || async {
            PgPoolOptions::new()
                .max_connections(POOL)
                .test_before_acquire(false)
                .connect_with(db.platform_options())
                .await
                .unwrap()
        };
        let ours = WebhookEndpoint::new(PlatformPool::new(pool().await), WebhookSecrets::new(SECRET).unwrap());
        let bare_pool = pool().await;
        let app = Router::new().route("/webhooks/stripe", post_service(ours)).route(
            "/bare",
            post(move |body: Bytes| {
                let pool = bare_pool.clone();
                async move {
                    // Only the insert: no signature, no parsing beyond the id, no job.
                    let raw = String::from_utf8(body.to_vec()).unwrap();
                    let id = raw.split('"').nth(3).unwrap().to_owned();
                    sqlx::query(
                        "INSERT INTO saas.bare_inbox (event_id, type, livemode, created, object_id, raw) \
                         VALUES ($1, 'customer.subscription.updated', false, now(), 'sub_1QxYz2AbCdEfGh', $2) \
                         ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(raw)
                    .execute(&pool)
                    .await
                    .unwrap();
                    axum::Json(serde_json::json!({"received": true}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::builder().pool_max_idle_per_host(senders).build().unwrap();
        let (ours_url, bare_url) = (format!("http://{addr}/webhooks/stripe"), format!("http://{addr}/bare"));
        // Warm-up: connections, prepared statements, the server's buffers.
        drive(&client, &ours_url, "warm", events / 4, senders).await;
        drive(&client, &bare_url, "warm", events / 4, senders).await;
        let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let tag = format!("r{round}");
            let (x, y) = if round % 2 == 0 {
                let x = drive(&client, &ours_url, &tag, events, senders).await;
                (x, drive(&client, &bare_url, &tag, events, senders).await)
            } else {
                let y = drive(&client, &bare_url, &tag, events, senders).await;
                (drive(&client, &ours_url, &tag, events, senders).await, y)
            };
            println!("round {round}: saas-billing {x:.0}/s, bare insert {y:.0}/s, ratio {:.3}", x / y);
            a.push(x);
            b.push(y);
            ratios.push(x / y);
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.billing_inbox")
            .fetch_one(db.platform())
            .await
            .unwrap();
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM saas.jobs WHERE kind = 'billing.stripe_event'")
            .fetch_one(db.platform())
            .await
            .unwrap();
        let expected = (events / 4 + events * rounds) as i64;
        assert_eq!((stored, queued), (expected, expected), "every event stored and queued once");
        let (x, y) = (median(&mut a), median(&mut b));
        ratios.sort_by(f64::total_cmp);
        println!(
            "saas_billing_ingest_ratio_range min={:.3} max={:.3} over {rounds} rounds of {events} events, {senders} senders",
            ratios[0],
            ratios[ratios.len() - 1]
        );
        println!("saas_billing_ingest_per_s={x:.0} bare_insert_per_s={y:.0} ratio={:.3}", x / y);
    });
}
