//! Workers: claim batches fairly across tenants with `FOR UPDATE SKIP LOCKED`, run the
//! handlers, record outcomes in one statement per batch, retry with backoff, dead-letter,
//! rescue jobs whose worker died, run schedules, and shut down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use saas_core::TenantId;
use saas_core::health::Heartbeats;
use saas_tenancy::{PlatformPool, SystemTx};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::{JobsError, PublishError};
use crate::event::{CHANNEL, Event, Publish, Wake, publish_with};
use crate::job::{Handler, JobContext, JobError, JobId};
use saas_core::notify::Notice;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type ErasedHandler = Arc<dyn Fn(JobContext, Value) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;
type ScheduleFn =
    Arc<dyn for<'c> Fn(&'c mut PgConnection, String) -> BoxFuture<'c, Result<(), PublishError>> + Send + Sync>;

/// Exponential backoff with jitter: attempt *n* waits `base · 2^(n-1)`, capped at `max`,
/// times a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The random spread, 0 to 1.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before the attempt after `attempt` (from 1).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        let spread = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - spread + 2.0 * spread * random_unit();
        raw.mul_f64(factor)
    }
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

struct Schedule {
    name: String,
    cron: croner::Cron,
    expr: String,
    publish: ScheduleFn,
}

impl Schedule {
    /// The first tick after `now`.
    fn next_after(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, JobsError> {
        self.cron
            .find_next_occurrence(&now, false)
            .map_err(|e| JobsError::Cron {
                expr: self.expr.clone(),
                reason: e.to_string(),
            })
    }
}

/// Configures and starts workers.
///
/// ```no_run
/// # async fn demo(platform: saas_tenancy::PlatformPool, app: sqlx::PgPool) {
/// use saas_events::{Event, JobContext, JobError, Worker};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Welcome { email: String }
/// impl Event for Welcome { const KIND: &'static str = "user.welcome"; }
///
/// let workers = Worker::builder(platform)
///     .app_pool(app)
///     .handle(|ctx: JobContext, e: Welcome| async move {
///         let mut tx = ctx.tenant_tx().await?;   // scoped to the event's tenant
///         // … send, record, …
///         tx.commit().await.map_err(JobError::retry)?;
///         Ok(())
///     })
///     .start()
///     .await
///     .unwrap();
/// // on SIGTERM:
/// workers.shutdown(std::time::Duration::from_secs(30)).await;
/// # }
/// ```
pub struct WorkerBuilder {
    platform: PlatformPool,
    pool: PgPool,
    app: Option<PgPool>,
    queues: Vec<String>,
    handlers: HashMap<&'static str, ErasedHandler>,
    loops: usize,
    cfg: Config,
    heartbeats: Option<Heartbeats>,
    schedules: Vec<Schedule>,
    retention: Option<Duration>,
}

/// The settings a builder collects and the running loops read.
#[derive(Debug, Clone, Copy)]
struct Config {
    batch: usize,
    concurrency: usize,
    visibility: Duration,
    poll: Duration,
    backoff: Backoff,
    max_tenants: usize,
    keep_done: bool,
    job_timeout: Duration,
}

/// Entry point: [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Workers claiming through `platform` (the platform role: they see every tenant's jobs).
    pub fn builder(platform: PlatformPool) -> WorkerBuilder {
        WorkerBuilder {
            pool: platform.as_pool().clone(),
            platform,
            app: None,
            queues: vec!["default".into()],
            handlers: HashMap::new(),
            loops: 1,
            cfg: Config {
                batch: 200,
                concurrency: 32,
                visibility: Duration::from_secs(300),
                poll: Duration::from_secs(1),
                backoff: Backoff::default(),
                max_tenants: 64,
                keep_done: true,
                job_timeout: Duration::from_secs(300),
            },
            heartbeats: None,
            schedules: Vec::new(),
            retention: None,
        }
    }
}

impl WorkerBuilder {
    /// The application pool tenant jobs' transactions are opened on.
    pub fn app_pool(mut self, pool: PgPool) -> Self {
        self.app = Some(pool);
        self
    }

