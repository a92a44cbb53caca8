//! Cache invalidation across processes: changes send a typed change (JSON) in their
//! transaction (delivered on commit); every process listens through saas-core's one
//! listener and drops what changed.

use saas_core::notify::{self, Notice};
use saas_core::{ApiKeyId, TenantId, UserId};
use sqlx::{PgConnection, PgPool};

/// The channel saas-authz notifies on.
pub const CHANNEL: &str = "saas_authz";

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub(crate) enum Change {
    /// A member joined, left, or had their roles changed.
    Member { tenant: TenantId, user: UserId },
    /// A tenant's authentication settings.
    Settings { tenant: TenantId },
    /// An API key was revoked.
    ApiKey { key: ApiKeyId },
    /// A tenant's roles, grants, resource parents or service-account keys.
    Policy { tenant: TenantId },
}

impl Change {
    /// The tenant whose RBAC policy this change touches, if any.
    pub(crate) fn policy_tenant(&self) -> Option<TenantId> {
        match self {
            Change::Member { tenant, .. } | Change::Policy { tenant } => Some(*tenant),
            Change::Settings { .. } | Change::ApiKey { .. } => None,
        }
    }
}

/// Queues `change` on [`CHANNEL`]; PostgreSQL delivers it when the transaction commits.
pub(crate) async fn send(conn: &mut PgConnection, change: &Change) -> Result<(), sqlx::Error> {
    notify::send(conn, CHANNEL, change).await
}

/// Listens on [`CHANNEL`] until `until` completes, calling `on` with each change or
/// [`Notice::Gap`] (drop everything).
pub(crate) fn spawn<F>(
    pool: PgPool,
    until: impl std::future::Future<Output = ()> + Send + 'static,
    mut on: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(Notice<Change>) + Send + 'static,
{
    notify::spawn(pool, CHANNEL, until, move |n| {
        on(n);
        std::future::ready(())
    })
}
