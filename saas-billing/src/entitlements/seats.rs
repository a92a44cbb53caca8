//! Seats for saas-authz's invitations, from entitlements.

use std::sync::Arc;

use saas_authz::SeatLimit;
use saas_core::TenantId;
use sqlx::PgConnection;

use super::set::Entitlements;

/// saas-authz's [`SeatLimit`] from a limit feature (`seats` by default): an invitation is
/// refused once members plus pending invitations reach the tenant's limit (its plan, an
/// override or a grant). Without such a feature in the catalog, seats are unlimited.
#[derive(Debug, Clone)]
pub struct Seats {
    set: Arc<Entitlements>,
    feature: Arc<str>,
}

impl Seats {
    /// Seats from the feature `seats` of `set`.
    pub fn new(set: Arc<Entitlements>) -> Self {
        Self::feature(set, "seats")
    }

    /// Seats from the limit feature `feature`.
    pub fn feature(set: Arc<Entitlements>, feature: &str) -> Self {
        Self {
            set,
            feature: feature.into(),
        }
    }
}

impl SeatLimit for Seats {
    async fn seats(&self, _: &mut PgConnection, tenant: TenantId) -> Result<Option<u32>, String> {
        if self
            .set
            .catalog()
            .plans()
            .iter()
            .all(|p| p.feature_value(&self.feature).is_none())
        {
            return Ok(None);
        }
        let limit = self.set.check(tenant, &self.feature, 0).limit.unwrap_or(0);
        Ok(Some(u32::try_from(limit).unwrap_or(u32::MAX)))
    }
}
