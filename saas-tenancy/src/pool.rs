//! The application pool, tuned for one transaction per request.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::error::TenancyError;

/// Pool options for the application role.
///
/// Built on [`saas_core::db::pool_options`]: no per-checkout ping (a round trip per
/// request, about 20% of a one-query request, measured), `max_lifetime` and error
/// handling instead. As a safety net, a connection returned to the pool has
/// `app.tenant_id` and `app.user_id` cleared at session level, so that even code that set
/// them outside a [`TenantTx`](crate::TenantTx) cannot leave a tenant or a user behind.
/// [`TenantTx`](crate::TenantTx) itself only ever sets them transaction-locally.
pub fn pool_options() -> PgPoolOptions {
    saas_core::db::pool_options().after_release(|conn, _meta| {
        Box::pin(async move {
            conn.execute("SELECT set_config('app.tenant_id', '', false), set_config('app.user_id', '', false)")
                .await?;
            Ok(true)
        })
    })
}

/// Connects the application pool to `url` with [`pool_options`] and `max_connections`.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, TenancyError> {
    let options = PgConnectOptions::from_str(url)?;
    Ok(pool_options()
        .max_connections(max_connections)
        .connect_with(options)
        .await?)
}
