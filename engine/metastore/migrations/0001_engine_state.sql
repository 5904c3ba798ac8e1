-- The engine's own state, in schema `lily`.
--
-- lily.schema_migrations is created by the migration runner before it applies anything (it has
-- to exist to record this migration); it is declared here for the reader:
--   lily.schema_migrations(version int PRIMARY KEY, name text, checksum text, applied_at timestamptz)

CREATE SCHEMA IF NOT EXISTS lily;

-- How far each logical replication slot has been durably processed. The engine advances
-- confirmed_lsn only after the changes before it are delivered; on restart it resumes from here.
CREATE TABLE lily.checkpoints (
    slot_name     text        PRIMARY KEY,
    confirmed_lsn pg_lsn      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
