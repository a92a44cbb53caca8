//! The inbox writer: verified events are stored in batches, one statement and one commit
//! for every delivery that arrived while the previous batch was being written.
//!
//! Stripe sends bursts (a renewal run, a catalog change); storing each event in its own
//! transaction makes every delivery wait for its own commit flush and its own wake-up
//! notification, which PostgreSQL serialises. Here each of a few writer tasks takes
//! whatever is waiting (at least one, at most [`MAX_BATCH`]), stores it with one
//! `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` — the inbox trigger queues each
//! new event's job in the same statement — and answers every delivery only after the
//! commit. Nothing waits for a batch to fill: an idle endpoint writes each event at once.
//! If a batch fails, its events are retried one by one, so one event the database
//! refuses never takes others down with it.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::Ingested;

/// The most events stored in one statement.
pub(crate) const MAX_BATCH: usize = 128;
/// Writer tasks (each one statement in flight at a time).
const WRITERS: usize = 2;
/// How long a delivery waits for its batch before it is answered 503.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// One verified event, as stored.
pub(crate) struct Stored {
    pub(crate) event_id: String,
    pub(crate) kind: String,
    pub(crate) livemode: bool,
    pub(crate) created: DateTime<Utc>,
    pub(crate) object_id: Option<String>,
    pub(crate) raw: String,
}

type Reply = oneshot::Sender<Result<Ingested, Arc<sqlx::Error>>>;

/// Hands events to the writer tasks, which start on first use and end when the last
/// handle is dropped.
pub(crate) struct Inbox {
    tx: mpsc::Sender<(Stored, Reply)>,
    rx: Arc<Mutex<mpsc::Receiver<(Stored, Reply)>>>,
    pool: PgPool,
    started: OnceLock<()>,
}

impl Inbox {
    pub(crate) fn new(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * WRITERS * 4);
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            pool,
            started: OnceLock::new(),
        }
    }

    /// The pool the writers store into.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `event` (queued with the others waiting) and says whether it was new.
    pub(crate) async fn store(&self, event: Stored) -> Result<Ingested, Arc<sqlx::Error>> {
        self.started.get_or_init(|| {
            for _ in 0..WRITERS {
                tokio::spawn(write_loop(Arc::clone(&self.rx), self.pool.clone()));
            }
        });
        let (reply, answer) = oneshot::channel();
        if self.tx.send((event, reply)).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        // A writer that vanished (its runtime shut down) must not hold a delivery forever:
        // after the timeout Stripe is told to retry.
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(Arc::new(sqlx::Error::WorkerCrashed)),
        }
    }
}

async fn write_loop(rx: Arc<Mutex<mpsc::Receiver<(Stored, Reply)>>>, pool: PgPool) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            // Ends when every sender (the endpoint's clones) is gone.
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        write(&pool, batch).await;
    }
}

async fn write(pool: &PgPool, batch: Vec<(Stored, Reply)>) {
    match insert(pool, batch.iter().map(|(s, _)| s)).await {
        Ok(inserted) => answer(batch, &inserted),
        Err(e) if batch.len() == 1 => {
            let e = Arc::new(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(Arc::clone(&e)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, events = batch.len(), "storing a batch of Stripe events failed; storing them one by one");
            for (stored, reply) in batch {
                let one = match insert(pool, std::iter::once(&stored)).await {
                    Ok(inserted) => Ok(if inserted.contains(&stored.event_id) {
                        Ingested::New
                    } else {
                        Ingested::Duplicate
                    }),
                    Err(e) => Err(Arc::new(e)),
                };
                let _ = reply.send(one);
            }
        }
    }
}

/// Answers each delivery: new for the first occurrence of an id the statement inserted,
/// duplicate otherwise (stored before, or twice in this batch).
fn answer(batch: Vec<(Stored, Reply)>, inserted: &HashSet<String>) {
    let mut claimed = HashSet::new();
    for (stored, reply) in batch {
        let new = inserted.contains(&stored.event_id) && claimed.insert(stored.event_id);
        let _ = reply.send(Ok(if new { Ingested::New } else { Ingested::Duplicate }));
    }
}

/// One statement for all of `events`; returns the ids it inserted.
async fn insert<'a>(pool: &PgPool, events: impl Iterator<Item = &'a Stored>) -> Result<HashSet<String>, sqlx::Error> {
    let (mut ids, mut kinds, mut live, mut created, mut objects, mut raws) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in events {
        ids.push(e.event_id.as_str());
        kinds.push(e.kind.as_str());
        live.push(e.livemode);
        created.push(e.created);
        objects.push(e.object_id.as_deref());
        raws.push(e.raw.as_str());
    }
    // `ON CONFLICT DO NOTHING` also skips an id repeated within the statement.
    let rows: Vec<String> = sqlx::query_scalar(
        "INSERT INTO saas.billing_inbox (event_id, type, livemode, created, object_id, raw) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::text[], $6::text[]) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&live)
    .bind(&created)
    .bind(&objects)
    .bind(&raws)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
