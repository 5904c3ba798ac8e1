-- Cheaper per-row checks on meta.assets, for bulk loads (BENCHMARKS.md, "Bulk load").
--
-- Measured on the bulk lane's INSERT, per row: the foreign key to meta.tenants ~3 µs (one
-- SPI query per row), the type-name regular expression ~1 µs. The rules stay the same; only how
-- they are checked changes.

-- 1. The tenant foreign key becomes one set-based check per statement. The statement trigger
-- reads the distinct tenants of the rows the statement inserted and locks each tenant row
-- FOR KEY SHARE, as the foreign key did, so a concurrent delete of the tenant waits for the
-- inserting transaction and then sees its rows (below). Same SQLSTATE (23503) and message shape.
CREATE FUNCTION meta.assets_tenants_exist() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
AS $fn$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT DISTINCT n.tenant_id FROM new_rows n LOOP
        PERFORM 1 FROM meta.tenants WHERE tenant_id = t FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'insert or update on table "assets" violates foreign key constraint "assets_tenant_id_fkey"'
                USING ERRCODE = 'foreign_key_violation',
                      DETAIL = format('Key (tenant_id)=(%s) is not present in table "tenants".', t),
                      SCHEMA = 'meta', TABLE = 'assets', CONSTRAINT = 'assets_tenant_id_fkey';
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

-- An asset never changes tenant (its guid is derived from the tenant): checked per row only when
-- the value changes, so ordinary updates pay for the WHEN test alone.
CREATE FUNCTION meta.assets_tenant_fixed() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
BEGIN
    RAISE EXCEPTION 'an asset cannot move to another tenant (delete it and create it in the other tenant)'
        USING ERRCODE = 'foreign_key_violation', SCHEMA = 'meta', TABLE = 'assets',
              CONSTRAINT = 'assets_tenant_id_fkey';
END
$fn$;

-- The delete side: a tenant with assets cannot be deleted, renamed or truncated away. The check
-- runs after the tenant row is locked, with a fresh snapshot at READ COMMITTED, so it sees every
-- asset committed by an inserter it waited for. At REPEATABLE READ or SERIALIZABLE the snapshot
-- is older and could miss them, so the delete is refused there.
CREATE FUNCTION meta.tenants_without_assets() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
AS $fn$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM meta.assets) THEN
            RAISE EXCEPTION 'cannot truncate meta.tenants while meta.assets has rows'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'delete or rename tenants at READ COMMITTED isolation'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF EXISTS (SELECT 1 FROM meta.assets WHERE tenant_id = OLD.tenant_id) THEN
        RAISE EXCEPTION 'update or delete on table "tenants" violates foreign key constraint "assets_tenant_id_fkey" on table "assets"'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (tenant_id)=(%s) is still referenced from table "assets".', OLD.tenant_id),
                  SCHEMA = 'meta', TABLE = 'tenants', CONSTRAINT = 'assets_tenant_id_fkey';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER assets_tenants_exist AFTER INSERT ON meta.assets
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meta.assets_tenants_exist();
CREATE TRIGGER assets_tenant_fixed BEFORE UPDATE OF tenant_id ON meta.assets
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION meta.assets_tenant_fixed();
CREATE TRIGGER tenants_without_assets AFTER DELETE OR UPDATE OF tenant_id ON meta.tenants
    FOR EACH ROW EXECUTE FUNCTION meta.tenants_without_assets();
CREATE TRIGGER tenants_truncate_without_assets BEFORE TRUNCATE ON meta.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION meta.tenants_without_assets();
-- Only now, with every check in place, the per-row foreign key goes.
ALTER TABLE meta.assets DROP CONSTRAINT assets_tenant_id_fkey;

-- 2. The type-name rule without a regular expression: first letter A-Z, then letters and digits
-- (ASCII), at most 64 bytes. ltrim removes the allowed characters; anything left is not allowed.
-- NOT VALID + VALIDATE: the scan of existing rows does not block writes.
ALTER TABLE meta.assets ADD CONSTRAINT assets_type_name_chars CHECK (
    octet_length(type_name) BETWEEN 1 AND 64
    AND ascii(type_name) BETWEEN 65 AND 90
    AND ltrim(type_name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789') = ''
) NOT VALID;
ALTER TABLE meta.assets VALIDATE CONSTRAINT assets_type_name_chars;
ALTER TABLE meta.assets DROP CONSTRAINT assets_type_name_format;
