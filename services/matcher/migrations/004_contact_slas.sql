-- Each lead is due for contact by the SLA the notifier's clock will count (meshkit/institutions.py,
-- contact_sla): so the institutions' own SLAs (from demand.institution-changed.v1, as the notifier
-- keeps them) and the contact policies set on the notifier (notifier.contact-policy-changed.v1) are
-- kept here, and the batch write takes a contact due time per lead (p_l_due) instead of one for the
-- batch: record_match_batch_v2, otherwise the same as record_match_batch (003). That one stays
-- for workers of the release before, during a rolling upgrade; a later release drops it.
CREATE TABLE institution_slas (
    institution_id text   PRIMARY KEY,
    sla_hours      int    NOT NULL,  -- 0 = the institution set none (the default applies)
    version        bigint NOT NULL
);
CREATE TABLE contact_policies (
    institution_id text        NOT NULL,
    product_id     text        NOT NULL,  -- '' = the institution's default
    sla_hours      int         NOT NULL,  -- 0 = not set by this policy
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (institution_id, product_id)
);

CREATE FUNCTION record_match_batch_v2(
    p_consumer text, p_event_ids text[], p_event_demands text[],
    p_rules_version text, p_now timestamptz,
    p_m_demand text[], p_m_uscc text[], p_m_leads int[], p_m_candidates int[], p_m_explanation text[],
    p_o_demand text[], p_o_part int[], p_o_bytes bytea[], p_o_mode text[], p_o_consent boolean[],
    p_o_active int[], p_o_tried text[], p_o_valid_until timestamptz[],
    p_l_id text[], p_l_demand text[], p_l_institution text[], p_l_product text[], p_l_version bigint[],
    p_l_score int[], p_l_rank int[], p_l_bytes bytea[], p_l_origin text[], p_l_due timestamptz[],
    p_e_demand text[], p_e_id uuid[], p_e_topic text[], p_e_key bytea[], p_e_payload bytea[], p_e_type text[],
    p_channel text
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    fresh text[];
BEGIN
    WITH claimed AS (
        INSERT INTO inbox (consumer, event_id) SELECT p_consumer, e FROM unnest(p_event_ids) AS e
        ON CONFLICT DO NOTHING RETURNING event_id
    ), recorded AS (
        INSERT INTO matches (demand_id, enterprise_uscc, leads, candidates_considered, no_match_explanation,
                             rules_version)
        SELECT d, u, l, c, x, p_rules_version
        FROM unnest(p_m_demand, p_m_uscc, p_m_leads, p_m_candidates, p_m_explanation) AS t(d, u, l, c, x)
        WHERE d IN (SELECT ed FROM unnest(p_event_ids, p_event_demands) AS ev(e, ed)
                    WHERE ev.e IN (SELECT event_id FROM claimed))
        ON CONFLICT DO NOTHING RETURNING demand_id
    )
    SELECT coalesce(array_agg(demand_id), '{}') INTO fresh FROM recorded;
    IF cardinality(fresh) = 0 THEN
        RETURN fresh;
    END IF;

    INSERT INTO open_demands (demand_id, part, demand, docking_mode, consent, active_leads, tried, valid_until,
                              matched_at)
    SELECT d, p, b, m, c, a, string_to_array(t, ','), v, p_now
    FROM unnest(p_o_demand, p_o_part, p_o_bytes, p_o_mode, p_o_consent, p_o_active, p_o_tried, p_o_valid_until)
         AS x(d, p, b, m, c, a, t, v)
    WHERE d = ANY (fresh)
    ON CONFLICT DO NOTHING;

    INSERT INTO leads (lead_id, demand_id, institution_id, product_id, product_version, score, rank, rules_version,
                       lead, created_at, contact_due_at, origin)
    SELECT l, d, i, p, v, s, r, p_rules_version, b, p_now, due, o
    FROM unnest(p_l_id, p_l_demand, p_l_institution, p_l_product, p_l_version, p_l_score, p_l_rank, p_l_bytes,
                p_l_origin, p_l_due) AS x(l, d, i, p, v, s, r, b, o, due)
    WHERE d = ANY (fresh)
    ON CONFLICT DO NOTHING;

    PERFORM outbox_append(array_agg(e ORDER BY n), array_agg(t ORDER BY n), array_agg(k ORDER BY n),
                          array_agg(b ORDER BY n), array_agg(y ORDER BY n), p_now, p_channel)
    FROM unnest(p_e_demand, p_e_id, p_e_topic, p_e_key, p_e_payload, p_e_type) WITH ORDINALITY AS x(d, e, t, k, b, y, n)
    WHERE d = ANY (fresh);
    RETURN fresh;
END
$$;