    /// The queues to serve (default `["default"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Registers the handler for `E`; only registered kinds are claimed.
    pub fn handle<E: Event, H: Handler<E>>(mut self, handler: H) -> Self {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |ctx: JobContext, payload: Value| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let event: E = serde_json::from_value(payload)
                    .map_err(|e| JobError::fatal(format!("payload does not deserialise as {}: {e}", E::KIND)))?;
                handler.handle(ctx, event).await
            })
        });
        self.handlers.insert(E::KIND, erased);
        self
    }

    /// Independent claim loops (default 1).
    pub fn loops(mut self, n: usize) -> Self {
        self.loops = n.max(1);
        self
    }

    /// Jobs claimed per statement (default 200).
    pub fn batch(mut self, n: usize) -> Self {
        self.cfg.batch = n.clamp(1, 10_000);
        self
    }

    /// Handlers running at once per loop (default 32).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.cfg.concurrency = n.max(1);
        self
    }

    /// How long a claimed job stays invisible before another worker may rescue it (default
    /// 5 min; running jobs are extended while their worker lives).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.cfg.visibility = d.max(Duration::from_secs(1));
        self
    }

    /// How long one attempt may run (default 5 min): a handler still running then is
    /// cancelled and its attempt fails (retried with backoff, then dead-lettered).
    pub fn job_timeout(mut self, d: Duration) -> Self {
        self.cfg.job_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Polling interval when no notification arrives (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.cfg.poll = d;
        self
    }

    /// Retry delays.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.cfg.backoff = b;
        self
    }

    /// Tenants served per claim (default 64): each gets an equal share of the batch.
    pub fn max_tenants_per_claim(mut self, n: usize) -> Self {
        self.cfg.max_tenants = n.clamp(1, 1000);
        self
    }

    /// Reports each loop's liveness to `heartbeats` (for readiness).
    pub fn heartbeats(mut self, heartbeats: Heartbeats) -> Self {
        self.heartbeats = Some(heartbeats);
        self
    }

    /// Prunes the record of finished jobs older than `retention` (checked every minute).
    pub fn keep_finished_for(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Deletes finished jobs instead of moving them to `saas.jobs_done` (kept for
    /// [`crate::Jobs::prune`]); a little faster, and no record of what ran.
    pub fn delete_finished(mut self) -> Self {
        self.cfg.keep_done = false;
        self
    }

    /// Publishes `make()` as a platform-level event at every tick of `cron` (UTC; five
    /// fields, or six with seconds). Exactly one process enqueues each tick.
    pub fn schedule<E: Event>(
        mut self,
        name: impl Into<String>,
        cron: &str,
        make: impl Fn() -> E + Send + Sync + 'static,
    ) -> Result<Self, JobsError> {
        let parsed = croner::Cron::from_str(cron).map_err(|e| JobsError::Cron {
            expr: cron.into(),
            reason: e.to_string(),
        })?;
        let make = Arc::new(make);
        let publish: ScheduleFn = Arc::new(move |conn: &mut PgConnection, tick: String| {
            let event = make();
            Box::pin(async move { publish_with(conn, &event, &Publish::new().unique(tick)).await.map(drop) })
        });
        self.schedules.push(Schedule {
            name: name.into(),
            cron: parsed,
            expr: cron.into(),
            publish,
        });
        Ok(self)
    }

    /// Starts the loops, the listener and the housekeeping task.
    pub async fn start(self) -> Result<WorkerHandle, JobsError> {
        let kinds: Vec<String> = self.handlers.keys().map(|k| (*k).to_owned()).collect();
        let mut instruments = HashMap::new();
        for q in &self.queues {
            for k in self.handlers.keys() {
                let q: Arc<str> = q.as_str().into();
                let wait = metrics::histogram!("saas_events_job_wait_seconds", "queue" => q.to_string());
                let run = metrics::histogram!("saas_events_job_run_seconds", "queue" => q.to_string(), "kind" => *k);
                instruments.insert((q, *k), (wait, run));
            }
        }
        let me = Uuid::now_v7();
        for s in &self.schedules {
            let next = s.next_after(Utc::now())?;
            sqlx::query(
                "INSERT INTO saas.job_schedules (name, cron, next_run_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, \
                 next_run_at = CASE WHEN saas.job_schedules.cron = excluded.cron THEN saas.job_schedules.next_run_at ELSE excluded.next_run_at END",
            )
            .bind(&s.name)
            .bind(&s.expr)
            .bind(next)
            .execute(&self.pool)
            .await?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (wake_tx, wake_rx) = watch::channel(0u64);
        // The worker's own statements (claims, completions, retries) skip the commit's
        // disk flush: a crash can forget the last moments of them, which only means those
        // jobs run again — delivery is at least once anyway. Business writes and publishes
        // keep full durability.
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(self.loops * 2 + 2).unwrap_or(u32::MAX))
            .connect_with(options)
            .await?;
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            platform: self.platform.clone(),
            app: self.app.clone(),
            kinds,
            handlers: self.handlers,
            me,
            cfg: self.cfg,
            heartbeats: self.heartbeats,
            grace_ms: AtomicU64::new(0),
            instruments,
        });
        let mut tasks = Vec::new();
        tasks.push(listen(pool, wake_tx, stop_rx.clone()));
        tasks.push(tokio::spawn(housekeeping(
            Arc::clone(&shared),
            self.schedules,
            self.retention,
            stop_rx.clone(),
        )));
        for i in 0..self.loops {
            let name = format!("saas-events-{}-{i}", &me.simple().to_string()[..8]);
            let queues: Vec<Arc<str>> = self.queues.iter().map(|q| Arc::from(q.as_str())).collect();
            let (shared, stop, wake) = (Arc::clone(&shared), stop_rx.clone(), wake_rx.clone());
            let loop_name = name.clone();
            tasks.push(tokio::spawn(supervise(name, stop_rx.clone(), move || {
                run_loop(
                    Arc::clone(&shared),
                    queues.clone(),
                    loop_name.clone(),
                    stop.clone(),
                    wake.clone(),
                )
            })));
        }
        Ok(WorkerHandle {
            shared,
            stop: stop_tx,
            tasks,
        })
    }
}

