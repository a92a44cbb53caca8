-- saas-tenancy: the tenants table, the registry of tenant tables, the helper that turns a
-- table into a tenant table, and support sessions.

CREATE TABLE saas.tenants (
    id               uuid        PRIMARY KEY,
    slug             text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name             text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status           text        NOT NULL DEFAULT 'active'
                                 CHECK (status IN ('active', 'suspended', 'pending_deletion', 'purged')),
    suspended_reason text        CHECK (length(suspended_reason) <= 500),
    purge_after      timestamptz,
    created_by       uuid,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    purged_at        timestamptz,
    CHECK ((status = 'pending_deletion') = (purge_after IS NOT NULL))
);

-- The application reads tenants to resolve requests and creates them at sign-up; every
-- other change of lifecycle goes through the platform role.
REVOKE ALL ON saas.tenants FROM PUBLIC;
GRANT SELECT, INSERT ON saas.tenants TO saas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.tenants TO saas_platform;

-- Every table that holds tenant rows, for the verifier, export and purge.
CREATE TABLE saas.tenant_tables (
    table_name    regclass    PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON saas.tenant_tables FROM PUBLIC;
GRANT SELECT ON saas.tenant_tables TO saas_app, saas_platform;

-- Turns `tbl` into a tenant table: ENABLE and FORCE row-level security, one policy with
-- USING and WITH CHECK on the transaction's tenant (no tenant set: no rows, no writes),
-- DML for the application and platform roles, and an entry in the registry.
-- Run it as the table's owner, in a migration, after creating the table.
CREATE FUNCTION saas.enable_tenant_rls(tbl regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = tbl AND attname = 'tenant_id' AND NOT attisdropped AND atttypid = 'uuid'::regtype
    ) THEN
        RAISE EXCEPTION '% has no tenant_id uuid column', tbl USING ERRCODE = 'invalid_table_definition';
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', tbl);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s '
        'USING (tenant_id = (SELECT NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)) '
        'WITH CHECK (tenant_id = (SELECT NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid))',
        tbl);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', tbl);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO saas_app, saas_platform', tbl);
    INSERT INTO saas.tenant_tables (table_name) VALUES (tbl) ON CONFLICT DO NOTHING;
END
$$;
REVOKE ALL ON FUNCTION saas.enable_tenant_rls(regclass) FROM PUBLIC;

-- The audit log is a tenant table too (exported with the tenant's data).
INSERT INTO saas.tenant_tables (table_name) VALUES ('saas.audit_log') ON CONFLICT DO NOTHING;

-- Platform staff acting inside a tenant, time-boxed, visible to the tenant.
CREATE TABLE saas.support_sessions (
    tenant_id  uuid        NOT NULL REFERENCES saas.tenants (id),
    id         uuid        NOT NULL,
    staff_id   uuid        NOT NULL,
    reason     text        NOT NULL CHECK (length(reason) BETWEEN 3 AND 500),
    can_write  boolean     NOT NULL DEFAULT false,
    opened_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL CHECK (expires_at > opened_at),
    closed_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
SELECT saas.enable_tenant_rls('saas.support_sessions');
-- Only the platform opens and closes sessions; the tenant reads them.
REVOKE INSERT, UPDATE, DELETE ON saas.support_sessions FROM saas_app;

-- Readiness checks, running as the application role, read this history.
GRANT SELECT ON saas.tenancy_migrations TO saas_app, saas_platform;

-- saas-core's stored idempotent responses belong to the tenant too (purged with it).
INSERT INTO saas.tenant_tables (table_name) VALUES ('saas.idempotency_keys') ON CONFLICT DO NOTHING;
