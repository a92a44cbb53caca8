-- saas-authz RBAC: custom roles per tenant, resource grants, and the parent chain that
-- grants are inherited down.

CREATE TABLE saas.roles (
    tenant_id   uuid        NOT NULL REFERENCES saas.tenants (id),
    name        text        NOT NULL CHECK (name ~ '^[a-z][a-z0-9_-]{0,63}$'
                                            AND name NOT IN ('owner', 'admin', 'member', 'viewer')),
    permissions text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(permissions) <= 256),
    includes    text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(includes) <= 64),
    -- The lowest built-in role whose permissions cover this one's (1 viewer .. 4 owner),
    -- for the rule that nobody grants a role above their own.
    rank        smallint    NOT NULL CHECK (rank BETWEEN 1 AND 4),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
SELECT saas.enable_tenant_rls('saas.roles');

CREATE TABLE saas.resource_grants (
    tenant_id     uuid        NOT NULL REFERENCES saas.tenants (id),
    id            uuid        NOT NULL,
    resource_type text        NOT NULL CHECK (length(resource_type) BETWEEN 1 AND 64),
    resource_id   uuid        NOT NULL,
    user_id       uuid,
    role_subject  text,
    role          text        NOT NULL,
    inherit       boolean     NOT NULL DEFAULT true,
    granted_by    uuid        NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CHECK ((user_id IS NULL) <> (role_subject IS NULL))
);
CREATE INDEX resource_grants_resource ON saas.resource_grants (tenant_id, resource_type, resource_id);
SELECT saas.enable_tenant_rls('saas.resource_grants');

CREATE TABLE saas.resource_parents (
    tenant_id     uuid NOT NULL REFERENCES saas.tenants (id),
    resource_type text NOT NULL CHECK (length(resource_type) BETWEEN 1 AND 64),
    resource_id   uuid NOT NULL,
    parent_type   text NOT NULL CHECK (length(parent_type) BETWEEN 1 AND 64),
    parent_id     uuid NOT NULL,
    PRIMARY KEY (tenant_id, resource_type, resource_id),
    CHECK ((resource_type, resource_id) <> (parent_type, parent_id))
);
SELECT saas.enable_tenant_rls('saas.resource_parents');