/// Running workers. Dropping it leaves them running; call [`WorkerHandle::shutdown`].
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl WorkerHandle {
    /// This process's worker id (the `locked_by` of the jobs it runs).
    pub fn id(&self) -> Uuid {
        self.shared.me
    }

    /// Stops claiming, lets in-flight handlers finish for up to `grace`, then cancels the
    /// rest and hands their jobs back (pending, the attempt not counted).
    pub async fn shutdown(self, grace: Duration) {
        self.shared
            .grace_ms
            .store(grace.as_millis().try_into().unwrap_or(u64::MAX), Ordering::SeqCst);
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        match release(&self.shared.pool, self.shared.me).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "worker shutdown: handed back unfinished jobs"),
            Err(e) => {
                tracing::warn!(error = %e, "worker shutdown: could not hand back jobs; the visibility timeout will")
            }
        }
    }
}

struct Shared {
    pool: PgPool,
    platform: PlatformPool,
    app: Option<PgPool>,
    kinds: Vec<String>,
    handlers: HashMap<&'static str, ErasedHandler>,
    me: Uuid,
    cfg: Config,
    heartbeats: Option<Heartbeats>,
    grace_ms: AtomicU64,
    /// Wait and run-time histograms per (queue, kind), made once.
    instruments: HashMap<(Arc<str>, &'static str), (metrics::Histogram, metrics::Histogram)>,
}

struct Claimed {
    id: Uuid,
    /// The tenant, or the nil uuid for platform jobs: with `id`, what names a job.
    tenant_key: Uuid,
    kind: String,
    tenant: Option<Uuid>,
    payload: Value,
    attempts: i32,
    max_attempts: i32,
    created_at: DateTime<Utc>,
    run_at: DateTime<Utc>,
}

/// Jobs named by what is unique, (id, tenant key): the ids (which drive the index scan)
/// and the pairs as `id‖tenant_key` text, compared in the same statement. (A join with
/// `unnest` of two arrays was measured at half the throughput.)
#[derive(Debug, Default)]
struct Finished {
    ids: Vec<Uuid>,
    pairs: Vec<String>,
}

impl Finished {
    fn push(&mut self, (id, tenant_key): (Uuid, Uuid)) {
        self.ids.push(id);
        self.pairs.push(format!("{id}{tenant_key}"));
    }
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    fn clear(&mut self) {
        self.ids.clear();
        self.pairs.clear();
    }
}

enum Outcome {
    Done((Uuid, Uuid)),
    Failed {
        id: (Uuid, Uuid),
        attempts: i32,
        max_attempts: i32,
        error: JobError,
    },
}

/// The claim: the previous batch's finished jobs (ids `$9` of tenant keys `$10`: ids are
/// unique per tenant) are recorded in the same statement, then up to `$8` jobs are taken from up to `$3` tenants with pending work
/// (a loose index scan lists them, starting at the random `$2`), at most `$4` each, in
/// priority / run-at / publishing order, skipping rows other workers hold and jobs whose
/// order key has an earlier unfinished job.
macro_rules! claim_sql {
    ($finish:literal) => {
        concat!("\
WITH RECURSIVE tenants(k) AS ( \
    (SELECT tenant_key FROM saas.jobs WHERE queue = $1 AND state = 'pending' ORDER BY tenant_key LIMIT 1) \
  UNION ALL \
    SELECT (SELECT j.tenant_key FROM saas.jobs j WHERE j.queue = $1 AND j.state = 'pending' AND j.tenant_key > t.k \
            ORDER BY j.tenant_key LIMIT 1) \
    FROM tenants t WHERE t.k IS NOT NULL \
), ", $finish, ", chosen AS ( \
    SELECT k FROM (SELECT k FROM tenants WHERE k IS NOT NULL LIMIT 10000) a ORDER BY (k < $2), k LIMIT $3 \
), picked AS ( \
    SELECT c.tid FROM chosen t CROSS JOIN LATERAL ( \
        SELECT j.ctid AS tid FROM saas.jobs j \
        WHERE j.queue = $1 AND j.state = 'pending' AND j.tenant_key = t.k AND j.run_at <= now() AND j.kind = ANY($7) \
          AND (j.order_key IS NULL OR NOT EXISTS ( \
                SELECT 1 FROM saas.jobs e WHERE e.queue = $1 AND e.tenant_key = j.tenant_key AND e.order_key = j.order_key \
                  AND e.state IN ('pending', 'running') AND e.id < j.id)) \
        ORDER BY j.priority DESC, j.run_at, j.id \
        LIMIT $4 FOR UPDATE SKIP LOCKED) c \
    LIMIT $8 \
) \
UPDATE saas.jobs j SET state = 'running', attempts = j.attempts + 1, \
    locked_until = now() + make_interval(secs => $5), locked_by = $6 \
FROM picked WHERE j.ctid = picked.tid \
RETURNING j.id, j.kind, j.tenant_id, j.payload, j.attempts, j.max_attempts, j.created_at, j.run_at, j.tenant_key")
    };
}

const CLAIM_KEEP: &str = claim_sql!(
    "moved AS (DELETE FROM saas.jobs d WHERE d.id = ANY($9) AND d.locked_by = $6 AND d.state = 'running' \
       AND (d.id::text || d.tenant_key::text) = ANY($10::text[]) \
       RETURNING d.id, d.queue, d.kind, d.tenant_id, d.attempts, d.unique_key, d.created_at), \
     finished AS (INSERT INTO saas.jobs_done (id, queue, kind, tenant_id, attempts, unique_key, created_at, finished_at) \
       SELECT id, queue, kind, tenant_id, attempts, unique_key, created_at, now() FROM moved RETURNING 1)"
);
const CLAIM_DELETE: &str = claim_sql!(
    "finished AS (DELETE FROM saas.jobs d WHERE d.id = ANY($9) AND d.locked_by = $6 AND d.state = 'running' \
       AND (d.id::text || d.tenant_key::text) = ANY($10::text[]) RETURNING 1)"
);

/// Records finished jobs when no claim follows.
const FINISH_KEEP: &str = "WITH moved AS (DELETE FROM saas.jobs d WHERE d.id = ANY($1) AND d.locked_by = $2 \
       AND d.state = 'running' AND (d.id::text || d.tenant_key::text) = ANY($3::text[]) \
       RETURNING d.id, d.queue, d.kind, d.tenant_id, d.attempts, d.unique_key, d.created_at) \
     INSERT INTO saas.jobs_done (id, queue, kind, tenant_id, attempts, unique_key, created_at, finished_at) \
     SELECT id, queue, kind, tenant_id, attempts, unique_key, created_at, now() FROM moved";
const FINISH_DELETE: &str = "DELETE FROM saas.jobs d WHERE d.id = ANY($1) AND d.locked_by = $2 \
       AND d.state = 'running' AND (d.id::text || d.tenant_key::text) = ANY($3::text[])";

impl Shared {
    async fn claim(&self, queue: &str, per_tenant: usize, finished: &Finished) -> Result<Vec<Claimed>, sqlx::Error> {
        let start = Uuid::from_u64_pair((random_unit() * u64::MAX as f64) as u64, 0);
        let sql = if self.cfg.keep_done { CLAIM_KEEP } else { CLAIM_DELETE };
        let rows = sqlx::query(sql)
            .bind(queue)
            .bind(start)
            .bind(self.cfg.max_tenants as i64)
            .bind(per_tenant as i64)
            .bind(self.cfg.visibility.as_secs_f64())
            .bind(self.me)
            .bind(&self.kinds)
            .bind((self.cfg.batch * 2) as i64)
            .bind(&finished.ids)
            .bind(&finished.pairs)
            .fetch_all(&self.pool)
            .await?;
        if !finished.is_empty() {
            metrics::counter!("saas_events_jobs_total", "queue" => queue.to_owned(), "outcome" => "done")
                .increment(finished.len() as u64);
        }
        rows.into_iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    tenant: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    max_attempts: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                    run_at: r.try_get(7)?,
                    tenant_key: r.try_get(8)?,
                })
            })
            .collect()
    }

    async fn run_one(&self, queue: &Arc<str>, job: Claimed) -> Outcome {
        let started = Utc::now();
        let waited = (started - job.created_at.max(job.run_at)).to_std().unwrap_or_default();
        let Some((kind, handler)) = self.handlers.get_key_value(job.kind.as_str()) else {
            return Outcome::Failed {
                id: (job.id, job.tenant_key),
                attempts: job.attempts,
                max_attempts: job.max_attempts,
                error: JobError::retry(format!("no handler for {}", job.kind)),
            };
        };
        let instruments = self.instruments.get(&(Arc::clone(queue), *kind));
        if let Some((wait, _)) = instruments {
            wait.record(waited.as_secs_f64());
        }
        let ctx = JobContext {
            id: JobId::from_uuid(job.id),
            kind,
            queue: Arc::clone(queue),
            tenant: job.tenant.map(TenantId::from_uuid),
            attempt: job.attempts,
            max_attempts: job.max_attempts,
            created_at: job.created_at,
            app: self.app.clone(),
            platform: self.platform.clone(),
        };
        let t = Instant::now();
        // A panic is a failed attempt (retried, then dead-lettered with its message), and
        // a handler that outlives the job timeout is one too: neither stops the loop.
        let attempt = std::panic::AssertUnwindSafe(handler(ctx, job.payload)).catch_unwind();
        let result = match tokio::time::timeout(self.cfg.job_timeout, attempt).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(JobError::retry(format!(
                "the handler panicked: {}",
                panic_message(&*panic)
            ))),
            Err(_) => Err(JobError::retry(format!(
                "the handler did not finish within {:?}",
                self.cfg.job_timeout
            ))),
        };
        if let Some((_, run)) = instruments {
            run.record(t.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => Outcome::Done((job.id, job.tenant_key)),
            Err(error) => {
                tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempts, error = %error, "job failed");
                Outcome::Failed {
                    id: (job.id, job.tenant_key),
                    attempts: job.attempts,
                    max_attempts: job.max_attempts,
                    error,
                }
            }
        }
    }

    /// Records failures now; returns the finished jobs, recorded by the next claim.
    async fn record(&self, queue: &str, outcomes: Vec<Outcome>, done: &mut Finished) -> Result<(), sqlx::Error> {
        let (mut ids, mut keys, mut run_at, mut errors, mut dead) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let now = Utc::now();
        for o in outcomes {
            match o {
                Outcome::Done(id) => done.push(id),
                Outcome::Failed {
                    id,
                    attempts,
                    max_attempts,
                    error,
                } => {
                    let (is_dead, delay) = match &error {
                        JobError::Fatal { .. } => (true, Duration::ZERO),
                        JobError::Retry { after, .. } => (
                            attempts >= max_attempts,
                            after.unwrap_or_else(|| self.cfg.backoff.delay(attempts)),
                        ),
                    };
                    ids.push(id.0);
                    keys.push(id.1);
                    run_at.push(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX));
                    errors.push(error.message().chars().take(2000).collect::<String>());
                    dead.push(is_dead);
                }
            }
        }
        if !ids.is_empty() {
            let rows = sqlx::query(
                "UPDATE saas.jobs j SET \
                   state = CASE WHEN u.dead THEN 'dead' ELSE 'pending' END, \
                   run_at = CASE WHEN u.dead THEN j.run_at ELSE u.run_at END, \
                   finished_at = CASE WHEN u.dead THEN now() END, \
                   last_error = u.err, locked_until = NULL, locked_by = NULL \
                 FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::bool[], $6::uuid[]) AS u(id, run_at, err, dead, tk) \
                 WHERE j.id = u.id AND j.tenant_key = u.tk AND j.locked_by = $5 AND j.state = 'running' \
                 RETURNING j.kind, u.dead",
            )
            .bind(&ids)
            .bind(&run_at)
            .bind(&errors)
            .bind(&dead)
            .bind(self.me)
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let kind: String = r.try_get(0)?;
                let is_dead: bool = r.try_get(1)?;
                let outcome = if is_dead { "dead" } else { "retry" };
                metrics::counter!("saas_events_jobs_total", "queue" => queue.to_owned(), "outcome" => outcome)
                    .increment(1);
                if is_dead {
                    metrics::counter!("saas_events_dead_letters_total", "queue" => queue.to_owned(), "kind" => kind.clone()).increment(1);
                    tracing::error!(kind = %kind, "job dead-lettered");
                }
            }
        }
        Ok(())
    }
}

