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
-- (the asset itself counts), and its owners. One call per change batch; each hop up the parent
-- chain is one primary-key probe in one partition. Owners are the attributes ownerUsers and
-- ownerGroups (JSON arrays of strings; anything else reads as none).
CREATE FUNCTION meta.asset_context(tenants text[], guids uuid[])
    RETURNS TABLE (
        tenant_id text, guid uuid, type_name text, name text, qualified_name text, status text,
        parent_guid uuid, table_qualified_name text, table_name text,
        connection_qualified_name text, connection_name text,
        owner_users text[], owner_groups text[], attributes jsonb)
    LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    WITH RECURSIVE chain (tenant, start, node, hops) AS (
        SELECT q.tenant, q.guid, q.guid, 0
        FROM unnest(tenants, guids) AS q(tenant, guid)
        UNION ALL
        SELECT c.tenant, c.start, a.parent_guid, c.hops + 1
        FROM chain c
        JOIN meta.assets a ON a.guid = c.node AND a.tenant_id = c.tenant
        WHERE a.parent_guid IS NOT NULL AND c.hops < 16
    ),
    nodes AS (
        SELECT c.start, c.hops, a.*
        FROM chain c
        JOIN meta.assets a ON a.guid = c.node AND a.tenant_id = c.tenant
    )
    SELECT s.tenant_id, s.guid, s.type_name, s.name, s.qualified_name, s.status, s.parent_guid,
           t.qualified_name, t.name, k.qualified_name, k.name,
           CASE WHEN jsonb_typeof(s.attributes -> 'ownerUsers') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(s.attributes -> 'ownerUsers'))
                ELSE '{}'::text[] END,
           CASE WHEN jsonb_typeof(s.attributes -> 'ownerGroups') = 'array'
                THEN ARRAY(SELECT jsonb_array_elements_text(s.attributes -> 'ownerGroups'))
                ELSE '{}'::text[] END,
           s.attributes
    FROM nodes s
    LEFT JOIN LATERAL (
        SELECT n.qualified_name, n.name FROM nodes n
        WHERE n.start = s.guid AND n.type_name IN ('Table', 'View', 'MaterializedView')
        ORDER BY n.hops LIMIT 1
    ) t ON true
    LEFT JOIN LATERAL (
        SELECT n.qualified_name, n.name FROM nodes n
        WHERE n.start = s.guid AND n.type_name = 'Connection'
        ORDER BY n.hops LIMIT 1
    ) k ON true
    WHERE s.hops = 0
$fn$;

-- Withdrawing propagated tags needs the tenant and the propagate flag of a deleted or updated
-- direct tag, which the primary key alone does not carry. Classification rows are small, so
-- logging the whole old row costs little WAL.
ALTER TABLE meta.classifications REPLICA IDENTITY FULL;
