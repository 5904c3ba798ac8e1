-- Ingest: API keys, the audit log, webhook de-duplication, the directory of owners that Okta
-- keeps current, and row-level security on tenant for the roles that serve tenants.
-- See ARCHITECTURE.md, "Authentication, authorization and tenancy".

-- API keys. The presented key is `lily_<key_id>_<secret>`; only the SHA-256 of the secret is
-- stored. The secret is 32 random bytes, so a fast hash is enough: there is nothing to guess.
CREATE TABLE lily.api_keys (
    key_id        text        PRIMARY KEY CONSTRAINT api_keys_key_id_format CHECK (key_id ~ '^[a-z0-9]{12}$'),
    tenant_id     text        NOT NULL REFERENCES meta.tenants (tenant_id),
    name          text        NOT NULL,
    scopes        text[]      NOT NULL,
    secret_sha256 bytea       NOT NULL CONSTRAINT api_keys_secret_length CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Every accepted write: who, for which tenant, what, when.
CREATE TABLE lily.audit_log (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    tenant_id  text        NOT NULL,
    -- 'key:<key_id>', 'jwt:<issuer subject>', 'webhook:monte_carlo', 'webhook:okta', 'cli:load'
    principal  text        NOT NULL,
    -- 'assets.upsert', 'assets.delete', 'lineage.upsert', 'incidents.ingest', ...
    action     text        NOT NULL,
    request_id text,
    detail     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_at_idx ON lily.audit_log (tenant_id, at);

-- Webhook deliveries already applied (Okta event uuid, Monte Carlo event key): a redelivery
-- finds its row here and changes nothing.
CREATE TABLE lily.inbound_events (
    tenant_id   text        NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbound_events_pkey PRIMARY KEY (tenant_id, source, event_id)
);

-- The people and groups asset owners name (attributes.ownerUsers / ownerGroups), kept current
-- by the identity provider's events. `last_event_at` is the publish time of the newest event
-- applied, so a late, older event never overwrites a newer state.
CREATE TABLE meta.principals (
    tenant_id     text        NOT NULL REFERENCES meta.tenants (tenant_id),
    kind          text        NOT NULL CONSTRAINT principals_kind_valid CHECK (kind IN ('user', 'group')),
    external_id   text        NOT NULL,
    login         text        NOT NULL,
    display_name  text,
    status        text        NOT NULL DEFAULT 'ACTIVE'
                  CONSTRAINT principals_status_valid CHECK (status IN ('ACTIVE', 'SUSPENDED', 'DEACTIVATED', 'DELETED')),
    last_event_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT principals_pkey PRIMARY KEY (tenant_id, kind, external_id)
);
CREATE INDEX principals_login_idx ON meta.principals (tenant_id, kind, login);

-- Group membership; a removal keeps the row with member = false so that an older "added" event
-- arriving late does not bring the membership back.
CREATE TABLE meta.group_members (
    tenant_id     text        NOT NULL REFERENCES meta.tenants (tenant_id),
    group_id      text        NOT NULL,
    user_id       text        NOT NULL,
    member        boolean     NOT NULL,
    last_event_at timestamptz NOT NULL,
    CONSTRAINT group_members_pkey PRIMARY KEY (tenant_id, group_id, user_id)
);

-- Roles. `lily_ingest` is the role the ingest API switches to (SET ROLE) for tenant writes; it
-- sees only the rows of the tenant named by the transaction's `lily.tenant` setting, which the
-- server sets from the authenticated credential. `lily_tenants` groups per-tenant roles
-- (`lily_tenant_<tenant_id>`, made by meta.create_tenant_role) for direct SQL access in shared
-- deployments; each sees only its own tenant's rows. The tables' owner (the engine itself:
-- capture, pipelines, migrations) is not subject to these policies.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lily_ingest') THEN
        CREATE ROLE lily_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lily_tenants') THEN
        CREATE ROLE lily_tenants NOLOGIN;
    END IF;
    -- The migrating role must be able to SET ROLE lily_ingest.
    IF NOT pg_has_role(current_user, 'lily_ingest', 'MEMBER') THEN
        EXECUTE format('GRANT lily_ingest TO %I', current_user);
    END IF;
END
$do$;

-- The tenant a per-tenant role stands for (NULL for any other role).
CREATE FUNCTION meta.role_tenant() RETURNS text
    LANGUAGE sql STABLE
RETURN CASE WHEN current_user LIKE 'lily\_tenant\_%' THEN substr(current_user, 13) END;

-- Creates (if missing) the role lily_tenant_<tenant_id>, a member of lily_tenants.
CREATE FUNCTION meta.create_tenant_role(tenant text) RETURNS text
    LANGUAGE plpgsql
AS $fn$
DECLARE
    role_name text := 'lily_tenant_' || tenant;
BEGIN
    PERFORM 1 FROM meta.tenants WHERE tenant_id = tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tenant %', tenant USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN IN ROLE lily_tenants', role_name);
    END IF;
    RETURN role_name;
END
$fn$;

GRANT USAGE ON SCHEMA meta TO lily_ingest, lily_tenants;
GRANT USAGE ON SCHEMA lily TO lily_ingest;
GRANT SELECT ON meta.tenants TO lily_ingest, lily_tenants;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON meta.assets, meta.lineage_edges, meta.classifications, meta.incidents,
       meta.principals, meta.group_members
    TO lily_ingest;
GRANT SELECT
    ON meta.assets, meta.lineage_edges, meta.classifications, meta.incidents,
       meta.principals, meta.group_members
    TO lily_tenants;
GRANT INSERT ON lily.audit_log TO lily_ingest;
GRANT USAGE ON SEQUENCE lily.audit_log_id_seq TO lily_ingest;
GRANT SELECT, INSERT ON lily.inbound_events TO lily_ingest;

DO $do$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['meta.assets', 'meta.lineage_edges', 'meta.classifications',
                             'meta.incidents', 'meta.principals', 'meta.group_members',
                             'lily.inbound_events', 'lily.audit_log']
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_ingest ON %s TO lily_ingest
                 USING (tenant_id = current_setting(''lily.tenant'', true))
                 WITH CHECK (tenant_id = current_setting(''lily.tenant'', true))', t);
        EXECUTE format(
            'CREATE POLICY tenant_role ON %s TO lily_tenants
                 USING (tenant_id = meta.role_tenant())', t);
    END LOOP;
END
$do$;
