-- Schema variant for the load benchmark (LILY_LOAD_SETUP_SQL): the children index as a hash
-- index. Equality look-ups only (parent_guid = $1, = ANY($1)), which is all the engine asks of it.
DROP INDEX meta.assets_children_idx;
CREATE INDEX assets_children_idx ON meta.assets USING hash (parent_guid);