async fn run_loop(
    shared: Arc<Shared>,
    queues: Vec<Arc<str>>,
    name: String,
    mut stop: watch::Receiver<bool>,
    mut wake: watch::Receiver<u64>,
) {
    let mut tenants_last = 1usize;
    let mut finished = Finished::default();
    let mut qi = 0usize;
    let mut idle_queues = 0usize;
    loop {
        if *stop.borrow() {
            break;
        }
        if let Some(h) = &shared.heartbeats {
            h.beat(&name);
        }
        wake.borrow_and_update();
        let queue: Arc<str> = Arc::clone(&queues[qi % queues.len()]);
        let per_tenant = shared.cfg.batch.div_ceil(tenants_last.max(1));
        let jobs = match shared.claim(&queue, per_tenant, &finished).await {
            Ok(j) => {
                finished.clear();
                j
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = %queue, "claiming jobs failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        if jobs.is_empty() {
            qi += 1;
            idle_queues += 1;
            if idle_queues >= queues.len() {
                idle_queues = 0;
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(shared.cfg.poll) => {}
                    _ = stop.changed() => {}
                }
            }
            continue;
        }
        idle_queues = 0;
        let mut tenants: Vec<Option<Uuid>> = jobs.iter().map(|j| j.tenant).collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants_last = tenants.len();
        let mut ids = Finished::default();
        for j in &jobs {
            ids.push((j.id, j.tenant_key));
        }
        let batch = futures_util::stream::iter(jobs)
            .map(|j| shared.run_one(&queue, j))
            .buffer_unordered(shared.cfg.concurrency);
        let (outcomes, cancelled) = run_batch(&shared, &ids, batch, &mut stop).await;
        if let Err(e) = shared.record(&queue, outcomes, &mut finished).await {
            tracing::warn!(error = %e, "recording job outcomes failed; the jobs will be retried after the visibility timeout");
        }
        if cancelled {
            // Shutdown's grace ran out: `shutdown` hands the unfinished jobs back.
            break;
        }
    }
    if let Err(e) = finish(&shared, &queues[0], &finished).await {
        tracing::warn!(error = %e, "recording finished jobs at shutdown failed; they will run again");
    }
    if let Some(h) = &shared.heartbeats {
        h.remove(&name);
    }
}

