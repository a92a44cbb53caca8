-- saas-core: stored responses for Idempotency-Key retries, one set per tenant.

CREATE TABLE saas.idempotency_keys (
    tenant_id   uuid        NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea       NOT NULL,
    state       text        NOT NULL CHECK (state IN ('in_flight', 'done')),
    lease_until timestamptz NOT NULL,
    status      smallint,
    headers     jsonb,
    body        bytea,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON saas.idempotency_keys (expires_at);

ALTER TABLE saas.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE saas.idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON saas.idempotency_keys
    USING (tenant_id = (SELECT saas.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT saas.current_tenant_id()));
REVOKE ALL ON saas.idempotency_keys FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.idempotency_keys TO saas_app, saas_platform;
