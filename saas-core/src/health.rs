//! Liveness and readiness.
//!
//! [`liveness`] says the process runs. [`Readiness`] runs its checks concurrently, each
//! with a timeout, and answers 200 when all pass, 503 otherwise, with one JSON member per
//! check: database reachability ([`DatabaseCheck`]), pending migrations
//! ([`MigrationsCheck`]), a verdict the application reached at start-up such as the
//! isolation verification ([`StartupCheck`]), and worker heartbeats ([`Heartbeats`]).
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) {
//! use saas_core::health::{DatabaseCheck, Heartbeats, MigrationsCheck, Readiness, StartupCheck};
//! let isolation = StartupCheck::new();
//! let workers = Heartbeats::new(std::time::Duration::from_secs(30));
//! let ready = Readiness::new()
//!     .check("database", DatabaseCheck::new(pool.clone()))
//!     .check("migrations", MigrationsCheck::new(pool, vec![&saas_core::MIGRATOR]))
//!     .check("isolation", isolation.clone())
//!     .check("workers", workers.clone());
//! // after saas_tenancy::verify_isolation(&pool) succeeded:
//! isolation.pass();
//! let res: http::Response<String> = ready.response().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// Whether it passed.
    pub ok: bool,
    /// Details for operators (no secrets).
    pub detail: Value,
}

impl CheckOutcome {
    /// A pass.
    pub fn pass(detail: Value) -> Self {
        Self { ok: true, detail }
    }
    /// A failure.
    pub fn fail(detail: Value) -> Self {
        Self { ok: false, detail }
    }
}

/// The future a check returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckOutcome> + Send + 'a>>;

/// Something readiness depends on.
pub trait HealthCheck: Send + Sync + 'static {
    /// Runs the check.
    fn check(&self) -> CheckFuture<'_>;
}

/// The process is alive: 200 `{"status":"alive"}`.
pub fn liveness<B: From<String>>() -> Response<B> {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}

fn json_response<B: From<String>>(status: StatusCode, body: &Value) -> Response<B> {
    let mut res = Response::new(B::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Checks that run before the service takes traffic.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Arc<dyn HealthCheck>)>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.iter().map(|(n, _)| n)).finish()
    }
}

impl Readiness {
    /// No checks yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a named check.
    pub fn check(mut self, name: impl Into<String>, check: impl HealthCheck) -> Self {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }
    /// How long each check may take (default 2 s); a check that takes longer fails.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs every check concurrently: whether all passed, and the JSON report.
    pub async fn report(&self) -> (bool, Value) {
        let timeout = self.timeout.unwrap_or(Duration::from_secs(2));
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(timeout, check.check()).await {
                Ok(o) => o,
                Err(_) => CheckOutcome::fail(json!({"error": format!("no answer within {} ms", timeout.as_millis())})),
            };
            (name.clone(), outcome)
        });
        let results = futures_util::future::join_all(runs).await;
        let ok = results.iter().all(|(_, o)| o.ok);
        let checks: BTreeMap<String, Value> = results
            .into_iter()
            .map(|(n, o)| (n, json!({"ok": o.ok, "detail": o.detail})))
            .collect();
        (
            ok,
            json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks}),
        )
    }

    /// 200 with the report when ready, 503 otherwise.
    pub async fn response<B: From<String>>(&self) -> Response<B> {
        let (ok, body) = self.report().await;
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}

/// The database answers `SELECT 1`.
#[derive(Debug, Clone)]
pub struct DatabaseCheck {
    pool: PgPool,
}

impl DatabaseCheck {
    /// Checks `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl HealthCheck for DatabaseCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let start = Instant::now();
            match sqlx::query("SELECT 1").execute(&self.pool).await {
                Ok(_) => CheckOutcome::pass(json!({
                    "latency_ms": start.elapsed().as_secs_f64() * 1000.0,
                    "pool_size": self.pool.size(),
                    "idle": self.pool.num_idle(),
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: database unreachable");
                    CheckOutcome::fail(json!({"error": "database unreachable"}))
                }
            }
        })
    }
}

/// Every migration of the given migrators has been applied.
#[derive(Debug, Clone)]
pub struct MigrationsCheck {
    pool: PgPool,
    migrators: Vec<&'static Migrator>,
}

impl MigrationsCheck {
    /// Checks the migrators' histories through `pool` (the application role needs no
    /// access to them: a history it cannot read counts as not applied).
    pub fn new(pool: PgPool, migrators: Vec<&'static Migrator>) -> Self {
        Self { pool, migrators }
    }
}

impl HealthCheck for MigrationsCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut pending = Vec::new();
            for m in &self.migrators {
                // The history table's name comes from the migrator (a constant of the crate).
                let sql = format!("SELECT version FROM {} WHERE success", m.table_name);
                let applied: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await
                    .unwrap_or_default();
                pending.extend(
                    m.iter()
                        .filter(|mig| mig.migration_type.is_up_migration() && !applied.contains(&mig.version))
                        .map(|mig| json!({"version": mig.version, "description": mig.description.as_ref()})),
                );
            }
            let detail = json!({"pending": pending});
            if pending.is_empty() {
                CheckOutcome::pass(detail)
            } else {
                CheckOutcome::fail(detail)
            }
        })
    }
}

/// A verdict reached once at start-up (for example that the isolation verifier passed).
/// Fails until [`pass`](Self::pass) is called, and after [`fail`](Self::fail).
#[derive(Debug, Clone, Default)]
pub struct StartupCheck {
    state: Arc<AtomicU8>,
}

impl StartupCheck {
    /// Not passed yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Marks it passed.
    pub fn pass(&self) {
        self.state.store(1, Ordering::Release);
    }
    /// Marks it failed.
    pub fn fail(&self) {
        self.state.store(2, Ordering::Release);
    }
}

impl HealthCheck for StartupCheck {
    fn check(&self) -> CheckFuture<'_> {
        let outcome = match self.state.load(Ordering::Acquire) {
            1 => CheckOutcome::pass(json!("passed")),
            2 => CheckOutcome::fail(json!("failed")),
            _ => CheckOutcome::fail(json!("not run yet")),
        };
        Box::pin(async move { outcome })
    }
}

/// Workers report here; a worker that has not beaten within `stale_after` fails readiness.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    beats: Arc<Mutex<BTreeMap<String, Instant>>>,
    stale_after: Duration,
}

impl Heartbeats {
    /// Workers are stale after `stale_after` without a beat.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            beats: Arc::default(),
            stale_after,
        }
    }
    /// Records that `worker` is alive.
    pub fn beat(&self, worker: &str) {
        let mut beats = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        match beats.get_mut(worker) {
            Some(t) => *t = Instant::now(),
            None => {
                beats.insert(worker.to_owned(), Instant::now());
            }
        }
    }
    /// Forgets a worker that stopped on purpose.
    pub fn remove(&self, worker: &str) {
        self.beats.lock().unwrap_or_else(PoisonError::into_inner).remove(worker);
    }
}

impl HealthCheck for Heartbeats {
    fn check(&self) -> CheckFuture<'_> {
        let beats = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ok = true;
        let detail: BTreeMap<String, Value> = beats
            .iter()
            .map(|(name, at)| {
                let age = at.elapsed();
                let fresh = age <= self.stale_after;
                ok &= fresh;
                (
                    name.clone(),
                    json!({"last_beat_ms_ago": age.as_millis() as u64, "stale": !fresh}),
                )
            })
            .collect();
        let outcome = CheckOutcome {
            ok,
            detail: json!(detail),
        };
        Box::pin(async move { outcome })
    }
}