/// Runs a claim loop and restarts it when it dies (a panic outside any handler: handlers'
/// own panics are failed attempts). While it is dead its heartbeat goes stale, so
/// readiness reports it; jobs it held return after their visibility timeout.
async fn supervise<F, Fut>(name: String, stop: watch::Receiver<bool>, make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let message = panic_message(&*e.into_panic());
                metrics::counter!("saas_events_loop_restarts_total").increment(1);
                tracing::error!(worker_loop = %name, panic = %message, "a worker loop died; restarting it in 1 s");
                if *stop.borrow() {
                    return;
                }
                let mut stop = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(_) => return,
        }
    }
}

/// Records finished jobs when no claim follows (shutdown).
async fn finish(shared: &Shared, queue: &str, done: &Finished) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let sql = if shared.cfg.keep_done {
        FINISH_KEEP
    } else {
        FINISH_DELETE
    };
    sqlx::query(sql)
        .bind(&done.ids)
        .bind(shared.me)
        .bind(&done.pairs)
        .execute(&shared.pool)
        .await?;
    metrics::counter!("saas_events_jobs_total", "queue" => queue.to_owned(), "outcome" => "done")
        .increment(done.len() as u64);
    Ok(())
}

/// Runs a batch, extending the jobs' visibility while it runs. Returns the outcomes of
/// the jobs that finished, and whether shutdown's grace ran out before the others did.
async fn run_batch<S>(
    shared: &Shared,
    ids: &Finished,
    batch: S,
    stop: &mut watch::Receiver<bool>,
) -> (Vec<Outcome>, bool)
where
    S: futures_util::Stream<Item = Outcome>,
{
    let mut batch = std::pin::pin!(batch);
    let mut outcomes = Vec::with_capacity(ids.len());
    let mut extend = tokio::time::interval(shared.cfg.visibility / 3);
    extend.tick().await;
    let mut stopping = *stop.borrow();
    let mut deadline = Box::pin(tokio::time::sleep(Duration::MAX / 4));
    if stopping {
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + Duration::from_millis(shared.grace_ms.load(Ordering::SeqCst)));
    }
    loop {
        tokio::select! {
            next = batch.next() => match next {
                Some(o) => outcomes.push(o),
                None => return (outcomes, false),
            },
            _ = extend.tick() => {
                let r = sqlx::query("UPDATE saas.jobs j SET locked_until = now() + make_interval(secs => $3) \
                                     WHERE j.id = ANY($1) AND j.locked_by = $2 AND j.state = 'running' \
                                     AND (j.id::text || j.tenant_key::text) = ANY($4::text[])")
                    .bind(&ids.ids).bind(shared.me).bind(shared.cfg.visibility.as_secs_f64()).bind(&ids.pairs)
                    .execute(&shared.pool).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "extending running jobs failed");
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                let grace = Duration::from_millis(shared.grace_ms.load(Ordering::SeqCst));
                deadline.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            _ = &mut deadline, if stopping => return (outcomes, true),
        }
    }
}

