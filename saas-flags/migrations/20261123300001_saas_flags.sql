-- saas-flags: flag definitions, segments, evaluation counts.
--
-- Definitions are platform data, not tenant data: the application role reads them,
-- only the platform role (saas-flags' admin functions, through SystemTx) writes them.
-- Every change is also recorded in the audit log (platform chain, and the tenant's own
-- chain for tenant overrides).

-- Bumped by every change; a process's flag set carries the value it was built from.
CREATE SEQUENCE saas.flag_changes;

CREATE TABLE saas.flags (
    name        text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    definition  jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    change_seq  bigint      NOT NULL,
    archived_at timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE saas.flag_segments (
    id          integer     PRIMARY KEY,
    name        text        CHECK (length(name) <= 200),
    constraints jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    change_seq  bigint      NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Evaluation counts per flag and environment, flushed in batches by each process.
CREATE TABLE saas.flag_usage (
    name              text        NOT NULL,
    environment       text        NOT NULL,
    evaluations       bigint      NOT NULL CHECK (evaluations >= 0),
    last_evaluated_at timestamptz NOT NULL,
    PRIMARY KEY (name, environment)
);

REVOKE ALL ON saas.flags, saas.flag_segments, saas.flag_usage FROM PUBLIC;
GRANT SELECT ON saas.flags, saas.flag_segments TO saas_app;
GRANT SELECT, INSERT, UPDATE ON saas.flags, saas.flag_segments TO saas_platform;
GRANT SELECT, INSERT, UPDATE ON saas.flag_usage TO saas_app, saas_platform;
GRANT USAGE ON SEQUENCE saas.flag_changes TO saas_platform;
