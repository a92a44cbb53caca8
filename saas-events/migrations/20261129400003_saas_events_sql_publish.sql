-- saas-events: publishing from SQL, for writes that must enqueue their follow-up in the
-- same statement (a trigger, a CTE): `saas.publish_job(queue, kind, payload, tenant)`
-- is the SQL twin of `saas_events::publish_with` with default options — same row, same
-- wake-up notification, a time-ordered (version 7) id like the Rust side's `JobId`.

-- A UUIDv7: the millisecond Unix time in the first 48 bits, then random bits (from a v4
-- whose version nibble becomes 7; its variant bits are already RFC 4122's).
CREATE FUNCTION saas.uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
GRANT EXECUTE ON FUNCTION saas.uuid_v7() TO saas_app, saas_platform;

-- Enqueues a job for `tenant` (default: the transaction's tenant, as `publish` does;
-- NULL for a platform job) and wakes the workers of `queue`. Runs with the caller's
-- rights: the application role can publish only for its own tenant (the jobs table's
-- row-level security), like `publish` in a `TenantTx`.
CREATE FUNCTION saas.publish_job(queue text, kind text, payload jsonb, tenant uuid DEFAULT saas.current_tenant_id())
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    job uuid := saas.uuid_v7();
BEGIN
    INSERT INTO saas.jobs (id, queue, kind, tenant_id, payload, priority, run_at, created_at, max_attempts)
    VALUES (job, queue, kind, tenant, payload, 0, now(), now(), 10);
    PERFORM pg_notify('saas_events', json_build_object('queue', queue)::text);
    RETURN job;
END
$$;
REVOKE ALL ON FUNCTION saas.publish_job(text, text, jsonb, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION saas.publish_job(text, text, jsonb, uuid) TO saas_app, saas_platform;
