-- saas-billing: the webhook inbox. Every verified Stripe event is stored here under its
-- id, raw (the exact bytes Stripe signed), before anything acts on it; processing
-- marks it. It belongs to the platform, not to a tenant: an event names a Stripe
-- customer, which tenant that is becomes known only when the event is processed, and
-- the ids are Stripe's, unique across all tenants (so no `tenant_id` column: the
-- application role has no access at all).

CREATE TABLE saas.billing_inbox (
    event_id     text        COLLATE "C" PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 255),
    type         text        COLLATE "C" NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    livemode     boolean     NOT NULL,
    -- Stripe's `created` of the event.
    created      timestamptz NOT NULL,
    -- `data.object.id`: the object the event is about.
    object_id    text        COLLATE "C",
    raw          text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    -- What processing did (`applied`, `ignored: <why>`, `failed: <why>`).
    outcome      text
);
CREATE INDEX billing_inbox_unprocessed ON saas.billing_inbox (received_at) WHERE processed_at IS NULL;
CREATE INDEX billing_inbox_object ON saas.billing_inbox (object_id, created);

REVOKE ALL ON saas.billing_inbox FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON saas.billing_inbox TO saas_platform;

-- Storing an event queues its processing in the same statement (so in the same
-- transaction): one round trip per delivery, and no event is stored without its job.
CREATE FUNCTION saas.billing_inbox_enqueue() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM saas.publish_job('default', 'billing.stripe_event', jsonb_build_object('event_id', NEW.event_id), NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_inbox_enqueue AFTER INSERT ON saas.billing_inbox
    FOR EACH ROW EXECUTE FUNCTION saas.billing_inbox_enqueue();
