//! Exporting one tenant's data as JSON Lines.

use futures_util::TryStreamExt;
use saas_core::TenantId;
use sqlx::PgPool;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::TenancyError;
use crate::tx::TenantTx;

/// What [`export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// Rows written per table, in the order written.
    pub rows: Vec<(String, u64)>,
}

impl ExportReport {
    /// All rows written.
    pub fn total(&self) -> u64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }
}

/// Writes every row of every registered tenant table for `tenant` to `out`, one JSON
/// object per line: `{"table":"public.projects","row":{…}}`. Tables registered as caches
/// rather than data (`exported = false`, such as stored idempotent responses) are left out.
///
/// Runs in one [`TenantTx`] on the application pool (a consistent snapshot that row-level
/// security limits to the tenant) and streams rows as they arrive, so memory stays
/// constant however large the tenant is. Suitable for a background job writing to a
/// file or an object-store upload.
pub async fn export<W: AsyncWrite + Unpin>(
    pool: &PgPool,
    tenant: TenantId,
    out: W,
) -> Result<ExportReport, TenancyError> {
    let mut out = tokio::io::BufWriter::new(out);
    let mut tx = TenantTx::begin_snapshot(pool, tenant).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM saas.tenant_tables WHERE exported ORDER BY 1")
            .fetch_all(&mut *tx)
            .await?;
    let mut report = ExportReport::default();
    for table in tables {
        let prefix = format!("{{\"table\":{},\"row\":", serde_json::Value::from(table.as_str()));
        // `table` is a regclass rendered by PostgreSQL: a quoted, qualified identifier.
        let sql = format!("SELECT to_jsonb(t)::text FROM {table} AS t");
        let mut rows = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await? {
            out.write_all(prefix.as_bytes()).await?;
            out.write_all(row.as_bytes()).await?;
            out.write_all(b"}\n").await?;
            n += 1;
        }
        report.rows.push((table, n));
    }
    out.flush().await?;
    tx.commit().await?;
    Ok(report)
}
