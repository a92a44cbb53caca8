//! [`FlagStore`]: flags from PostgreSQL, compiled for one environment, kept current
//! through `LISTEN/NOTIFY`, with a snapshot file to start from when the database is down,
//! and evaluation counts flushed in batches.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use saas_core::notify::Notice;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

use crate::compile::{FlagSet, FlagSetBuilder, Mode, Versioned};
use crate::engine::Engine;
use crate::error::FlagError;
use crate::model::{FlagDefinition, Segment};

/// The notification channel flag changes are announced on.
pub const CHANNEL: &str = "saas_flags";

/// What the snapshot file holds: the definitions, so a process can compile them again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    environment: String,
    version: i64,
    flags: Vec<StoredFlag>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredFlag {
    definition: FlagDefinition,
    version: i64,
}

/// Options for [`FlagStore`].
#[derive(Debug, Clone)]
pub struct FlagStoreBuilder {
    pool: PgPool,
    environment: String,
    snapshot_file: Option<PathBuf>,
    hostname: Option<String>,
    listen: bool,
}

impl FlagStoreBuilder {
    /// Keeps a copy of the definitions in `path` after every load, and starts from it
    /// when the database cannot be reached.
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// The host name `applicationHostname` strategies compare with.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Whether to follow changes through `LISTEN/NOTIFY` (default on; tests may turn it
    /// off and call [`FlagStore::reload`]).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Loads the flags (or the snapshot file when the database is unreachable) and starts
    /// following changes.
    pub async fn load(self) -> Result<FlagStore, FlagError> {
        let inner = Arc::new(Inner {
            pool: self.pool,
            environment: self.environment,
            snapshot_file: self.snapshot_file,
            hostname: self.hostname,
            engine: Engine::new(FlagSet::empty("")),
            reload_lock: tokio::sync::Mutex::new(()),
            life: saas_core::notify::Lifeline::new(),
        });
        let store = FlagStore { inner };
        match store.reload().await {
            Ok(()) => {}
            Err(FlagError::Database(e)) if store.inner.snapshot_file.is_some() => {
                let path = store.inner.snapshot_file.clone().unwrap_or_default();
                tracing::warn!(error = %e, file = %path.display(), "flag store: database unreachable, starting from the snapshot file");
                let set = store.inner.read_snapshot(&path)?;
                store.inner.engine.replace(set);
            }
            Err(e) => return Err(e),
        }
        if self.listen {
            spawn_listener(Arc::downgrade(&store.inner));
        }
        Ok(store)
    }
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    environment: String,
    snapshot_file: Option<PathBuf>,
    hostname: Option<String>,
    engine: Engine,
    reload_lock: tokio::sync::Mutex<()>,
    /// Ends the change listener when the last clone of the store is dropped.
    life: saas_core::notify::Lifeline,
}

/// Flags for one environment, from PostgreSQL, always current.
///
/// Cheap to clone. Evaluate through [`FlagStore::snapshot`] (or a request's
/// [`Flags`](crate::Flags)); changes made anywhere reach every store within about a second.
#[derive(Debug, Clone)]
pub struct FlagStore {
    inner: Arc<Inner>,
}

impl FlagStore {
    /// Options for a store of `environment`'s flags read through `pool` (the application role suffices).
    pub fn builder(pool: PgPool, environment: impl Into<String>) -> FlagStoreBuilder {
        FlagStoreBuilder {
            pool,
            environment: environment.into(),
            snapshot_file: None,
            hostname: None,
            listen: true,
        }
    }

    /// Loads `environment`'s flags and follows changes.
    pub async fn load(pool: &PgPool, environment: impl Into<String>) -> Result<FlagStore, FlagError> {
        FlagStore::builder(pool.clone(), environment).load().await
    }

    /// The environment.
    pub fn environment(&self) -> &str {
        &self.inner.environment
    }

    /// The current flag set, to keep for a request.
    pub fn snapshot(&self) -> Arc<FlagSet> {
        self.inner.engine.snapshot()
    }

    /// The engine holding the current set.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Reads every active flag again and swaps in the new set. Called on every change
    /// notification and after the listener reconnects.
    pub async fn reload(&self) -> Result<(), FlagError> {
        let _one_at_a_time = self.inner.reload_lock.lock().await;
        let (flags, segments) = load_definitions(&self.inner.pool).await?;
        let version = flags.iter().map(|f| f.1).max().unwrap_or(0).max(segments.1);
        let set = self.inner.compile(
            flags.iter().map(|(f, _)| f.clone()).collect(),
            segments.0.clone(),
            version,
        )?;
        if !set.warnings().is_empty() {
            for w in set.warnings() {
                tracing::warn!(flag = %w.flag, message = %w.message, "flag is off: its definition no longer compiles");
            }
        }
        let previous = self.inner.engine.snapshot();
        let set = set.adopt_counters(&previous);
        self.inner.engine.replace(set);
        if let Some(path) = &self.inner.snapshot_file {
            let file = SnapshotFile {
                environment: self.inner.environment.clone(),
                version,
                flags: flags
                    .into_iter()
                    .map(|(v, _)| StoredFlag {
                        definition: v.definition,
                        version: v.version,
                    })
                    .collect(),
                segments: segments.0,
            };
            if let Err(e) = write_snapshot(path, &file) {
                tracing::warn!(error = %e, "flag store: could not write the snapshot file");
            }
        }
        Ok(())
    }

