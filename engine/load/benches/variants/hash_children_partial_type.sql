-- Schema variant for the load benchmark (LILY_LOAD_SETUP_SQL): the children index as a hash
-- index, and the (tenant_id, type_name) index without the column rows.
DROP INDEX meta.assets_children_idx;
CREATE INDEX assets_children_idx ON meta.assets USING hash (parent_guid);
DROP INDEX meta.assets_type_idx;
CREATE INDEX assets_type_idx ON meta.assets (tenant_id, type_name) WHERE type_name <> 'Column';
