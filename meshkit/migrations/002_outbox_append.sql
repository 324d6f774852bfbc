-- Appends events to this schema's outbox, in the order given, and wakes its relay: one round
-- trip for the caller (see meshkit/outbox.py). Runs in the caller's transaction, so the events
-- are committed with the state change they announce, or not at all. An event id already in
-- the outbox is skipped (a replay).
CREATE FUNCTION outbox_append(p_event_ids uuid[], p_topics text[], p_keys bytea[], p_payloads bytea[],
                              p_event_types text[], p_occurred_at timestamptz, p_channel text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (event_id, topic, key, payload, event_type, occurred_at)
    SELECT e, t, k, p, y, p_occurred_at
    FROM unnest(p_event_ids, p_topics, p_keys, p_payloads, p_event_types) WITH ORDINALITY AS x(e, t, k, p, y, n)
    ORDER BY n
    ON CONFLICT (event_id) DO NOTHING;
    PERFORM pg_notify(p_channel, '');
END
$$;