    /// Writes the evaluation counts gathered since the last flush (one statement);
    /// returns how many flags had evaluations.
    pub async fn flush_usage(&self) -> Result<usize, FlagError> {
        let set = self.snapshot();
        let mut names = Vec::new();
        let mut counts = Vec::new();
        for f in set.flags.iter() {
            let n = f.uses.swap(0, Ordering::Relaxed);
            if n > 0 {
                names.push(f.name.to_string());
                counts.push(n as i64);
            }
        }
        if names.is_empty() {
            return Ok(0);
        }
        let res = sqlx::query(
            "INSERT INTO saas.flag_usage (name, environment, evaluations, last_evaluated_at) \
             SELECT n, $3, c, now() FROM unnest($1::text[], $2::bigint[]) AS u(n, c) \
             ON CONFLICT (name, environment) DO UPDATE \
             SET evaluations = saas.flag_usage.evaluations + excluded.evaluations, \
                 last_evaluated_at = excluded.last_evaluated_at",
        )
        .bind(&names)
        .bind(&counts)
        .bind(&self.inner.environment)
        .execute(&self.inner.pool)
        .await;
        if let Err(e) = res {
            // Put the counts back so that they are not lost.
            for (name, n) in names.iter().zip(&counts) {
                if let Some(i) = set.lookup(name) {
                    set.flags[i as usize].uses.fetch_add(*n as u64, Ordering::Relaxed);
                }
            }
            return Err(e.into());
        }
        Ok(names.len())
    }

    /// Flushes evaluation counts every `every` until the store is dropped.
    pub fn spawn_usage_flusher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (FlagStore { inner }).flush_usage().await {
                    tracing::warn!(error = %e, "flag usage flush failed; counts kept for the next one");
                }
            }
        })
    }
}

impl Inner {
    fn compile(&self, flags: Vec<Versioned>, segments: Vec<Segment>, version: i64) -> Result<FlagSet, FlagError> {
        let mut b = FlagSetBuilder::new(self.environment.clone())
            // Definitions were validated when saved; one that stopped compiling (its
            // parent archived, say) is off with a warning rather than taking all down.
            .mode(Mode::Lenient)
            .version(version)
            .segments(segments)
            .flags(flags);
        if let Some(h) = &self.hostname {
            b = b.hostname(h.clone());
        }
        Ok(b.build()?)
    }

    fn read_snapshot(&self, path: &Path) -> Result<FlagSet, FlagError> {
        let err = |reason: String| FlagError::Snapshot {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if file.environment != self.environment {
            return Err(err(format!(
                "holds environment {:?}, not {:?}",
                file.environment, self.environment
            )));
        }
        self.compile(
            file.flags
                .into_iter()
                .map(|f| Versioned {
                    definition: f.definition,
                    version: f.version,
                })
                .collect(),
            file.segments,
            file.version,
        )
    }
}

fn write_snapshot(path: &Path, file: &SnapshotFile) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

type Loaded = (Vec<(Versioned, i64)>, (Vec<Segment>, i64));

async fn load_definitions(pool: &PgPool) -> Result<Loaded, FlagError> {
    let mut tx = pool.begin().await?;
    // One snapshot for flags and segments.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows =
        sqlx::query("SELECT definition, version, change_seq FROM saas.flags WHERE archived_at IS NULL ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
    let mut flags = Vec::with_capacity(rows.len());
    for r in rows {
        let definition = parse_stored(r.try_get("definition")?)?;
        flags.push((
            Versioned {
                definition,
                version: r.try_get("version")?,
            },
            r.try_get::<i64, _>("change_seq")?,
        ));
    }
    let rows = sqlx::query("SELECT id, name, constraints, change_seq FROM saas.flag_segments ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let mut segments = Vec::with_capacity(rows.len());
    let mut seg_version = 0;
    for r in rows {
        let constraints: serde_json::Value = r.try_get("constraints")?;
        segments.push(Segment {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            constraints: serde_json::from_value(constraints)
                .map_err(|e| FlagError::Payload(format!("stored segment: {e}")))?,
        });
        seg_version = seg_version.max(r.try_get::<i64, _>("change_seq")?);
    }
    tx.commit().await?;
    Ok((flags, (segments, seg_version)))
}

/// A definition read back from `saas.flags`.
pub(crate) fn parse_stored(json: serde_json::Value) -> Result<FlagDefinition, FlagError> {
    serde_json::from_value(json).map_err(|e| FlagError::Payload(format!("stored definition: {e}")))
}

/// Follows changes through saas-core's listener until the store's last clone is dropped
/// (its lifeline). Notifications only mark the store stale; one reloading task reads
/// everything again, so a burst of changes costs one or two reloads, not one each.
fn spawn_listener(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else { return };
    let stale = Arc::new(tokio::sync::Notify::new());
    let mark = Arc::clone(&stale);
    saas_core::notify::spawn(
        inner.pool.clone(),
        CHANNEL,
        inner.life.ended(),
        move |_: Notice<serde::de::IgnoredAny>| {
            // A change, or a (re)connection after which anything may have changed.
            mark.notify_one();
            std::future::ready(())
        },
    );
    let until = inner.life.ended();
    drop(inner);
    tokio::spawn(async move {
        let mut until = std::pin::pin!(until);
        loop {
            tokio::select! {
                () = stale.notified() => {}
                () = &mut until => return,
            }
            if !reload(&weak).await {
                return;
            }
        }
    });
}

/// Reloads; `false` when the store is gone.
async fn reload(weak: &Weak<Inner>) -> bool {
    let Some(inner) = weak.upgrade() else { return false };
    if let Err(e) = (FlagStore { inner }).reload().await {
        tracing::warn!(error = %e, "flag reload failed; keeping the current flags");
    }
    true
}
