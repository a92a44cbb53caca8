//! Change notifications between processes over PostgreSQL `LISTEN/NOTIFY`, with typed
//! payloads: the one listener that caches and workers use.
//!
//! A writer calls [`send`] in its transaction (PostgreSQL delivers on commit); every
//! process runs [`spawn`], which reconnects by itself, tells its handler
//! [`Notice::Gap`] whenever notifications may have been missed (on every (re)connection,
//! and for a payload it cannot read) so that the handler reloads everything, and ends as
//! soon as its owner's [`Lifeline`] is dropped, releasing its connection then rather than
//! at the next notification.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) {
//! use saas_core::notify::{self, Lifeline, Notice};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum Change { Plan { tenant: uuid::Uuid } }
//!
//! let lifeline = Lifeline::new(); // kept by the cache that listens
//! let task = notify::spawn(pool.clone(), "my_cache", lifeline.ended(), |notice: Notice<Change>| async move {
//!     match notice {
//!         Notice::Message(Change::Plan { tenant }) => { /* drop the tenant's entry */ }
//!         Notice::Gap => { /* drop everything */ }
//!     }
//! });
//! drop(lifeline); // the task ends and its connection is closed
//! # let _ = task; }
//! ```

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

/// What a listener's handler receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice<T> {
    /// One change, as sent.
    Message(T),
    /// Notifications may have been missed (the listener just (re)connected, or a payload
    /// could not be read): reload everything.
    Gap,
}

/// Queues `payload` (as JSON) on `channel`; PostgreSQL delivers it to every listener when
/// the transaction commits, and not at all when it rolls back.
pub async fn send<T: Serialize>(conn: &mut PgConnection, channel: &str, payload: &T) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(json)
        .execute(conn)
        .await
        .map(drop)
}

/// Held by whatever owns a listener (a cache, an evaluator): when the last clone of the
/// owner drops it, the listener ends. Cheap; not `Clone` on purpose — share the owner.
#[derive(Debug)]
pub struct Lifeline(watch::Sender<()>);

impl Default for Lifeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifeline {
    /// A new lifeline.
    pub fn new() -> Self {
        Self(watch::channel(()).0)
    }

    /// A future that completes when this lifeline is dropped.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move { while rx.changed().await.is_ok() {} }
    }
}

/// Listens on `channel` until `until` completes, calling `on` with each decoded payload,
/// one at a time, and with [`Notice::Gap`] after every (re)connection. Reconnects after
/// a second when the connection fails. The returned task ends when `until` does (the
/// connection is closed then).
pub fn spawn<T, F, Fut>(
    pool: PgPool,
    channel: &'static str,
    until: impl Future<Output = ()> + Send + 'static,
    mut on: F,
) -> tokio::task::JoinHandle<()>
where
    T: DeserializeOwned + Send + 'static,
    F: FnMut(Notice<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut until = std::pin::pin!(until);
        loop {
            let connected = tokio::select! {
                c = connect(&pool, channel) => c,
                () = &mut until => return,
            };
            let Some(mut listener) = connected else {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut until => return,
                }
            };
            // Whatever happened before we listened is unknown.
            tokio::select! {
                () = on(Notice::Gap) => {}
                () = &mut until => return,
            }
            loop {
                let next = tokio::select! {
                    n = listener.try_recv() => n,
                    () = &mut until => return,
                };
                let notice = match next {
                    Ok(Some(n)) => match serde_json::from_str::<T>(n.payload()) {
                        Ok(t) => Notice::Message(t),
                        Err(e) => {
                            tracing::warn!(channel, error = %e, "unreadable change notification; reloading everything");
                            Notice::Gap
                        }
                    },
                    // The connection dropped and was re-established: notifications in
                    // between are lost.
                    Ok(None) => Notice::Gap,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "change listener failed; reconnecting");
                        break;
                    }
                };
                tokio::select! {
                    () = on(notice) => {}
                    () = &mut until => return,
                }
            }
        }
    })
}

async fn connect(pool: &PgPool, channel: &'static str) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(channel, error = %e, "change listener could not connect; retrying");
            return None;
        }
    };
    if let Err(e) = listener.listen(channel).await {
        tracing::warn!(channel, error = %e, "change listener could not LISTEN; retrying");
        return None;
    }
    Some(listener)
}
