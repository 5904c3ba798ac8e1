-- Tenants cannot list each other: a tenant role reads its own row of meta.tenants, the ingest
-- role the row of the tenant its transaction acts for (`lily.tenant`). The engine runs as the
-- tables' owner and is not subject to the policies; foreign-key checks never are.
ALTER TABLE meta.tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_role ON meta.tenants FOR SELECT TO lily_tenants
    USING (tenant_id = (SELECT meta.role_tenant()));
CREATE POLICY tenant_ingest ON meta.tenants FOR SELECT TO lily_ingest
    USING (tenant_id = current_setting('lily.tenant', true));
