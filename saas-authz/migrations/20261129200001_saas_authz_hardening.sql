-- saas-authz hardening: users are visible only as themselves and as members of the
-- current tenant; custom roles store no rank (it is computed from the compiled role);
-- service-account API keys.

-- The authenticated user of the transaction (set with the tenant by TenantTx), or NULL.
CREATE FUNCTION saas.current_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION saas.current_user_id() TO saas_app, saas_platform;

ALTER TABLE saas.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE saas.users FORCE ROW LEVEL SECURITY;
-- A user reads and writes their own row: by id once known, or by the identity provider's
-- (issuer, subject) while being provisioned from a verified token.
CREATE POLICY users_self ON saas.users
    USING (id = (SELECT saas.current_user_id())
           OR (issuer = (SELECT NULLIF(current_setting('app.idp_issuer', true), ''))
               AND subject = (SELECT NULLIF(current_setting('app.idp_subject', true), ''))))
    WITH CHECK (id = (SELECT saas.current_user_id())
           OR (issuer = (SELECT NULLIF(current_setting('app.idp_issuer', true), ''))
               AND subject = (SELECT NULLIF(current_setting('app.idp_subject', true), ''))));
-- A tenant reads its own members (names and addresses in member lists), nothing else.
CREATE POLICY users_of_tenant ON saas.users FOR SELECT
    USING (EXISTS (SELECT 1 FROM saas.memberships m
                   WHERE m.user_id = users.id AND m.tenant_id = (SELECT saas.current_tenant_id())));

-- A custom role's rank follows what it includes; it is computed whenever it is used.
ALTER TABLE saas.roles DROP COLUMN rank;

-- Member keys act for their creator (scopes ∩ the creator's permissions now) and die with
-- their membership; service-account keys belong to the tenant and carry their own role.
ALTER TABLE saas.api_keys
    ADD COLUMN kind text NOT NULL DEFAULT 'member' CHECK (kind IN ('member', 'service')),
    ADD COLUMN role text CHECK (length(role) BETWEEN 1 AND 64),
    ADD CONSTRAINT api_keys_service_role CHECK ((kind = 'service') = (role IS NOT NULL));
CREATE INDEX api_keys_creator ON saas.api_keys (tenant_id, created_by) WHERE kind = 'member' AND revoked_at IS NULL;
CREATE INDEX invitations_inviter ON saas.invitations (tenant_id, invited_by) WHERE accepted_at IS NULL AND revoked_at IS NULL;
CREATE INDEX resource_grants_user ON saas.resource_grants (tenant_id, user_id) WHERE user_id IS NOT NULL;
