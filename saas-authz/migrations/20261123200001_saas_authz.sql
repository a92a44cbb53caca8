-- saas-authz: users, memberships, tenant authentication settings, API keys, invitations.

-- One row per identity-provider subject. Not tenant-owned: a user may belong to many
-- tenants. The application provisions users on first sight and reads them to show
-- members and to match invitations.
CREATE TABLE saas.users (
    id             uuid        PRIMARY KEY,
    issuer         text        NOT NULL CHECK (length(issuer) BETWEEN 1 AND 500),
    subject        text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    email          text        CHECK (length(email) <= 320),
    email_verified boolean     NOT NULL DEFAULT false,
    name           text        CHECK (length(name) <= 500),
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (issuer, subject)
);
CREATE INDEX users_email ON saas.users (lower(email));
REVOKE ALL ON saas.users FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON saas.users TO saas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.users TO saas_platform;

CREATE TABLE saas.memberships (
    tenant_id  uuid        NOT NULL REFERENCES saas.tenants (id),
    user_id    uuid        NOT NULL REFERENCES saas.users (id),
    roles      text[]      NOT NULL CHECK (cardinality(roles) BETWEEN 1 AND 16),
    joined_at  timestamptz NOT NULL,
    invited_by uuid,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON saas.memberships (user_id);
SELECT saas.enable_tenant_rls('saas.memberships');

CREATE TABLE saas.tenant_auth_settings (
    tenant_id             uuid        PRIMARY KEY REFERENCES saas.tenants (id),
    require_mfa           boolean     NOT NULL DEFAULT false,
    invitations_any_email boolean     NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL
);
SELECT saas.enable_tenant_rls('saas.tenant_auth_settings');

-- Only a SHA-256 digest of the 256-bit secret is stored.
CREATE TABLE saas.api_keys (
    tenant_id      uuid        NOT NULL REFERENCES saas.tenants (id),
    id             uuid        NOT NULL,
    name           text        NOT NULL CHECK (length(name) BETWEEN 1 AND 400),
    display_prefix text        NOT NULL CHECK (length(display_prefix) <= 80),
    secret_hash    bytea       NOT NULL CHECK (length(secret_hash) = 32),
    scopes         text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(scopes) <= 64),
    created_by     uuid        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    revoked_by     uuid,
    last_used_at   timestamptz,
    PRIMARY KEY (tenant_id, id)
);
SELECT saas.enable_tenant_rls('saas.api_keys');
-- Keys are never deleted by the application: revoked keys stay for the record.
REVOKE DELETE ON saas.api_keys FROM saas_app;

CREATE TABLE saas.invitations (
    tenant_id    uuid        NOT NULL REFERENCES saas.tenants (id),
    id           uuid        NOT NULL,
    email        text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320 AND email = lower(email)),
    role         text        NOT NULL CHECK (length(role) BETWEEN 1 AND 64),
    token_hash   bytea       NOT NULL CHECK (length(token_hash) = 32),
    invited_by   uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    sent_count   integer     NOT NULL DEFAULT 1,
    last_sent_at timestamptz NOT NULL,
    accepted_at  timestamptz,
    accepted_by  uuid,
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    CHECK (accepted_at IS NULL OR revoked_at IS NULL)
);
-- At most one open invitation per address and tenant.
CREATE UNIQUE INDEX invitations_open_email ON saas.invitations (tenant_id, email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
SELECT saas.enable_tenant_rls('saas.invitations');
REVOKE DELETE ON saas.invitations FROM saas_app;

GRANT SELECT ON saas.authz_migrations TO saas_app, saas_platform;
