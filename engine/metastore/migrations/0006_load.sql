-- Bulk loads: resumable load jobs (see engine/load).
--
-- One row per (tenant, input file). job_id is derived from the tenant and the file's fingerprint
-- (size, modification time, SHA-256 of its first and last MiB), so re-running the same command on
-- the same file finds its job and resumes it. A load reads its file twice: the structural lane
-- (everything that is not a leaf asset, and lineage) and then the bulk lane (leaf assets such as
-- Column and BIField). Each lane commits in chunks; the chunk's rows and the lane's new position
-- are committed in one transaction, so after a crash the position says exactly what is in
-- meta.assets. The position update compares the old position (a compare-and-set), so two runs of
-- one job cannot both commit the same chunk.
CREATE TABLE lily.load_jobs (
    job_id              text        PRIMARY KEY
                        CONSTRAINT load_jobs_job_id_format CHECK (job_id ~ '^[0-9a-f]{32}$'),
    tenant_id           text        NOT NULL REFERENCES meta.tenants (tenant_id),
    -- As given to the latest run; for people reading the table, not for matching.
    file_name           text        NOT NULL,
    format              text        NOT NULL CONSTRAINT load_jobs_format_valid CHECK (format IN ('ndjson', 'parquet')),
    fingerprint         text        NOT NULL,
    file_size           bigint      NOT NULL,
    status              text        NOT NULL DEFAULT 'running'
                        CONSTRAINT load_jobs_status_valid CHECK (status IN ('running', 'failed', 'done')),
    -- Per lane: `position` is the byte offset (NDJSON) or row ordinal (Parquet) just past the last
    -- committed chunk, `line` the number of lines (rows) before it, `rows` the input rows of that
    -- lane committed so far, `done` whether the lane reached the end of the file.
    structural_position bigint      NOT NULL DEFAULT 0,
    structural_line     bigint      NOT NULL DEFAULT 0,
    structural_rows     bigint      NOT NULL DEFAULT 0,
    structural_done     boolean     NOT NULL DEFAULT false,
    lineage_rows        bigint      NOT NULL DEFAULT 0,
    bulk_position       bigint      NOT NULL DEFAULT 0,
    bulk_line           bigint      NOT NULL DEFAULT 0,
    bulk_rows           bigint      NOT NULL DEFAULT 0,
    bulk_done           boolean     NOT NULL DEFAULT false,
    -- What the committed chunks did to meta.assets (over all runs of the job).
    inserted            bigint      NOT NULL DEFAULT 0,
    updated             bigint      NOT NULL DEFAULT 0,
    unchanged           bigint      NOT NULL DEFAULT 0,
    runs                integer     NOT NULL DEFAULT 1,
    principal           text        NOT NULL,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    CONSTRAINT load_jobs_positions_nonnegative
        CHECK (structural_position >= 0 AND bulk_position >= 0 AND structural_line >= 0 AND bulk_line >= 0),
    -- The bulk lane starts only after the structural lane has finished.
    CONSTRAINT load_jobs_structural_first CHECK (structural_done OR bulk_position = 0)
);
-- "This tenant's loads, newest first".
CREATE INDEX load_jobs_tenant_idx ON lily.load_jobs (tenant_id, created_at);

-- The ingest API (role lily_ingest) may show a tenant its own jobs; loads themselves run as the
-- tables' owner.
GRANT SELECT ON lily.load_jobs TO lily_ingest;
ALTER TABLE lily.load_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_ingest ON lily.load_jobs FOR SELECT TO lily_ingest
    USING (tenant_id = current_setting('lily.tenant', true));
