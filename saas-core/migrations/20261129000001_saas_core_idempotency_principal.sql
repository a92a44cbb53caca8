-- saas-core: stored idempotent responses belong to the principal that caused them, may be
-- sealed with the keyring, and are finished only by the attempt holding the lease.

-- A replay cache of at most a day: entries from before they were scoped to a principal
-- cannot be attributed to one and are dropped.
DELETE FROM saas.idempotency_keys;
ALTER TABLE saas.idempotency_keys
    ADD COLUMN principal text NOT NULL CHECK (length(principal) BETWEEN 1 AND 200),
    ADD COLUMN lease_id uuid,
    -- The body sealed with the keyring (AAD: tenant, principal, key), instead of `body`.
    ADD COLUMN sealed_body text,
    -- The response was marked `Cache-Control: no-store` and no keyring was configured:
    -- nothing of it was kept, and a replay says so.
    ADD COLUMN withheld boolean NOT NULL DEFAULT false;
ALTER TABLE saas.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE saas.idempotency_keys ADD PRIMARY KEY (tenant_id, principal, key);
