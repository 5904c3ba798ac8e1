-- Delivery state of the pipelines (ledger and dead letters), and the asset context that
-- transforms read through asset().

-- One row per output record a sink has finished with (delivered, or dead-lettered), so a replay
-- after a crash or reconnect skips it. Rows at or below the slot's confirmed LSN can never be
-- replayed again and are pruned.
CREATE TABLE lily.delivery_ledger (
    pipeline    text        NOT NULL,
    sink        text        NOT NULL,
    record_id   text        NOT NULL,
    commit_lsn  pg_lsn      NOT NULL,
    outcome     text        NOT NULL CONSTRAINT delivery_ledger_outcome_valid
                            CHECK (outcome IN ('delivered', 'dead_lettered')),
    finished_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_ledger_pkey PRIMARY KEY (pipeline, sink, record_id)
);
CREATE INDEX delivery_ledger_lsn_idx ON lily.delivery_ledger (commit_lsn);

-- Records a sink rejected for good, or kept failing past the retry budget, with the reason.
-- `lily dlq list` shows them and `lily dlq replay` sends them again.
CREATE TABLE lily.dead_letters (
    id          bigserial   PRIMARY KEY,
    pipeline    text        NOT NULL,
    sink        text        NOT NULL,
    record_id   text        NOT NULL,
    commit_lsn  pg_lsn      NOT NULL,
    commit_ts   timestamptz NOT NULL,
    order_key   text,
    record      jsonb       NOT NULL,
    error       text        NOT NULL,
    attempts    integer     NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    CONSTRAINT dead_letters_record_key UNIQUE (pipeline, sink, record_id)
);
CREATE INDEX dead_letters_pending_idx ON lily.dead_letters (pipeline, id) WHERE replayed_at IS NULL;

-- The context of each (tenant, guid): the asset, its nearest table-like and connection ancestors
-- (the asset itself counts), and its owners. One call per change batch. Each step up the parent
-- chain is one primary-key probe that runtime pruning sends to one partition: a recursive CTE
-- over meta.assets was measured to plan a hash join over all 32 partitions instead, which
-- scans the table. Owners are the attributes ownerUsers and ownerGroups (JSON arrays of
-- strings; anything else reads as none).
CREATE FUNCTION meta.asset_context(tenants text[], guids uuid[])
    RETURNS TABLE (
        tenant_id text, guid uuid, type_name text, name text, qualified_name text, status text,
        parent_guid uuid, table_qualified_name text, table_name text,
        connection_qualified_name text, connection_name text,
        owner_users text[], owner_groups text[], attributes jsonb)
    LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $fn$
#variable_conflict use_column
DECLARE
    i    int;
    hops int;
    a    meta.assets;
    n    meta.assets;
BEGIN
    FOR i IN 1 .. coalesce(array_length(guids, 1), 0) LOOP
        SELECT * INTO a FROM meta.assets x WHERE x.guid = guids[i] AND x.tenant_id = tenants[i];
        CONTINUE WHEN NOT FOUND;
        tenant_id := a.tenant_id;
        guid := a.guid;
        type_name := a.type_name;
        name := a.name;
        qualified_name := a.qualified_name;
        status := a.status;
        parent_guid := a.parent_guid;
        table_qualified_name := NULL;
        table_name := NULL;
        connection_qualified_name := NULL;
        connection_name := NULL;
        attributes := a.attributes;
        owner_users := CASE WHEN jsonb_typeof(a.attributes -> 'ownerUsers') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(a.attributes -> 'ownerUsers'))
            ELSE '{}'::text[] END;
        owner_groups := CASE WHEN jsonb_typeof(a.attributes -> 'ownerGroups') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(a.attributes -> 'ownerGroups'))
            ELSE '{}'::text[] END;
        n := a;
        hops := 0;
        LOOP
            IF table_qualified_name IS NULL AND n.type_name IN ('Table', 'View', 'MaterializedView') THEN
                table_qualified_name := n.qualified_name;
                table_name := n.name;
            END IF;
            IF connection_qualified_name IS NULL AND n.type_name = 'Connection' THEN
                connection_qualified_name := n.qualified_name;
                connection_name := n.name;
            END IF;
            EXIT WHEN n.parent_guid IS NULL OR hops >= 16
                   OR (table_qualified_name IS NOT NULL AND connection_qualified_name IS NOT NULL);
            SELECT * INTO n FROM meta.assets x WHERE x.guid = n.parent_guid AND x.tenant_id = a.tenant_id;
            EXIT WHEN NOT FOUND;
            hops := hops + 1;
        END LOOP;
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- Withdrawing propagated tags needs the tenant and the propagate flag of a deleted or updated
-- direct tag, which the primary key alone does not carry. Classification rows are small, so
-- logging the whole old row costs little WAL.
ALTER TABLE meta.classifications REPLICA IDENTITY FULL;
