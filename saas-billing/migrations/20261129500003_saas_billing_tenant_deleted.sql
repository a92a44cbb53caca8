-- saas-billing: a tenant whose deletion is requested stops paying. The status change
-- (a platform transaction in saas-tenancy's lifecycle) queues a platform job in the same
-- transaction; its handler cancels the tenant's live subscriptions at the provider.
-- Restoring the tenant does not resubscribe it.
CREATE FUNCTION saas.billing_tenant_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM saas.publish_job('default', 'billing.tenant_deleted', jsonb_build_object('tenant_id', NEW.id), NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_tenant_deleted AFTER UPDATE OF status ON saas.tenants
    FOR EACH ROW
    WHEN (NEW.status = 'pending_deletion' AND OLD.status IS DISTINCT FROM 'pending_deletion')
    EXECUTE FUNCTION saas.billing_tenant_deleted();

-- Processed webhook events are kept for `prune_inbox`'s period, then deleted.
CREATE INDEX billing_inbox_processed ON saas.billing_inbox (processed_at) WHERE processed_at IS NOT NULL;
