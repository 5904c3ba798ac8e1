-- The tenant rule of 0007 on every partition of meta.assets too.
--
-- A statement-level trigger fires only for statements that name its table: an INSERT or COPY
-- that names a partition (meta.assets_p05) skipped 0007's check on meta.assets, where the old
-- foreign key had been inherited by the partitions. Each partition now carries the same
-- statement-level check over its own inserted rows. A statement that names meta.assets fires
-- only the parent's trigger, so no row is checked twice.
--
-- A partition added later (repartitioning) needs this trigger as well. Rows written straight
-- into a partition between 0007 and 0008 were not checked; finding them needs a scan of every
-- asset, which a migration should not impose on a large metastore:
--   SELECT tenant_id FROM meta.assets EXCEPT SELECT tenant_id FROM meta.tenants;
DO $do$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent = 'meta.assets'::regclass
        ORDER BY i.inhrelid
    LOOP
        EXECUTE format(
            'CREATE TRIGGER assets_tenants_exist AFTER INSERT ON %s
                 REFERENCING NEW TABLE AS new_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION meta.assets_tenants_exist()',
            part);
    END LOOP;
END
$do$;
