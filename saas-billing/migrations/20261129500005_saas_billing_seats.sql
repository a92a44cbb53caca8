-- saas-billing: per-seat subscriptions follow the membership count. A membership added or
-- removed queues one `billing.sync_seats` job for its tenant, 30 seconds later; changes
-- meanwhile join the pending job (its unique key), so a burst of invitations accepted
-- updates the subscription once. It is a tenant job (the application role changes
-- memberships): its handler trusts nothing but its tenant, and recounts from the source.
CREATE FUNCTION saas.billing_seats_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, priority, run_at, created_at, max_attempts, unique_key)
    VALUES (saas.uuid_v7(), 'default', 'billing.sync_seats', COALESCE(NEW.tenant_id, OLD.tenant_id), '{}'::jsonb, 0,
            now() + interval '30 seconds', now(), 10, 'billing.sync_seats')
    ON CONFLICT (tenant_id, queue, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
    DO NOTHING;
    RETURN NULL;
END
$$;

-- saas-authz's memberships, when its migrations ran first (as saas-kit's order has them).
DO $$
BEGIN
    IF to_regclass('saas.memberships') IS NOT NULL THEN
        CREATE TRIGGER billing_seats_changed AFTER INSERT OR DELETE ON saas.memberships
            FOR EACH ROW EXECUTE FUNCTION saas.billing_seats_changed();
    END IF;
END
$$;
