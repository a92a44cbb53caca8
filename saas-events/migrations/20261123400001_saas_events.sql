-- saas-events: the outbox / job table, schedules, receipts for idempotent handlers.

-- One row per event or job. Tenant events carry their tenant (from the publishing
-- transaction's app.tenant_id); platform-level ones have none. Workers (platform role)
-- claim, complete, retry and dead-letter rows; the application role only publishes and
-- reads its own tenant's rows.
CREATE TABLE saas.jobs (
    id           uuid        NOT NULL,
    queue        text        NOT NULL CHECK (length(queue) BETWEEN 1 AND 64),
    kind         text        NOT NULL CHECK (length(kind) BETWEEN 1 AND 128),
    tenant_id    uuid,
    -- The fairness key: the tenant, or the nil uuid for platform jobs.
    tenant_key   uuid        NOT NULL GENERATED ALWAYS AS (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)) STORED,
    payload      jsonb       NOT NULL,
    priority     smallint    NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
    locked_until timestamptz,
    locked_by    uuid,
    unique_key   text        CHECK (length(unique_key) <= 256),
    order_key    text        CHECK (length(order_key) <= 256),
    last_error   text,
    finished_at  timestamptz
);
-- Ids are unique per tenant (an id chosen by one tenant can neither collide with nor
-- reveal another tenant's); the index leads with the id for the workers' lookups.
CREATE UNIQUE INDEX jobs_id ON saas.jobs (id, tenant_id) NULLS NOT DISTINCT;
-- Ready work per queue and tenant, in the order a tenant's jobs are taken.
CREATE INDEX jobs_ready ON saas.jobs (queue, tenant_key, priority DESC, run_at, id) WHERE state = 'pending';
-- A unique key holds while its job is pending or running.
-- Per tenant: another tenant's key neither blocks a publish nor reveals that it exists.
CREATE UNIQUE INDEX jobs_unique ON saas.jobs (tenant_id, queue, unique_key) NULLS NOT DISTINCT WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');
-- Per-key order: the earliest unfinished job of a key goes first.
CREATE INDEX jobs_order ON saas.jobs (queue, order_key, id) WHERE order_key IS NOT NULL AND state IN ('pending', 'running');
-- No index for running jobs: the table holds only open work and dead letters (finished
-- jobs move to saas.jobs_done), so the periodic rescue of expired claims scans it.
CREATE INDEX jobs_dead ON saas.jobs (queue, finished_at) WHERE state = 'dead';

ALTER TABLE saas.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE saas.jobs FORCE ROW LEVEL SECURITY;
-- A tenant transaction publishes and sees its tenant's rows; a transaction without a
-- tenant publishes platform rows only.
CREATE POLICY tenant_isolation ON saas.jobs
    USING (tenant_id IS NOT DISTINCT FROM (SELECT saas.current_tenant_id()))
    WITH CHECK (tenant_id IS NOT DISTINCT FROM (SELECT saas.current_tenant_id()));
REVOKE ALL ON saas.jobs FROM PUBLIC;
GRANT SELECT, INSERT ON saas.jobs TO saas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.jobs TO saas_platform;
-- A tenant table with its own policy (platform rows have no tenant): registered for the
-- isolation verifier, tenant export and deletion.
INSERT INTO saas.tenant_tables (table_name) VALUES ('saas.jobs') ON CONFLICT DO NOTHING;

-- Finished jobs move here (one DELETE + INSERT, cheaper than keeping them in the queue
-- table, which then holds only open work and dead letters); pruned by age.
CREATE TABLE saas.jobs_done (
    id          uuid        NOT NULL,
    queue       text        NOT NULL,
    kind        text        NOT NULL,
    tenant_id   uuid,
    attempts    integer     NOT NULL,
    unique_key  text,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE INDEX jobs_done_tenant ON saas.jobs_done (tenant_id, finished_at);
CREATE INDEX jobs_done_finished ON saas.jobs_done USING brin (finished_at);
-- Ids are UUIDv7, so they follow insertion order closely: a BRIN index finds one cheaply.
CREATE INDEX jobs_done_id ON saas.jobs_done USING brin (id);

ALTER TABLE saas.jobs_done ENABLE ROW LEVEL SECURITY;
ALTER TABLE saas.jobs_done FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON saas.jobs_done
    USING (tenant_id IS NOT DISTINCT FROM (SELECT saas.current_tenant_id()))
    WITH CHECK (tenant_id IS NOT DISTINCT FROM (SELECT saas.current_tenant_id()));
REVOKE ALL ON saas.jobs_done FROM PUBLIC;
GRANT SELECT ON saas.jobs_done TO saas_app;
GRANT SELECT, INSERT, DELETE ON saas.jobs_done TO saas_platform;
INSERT INTO saas.tenant_tables (table_name) VALUES ('saas.jobs_done') ON CONFLICT DO NOTHING;

-- Recurring jobs: the process that moves next_run_at forward enqueues the run.
CREATE TABLE saas.job_schedules (
    name        text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    cron        text        NOT NULL,
    next_run_at timestamptz NOT NULL
);
REVOKE ALL ON saas.job_schedules FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.job_schedules TO saas_platform;

-- Handlers that must act once per event record the event here, in their own tenant
-- transaction (see `idempotency::once`).
CREATE TABLE saas.job_receipts (
    tenant_id  uuid        NOT NULL,
    job_id     uuid        NOT NULL,
    handler    text        NOT NULL CHECK (length(handler) BETWEEN 1 AND 128),
    handled_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, job_id, handler)
);
SELECT saas.enable_tenant_rls('saas.job_receipts');
