-- saas-core: the schema every saas-kit crate uses, the application and platform group roles, and the
-- tenant-scoped, append-only, hash-chained audit log.

CREATE SCHEMA IF NOT EXISTS saas;

-- The application's login role is made a member of saas_app; saas_app owns nothing,
-- is not superuser and cannot bypass row-level security.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'saas_app') THEN
        CREATE ROLE saas_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- Platform jobs log in as a role with BYPASSRLS that is a member of saas_platform.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'saas_platform') THEN
        CREATE ROLE saas_platform NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA saas TO saas_app, saas_platform;

-- The tenant of the current transaction, or NULL: every policy reads it this way, so the
-- planner evaluates it once per statement and uses it as an index condition.
CREATE FUNCTION saas.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION saas.current_tenant_id() TO saas_app, saas_platform;

CREATE TABLE saas.audit_log (
    tenant_id   uuid        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    id          uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    actor_type  text        NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system', 'support')),
    actor_id    text        NOT NULL CHECK (length(actor_id) BETWEEN 1 AND 128),
    action      text        NOT NULL CHECK (length(action) <= 128 AND action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    target_type text        CHECK (length(target_type) <= 64),
    target_id   text        CHECK (length(target_id) <= 128),
    ip          text        CHECK (length(ip) <= 45),
    user_agent  text        CHECK (length(user_agent) <= 512),
    request_id  text        CHECK (length(request_id) <= 128),
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, id)
);

CREATE INDEX audit_log_tenant_time ON saas.audit_log (tenant_id, occurred_at);
CREATE INDEX audit_log_tenant_action ON saas.audit_log (tenant_id, action, seq);
CREATE INDEX audit_log_tenant_actor ON saas.audit_log (tenant_id, actor_type, actor_id, seq);

ALTER TABLE saas.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE saas.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON saas.audit_log
    USING (tenant_id = (SELECT saas.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT saas.current_tenant_id()));

REVOKE ALL ON saas.audit_log FROM PUBLIC;
GRANT SELECT, INSERT ON saas.audit_log TO saas_app, saas_platform;

-- Append-only, even for the owner: rows are never updated, and deleted only by the
-- retention function, which marks its transaction.
CREATE FUNCTION saas.audit_log_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'saas.audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('saas.audit_prune', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'saas.audit_log rows are removed only by audit retention' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON saas.audit_log
    FOR EACH ROW EXECUTE FUNCTION saas.audit_log_guard();

-- Readiness checks, running as the application role, compare this history with the
-- migrations the binary knows.
GRANT SELECT ON saas.core_migrations TO saas_app, saas_platform;
