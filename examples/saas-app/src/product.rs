//! What the product sells and who may do what: the billing catalog and the permission
//! model, both in code.

use saas_authz::rbac::{Model, ModelError};
use saas_billing::catalog::{Catalog, CatalogError, Feature, Plan, Price};

/// Every permission the API checks. The built-in roles take their defaults from the
/// names (`viewer` reads and lists, `member` also creates and updates the product's
/// resources, `admin` everything but billing and the tenant, `owner` everything): so
/// every member sees the member list, and `api_key:manage` (listing and revoking the
/// tenant's keys) is not a read action, leaving it to admins.
pub const PERMISSIONS: &[&str] = &[
    "project:list",
    "project:read",
    "project:create",
    "project:update",
    "project:delete",
    "task:list",
    "task:read",
    "task:create",
    "task:update",
    "task:delete",
    "member:list",
    "member:read",
    "member:update",
    "member:delete",
    "invitation:create",
    "api_key:manage",
    "webhook:manage",
    "audit:read",
    "billing:read",
    "billing:manage",
    "tenant:export",
    "tenant:delete",
];

/// The permission model.
pub fn model() -> Result<Model, ModelError> {
    Model::new(PERMISSIONS)
}

/// Free, Pro (monthly or annual, 14-day trial) and Business (per seat, monthly or annual).
/// Amounts are in cents.
pub fn catalog() -> Result<Catalog, CatalogError> {
    Catalog::new("eur")
        .plan(
            Plan::new("free")
                .name("Free")
                .feature("projects", Feature::Limit(3))
                .feature("seats", Feature::Limit(5))
                .feature("api_calls", Feature::metered_monthly(1_000))
                .feature("support_tier", Feature::tier("community")),
        )
        .plan(
            Plan::new("pro")
                .name("Pro")
                .trial_days(14)
                .price(Price::monthly("pro_monthly", 2900))
                .price(Price::annual("pro_annual", 29000))
                .feature("projects", Feature::Limit(50))
                .feature("seats", Feature::Limit(10))
                .feature("api_calls", Feature::metered_monthly(100_000))
                .feature("task_export", Feature::On)
                .feature("support_tier", Feature::tier("email")),
        )
        .plan(
            Plan::new("business")
                .name("Business")
                .price(Price::per_seat_monthly("business_seat_monthly", 1500))
                .price(Price::per_seat_annual("business_seat_annual", 15000))
                .feature("projects", Feature::Limit(10_000))
                .feature("seats", Feature::Limit(1_000))
                .feature("api_calls", Feature::metered_monthly(1_000_000))
                .feature("task_export", Feature::On)
                .feature("sso", Feature::On)
                .feature("support_tier", Feature::tier("priority")),
        )
        .validate()
}

/// Counts a tenant's projects for the `projects` limit (`$1`: the tenant).
pub const PROJECTS_COUNT: &str = "SELECT count(*) FROM projects WHERE tenant_id = $1 AND NOT archived";

/// The flag that releases task export as CSV: on for half of the tenants (sticky per
/// tenant), in every environment; staff force it per tenant with a tenant override.
pub const TASKS_CSV_FLAG: &str = "tasks-csv-export";

/// The product's flags, created at start when missing (their later changes — rollout,
/// overrides, the kill switch — are made through `saas_flags::FlagAdmin` and kept).
pub fn flags() -> Vec<saas_flags::FlagDefinition> {
    use saas_flags::{FlagDefinition, FlagKind, Strategy};
    let rollout = || vec![Strategy::rollout(50, "tenantId", TASKS_CSV_FLAG)];
    vec![
        FlagDefinition::new(TASKS_CSV_FLAG)
            .kind(FlagKind::Release)
            .description("GET /v1/projects/{id}/tasks.csv, released to half of the tenants")
            .enable_in("development", rollout())
            .enable_in("production", rollout()),
    ]
}
