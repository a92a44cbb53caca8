-- saas-billing: the local mirror of the provider's customers and subscriptions, and the
-- history of every status change. Tenant tables (the canonical policy, registered for
-- export and purge); the application role reads its tenant's rows and writes none —
-- only billing processing (the platform role) changes what a tenant pays for.

-- Only the platform writes these tables, and it resolves a customer by its id first, so
-- a customer id is never recorded for two tenants; unique keys still include
-- `tenant_id` (the isolation verifier's rule: a global unique key is an oracle wherever
-- a tenant can insert).
CREATE TABLE saas.billing_customers (
    tenant_id   uuid        NOT NULL PRIMARY KEY,
    customer_id text        COLLATE "C" NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 255),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, tenant_id)
);
SELECT saas.enable_tenant_rls('saas.billing_customers');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_customers FROM saas_app;

CREATE TABLE saas.billing_subscriptions (
    tenant_id            uuid        NOT NULL,
    subscription_id      text        COLLATE "C" NOT NULL CHECK (length(subscription_id) BETWEEN 1 AND 255),
    customer_id          text        COLLATE "C" NOT NULL,
    status               text        COLLATE "C" NOT NULL CHECK (status IN
                             ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'unpaid', 'paused', 'canceled')),
    -- When the mirror first saw the current status (the access policy's grace period).
    status_since         timestamptz NOT NULL,
    price_lookup_key     text,
    quantity             bigint      NOT NULL DEFAULT 1,
    current_period_end   timestamptz,
    trial_end            timestamptz,
    cancel_at_period_end boolean     NOT NULL DEFAULT false,
    synced_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id)
);
CREATE INDEX billing_subscriptions_id ON saas.billing_subscriptions (subscription_id);
SELECT saas.enable_tenant_rls('saas.billing_subscriptions');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_subscriptions FROM saas_app;

CREATE TABLE saas.billing_transitions (
    tenant_id       uuid        NOT NULL,
    subscription_id text        COLLATE "C" NOT NULL,
    from_status     text        COLLATE "C",
    to_status       text        COLLATE "C" NOT NULL,
    -- The event whose processing saw the change (`evt_…`), or `reconcile`.
    cause           text        NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_transitions_subscription ON saas.billing_transitions (tenant_id, subscription_id, at);
SELECT saas.enable_tenant_rls('saas.billing_transitions');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_transitions FROM saas_app;
