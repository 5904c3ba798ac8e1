-- Finding the table an external tool names by `database/schema/table` without knowing its
-- connection (the Monte Carlo hook without `connection_qualified_name`): an index on the last
-- segment of tables' qualified names, lower case, so the look-up probes an index instead of
-- scanning every asset of the tenant with `LIKE '%/' || path` (which also let `%` and `_` in a
-- reported name act as wildcards). Candidates are then checked with `right()`, which has no
-- wildcards.

CREATE FUNCTION meta.last_segment(qualified_name text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN lower(split_part(qualified_name, '/', -1));

CREATE INDEX assets_table_name_idx ON meta.assets (tenant_id, meta.last_segment(qualified_name))
    WHERE type_name IN ('Table', 'View', 'MaterializedView');
