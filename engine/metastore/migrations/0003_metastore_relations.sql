-- Lineage, classifications and data-quality incidents. None of these has a foreign key to
-- meta.assets (see ARCHITECTURE.md): an RI check per row costs a partition probe plus a
-- FOR KEY SHARE row lock that dirties the asset's heap page, changes can arrive before the asset
-- they point at, and assets are soft-deleted (status = 'DELETED') anyway.

-- One row per (upstream -> downstream via process) edge. Both traversal directions are a single
-- B-tree descent per hop: forward on the primary key, backward on lineage_edges_downstream_idx;
-- each index carries the other end, so a hop can be an index-only scan.
-- process_guid is the Process (or ColumnProcess) asset that moves the data; edges without one
-- use the nil uuid. Cycles are possible (a process that reads and writes the same table);
-- traversals must deduplicate (the functions below do).
CREATE TABLE meta.lineage_edges (
    upstream_guid   uuid        NOT NULL,
    downstream_guid uuid        NOT NULL,
    process_guid    uuid        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    tenant_id       text        NOT NULL REFERENCES meta.tenants (tenant_id),
    CONSTRAINT lineage_edges_pkey PRIMARY KEY (upstream_guid, downstream_guid, process_guid)
);
CREATE INDEX lineage_edges_downstream_idx ON meta.lineage_edges (downstream_guid, upstream_guid);
-- Replacing a process's edges when the process changes (DELETE ... WHERE process_guid = $1).
CREATE INDEX lineage_edges_process_idx ON meta.lineage_edges (process_guid);

-- Everything downstream of start_guid within max_depth hops, with the shortest distance (the
-- start node itself is never reported, even when it is on a cycle).
-- UNION (not UNION ALL) drops rows already seen, so a node is expanded at most once per depth
-- and cycles terminate.
CREATE FUNCTION meta.lineage_downstream(start_guid uuid, max_depth int DEFAULT 10)
    RETURNS TABLE (asset_guid uuid, depth int)
    LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    WITH RECURSIVE walk (node, hops) AS (
        SELECT start_guid, 0
        UNION
        SELECT e.downstream_guid, w.hops + 1
        FROM walk w
        JOIN meta.lineage_edges e ON e.upstream_guid = w.node
        WHERE w.hops < max_depth
    )
    SELECT node, min(hops) FROM walk WHERE node <> start_guid GROUP BY node
$fn$;

-- Everything upstream of start_guid within max_depth hops, with the shortest distance (the
-- start node itself is never reported, even when it is on a cycle).
CREATE FUNCTION meta.lineage_upstream(start_guid uuid, max_depth int DEFAULT 10)
    RETURNS TABLE (asset_guid uuid, depth int)
    LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    WITH RECURSIVE walk (node, hops) AS (
        SELECT start_guid, 0
        UNION
        SELECT e.upstream_guid, w.hops + 1
        FROM walk w
        JOIN meta.lineage_edges e ON e.downstream_guid = w.node
        WHERE w.hops < max_depth
    )
    SELECT node, min(hops) FROM walk WHERE node <> start_guid GROUP BY node
$fn$;

-- Tags on assets. A direct tag has origin_guid = asset_guid; a propagated one names the asset it
-- propagated from, so the same tag can reach an asset from several origins.
CREATE TABLE meta.classifications (
    asset_guid  uuid        NOT NULL,
    origin_guid uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    propagate   boolean     NOT NULL DEFAULT true,
    tenant_id   text        NOT NULL REFERENCES meta.tenants (tenant_id),
    tag         text        NOT NULL,
    source      text        NOT NULL,
    CONSTRAINT classifications_pkey PRIMARY KEY (asset_guid, tag, origin_guid),
    CONSTRAINT classifications_source_valid CHECK (source IN ('direct', 'propagated')),
    CONSTRAINT classifications_origin_matches_source
        CHECK ((source = 'direct') = (origin_guid = asset_guid)),
    CONSTRAINT classifications_tag_present CHECK (tag <> '')
);
-- "Every PII asset in this tenant".
CREATE INDEX classifications_tag_idx ON meta.classifications (tenant_id, tag);
-- Withdrawing a propagated tag when its origin loses it or stops propagating.
CREATE INDEX classifications_origin_idx ON meta.classifications (origin_guid, tag)
    WHERE source = 'propagated';

-- Data-quality incidents delivered by observability tools. A repeated delivery of the same
-- (tenant, source, external id, asset) upserts onto one row: NULLS NOT DISTINCT makes an incident
-- without an asset (asset_guid NULL) collide with its own redelivery too.
CREATE TABLE meta.incidents (
    incident_id   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    asset_guid    uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    tenant_id     text        NOT NULL REFERENCES meta.tenants (tenant_id),
    -- 'monte_carlo', 'soda', 'great_expectations', 'anomalo', 'bigeye', 'manual', ...
    source        text        NOT NULL CONSTRAINT incidents_source_format CHECK (source ~ '^[a-z][a-z0-9_]{0,62}$'),
    external_id   text        NOT NULL,
    incident_type text        NOT NULL,
    severity      text        NOT NULL,
    status        text        NOT NULL,
    payload       jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT incidents_delivery_key UNIQUE NULLS NOT DISTINCT (tenant_id, source, external_id, asset_guid)
);
-- "Open incidents on this asset".
CREATE INDEX incidents_asset_idx ON meta.incidents (asset_guid) WHERE asset_guid IS NOT NULL;
