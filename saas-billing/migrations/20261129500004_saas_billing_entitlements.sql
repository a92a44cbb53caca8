-- saas-billing: entitlements — grants and overrides made to tenants, usage counted per
-- period — and the notifications that keep every process's in-memory snapshot current.

-- Usage periods reset at the subscription's billing anchor.
ALTER TABLE saas.billing_subscriptions ADD COLUMN current_period_start timestamptz;

-- What staff grant a tenant beyond its plan: an override (until removed) or a grant
-- (until `ends_at`). The most generous of plan, overrides and grants wins. Written by
-- the platform only; the tenant reads its own.
CREATE TABLE saas.billing_entitlement_grants (
    tenant_id  uuid        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    feature    text        COLLATE "C" NOT NULL CHECK (length(feature) BETWEEN 1 AND 64),
    kind       text        COLLATE "C" NOT NULL CHECK (kind IN ('override', 'grant')),
    -- Exactly one: a switch, an amount (a limit or a metered allowance), a tier.
    switch     boolean,
    amount     bigint      CHECK (amount >= 0),
    tier       text        CHECK (length(tier) BETWEEN 1 AND 64),
    starts_at  timestamptz NOT NULL DEFAULT now(),
    ends_at    timestamptz,
    reason     text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (num_nonnulls(switch, amount, tier) = 1),
    CHECK (kind = 'override' OR ends_at IS NOT NULL),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
SELECT saas.enable_tenant_rls('saas.billing_entitlement_grants');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_entitlement_grants FROM saas_app;

-- Each usage, once: the application records it under its event id (a retry or a
-- concurrent duplicate is a no-op). It may add usage to its own tenant, never change or
-- remove any.
CREATE TABLE saas.billing_usage_events (
    tenant_id    uuid        NOT NULL,
    event_id     text        COLLATE "C" NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    feature      text        COLLATE "C" NOT NULL CHECK (length(feature) BETWEEN 1 AND 64),
    amount       bigint      NOT NULL CHECK (amount > 0),
    period_start timestamptz NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    -- When the provider's meter was told (metered prices only).
    reported_at  timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX billing_usage_events_unreported ON saas.billing_usage_events (at) WHERE reported_at IS NULL;
SELECT saas.enable_tenant_rls('saas.billing_usage_events');
REVOKE UPDATE, DELETE ON saas.billing_usage_events FROM saas_app;

-- The counters, maintained by the trigger below (the application cannot write them).
CREATE TABLE saas.billing_usage (
    tenant_id    uuid        NOT NULL,
    feature      text        COLLATE "C" NOT NULL,
    period_start timestamptz NOT NULL,
    used         bigint      NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, feature, period_start)
);
SELECT saas.enable_tenant_rls('saas.billing_usage');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_usage FROM saas_app;

-- Runs as the table owner (the application may not write counters), still under the
-- tables' forced row-level security: the event's tenant is the transaction's.
CREATE FUNCTION saas.billing_count_usage() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    total bigint;
BEGIN
    INSERT INTO saas.billing_usage AS u (tenant_id, feature, period_start, used)
    VALUES (NEW.tenant_id, NEW.feature, NEW.period_start, NEW.amount)
    ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = u.used + excluded.used
    RETURNING used INTO total;
    PERFORM pg_notify('saas_billing_entitlements', json_build_object(
        'kind', 'usage', 'tenant', NEW.tenant_id, 'feature', NEW.feature,
        'period_start', NEW.period_start, 'used', total)::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION saas.billing_count_usage() FROM PUBLIC;
CREATE TRIGGER billing_count_usage AFTER INSERT ON saas.billing_usage_events
    FOR EACH ROW EXECUTE FUNCTION saas.billing_count_usage();

-- A tenant's subscription or grants changed: every process reloads that tenant.
CREATE FUNCTION saas.billing_entitlements_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('saas_billing_entitlements', json_build_object(
        'kind', 'tenant', 'tenant', COALESCE(NEW.tenant_id, OLD.tenant_id))::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_subscriptions_changed AFTER INSERT OR UPDATE OR DELETE ON saas.billing_subscriptions
    FOR EACH ROW EXECUTE FUNCTION saas.billing_entitlements_changed();
CREATE TRIGGER billing_grants_changed AFTER INSERT OR UPDATE OR DELETE ON saas.billing_entitlement_grants
    FOR EACH ROW EXECUTE FUNCTION saas.billing_entitlements_changed();