async fn release(pool: &PgPool, me: Uuid) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE saas.jobs SET state = 'pending', attempts = greatest(attempts - 1, 0), locked_by = NULL, \
         locked_until = NULL, run_at = now() WHERE locked_by = $1 AND state = 'running'",
    )
    .bind(me)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Wakes the loops on `NOTIFY saas_events` (and after every reconnection, when work may
/// have arrived unannounced), through saas-core's listener; ends at shutdown.
fn listen(pool: PgPool, wake: watch::Sender<u64>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let mut n = 0u64;
    let stopped = async move {
        let mut stop = stop;
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    };
    saas_core::notify::spawn(pool, CHANNEL, stopped, move |_: Notice<Wake>| {
        n += 1;
        let _ = wake.send(n);
        std::future::ready(())
    })
}

/// Rescues jobs whose worker died, publishes due schedules, reports queue depth.
async fn housekeeping(
    shared: Arc<Shared>,
    schedules: Vec<Schedule>,
    retention: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let rescue_every = (shared.cfg.visibility / 4).max(Duration::from_secs(1));
    let mut last_rescue = Instant::now() - rescue_every;
    let mut last_depth = Instant::now() - Duration::from_secs(10);
    let mut last_prune = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if last_rescue.elapsed() >= rescue_every {
            last_rescue = Instant::now();
            match rescue(&shared.pool).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    jobs = n,
                    "rescued jobs past their visibility timeout (a worker died or stalled)"
                ),
                Err(e) => tracing::warn!(error = %e, "rescuing jobs failed"),
            }
        }
        for s in &schedules {
            if let Err(e) = run_schedule(&shared, s).await {
                tracing::warn!(error = %e, schedule = %s.name, "schedule failed");
            }
        }
        if let Some(keep) = retention
            && last_prune.elapsed() >= Duration::from_secs(60)
        {
            last_prune = Instant::now();
            let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            match crate::Jobs::new(shared.platform.clone()).prune(before, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(jobs = n, "pruned finished jobs"),
                Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
            }
        }
        if last_depth.elapsed() >= Duration::from_secs(10) {
            last_depth = Instant::now();
            if let Err(e) = report_depth(&shared.pool).await {
                tracing::debug!(error = %e, "queue depth query failed");
            }
        }
    }
}

