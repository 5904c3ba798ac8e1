-- Schema variant for the load benchmark (LILY_LOAD_SETUP_SQL): the floor. meta.assets keeps its
-- primary key and nothing else: no other index, no CHECK, no tenant trigger.
DROP INDEX meta.assets_children_idx;
DROP INDEX meta.assets_type_idx;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'meta.assets'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE meta.assets DROP CONSTRAINT %I', r.conname);
    END LOOP;
    FOR r IN SELECT tgrelid::regclass AS rel, tgname FROM pg_trigger t
             JOIN pg_inherits i ON i.inhrelid = t.tgrelid
             WHERE i.inhparent = 'meta.assets'::regclass AND t.tgname = 'assets_tenants_exist' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    DROP TRIGGER assets_tenants_exist ON meta.assets;
END
$$;
