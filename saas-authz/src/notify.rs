//! Cache invalidation across processes: changes send `pg_notify` in their transaction
//! (delivered on commit); every process listens and drops what changed.

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};

/// The channel saas-authz notifies on.
pub const CHANNEL: &str = "saas_authz";

/// Queues `payload` on [`CHANNEL`]; PostgreSQL delivers it when the transaction commits.
pub(crate) async fn send(conn: &mut PgConnection, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// Listens on [`CHANNEL`] and calls `on_change` with each payload, or with `None` when
/// the connection was lost and notifications may have been missed (drop everything).
/// Reconnects by itself; ends when `on_change` returns `false`.
pub(crate) fn spawn<F>(pool: PgPool, mut on_change: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut(Option<&str>) -> bool + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "saas-authz change listener could not connect; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "saas-authz change listener could not LISTEN; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            // Whatever happened before we listened is unknown.
            if !on_change(None) {
                return;
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if !on_change(Some(n.payload())) {
                            return;
                        }
                    }
                    // The connection dropped: notifications in between are lost.
                    Ok(None) => {
                        if !on_change(None) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "saas-authz change listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    })
}