/// Returns running jobs past their visibility timeout to the queue (or the dead letters).
pub(crate) async fn rescue(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE saas.jobs SET \
           state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END, \
           finished_at = CASE WHEN attempts >= max_attempts THEN now() END, \
           last_error = 'visibility timeout: the worker died or stalled', locked_by = NULL, locked_until = NULL \
         WHERE state = 'running' AND locked_until < now()",
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

async fn run_schedule(shared: &Shared, s: &Schedule) -> Result<(), JobsError> {
    let due: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT next_run_at FROM saas.job_schedules WHERE name = $1 AND next_run_at <= now()")
            .bind(&s.name)
            .fetch_optional(&shared.pool)
            .await?;
    let Some(due) = due else { return Ok(()) };
    let next = s.next_after(Utc::now())?;
    let mut tx = SystemTx::begin(&shared.platform, "events.schedule").await?;
    let moved = sqlx::query("UPDATE saas.job_schedules SET next_run_at = $3 WHERE name = $1 AND next_run_at = $2")
        .bind(&s.name)
        .bind(due)
        .bind(next)
        .execute(&mut *tx)
        .await?;
    if moved.rows_affected() == 1 {
        let key = format!("schedule:{}:{}", s.name, due.to_rfc3339());
        (s.publish)(&mut tx, key).await.map_err(|e| match e {
            PublishError::Database(e) => JobsError::Database(e),
            other => JobsError::Database(sqlx::Error::Protocol(other.to_string())),
        })?;
    }
    tx.commit().await?;
    Ok(())
}

async fn report_depth(pool: &PgPool) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT queue, tenant_id, count(*) AS n FROM saas.jobs WHERE state = 'pending' GROUP BY queue, tenant_id",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let queue: String = r.try_get(0)?;
        let tenant: Option<Uuid> = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        let tenant = tenant.map(|t| t.to_string()).unwrap_or_else(|| "platform".into());
        metrics::gauge!("saas_events_queue_depth", "queue" => queue, "tenant" => tenant).set(n as f64);
    }
    Ok(())
}
