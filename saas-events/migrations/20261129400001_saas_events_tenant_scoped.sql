-- saas-events: the job tables get the canonical tenant policy (the application role
-- neither sees nor writes platform jobs, whose tenant is NULL: those are published only
-- through the platform role), and per-key order is per tenant.

SELECT saas.tenant_policy('saas.jobs');
SELECT saas.tenant_policy('saas.jobs_done');

-- An order key of one tenant neither holds back nor reveals another tenant's jobs.
DROP INDEX saas.jobs_order;
CREATE INDEX jobs_order ON saas.jobs (queue, tenant_key, order_key, id)
    WHERE order_key IS NOT NULL AND state IN ('pending', 'running');
