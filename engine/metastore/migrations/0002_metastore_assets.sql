-- The metastore: tenants and assets. See ARCHITECTURE.md, "Metastore schema and capacity".

CREATE SCHEMA IF NOT EXISTS meta;

-- uuid_generate_v5 (SHA-1 name-based UUIDs). uuid-ossp ships with PostgreSQL (contrib) and is a
-- trusted extension, so a database owner can create it.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE TABLE meta.tenants (
    tenant_id  text        PRIMARY KEY
               CONSTRAINT tenants_tenant_id_format CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- meta.asset_guid(tenant, qualified_name): the asset's guid, a UUIDv5 in the lily namespace
-- 52f8f556-8327-42c9-834a-d942b515e43f of the name  tenant || ':' || qualified_name.
-- A tenant id cannot contain ':', so the name is unambiguous. Any UUIDv5 implementation computes
-- the same value (Python: uuid.uuid5(NS, f"{tenant}:{qualified_name}")).
-- The extension may live in any schema (it may have been created before us), so the function
-- is created with that schema spelled out; the body is parsed at creation (SQL-standard body),
-- which records the dependency and makes it immune to search_path.
DO $do$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO STRICT ext_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'uuid-ossp';
    EXECUTE format($f$
        CREATE FUNCTION meta.asset_guid(tenant text, qualified_name text) RETURNS uuid
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN %I.uuid_generate_v5('52f8f556-8327-42c9-834a-d942b515e43f'::uuid,
                                   tenant || ':' || qualified_name)
    $f$, ext_schema);
END
$do$;

COMMENT ON FUNCTION meta.asset_guid(text, text) IS
    'guid of the asset with this qualified name in this tenant: UUIDv5(52f8f556-8327-42c9-834a-d942b515e43f, tenant || '':'' || qualified_name)';

-- One row per asset. The guid is derived from (tenant_id, qualified_name) and checked, so the
-- primary key on guid is also "qualified name unique per tenant", and a look-up by qualified name
-- computes the guid and probes one partition's primary key.
--
-- Columns are ordered fixed-width first (uuid, uuid, int8, timestamptz x2) so no alignment padding
-- is needed between them; the variable-width columns follow.
CREATE TABLE meta.assets (
    guid           uuid        NOT NULL,
    parent_guid    uuid,
    version        bigint      NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    tenant_id      text        NOT NULL REFERENCES meta.tenants (tenant_id),
    type_name      text        NOT NULL,
    status         text        NOT NULL DEFAULT 'ACTIVE',
    name           text        NOT NULL,
    qualified_name text        NOT NULL,
    attributes     jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT assets_pkey PRIMARY KEY (guid),
    CONSTRAINT assets_guid_derived CHECK (guid = meta.asset_guid(tenant_id, qualified_name)),
    -- The type system is open (Connection, Database, Schema, Table, View, MaterializedView,
    -- Column, Dashboard, BIField, Process, ... and connector-specific types), so the check is on
    -- the form of a type name, not a fixed list that would need a validating scan of 1B rows to
    -- extend.
    CONSTRAINT assets_type_name_format CHECK (type_name ~ '^[A-Z][A-Za-z0-9]{0,63}$'),
    CONSTRAINT assets_status_valid CHECK (status IN ('ACTIVE', 'DELETED')),
    CONSTRAINT assets_qualified_name_present CHECK (qualified_name <> ''),
    CONSTRAINT assets_attributes_object CHECK (jsonb_typeof(attributes) = 'object'),
    CONSTRAINT assets_version_positive CHECK (version >= 1),
    CONSTRAINT assets_not_own_parent CHECK (parent_guid IS DISTINCT FROM guid)
) PARTITION BY HASH (guid);

-- 32 hash partitions: ~31M rows and ~15 GB (heap + indexes) each at 1B assets. fillfactor 90
-- leaves room on each page for HOT updates (an update that touches no indexed column then writes
-- no index entries). Autovacuum thresholds are tightened because the default 20% of a 31M-row
-- partition is 6M dead rows.
DO $do$
BEGIN
    FOR r IN 0..31 LOOP
        EXECUTE format(
            'CREATE TABLE meta.%I PARTITION OF meta.assets FOR VALUES WITH (MODULUS 32, REMAINDER %s)
                 WITH (fillfactor = 90,
                       autovacuum_vacuum_scale_factor = 0.05,
                       autovacuum_vacuum_insert_scale_factor = 0.05,
                       autovacuum_analyze_scale_factor = 0.02)',
            format('assets_p%s', lpad(r::text, 2, '0')), r);
    END LOOP;
END
$do$;

-- Children of a parent (browse a schema's tables, a table's columns):
--   WHERE tenant_id = $1 AND parent_guid = meta.asset_guid($1, $2)
-- Partitioned by guid, so this probes the index of each of the 32 partitions. tenant_id is not in
-- the key: parent_guid is derived from the tenant already, and a parent's children are scattered
-- over the partitions, so B-tree deduplication cannot shrink a (tenant_id, parent_guid) key;
-- measured, the tenant prefix costs ~20 bytes per asset (~20 GB at 1B assets).
CREATE INDEX assets_children_idx ON meta.assets (parent_guid);
-- Scans by type within a tenant (all Connections, all Dashboards). Low-cardinality keys: B-tree
-- deduplication stores each key once per leaf page, so this index costs ~6-7 bytes per row.
CREATE INDEX assets_type_idx ON meta.assets (tenant_id, type_name);
