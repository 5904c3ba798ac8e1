-- sources: meta.classifications
-- expect-error: sql/tests/syntax_error.sql:4
SELECT tag, _commit_lsn
FROM classifications WHERE WHERE tag = 'PII'
