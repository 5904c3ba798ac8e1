-- Tenant roles that cannot stand for two tenants.
--
-- 0005 named a tenant's role 'lily_tenant_' || tenant_id and read the tenant back from the
-- role's name. PostgreSQL truncates identifiers to 63 bytes, so a tenant id of 52 or more
-- characters was given the role of the tenant whose id is its first 51 characters, and read
-- that tenant's rows. Now a table maps each role to its one tenant, the role a policy trusts is
-- looked up there, and a name that would not fit is shortened with a digest of the whole id.

CREATE TABLE meta.tenant_roles (
    role_name  name PRIMARY KEY,
    tenant_id  text NOT NULL UNIQUE REFERENCES meta.tenants (tenant_id) ON DELETE CASCADE
);

-- A tenant role sees its own row and nothing else: tenants cannot list each other.
ALTER TABLE meta.tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_row ON meta.tenant_roles TO lily_tenants USING (role_name = current_user);
GRANT SELECT ON meta.tenant_roles TO lily_tenants;

-- The role name of a tenant: lily_tenant_<id> when that fits in 63 bytes (tenant ids are
-- ASCII), else the id's first 18 characters and the MD5 of the whole id (12 + 18 + 1 + 32 = 63
-- bytes). A short id that happens to look like a shortened one cannot take its role: the
-- table's key refuses a second tenant for one role.
CREATE FUNCTION meta.tenant_role_name(tenant text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
RETURN CASE
    WHEN octet_length(tenant) <= 51 THEN 'lily_tenant_' || tenant
    ELSE 'lily_tenant_' || left(tenant, 18) || '_' || md5(tenant)
END;

-- Roles made by 0005 for ids that fit are kept, with their tenant.
INSERT INTO meta.tenant_roles (role_name, tenant_id)
SELECT r.rolname, t.tenant_id
FROM meta.tenants t
JOIN pg_roles r ON r.rolname = meta.tenant_role_name(t.tenant_id)
WHERE pg_has_role(r.oid, 'lily_tenants', 'MEMBER')
ON CONFLICT DO NOTHING;

-- The tenant the current role stands for; NULL for any role the table does not map.
CREATE OR REPLACE FUNCTION meta.role_tenant() RETURNS text
    LANGUAGE sql STABLE
RETURN (SELECT tenant_id FROM meta.tenant_roles WHERE role_name = current_user);

-- Creates (if missing) the tenant's role, a member of lily_tenants, and returns its name. A
-- role of that name that stands for no tenant (made by hand, or by 0005 for a longer id) is
-- not taken over: whoever was granted it would read this tenant's rows.
CREATE OR REPLACE FUNCTION meta.create_tenant_role(tenant text) RETURNS text
    LANGUAGE plpgsql
AS $fn$
DECLARE
    wanted text := meta.tenant_role_name(tenant);
    owner_tenant text;
BEGIN
    PERFORM 1 FROM meta.tenants WHERE tenant_id = tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tenant %', tenant USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT r.tenant_id INTO owner_tenant FROM meta.tenant_roles r WHERE r.role_name = wanted;
    IF owner_tenant = tenant THEN
        RETURN wanted;
    ELSIF owner_tenant IS NOT NULL THEN
        RAISE EXCEPTION 'role % already stands for tenant %', wanted, owner_tenant
            USING ERRCODE = 'unique_violation';
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = wanted) THEN
        RAISE EXCEPTION 'role % exists but stands for no tenant; drop it, or map it in meta.tenant_roles', wanted
            USING ERRCODE = 'duplicate_object';
    END IF;
    EXECUTE format('CREATE ROLE %I NOLOGIN IN ROLE lily_tenants', wanted);
    INSERT INTO meta.tenant_roles (role_name, tenant_id) VALUES (wanted, tenant);
    RETURN wanted;
END
$fn$;

-- The policies of 0005 again, with the tenant looked up once per statement (an InitPlan), not
-- once per row.
DO $do$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['meta.assets', 'meta.lineage_edges', 'meta.classifications',
                             'meta.incidents', 'meta.principals', 'meta.group_members',
                             'lily.inbound_events', 'lily.audit_log']
    LOOP
        EXECUTE format('DROP POLICY tenant_role ON %s', t);
        EXECUTE format(
            'CREATE POLICY tenant_role ON %s TO lily_tenants
                 USING (tenant_id = (SELECT meta.role_tenant()))', t);
    END LOOP;
END
$do$;
