-- Outbound webhooks: endpoints our tenants register, and a log of every delivery attempt.

CREATE TABLE saas.webhook_endpoints (
    tenant_id            uuid        NOT NULL,
    id                   uuid        NOT NULL,
    url                  text        NOT NULL CHECK (length(url) BETWEEN 8 AND 2000),
    event_types          text[]      NOT NULL DEFAULT '{}',
    -- Signing secrets, encrypted with saas-core's keyring (AAD: tenant, column, endpoint).
    secret               text        NOT NULL,
    previous_secret      text,
    previous_expires_at  timestamptz,
    enabled              boolean     NOT NULL DEFAULT true,
    disabled_reason      text,
    failing_since        timestamptz,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SELECT saas.enable_tenant_rls('saas.webhook_endpoints');

CREATE TABLE saas.webhook_deliveries (
    tenant_id    uuid        NOT NULL,
    id           uuid        NOT NULL,
    endpoint_id  uuid        NOT NULL,
    message_id   text        NOT NULL,
    event_type   text        NOT NULL,
    attempt      integer     NOT NULL,
    status       integer,
    latency_ms   integer,
    response     text        CHECK (length(response) <= 2048),
    error        text        CHECK (length(error) <= 2048),
    attempted_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES saas.webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_endpoint ON saas.webhook_deliveries (tenant_id, endpoint_id, attempted_at DESC);
SELECT saas.enable_tenant_rls('saas.webhook_deliveries');
