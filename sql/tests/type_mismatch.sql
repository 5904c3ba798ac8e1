-- sources: meta.classifications
-- expect-error: type_mismatch.sql:3:8: expressions have incompatible types
SELECT tag + 1 AS n, _commit_lsn FROM classifications
