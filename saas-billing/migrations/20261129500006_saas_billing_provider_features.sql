-- saas-billing: the features the provider says a tenant has (Stripe's active
-- entitlements: features attached to products in its Dashboard), by lookup key, for
-- applications that configure features there. Refreshed by billing processing (the
-- platform); the tenant reads its own.
CREATE TABLE saas.billing_provider_features (
    tenant_id uuid        NOT NULL,
    feature   text        COLLATE "C" NOT NULL CHECK (length(feature) BETWEEN 1 AND 80),
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature)
);
SELECT saas.enable_tenant_rls('saas.billing_provider_features');
REVOKE INSERT, UPDATE, DELETE ON saas.billing_provider_features FROM saas_app;
CREATE TRIGGER billing_provider_features_changed AFTER INSERT OR UPDATE OR DELETE ON saas.billing_provider_features
    FOR EACH ROW EXECUTE FUNCTION saas.billing_entitlements_changed();
