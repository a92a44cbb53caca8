//! The tenant's own data: its export, and its deletion.

use axum::Json;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{StatusCode, header};
use axum::response::Response;
use saas_core::audit::{self, Actor, AuditRecord};
use saas_core::{Principal, Problem};
use saas_tenancy::{TenantContext, TenantTx, lifecycle};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::app::Shared;

/// `GET /v1/export` (`tenant:export`, owners): every row of every tenant table as JSON
/// Lines, streamed from one consistent snapshot under row-level security (memory stays
/// flat however large the tenant). Audited before the first byte.
#[utoipa::path(get, path = "/v1/export", tag = "tenant",
    responses((status = 200, description = "Every row of the tenant, one JSON object per line", content_type = "application/x-ndjson", body = String)))]
pub(crate) async fn export(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    mut tx: TenantTx,
) -> Result<Response, Problem> {
    let tenant = tx.tenant();
    let record = AuditRecord::new(tenant, Actor::from(&principal), "tenant.exported")?;
    audit::record(&mut tx, &record).await?;
    tx.commit().await?;
    let (writer, reader) = tokio::io::duplex(64 * 1024);
    let pool = shared.db.app.clone();
    tokio::spawn(async move {
        if let Err(e) = saas_tenancy::export::export(&pool, tenant, writer).await {
            // The client sees a truncated stream; the log says why.
            tracing::error!(%tenant, error = %e, "export failed");
        }
    });
    let stream = futures_util::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CONTENT_DISPOSITION, "attachment; filename=\"export.jsonl\"")
        .body(Body::from_stream(stream))
        .map_err(|e| Problem::internal().with_internal(e))
}

/// `POST /v1/tenant/deletion` (`tenant:delete`, owners): the tenant stops answering at
/// once (404, as if unknown) and is purged after the retention period unless platform
/// staff restore it; its subscriptions are cancelled.
#[utoipa::path(post, path = "/v1/tenant/deletion", tag = "tenant",
    responses((status = 202, description = "Deletion requested; purged after the retention", body = Object)))]
pub(crate) async fn request_deletion(
    Extension(shared): Extension<Shared>,
    principal: Principal,
    tenant: TenantContext,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let t = lifecycle::request_deletion(
        &shared.platform,
        tenant.id(),
        None,
        Actor::from(&principal),
        &*shared.clock,
    )
    .await?;
    shared.tenants.invalidate(t.id).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "tenant": t.id, "status": "pending_deletion", "purge_after": t.purge_after })),
    ))
}
